"""HTTP/1.1 on the HTTPS connectors that ask for it: an ASGI server protocol over asyncio's TLS
transport, opted into per connector with ``http1="llhttp"``.

Hypercorn (h11) serves HTTP/1.1 by default, and HTTP/2 always (``server.py`` hands every
connection that negotiated ``h2`` to it). This lane parses with llhttp (through ``httptools``)
and calls the ASGI app from one ``asyncio.Protocol`` per connection, with no task group, h11
events or per-request timers: much less CPU per request than Hypercorn's HTTP/1.1 path
(docs/benchmarks.md has the figures). What it trades is a second HTTP/1.1 implementation to
keep right, so it is held to Hypercorn's behaviour by a differential test
(tests/http/test_lanes.py) over one corpus of requests; the differences that remain are listed there,
each with its reason. It keeps what the token endpoint needs of a server:

- keep-alive and pipelining (requests answered in order; reading pauses past ``_MAX_PIPELINE``
  queued requests, the input being parsed in slices so that one large read cannot queue
  more), ``Connection: close`` and HTTP/1.0 (RFC 9112 §9);
- request bodies by ``Content-Length`` or chunked, trailer fields dropped (RFC 9110 §6.5.1: none
  of ours may be merged into the header section), ``Expect: 100-continue`` for HTTP/1.1 only
  (RFC 9110 §10.1.1), and a connection closed after a response sent before its request body
  ended;
- what h11 refuses, refused alike: versions other than 1.0 and 1.1, a missing or repeated Host
  (RFC 9112 §3.2), transfer codings other than chunked (501, RFC 9112 §6.1), malformed heads and
  chunks (400), upgrades; plus limits: the request line and headers together at most
  ``MAX_HEAD_BYTES`` and at most ``MAX_HEADERS`` fields (431, RFC 6585 §5), which server.py
  applies on Hypercorn's lane too;
- deadlines, each the connector's ``connectionTimeout`` (Tomcat's keepAliveTimeout defaults
  to it too): for a request's head from its first byte (slowloris), for the next request on
  an idle connection, and for every write that waits for a client that does not read; the app
  enforces the body deadline (``scope.TIMEOUT_KEY``).

Every scope carries the ASGI TLS extension of its connection, as server.py's adapter does
for Hypercorn.
"""

from __future__ import annotations

import asyncio
import collections
import http
import logging
import re
import socket
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote

import httptools

from tokensmith.errors import RequestRefused
from tokensmith.metrics import metrics
from tokensmith.scope import TIMEOUT_KEY

__all__ = ["Http1Connection", "no_delay", "valid_host", "MAX_HEAD_BYTES", "MAX_HEADERS"]

log = logging.getLogger("tokensmith.http.server")

#: The request line and header fields of one request, in bytes (h11 and Hypercorn: 16 KiB).
MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 100
#: Requests read ahead of the one being answered before reading pauses.
_MAX_PIPELINE = 8
#: Request body bytes buffered ahead of the app before reading pauses.
_MAX_BUFFERED_BODY = 256 * 1024
#: Input is parsed this many bytes at a time, so that reading can pause between requests: a
#: read holding thousands of small pipelined requests queues at most a slice's worth more.
_SLICE = 4096

#: RFC 9112 §3.2: Host is uri-host [ ":" port ] (RFC 3986 §3.2.2), or empty.
_HOST = re.compile(rb"(?:\[[0-9A-Za-z:.!$&'()*+,;=_~-]*\]|[0-9A-Za-z.!$&'()*+,;=_~%-]*)(?::[0-9]*)?")


def valid_host(value: bytes) -> bool:
    """Whether a Host field value is one RFC 9112 §3.2 allows (anything else is 400)."""
    return _HOST.fullmatch(value) is not None


_STATUS_LINES = {int(s): f"HTTP/1.1 {int(s)} {s.phrase}\r\n".encode() for s in http.HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_ASGI = {"version": "3.0", "spec_version": "2.3"}


_now_date: list[Any] = [0, b""]


def _date() -> bytes:
    """The Date header's value (RFC 9110 §6.6.1), formatted once a second."""
    now = int(time.time())
    if now != _now_date[0]:
        _now_date[0], _now_date[1] = now, formatdate(now, usegmt=True).encode()
    return _now_date[1]


def refusal_response(status: int) -> bytes:
    """What Hypercorn's h11 lane answers a request it cannot serve: the status, no body, close;
    counted in /metrics as the app's answers are."""
    metrics().answered_before_app(status)
    return b"".join(
        [
            _STATUS_LINES.get(status, b"HTTP/1.1 %d \r\n" % status),
            b"date: ",
            _date(),
            b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        ]
    )


def no_delay(sock: Any) -> None:
    """Turn Nagle's algorithm off on an accepted connection.

    asyncio does it only for sockets whose proto is IPPROTO_TCP, and sockets accepted from
    socket.create_server's have proto 0. Without it, Nagle holds the second write of every
    response (Hypercorn writes headers, then body) until the client's delayed ACK, so each
    keep-alive request waits for a timer instead of the work (docs/benchmarks.md).
    """
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Exchange:
    """One request and its response: the ASGI ``receive`` and ``send`` of one scope."""

    __slots__ = (
        "conn",
        "scope",
        "chunks",
        "buffered",
        "complete",
        "body_sent",
        "waiter",
        "broken",
        "keep_alive",
        "expect_continue",
        "head_only",
        "http10",
        "started",
        "finished",
        "chunked",
        "pending",
        "dropped",
    )

    def __init__(self, conn: Http1Connection, scope: dict[str, Any], keep_alive: bool, expect_continue: bool):
        self.conn = conn
        self.scope = scope
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.complete = False
        self.body_sent = False
        self.waiter: asyncio.Future[None] | None = None
        self.broken = False  # the rest of the body cannot be read (it was malformed)
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.head_only = scope["method"] == "HEAD"
        self.http10 = scope["http_version"] == "1.0"
        self.started = self.finished = self.chunked = self.dropped = False
        self.pending = b""

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def receive(self) -> dict[str, Any]:
        conn = self.conn
        while True:
            if self.chunks:
                body = b"".join(self.chunks) if len(self.chunks) > 1 else self.chunks[0]
                self.chunks.clear()
                self.buffered = 0
                self.body_sent = self.complete
                conn.maybe_resume()
                return {"type": "http.request", "body": body, "more_body": not self.complete}
            if self.complete and not self.body_sent:
                self.body_sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            if conn.lost or self.broken or (self.body_sent and self.finished):
                return {"type": "http.disconnect"}
            if self.expect_continue and not self.started:
                self.expect_continue = False
                conn.transport.write(_CONTINUE)
            self.waiter = conn.loop.create_future()
            await self.waiter
            self.waiter = None

    async def send(self, message: dict[str, Any]) -> None:
        if self.dropped:
            return  # the request was refused on the wire; the app's answer goes nowhere
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.started = True
            self.pending = self._head(message["status"], message.get("headers") or ())
        elif kind == "http.response.body":
            if not self.started or self.finished:
                raise RuntimeError("http.response.body out of order")
            body = message.get("body", b"")
            more = message.get("more_body", False)
            if self.head_only:
                body = b""
            elif self.chunked and body:
                body = b"%x\r\n%b\r\n" % (len(body), body)
            data = self.pending + body if self.pending else body
            self.pending = b""
            if not more:
                self.finished = True
                if self.chunked:
                    data += b"0\r\n\r\n"
                self.wake()  # a receive() waiting for the disconnect ends now
            conn = self.conn
            if conn.lost:
                return
            if data:
                conn.transport.write(data)
            if conn.write_paused:
                await conn.drain()
        # Other message types (extensions this server does not offer) are ignored.

    def _head(self, status: int, headers: Any) -> bytes:
        lines = [_STATUS_LINES.get(status, b"HTTP/1.1 %d \r\n" % status), b"date: ", _date(), b"\r\n"]
        length = False
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-length":
                length = True
            elif lower == b"connection":
                if b"close" in value.lower():
                    self.keep_alive = False
                continue  # written below, from what this connection will do
            elif lower in (b"transfer-encoding", b"date"):
                continue
            lines += [name, b": ", value, b"\r\n"]
        bodiless = self.head_only or status in (204, 304) or 100 <= status < 200
        if not length and not bodiless:
            if self.http10:
                self.keep_alive = False  # the body ends when the connection does
            else:
                self.chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
        if not self.complete:
            # The response goes out before the request body ended: what follows on the
            # connection cannot be trusted to be a request (RFC 9112 §9.6).
            self.keep_alive = False
        if not self.keep_alive or self.conn.draining:
            self.keep_alive = False
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)


class Http1Connection(asyncio.Protocol):
    """One HTTP/1.1 connection, after its TLS handshake.

    *tls* maps the transport's ``ssl_object`` to the scope's TLS extension. *hand_over*, if
    given, is called instead for a connection that negotiated ``h2`` (ALPN) and takes the
    transport over. *connections* holds every open connection, for a graceful shutdown.
    """

    def __init__(
        self,
        app: Callable[..., Any],
        *,
        timeout: float,
        tls: Callable[[Any], dict[str, Any] | None],
        hand_over: Callable[[asyncio.BaseTransport], None] | None,
        connections: set[Http1Connection],
        state: dict[str, Any],
        loop: asyncio.AbstractEventLoop,
    ):
        self.app = app
        self.timeout = timeout
        self.tls_of = tls
        self.hand_over = hand_over
        self.connections = connections
        self.state = state
        self.loop = loop
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: collections.deque[_Exchange] = collections.deque()
        self.lost = self.closing = self.draining = False
        self.write_paused = self.read_paused = False
        self.in_head = self.began = False
        self.backlog = b""
        #: A status to answer once the requests read before a malformed one are answered.
        self.refusal_after = 0
        #: Inside a chunked body, between chunk data: a chunk-size line or the trailer section,
        #: and the raw bytes read since the last chunk data (bounded as a head is).
        self.tail = False
        self.tail_bytes = 0
        self.head_bytes = self.raw_head_bytes = 0
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.drained: asyncio.Future[None] | None = None
        self.extensions: dict[str, Any] = {}
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None

    # -- the transport's side --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        no_delay(transport.get_extra_info("socket"))
        ssl_object = transport.get_extra_info("ssl_object")
        if (
            self.hand_over is not None
            and ssl_object is not None
            and ssl_object.selected_alpn_protocol() == "h2"
        ):
            self.hand_over(transport)
            return
        self.transport = transport
        self.connections.add(self)
        metrics().connections.inc()
        tls = self.tls_of(ssl_object)
        self.extensions = (
            {TIMEOUT_KEY: self.timeout} if tls is None else {"tls": tls, TIMEOUT_KEY: self.timeout}
        )
        peer = transport.get_extra_info("peername")
        self.client = (peer[0], peer[1]) if isinstance(peer, tuple) else None
        sock = transport.get_extra_info("sockname")
        self.server = (sock[0], sock[1]) if isinstance(sock, tuple) else None
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.backlog:
            self.backlog += data
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Parse *data* a slice at a time, keeping what is left once reading pauses."""
        start = 0
        try:
            while start < len(data):
                if self.read_paused:
                    self.backlog = data[start:]
                    return
                piece = data[start : start + _SLICE]
                start += len(piece)
                self.began = False
                self.parser.feed_data(piece)
                if self.tail:
                    # Chunk-size lines and trailers are held by llhttp until they end, as an
                    # unfinished header field is; h11 bounds them as it bounds a head.
                    self.tail_bytes += len(piece)
                    if self.tail_bytes > MAX_HEAD_BYTES + _SLICE:
                        raise RequestRefused(431, "the chunk lines or trailer fields are too large")
                if self.in_head and not self.began:
                    # httptools holds an unfinished header field until its end arrives, which
                    # the callbacks' count cannot see: count the bytes of an unfinished head,
                    # from the first slice after the one it began in (that one's callbacks
                    # counted what it held of the head, up to a slice's worth of slack).
                    self.raw_head_bytes += len(piece)
                    if self.raw_head_bytes > MAX_HEAD_BYTES:
                        raise RequestRefused(431, "the request header fields are too large")
        except RequestRefused as refusal:
            self._refuse(refusal)
        except httptools.HttpParserUpgrade:
            self._refuse(RequestRefused(400, "protocol upgrades are not supported"))
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if not isinstance(cause, RequestRefused):
                version = "HTTP version" in str(exc)  # h11 answers an unknown version 505 too
                cause = (
                    RequestRefused(505, "unsupported HTTP version")
                    if version
                    else RequestRefused(400, "malformed HTTP request")
                )
            self._refuse(cause)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = self.closing = True
        if self in self.connections:
            self.connections.discard(self)
            metrics().connections.dec()
        if self.timer is not None:
            self.timer.cancel()
        # The parser and the transport refer back to this protocol: left in place, every
        # closed connection (with asyncio's 256 KiB TLS read buffer) waited for a full cyclic
        # garbage collection, and RSS grew with the connections served, not those open.
        self.parser = self.transport = None  # type: ignore[assignment]
        for exchange in self.queue:
            exchange.wake()
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    async def drain(self) -> None:
        """Wait until the client has taken enough of what was written, for connectionTimeout
        at most: a client that does not read its responses loses the connection."""
        if self.write_paused and not self.lost:
            self.drained = self.loop.create_future()
            try:
                async with asyncio.timeout(self.timeout):
                    await self.drained
            except TimeoutError:
                self.closing = True
                if self.transport is not None:
                    self.transport.abort()

    # -- the parser's callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_head = self.began = True
        self.head_bytes = self.raw_head_bytes = 0
        self.url = b""
        self.headers = []
        if not self.queue:
            self._arm()  # the head must arrive within connectionTimeout of its first byte

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:
            # A trailer field (llhttp reports them through this callback too). RFC 9110
            # §6.5.1: trailers must not be merged into the header section unless the field
            # allows it, and none that we read does; the app never sees them, as with h11.
            self.tail_bytes += len(name) + len(value) + 4
            if self.tail_bytes > MAX_HEAD_BYTES:
                raise RequestRefused(431, "the trailer fields are too large")
            return
        self.headers.append((name.lower(), value))
        self._count(len(name) + len(value) + 4)
        if len(self.headers) > MAX_HEADERS:
            raise RequestRefused(431, "too many request header fields")

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self.parser
        if parser.should_upgrade():
            raise RequestRefused(400, "protocol upgrades are not supported")
        try:
            url = httptools.parse_url(self.url)
        except httptools.HttpParserInvalidURLError:
            raise RequestRefused(400, "malformed request target") from None
        raw_path = url.path or b"/"
        method = parser.get_method().decode("ascii")
        version = parser.get_http_version()
        if version not in ("1.0", "1.1"):
            # HTTP/0.9's bare request line is malformed to h11; another version in an
            # HTTP/1.x request line is one this lane does not speak (RFC 9110 §15.6.6).
            raise RequestRefused(400 if version == "0.9" else 505, "unsupported HTTP version")
        headers = self.headers
        if url.fragment is not None:
            raise RequestRefused(400, "a request target has no fragment")  # RFC 9112 §3.2
        hosts = 0
        expect = False
        for name, value in headers:
            if name == b"host":
                hosts += 1
                if not valid_host(value):
                    raise RequestRefused(400, "the Host field is not a host")
            elif name == b"upgrade":
                # No upgrade is served, and Hypercorn's lane refuses any too (see
                # hypercorn_protocols): RFC 9110 §7.8 lets a server refuse one.
                raise RequestRefused(400, "protocol upgrades are not supported")
            elif name == b"expect":
                expect = value.lower() == b"100-continue" and version == "1.1"
            elif name == b"transfer-encoding":
                if value.strip().lower() != b"chunked":
                    # RFC 9112 §6.1: a coding the server does not understand is 501, as h11 does.
                    raise RequestRefused(501, "unsupported transfer coding")
                self.tail, self.tail_bytes = True, 0  # the first chunk-size line comes next
        if hosts > 1 or (hosts == 0 and version == "1.1"):
            raise RequestRefused(400, "a request needs exactly one Host field")  # RFC 9112 §3.2
        scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": version,
            "method": method,
            "scheme": "https",
            "path": unquote(raw_path.decode("latin-1")),
            "raw_path": raw_path,
            "query_string": url.query or b"",
            "root_path": "",
            "headers": headers,
            "client": self.client,
            "server": self.server,
            "extensions": self.extensions,
        }
        if self.state:
            scope["state"] = dict(self.state)
        keep_alive = parser.should_keep_alive() and version != "1.0" and not self.draining
        exchange = _Exchange(self, scope, keep_alive, expect)
        self.queue.append(exchange)
        if len(self.queue) == 1:
            self._disarm()
            self.loop.create_task(self._run(exchange))
        elif len(self.queue) > _MAX_PIPELINE:
            self._pause()

    def on_chunk_complete(self) -> None:
        self.tail = True

    def on_body(self, body: bytes) -> None:
        self.tail = False
        self.tail_bytes = 0
        exchange = self.queue[-1]
        exchange.chunks.append(body)
        exchange.buffered += len(body)
        if exchange.buffered > _MAX_BUFFERED_BODY:
            self._pause()
        exchange.wake()

    def on_message_complete(self) -> None:
        self.tail = False
        self.tail_bytes = 0
        exchange = self.queue[-1]
        exchange.complete = True
        exchange.wake()

    # -- running the app -------------------------------------------------------------------

    async def _run(self, exchange: _Exchange) -> None:
        try:
            await self.app(exchange.scope, exchange.receive, exchange.send)
        except Exception:
            log.exception("unexpected error serving %s %s", exchange.scope["method"], exchange.scope["path"])
            if not exchange.started and not self.lost:
                exchange.keep_alive = False  # as Hypercorn: an empty 500, then close
                await exchange.send(
                    {"type": "http.response.start", "status": 500, "headers": [(b"content-length", b"0")]}
                )
                await exchange.send({"type": "http.response.body", "body": b""})
        finally:
            self._finished(exchange)

    def _finished(self, exchange: _Exchange) -> None:
        self.queue.popleft()
        if self.lost:
            return
        if not exchange.finished:
            exchange.keep_alive = False  # the app returned in the middle of a response
        if not exchange.keep_alive or (self.closing and not self.queue):
            if exchange.keep_alive and self.refusal_after:
                # h11 reads the next request only now, and answers it with the refusal.
                self.transport.write(refusal_response(self.refusal_after))
            self.closing = True
            self.transport.close()
            return
        if self.queue:
            self.loop.create_task(self._run(self.queue[0]))
        else:
            self._arm()
        self.maybe_resume()

    @property
    def busy(self) -> bool:
        """Whether a request is being answered or waits to be."""
        return bool(self.queue) and not self.lost

    def shutdown(self) -> None:
        """Finish the request being answered, if any, and close."""
        self.draining = True
        if not self.queue and not self.lost:
            self.closing = True
            self.transport.close()

    # -- flow control, deadlines, refusals -------------------------------------------------

    def _pause(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def maybe_resume(self) -> None:
        if (
            self.read_paused
            and not self.closing
            and len(self.queue) <= _MAX_PIPELINE
            and all(e.buffered <= _MAX_BUFFERED_BODY for e in self.queue)
        ):
            self.read_paused = False
            self.transport.resume_reading()
            if self.backlog:
                backlog, self.backlog = self.backlog, b""
                self._feed(backlog)

    def _count(self, size: int) -> None:
        self.head_bytes += size
        if self.head_bytes > MAX_HEAD_BYTES:
            raise RequestRefused(431, "the request header fields are too large")

    def _arm(self) -> None:
        # One timer per connection, moved by setting the deadline: the hot path only
        # assigns a float, and the timer re-arms itself when it fires early.
        self.deadline = self.loop.time() + self.timeout
        if self.timer is None:
            self.timer = self.loop.call_at(self.deadline, self._expire)

    def _disarm(self) -> None:
        self.deadline = 0.0

    def _expire(self) -> None:
        self.timer = None
        if self.lost or not self.deadline:
            return
        if self.loop.time() < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._expire)
            return
        # Idle too long between requests, or a request head that never completes.
        self.closing = True
        self.transport.abort()

    def _refuse(self, refusal: RequestRefused) -> None:
        self.closing = True
        self._pause()
        self.backlog = b""
        if self.queue:
            # The requests read before the bad one are answered, then the connection closes
            # (see _finished). One whose body was malformed is answered with the refusal
            # if its response has not started (what h11 does), and the app sees the client go.
            last = self.queue[-1]
            if not last.complete:
                if last is self.queue[0]:
                    last.broken = True
                    if not last.started:
                        last.dropped = True
                        self.transport.write(refusal_response(refusal.status))
                        self.transport.close()
                    last.wake()
                else:
                    self.queue.pop()
                    self.refusal_after = refusal.status
            else:
                self.refusal_after = refusal.status
            return
        self._disarm()
        self.transport.write(refusal_response(refusal.status))
        self.transport.close()
