"""Serving the app over HTTPS, one TLS context per connector.

Hypercorn's own ``serve`` gives every socket the same ``SSLContext`` and does not put the
client certificate into the ASGI scope (its issues #62 and #324). This module starts one
``asyncio`` server per ``<Connector>`` with that connector's context. Each connection starts
as an ``http1.Http1Connection``, which serves HTTP/1.1 itself; one that negotiated ``h2``
is handed to Hypercorn's ``TCPServer`` (the per-connection protocol driver, tested with
Hypercorn 0.18), with the app wrapped so that every HTTP scope of the connection carries
the ASGI TLS extension: ``scope["extensions"]["tls"]["client_cert_chain"]``, PEM, leaf first.
Hypercorn also runs the app's lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import signal
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.lifespan import Lifespan
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config as HypercornConfig

from .asgi import DER_KEY, TIMEOUT_KEY
from .config import Config
from .http1 import Http1Connection, no_delay
from .tls_accept import peer_certificate_chain
from .tlsconf import server_context
from .xmlconf import ConfigError

__all__ = ["serve", "bind", "urls", "no_delay", "tls_extension"]

log = logging.getLogger("tokensmith.server")

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
    """The app as one connection sees it, and a watchdog for requests that never complete.

    Every HTTP scope of the connection gets the connection's TLS details and timeout.
    Hypercorn closes connections idle between requests (keep-alive) and times reads out,
    but a client that trickles a request's headers a byte at a time (slowloris) is never
    idle and never finishes: the watchdog aborts a connection on which no request has
    reached the app for ``timeout`` seconds while none is being served.
    """

    __slots__ = ("app", "tls", "timeout", "active", "last", "loop")

    def __init__(self, app: Any, tls: dict[str, Any] | None, timeout: float,
                 loop: asyncio.AbstractEventLoop):
        self.app, self.tls, self.timeout, self.loop = app, tls, timeout, loop
        self.active = 0
        self.last = loop.time()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] in ("http", "websocket"):
            extensions = scope.setdefault("extensions", {})
            if self.tls is not None:
                extensions["tls"] = self.tls
            extensions[TIMEOUT_KEY] = self.timeout
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
            self.last = self.loop.time()

    async def watch(self, writer: asyncio.StreamWriter) -> None:
        while not writer.is_closing():
            await asyncio.sleep(min(1.0, self.timeout / 2))
            if self.active == 0 and self.loop.time() - self.last > self.timeout:
                writer.transport.abort()
                return


def _hypercorn_config() -> HypercornConfig:
    hc = HypercornConfig()
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.keep_alive_timeout = 5
    hc.ssl_handshake_timeout = 5
    hc.graceful_timeout = 5
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
        hint = " (is another server, another tokensmith perhaps, listening there?)" \
            if exc.errno == errno.EADDRINUSE else ""
        raise ConfigError(f"{config.server.path}: cannot listen on {connector.address}:"
                          f"{connector.port}: {exc.strerror or exc}{hint}") from None
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


def urls(sockets: list[socket.socket]) -> list[str]:
    """The https URLs of *sockets* (with the real port where the connector said 0)."""
    result = []
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        result.append(f"https://{f'[{host}]' if ':' in host else host}:{port}")
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
                            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

                threading.Thread(target=work, name="tokensmith-reload", daemon=True).start()
                await done

        def on_hangup() -> None:
            task = loop.create_task(run_reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hangup)
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
    http1: set[Http1Connection] = set()

    async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                               timeout: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        task.add_done_callback(connections.discard)
        connection = _Connection(app, tls_extension(writer.get_extra_info("ssl_object")), timeout, loop)
        watchdog = loop.create_task(connection.watch(writer))
        try:
            await TCPServer(ASGIWrapper(connection), loop, hc, context, lifespan_state, reader, writer)
        finally:
            watchdog.cancel()

    def to_hypercorn(transport: asyncio.BaseTransport, timeout: float) -> None:
        # An HTTP/2 connection: the same streams asyncio.start_server would have made.
        reader = asyncio.StreamReader(loop=loop)
        protocol = asyncio.StreamReaderProtocol(
            reader, functools.partial(serve_connection, timeout=timeout), loop=loop)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)

    def connection_factory(timeout: float) -> Callable[[], Http1Connection]:
        hand_over = functools.partial(to_hypercorn, timeout=timeout)

        def make() -> Http1Connection:
            return Http1Connection(app, timeout=timeout, tls=tls_extension, hand_over=hand_over,
                                   connections=http1, state=lifespan_state, loop=loop)
        return make

    servers: list[asyncio.Server] = []
    try:
        for connector, sock in zip(config.server.connectors, sockets):
            servers.append(await loop.create_server(
                connection_factory(connector.connection_timeout),
                sock=sock,
                ssl=server_context(config.server, connector),
                ssl_handshake_timeout=connector.connection_timeout,
                ssl_shutdown_timeout=connector.connection_timeout,
            ))
        extensions = getattr(app, "extensions", None)
        if isinstance(extensions, dict):
            extensions["tokensmith.urls"] = urls(sockets)  # for the metadata's issuer
        if ready is not None:
            ready(urls(sockets))
        await (shutdown_trigger() if shutdown_trigger is not None else stop.wait())
    finally:
        await context.terminated.set()
        for server in servers:
            server.close()
        # Requests being answered finish; idle connections get a TLS close_notify but no
        # wait for the client's: a client that never reads must not hold up the stop.
        for http1_connection in list(http1):
            http1_connection.shutdown()
        deadline = loop.time() + hc.graceful_timeout
        while any(c.busy for c in http1) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for http1_connection in list(http1):
            http1_connection.transport.abort()
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
