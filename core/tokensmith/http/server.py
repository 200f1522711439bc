"""Serving the app over HTTPS, one TLS context per connector.

Hypercorn's own ``serve`` gives every socket the same ``SSLContext`` and does not put the
client certificate into the ASGI scope (its issues #62 and #324). This module starts one
``asyncio`` server per ``<Connector>`` with that connector's context, and drives Hypercorn's
``TCPServer`` (the per-connection protocol driver, tested with Hypercorn 0.18) for each
connection, HTTP/1.1 (h11) and HTTP/2 alike, with the app wrapped so that every HTTP scope of
the connection carries the ASGI TLS extension:
``scope["extensions"]["tls"]["client_cert_chain"]``, PEM, leaf first. A connector with
``http1="llhttp"`` serves HTTP/1.1 through ``http1.Http1Connection`` instead and hands only the
connections that negotiated ``h2`` to Hypercorn. Hypercorn also runs the app's lifespan.

Every step of a request has a deadline, the connector's ``connectionTimeout``: the handshake
(asyncio), a request head once started and an idle HTTP/2 connection (the watchdog below), a
body (the OAuth endpoints), and every write of a response, whether it waits for a client that
does not read or for HTTP/2 flow control that never opens (the watchdog again).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import itertools
import json
import logging
import signal
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.lifespan import Lifespan
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config as HypercornConfig

from tokensmith.config.settings import Config, Connector, Network
from tokensmith.config.xml import ConfigError
from tokensmith.http.llhttp import MAX_HEAD_BYTES, MAX_HEADERS, Http1Connection, no_delay, valid_host
from tokensmith.http.protocols import install as install_hypercorn_protocols
from tokensmith.http.proxies import forwarded_for, plain_http_refused, trusted_peer
from tokensmith.http.tls import server_context
from tokensmith.http.tls_accept import peer_certificate_chain
from tokensmith.metrics import metrics
from tokensmith.scope import BOUND_URLS, DER_KEY, TIMEOUT_KEY

__all__ = ["serve", "bind", "urls", "no_delay", "tls_extension"]

log = logging.getLogger("tokensmith.http.server")

_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def tls_extension(ssl_object: ssl.SSLObject | None) -> dict[str, Any] | None:
    """The ASGI TLS extension dict for one connection, read once after the handshake."""
    if ssl_object is None:
        return None
    chain = tuple(peer_certificate_chain(ssl_object))
    return {
        DER_KEY: chain,
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der) for der in chain],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": None,
    }


class _Connection:
    """The app as one Hypercorn connection sees it, and a watchdog for what never completes.

    Every HTTP scope of the connection gets the connection's TLS details and timeout.
    Hypercorn closes connections idle between requests (keep-alive), but nothing of its own
    bounds a client that trickles a request's headers a byte at a time (slowloris), an HTTP/2
    client that keeps the connection busy with PINGs, or a response write that waits forever:
    on a client that never reads (Hypercorn awaits the socket's drain) or on an HTTP/2 flow
    control window that never opens (it awaits the stream's buffer). The server's watchdog, one
    sweep over every connection rather than a timer each, aborts the connection when one of
    the app's sends has waited ``timeout`` seconds, or when no request has been inside the app
    for ``timeout`` seconds.
    """

    __slots__ = ("app", "tls", "timeout", "active", "last", "loop", "sending", "ids", "writer", "plain")

    def __init__(
        self,
        app: Any,
        writer: asyncio.StreamWriter,
        timeout: float,
        loop: asyncio.AbstractEventLoop,
        plain: tuple[tuple[Network, ...], str] | None = None,
    ):
        self.app, self.writer, self.timeout, self.loop = app, writer, timeout, loop
        #: A plain-HTTP connector's connection, from a trusted proxy (``SSLEnabled="false"``):
        #: the trusted proxies and the header family they are believed for; None over TLS.
        self.plain = plain
        self.tls = tls_extension(writer.get_extra_info("ssl_object"))
        self.active = 0
        self.last = loop.time()
        #: When each send in progress started, oldest first (dicts keep insertion order).
        self.sending: dict[int, float] = {}
        self.ids = itertools.count()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "websocket":
            # Unreachable while http/protocols.py refuses HTTP/1.1 upgrades and HTTP/2's
            # CONNECT (a WebSocket over HTTP/2 is an extended CONNECT, RFC 8441); kept so that
            # no WebSocket ever reaches the app if that changes.
            await send({"type": "websocket.close"})
            return
        if scope["type"] == "http":
            status = refused(scope)
            if status:
                await _answer(send, scope, status, close=True)
                return
            if self.plain is not None and not _proxied_https(scope, *self.plain):
                await _answer(send, scope, 403, _TLS_REQUIRED, close=True)
                return
            if self.active >= MAX_IN_FLIGHT:
                # HTTP/2 streams a client resets still run in the app, and do not count
                # against the stream limit: without this, one connection could queue work
                # without bound (the "rapid reset" attack, CVE-2023-44487).
                await _answer(send, scope, 503, _BUSY, [(b"retry-after", b"1")])
                return
            extensions = scope.setdefault("extensions", {})
            if self.tls is not None:
                extensions["tls"] = self.tls
            extensions[TIMEOUT_KEY] = self.timeout
            send = self._timed(send)
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
            self.last = self.loop.time()

    def _timed(self, send: Callable[[dict], Awaitable[None]]) -> Callable[[dict], Awaitable[None]]:
        sending, ids, loop = self.sending, self.ids, self.loop

        async def timed_send(message: dict) -> None:
            key = next(ids)
            sending[key] = loop.time()
            try:
                await send(message)
            finally:
                del sending[key]

        return timed_send

    def expired(self, now: float) -> bool:
        """Whether a send has waited, or the connection has gone without a request in the
        app, for longer than the timeout."""
        if self.sending and now - next(iter(self.sending.values())) > self.timeout:
            return True
        return self.active == 0 and now - self.last > self.timeout


_TLS_REQUIRED = json.dumps(
    {
        "error": "invalid_request",
        "error_description": "TLS is required: send the request over HTTPS through the proxy",
    }
).encode()


def _proxied_https(scope: dict[str, Any], trusted: tuple[Network, ...], mode: str) -> bool:
    """On a plain-HTTP connector (its peer is a trusted proxy): whether to answer the request.

    Only a request the proxy says reached it over TLS (X-Forwarded-Proto or Forwarded's
    proto=, RFC 7239 §5.4, whichever ``<TrustedProxies headers=>`` names) is answered in full
    (RFC 6749 §3.2: the token endpoint requires TLS; RFC 7662 §4 and RFC 7009 §5 likewise);
    any other gets only the exact paths of ``PLAIN_HTTP_PATHS`` (probes and /metrics). The
    rule names what is allowed, not what is refused: a path variant that some router might
    map onto an endpoint (``//oauth2/token``) is refused with the rest."""
    refused = plain_http_refused(scope, trusted, mode)
    if forwarded_for(scope["headers"], mode)[1] == "https":
        scope["scheme"] = "https"
    else:
        scope["scheme"] = "http"
    return not refused


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


#: Requests one connection may have in the app at once (HTTP/1.1 has one at most).
MAX_IN_FLIGHT = 32
_BUSY = json.dumps(
    {
        "error": "temporarily_unavailable",
        "error_description": "too many requests in progress on this connection",
    }
).encode()


async def _answer(
    send: Callable,
    scope: dict,
    status: int,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    close: bool = False,
) -> None:
    """Answer a request the app never sees. Connection: close only on HTTP/1.x: HTTP/2 has no
    such field (RFC 9113 §8.2.2), and sending one there is a connection error."""
    metrics().answered_before_app(status, scope.get("path", ""))
    fields = [(b"content-length", b"%d" % len(body)), *(headers or ())]
    if body:
        fields += [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
    if close and scope["http_version"] != "2":
        fields.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": fields})
    await send({"type": "http.response.body", "body": body})


def refused(scope: dict[str, Any]) -> int:
    """The status h11 lets through that the llhttp lane refuses, for one HTTP scope; 0 if none.

    Both lanes hold the head to ``MAX_HEAD_BYTES`` and ``MAX_HEADERS`` (h11 caps only a head
    that has not ended, so a whole one in a single read could be of any size), and both refuse
    an HTTP/1.x request line naming another version (RFC 9110 §15.6.6) and a request with both
    Content-Length and Transfer-Encoding, which h11 passes on.
    Both refuse a fragment in the request target and a Host that is not uri-host [":" port]
    (RFC 9112 §3.2), which h11 lets through. A request target in absolute form (RFC 9112
    §3.2.2) becomes its path, as llhttp reports it.
    """
    version = scope["http_version"]
    if version not in ("1.0", "1.1", "2"):
        return 505
    headers = scope["headers"]
    if len(headers) > MAX_HEADERS:
        return 431
    if b"#" in scope["raw_path"] or b"#" in scope["query_string"]:
        return 400  # RFC 9112 §3.2: a request target has no fragment
    size = len(scope["raw_path"]) + len(scope["query_string"])
    framing = 0
    for name, value in headers:
        size += len(name) + len(value) + 4
        if name == b"host":
            if not valid_host(value):
                return 400  # RFC 9112 §3.2
        elif name == b"content-length":
            framing |= 1
        elif name == b"transfer-encoding":
            framing |= 2
    if version != "2":
        if size > MAX_HEAD_BYTES:
            return 431
        if framing == 3:
            # RFC 9112 §6.1: a server may refuse a request framed both ways and must close the
            # connection after it in any case; h11 reads it chunked and keeps the connection.
            # Refused, as llhttp refuses it: the request smuggling defence.
            return 400
        raw_path = scope["raw_path"]
        if raw_path[:1] != b"/":
            path = urllib.parse.urlsplit(raw_path).path or b"/"
            scope["raw_path"] = path
            scope["path"] = urllib.parse.unquote(path.decode("latin-1"))
    return 0


#: glibc's mallopt parameters (malloc.h).
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8
#: asyncio's TLS read buffer per connection: two full TLS records (RFC 8446 §5.2).
TLS_READ_BUFFER = 32 * 1024


def trim_memory() -> None:
    """Keep the server's resident memory proportional to what it holds, not what it served.

    - asyncio gives every TLS connection a 256 KiB read buffer, zero-filled and so resident
      from the start, and reads each record into a fresh bytes object of that size: idle
      keep-alive connections and slowloris clients cost a quarter of a MiB each. Every read
      returns at most what arrived, and a TLS record holds at most 16 KiB, so a smaller buffer
      loses nothing but a few more reads for large bodies. ``SSLProtocol.max_size`` is the one
      place asyncio (3.11 to 3.13) takes the size from.
    - glibc raises its mmap threshold each time a large block is freed, after which such
      blocks come from the heap, where small objects allocated between them pin the freed
      space. A fixed threshold keeps them in mmap, returned to the kernel when freed; two
      arenas serve the event loop and the maintenance and reload threads.
    """
    from asyncio import sslproto

    if getattr(sslproto.SSLProtocol, "max_size", None) is not None:
        sslproto.SSLProtocol.max_size = TLS_READ_BUFFER
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return  # not glibc
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
    mallopt(_M_ARENA_MAX, 2)


def count_handshakes() -> None:
    """Count TLS handshakes and their failures for /metrics.

    asyncio gives the server no word of a failed handshake (the connection is dropped before
    any protocol of ours sees it), so the count is taken where asyncio completes one, in
    ``SSLProtocol._on_handshake_complete`` (asyncio 3.11 to 3.13); without that method
    the counts stay at zero and serving is unchanged.
    """
    from asyncio import sslproto

    original = getattr(sslproto.SSLProtocol, "_on_handshake_complete", None)
    if original is None or getattr(original, "_tokensmith_counted", False):
        return
    m = metrics()

    def on_handshake_complete(self: Any, handshake_exc: BaseException | None) -> None:
        (m.tls_handshakes if handshake_exc is None else m.tls_failures).inc()
        original(self, handshake_exc)

    on_handshake_complete._tokensmith_counted = True  # type: ignore[attr-defined]
    sslproto.SSLProtocol._on_handshake_complete = on_handshake_complete  # type: ignore[method-assign]


def _tls_arguments(config: Config, connector: Connector) -> dict[str, Any]:
    """``create_server``'s TLS arguments for *connector*: none for a plain-HTTP one."""
    if not connector.ssl_enabled:
        return {}
    return {
        "ssl": server_context(config.server, connector),
        "ssl_handshake_timeout": connector.connection_timeout,
        "ssl_shutdown_timeout": connector.connection_timeout,
    }


_refused_peers = {"count": 0, "logged": 0.0}


def _from_trusted_proxy(writer: asyncio.StreamWriter, trusted: tuple[Any, ...]) -> bool:
    """Whether a plain-HTTP connection's peer is one of the trusted proxies; the others are
    dropped unanswered (RFC 6749 §3.2: no token over plain HTTP), and logged at most once a
    minute, with how many were dropped, so that a scan cannot flood the log."""
    peer = writer.get_extra_info("peername")
    if trusted_peer({"client": peer}, trusted):
        return True
    _refused_peers["count"] += 1
    now = time.monotonic()
    if now - _refused_peers["logged"] >= 60:
        log.warning(
            "plain-HTTP connector: dropped %d connection(s) from peers outside <TrustedProxies>, the last from %s",
            _refused_peers["count"],
            peer[0] if peer else "?",
        )
        _refused_peers["count"], _refused_peers["logged"] = 0, now
    return False


def _hypercorn_config(keep_alive: float = 5.0) -> HypercornConfig:
    hc = HypercornConfig()
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    # Tomcat's keepAliveTimeout defaults to connectionTimeout; so does ours.
    hc.keep_alive_timeout = keep_alive
    hc.ssl_handshake_timeout = 5
    hc.graceful_timeout = 5
    hc.include_server_header = False  # no product and version for scanners
    # HTTP/2 streams a connection may have open at once (RFC 9113 §6.5.2): no more than the
    # requests one connection may have in the app, so that a client keeping to the limit it
    # is told never meets the 503 of MAX_IN_FLIGHT.
    hc.h2_max_concurrent_streams = MAX_IN_FLIGHT
    return hc


def bind(config: Config, copies: int = 1) -> list[list[socket.socket]]:
    """*copies* lists of listening sockets, one socket per connector in order.

    With several copies (``--workers N``: one list per worker) each connector's sockets
    share its address through SO_REUSEPORT, and the kernel spreads new connections over
    them. Workers sharing one socket did not share the load: whichever was idle when the
    connections arrived accepted them all, and kept them (keep-alive).
    """
    many = copies > 1
    lists: list[list[socket.socket]] = [[] for _ in range(copies)]
    connector = None
    try:
        for connector in config.server.connectors:
            family = socket.AF_INET6 if ":" in connector.address else socket.AF_INET
            address: tuple[str, int] = (connector.address, connector.port)
            if many and connector.port:
                _refuse_if_served(family, address)
            for sockets in lists:
                sock = socket.create_server(address, family=family, backlog=1024, reuse_port=many)
                sockets.append(sock)
                address = sock.getsockname()[:2]  # port 0: the copies take the port the first got
    except OSError as exc:
        for sockets in lists:
            for sock in sockets:
                sock.close()
        assert connector is not None
        hint = (
            " (is another server, another tokensmith perhaps, listening there?)"
            if exc.errno == errno.EADDRINUSE
            else ""
        )
        raise ConfigError(
            f"{config.server.path}: cannot listen on {connector.address}:"
            f"{connector.port}: {exc.strerror or exc}{hint}"
        ) from None
    return lists


def _refuse_if_served(family: socket.AddressFamily, address: tuple[str, int]) -> None:
    """Raise EADDRINUSE if something listens on *address* already.

    Sockets that all set SO_REUSEPORT share a port: a second ``serve --workers N`` on the
    same port would start without a word and take part of the first one's connections.
    A probe without SO_REUSEPORT cannot bind where anything listens.
    """
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)


def urls(sockets: list[socket.socket], connectors: tuple[Connector, ...] | None = None) -> list[str]:
    """The URLs of *sockets* (with the real port where the connector said 0): https, or
    http for a plain-HTTP connector among *connectors*."""
    result = []
    for index, sock in enumerate(sockets):
        host, port = sock.getsockname()[:2]
        plain = connectors is not None and not connectors[index].ssl_enabled
        result.append(f"{'http' if plain else 'https'}://{f'[{host}]' if ':' in host else host}:{port}")
    return result


async def serve(
    app: Any,
    config: Config,
    *,
    sockets: list[socket.socket] | None = None,
    ready: Callable[[list[str]], None] | None = None,
    reload: Callable[[], object] | None = None,
    shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
) -> None:
    """Serve *app* on every connector of *config* until SIGINT/SIGTERM or *shutdown_trigger*.

    *sockets* are the connectors' listening sockets (``bind`` makes them when None). *ready*
    is called with the URLs once every socket accepts. On SIGHUP, *reload* runs in a thread,
    one at a time, while requests go on being served.
    """
    trim_memory()
    count_handshakes()
    install_hypercorn_protocols()
    gauge = metrics().connections
    loop = asyncio.get_running_loop()
    hc = _hypercorn_config()
    stop = asyncio.Event()
    if shutdown_trigger is None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
    if reload is not None:
        reload_lock = asyncio.Lock()
        reloads: set[asyncio.Task] = set()

        async def run_reload() -> None:
            async with reload_lock:
                # A daemon thread, not asyncio.to_thread: a reload stuck in a plugin's import
                # must not keep the stopped server from exiting (asyncio.run joins its pool).
                done = loop.create_future()

                def work() -> None:
                    try:
                        reload()
                    finally:
                        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                            loop.call_soon_threadsafe(_resolve, done)

                threading.Thread(target=work, name="tokensmith-reload", daemon=True).start()
                await done

        def on_hangup() -> None:
            task = loop.create_task(run_reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        # `tokensmith serve` holds SIGHUP until now (cli.main): one that came early is
        # delivered to the handler, as a reload.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    if sockets is None:
        sockets = bind(config)[0]

    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(ASGIWrapper(app), hc, loop, lifespan_state)
    lifespan_task = loop.create_task(lifespan.handle_lifespan())
    await lifespan.wait_for_startup()
    if lifespan_task.done() and lifespan_task.exception() is not None:
        raise lifespan_task.exception()  # type: ignore[misc]

    context = WorkerContext(None)
    connections: set[asyncio.Task] = set()
    hypercorn: set[tuple[_Connection, asyncio.StreamWriter]] = set()
    http1: set[Http1Connection] = set()

    async def serve_connection(
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connector_hc: HypercornConfig,
        plain: bool = False,
    ) -> None:
        if plain and not _from_trusted_proxy(writer, config.server.trusted_proxies):
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        task.add_done_callback(connections.discard)
        no_delay(writer.get_extra_info("socket"))
        proxies = (config.server.trusted_proxies, config.server.proxy_headers) if plain else None
        connection = _Connection(app, writer, connector_hc.keep_alive_timeout, loop, proxies)
        hypercorn.add(entry := (connection, writer))
        gauge.inc()
        try:
            await TCPServer(
                ASGIWrapper(connection),  # type: ignore[arg-type]  # Hypercorn types its scopes as TypedDicts
                loop,
                connector_hc,
                context,
                lifespan_state,
                reader,
                writer,
            )
        except* OSError:
            # The client went away, or closed TLS while data was in flight (Hypercorn's close
            # lets ssl.SSLError through): nothing to report, the connection is over anyway.
            pass
        finally:
            hypercorn.discard(entry)
            gauge.dec()

    async def watchdog() -> None:
        period = min(1.0, min(c.connection_timeout for c in config.server.connectors) / 2)
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for connection, writer in list(hypercorn):
                if connection.expired(now) and not writer.is_closing():
                    writer.transport.abort()

    def hypercorn_protocol(
        connector_hc: HypercornConfig, plain: bool = False
    ) -> asyncio.StreamReaderProtocol:
        # What asyncio.start_server makes for each connection, with our callback.
        return asyncio.StreamReaderProtocol(
            asyncio.StreamReader(loop=loop),
            functools.partial(serve_connection, connector_hc=connector_hc, plain=plain),
            loop=loop,
        )

    def to_hypercorn(transport: asyncio.BaseTransport, connector_hc: HypercornConfig) -> None:
        # An HTTP/2 connection on an llhttp connector, handed over after the handshake.
        protocol = hypercorn_protocol(connector_hc)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)

    def connection_factory(connector: Connector) -> Callable[[], asyncio.Protocol]:
        connector_hc = _hypercorn_config(keep_alive=connector.connection_timeout)
        if not connector.ssl_enabled:
            # Behind a TLS-terminating proxy: Hypercorn's HTTP/1.1 (and h2c), whatever http1 says.
            return functools.partial(hypercorn_protocol, connector_hc, True)
        if connector.http1 != "llhttp":
            return functools.partial(hypercorn_protocol, connector_hc)
        hand_over = functools.partial(to_hypercorn, connector_hc=connector_hc)

        def make() -> Http1Connection:
            return Http1Connection(
                app,
                timeout=connector.connection_timeout,
                tls=tls_extension,
                hand_over=hand_over,
                connections=http1,
                state=lifespan_state,
                loop=loop,
            )

        return make

    servers: list[asyncio.Server] = []
    sweeper = loop.create_task(watchdog())
    try:
        for connector, sock in zip(config.server.connectors, sockets):
            servers.append(
                await loop.create_server(
                    connection_factory(connector),
                    sock=sock,
                    **_tls_arguments(config, connector),
                )
            )
        extensions = getattr(app, "extensions", None)
        if isinstance(extensions, dict):
            extensions[BOUND_URLS] = urls(sockets)  # for the metadata's issuer
        if ready is not None:
            ready(urls(sockets, config.server.connectors))
        await (shutdown_trigger() if shutdown_trigger is not None else stop.wait())
    finally:
        sweeper.cancel()
        await context.terminated.set()
        for server in servers:
            server.close()
        # Requests being answered finish; idle connections get a TLS close_notify but no
        # wait for the client's: a client that never reads must not hold up the stop.
        for http1_connection in list(http1):
            http1_connection.shutdown()
        deadline = loop.time() + hc.graceful_timeout
        while (any(c.busy for c in http1) or any(c.active for c, _ in hypercorn)) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for http1_connection in list(http1):
            http1_connection.transport.abort()
        for _, writer in list(hypercorn):
            writer.transport.abort()
        if connections:
            await asyncio.wait(connections, timeout=hc.graceful_timeout)
        for task in connections:
            task.cancel()
        await lifespan.wait_for_shutdown()
        lifespan_task.cancel()
        try:
            await lifespan_task
        except asyncio.CancelledError:
            pass
