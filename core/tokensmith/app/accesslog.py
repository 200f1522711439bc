"""The access log and request ids: ASGI middleware in front of the whole app.

Both HTTP/1.1 lanes (Hypercorn's h11 and the llhttp lane) and HTTP/2 call the same ASGI app,
so one middleware here sees every request the app answers, whichever lane carried it. It

- gives every request an id: the ``X-Request-Id`` a trusted proxy sent, else a new one, and
  echoes it in the response's ``X-Request-Id``;
- writes one line per request (``<AccessLog>`` in server.xml): JSON by default, or Apache's
  common log format with the request id and duration after it;
- counts requests and their durations for ``/metrics``, and the tokens issued.

A line holds the time, request id, peer address (and the address a trusted proxy says it
forwarded for), method, path, status, bytes sent, duration, HTTP and TLS version, whether the
handshake carried a client certificate and its SHA-256, and, when the endpoint knew them,
the authenticated client_id, its authentication method, the grant type and why the request
was refused. Never a query string (a client may put a secret there, which the endpoints then
refuse), a header value, a body, a secret, token, assertion, password or code.

``refused`` logs each 400/401 at the OAuth endpoints once, at INFO on the
``tokensmith.refusals`` logger, with the request id, a reason code and words
(``OAuth2Error.reason`` and ``.detail``). The client's answer is the RFC 6749 §5.2 error
alone; the words are for the operator.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import json
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from tokensmith.config.settings import AccessLogSettings, Network
from tokensmith.errors import InvalidClientError, InvalidRequestError, OAuth2Error, RequestRefused
from tokensmith.http.proxies import forwarded_for, trusted_peer
from tokensmith.metrics import ENDPOINTS, endpoint_label, metrics
from tokensmith.scope import CLIENT_ADDRESS, DER_KEY, RECORD

__all__ = ["AccessLog", "refused", "request_id"]

_TLS_NAMES = {0x0303: "TLSv1.2", 0x0304: "TLSv1.3"}
#: A request id a proxy may set: what common proxies and tracing systems generate (UUIDs,
#: hex, base64url), bounded, with nothing that could break a log line.
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:+/=-]{1,128}")
_DIGEST = "tokensmith.client_cert_sha256"

log = logging.getLogger("tokensmith.access")
refusals = logging.getLogger("tokensmith.refusals")


def request_id(scope: Mapping[str, Any]) -> str | None:
    record = scope.get(RECORD)
    return record.get("request_id") if record is not None else None


def _printable(value: object) -> str:
    """*value* for a log line: no control characters (a client chose it), and not too long."""
    text = "".join(ch if ch.isprintable() else "?" for ch in str(value))
    return text if len(text) <= 200 else text[:200] + "..."


_REFUSED_CODES = {408: "body_timeout", 413: "body_too_large"}


def refused(
    scope: Mapping[str, Any], status: int, error: BaseException, client_id: str | None = None
) -> None:
    """Log once that the request of *scope* was refused with *error*, and why."""
    if status >= 500:
        return  # server errors are logged where they happen, with their traceback
    if isinstance(error, RequestRefused):
        error = InvalidRequestError(error.reason, reason=_REFUSED_CODES.get(status, "request_refused"))
    if not isinstance(error, OAuth2Error):
        return
    record: MutableMapping[str, Any] | None = scope.get(RECORD)
    if record is not None:
        if record.get("reason"):
            return
        record["reason"] = error.reason
        client_id = client_id or record.get("client_id") or record.get("claimed_client_id")
    endpoint = endpoint_label(scope.get("path", ""))
    m = metrics()
    m.refusals.labels(endpoint, error.error).inc()
    if isinstance(error, InvalidClientError):
        m.auth_failures.labels(error.reason).inc()
    client = scope.get("client")
    refusals.info(
        "refused %d %s at %s [request_id=%s client_id=%s remote=%s] %s: %s",
        status,
        error.error,
        endpoint,
        request_id(scope) or "-",
        _printable(client_id) if client_id else "-",
        client[0] if client else "-",
        error.reason,
        _printable(error.detail),
    )


class _Writer:
    """Appends log lines to a file (or stderr), a block at a time.

    Lines are gathered and written together at most ``FLUSH_INTERVAL`` seconds after the
    first of them, or as soon as ``FLUSH_BYTES`` are waiting, in one ``write`` on a file
    opened for appending: a write per request cost more than the rest of the log line, and
    several workers appending whole blocks to one file never split each other's lines. A
    file moved away (logrotate) is noticed at the next block, which goes to a new file of
    the same name. What a crash loses is the last fraction of a second.
    """

    def __init__(self, path: Path | None):
        self.path = path
        self.fd = -1
        self.inode: tuple[int, int] | None = None
        self.lines: list[str] = []
        self.size = 0
        self.timer: asyncio.TimerHandle | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._open()

    def _open(self) -> None:
        assert self.path is not None
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        status = os.fstat(self.fd)
        self.inode = (status.st_dev, status.st_ino)

    def write(self, line: str) -> None:
        self.lines.append(line)
        self.size += len(line)
        if self.size >= FLUSH_BYTES:
            self.flush()
        elif self.timer is None:
            try:
                self.timer = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self.flush)
            except RuntimeError:  # no loop: write now
                self.flush()

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.lines:
            return
        block = ("\n".join(self.lines) + "\n").encode("utf-8", "backslashreplace")
        self.lines, self.size = [], 0
        try:
            if self.path is None:
                os.write(sys.stderr.fileno(), block)
                return
            self._reopen_if_moved()
            os.write(self.fd, block)
        except OSError as exc:
            log.warning("access log: %s: %s", self.path or "stderr", exc.strerror or exc)

    def _reopen_if_moved(self) -> None:
        """Open the file again when it was moved away, or when an earlier reopen failed.

        The old descriptor is forgotten before it is closed: the kernel hands its number to
        the next socket or file, and a descriptor kept after close would write the log into
        a client's connection. While the file cannot be opened (its directory moved too),
        ``fd`` stays -1 and each block tries again.
        """
        assert self.path is not None
        try:
            status = os.stat(self.path)
            moved = self.fd < 0 or (status.st_dev, status.st_ino) != self.inode
        except OSError:
            moved = True
        if moved:
            fd, self.fd, self.inode = self.fd, -1, None
            if fd >= 0:
                os.close(fd)
            self._open()

    def close(self) -> None:
        self.flush()
        fd, self.fd = self.fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError as exc:  # shutting down: say so, and let the rest shut down
                log.warning("access log: %s: %s", self.path, exc.strerror or exc)


#: Seconds a log line may wait to be written with others, and the bytes that are written at once.
FLUSH_INTERVAL = 0.2
FLUSH_BYTES = 64 * 1024


@functools.lru_cache(maxsize=4096)
def _json_text(value: str) -> str:
    """A JSON string literal; the same few paths and client ids recur, so they are cached."""
    return json.dumps(value, ensure_ascii=True)


class _Clock:
    """The time of a log line, formatted once per second."""

    def __init__(self, fmt: Callable[[float], str]):
        self.fmt, self.second, self.text = fmt, -1, ""

    def __call__(self, now: float) -> str:
        second = int(now)
        if second != self.second:
            self.second, self.text = second, self.fmt(second)
        return self.text


def _iso(second: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def _clf_time(second: float) -> str:
    return time.strftime("[%d/%b/%Y:%H:%M:%S +0000]", time.gmtime(second))


_CLF_PLAIN = re.compile(r"[\x20-\x21\x23-\x5b\x5d-\x7e]*")


def _clf_field(text: str) -> str:
    """An unquoted field of the common format: escaped as ``_clf_escape`` does, and no space,
    so that no value can add a field of its own."""
    return _clf_escape(text).replace(" ", "\\x20")


def _clf_escape(text: str) -> str:
    """Apache's escaping for a quoted field: no quote, backslash or control character (DEL
    included)."""
    if _CLF_PLAIN.fullmatch(text):
        return text
    return "".join(
        chr(byte) if 0x20 <= byte < 0x7F and byte not in (0x22, 0x5C) else f"\\x{byte:02x}"
        for byte in text.encode("utf-8", "surrogateescape")
    )


class AccessLog:
    """ASGI middleware: request ids, the access log, and the request metrics."""

    def __init__(
        self, app: Any, settings: AccessLogSettings, trusted: tuple[Network, ...], mode: str = "x-forwarded"
    ):
        self.app = app
        self.settings = settings
        self.trusted = trusted
        #: The forwarded headers the trusted proxies are believed for.
        self.mode = mode
        self.writer = _Writer(settings.file) if settings.enabled else None
        self.json = settings.format == "json"
        self.clock = _Clock(_iso if self.json else _clf_time)
        # Unique across workers and restarts without a random draw per request.
        self.prefix = secrets.token_hex(4)
        self.counter = itertools.count(1)
        self.metrics = metrics()
        self.children: dict[Any, Any] = {}

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = forwarded = None
        client = scope.get("client")
        scope[CLIENT_ADDRESS] = client[0] if client else None
        if self.trusted and trusted_peer(scope, self.trusted):
            for name, value in scope["headers"]:
                if name == b"x-request-id" and _REQUEST_ID.fullmatch(value.strip()):
                    request_id = value.strip().decode("ascii")
            forwarded = forwarded_for(scope["headers"], self.mode)[0]
            if forwarded is not None:
                # The client's own address, for the password lockout and /metrics' allow list.
                scope[CLIENT_ADDRESS] = forwarded
        if request_id is None:
            request_id = f"{self.prefix}-{next(self.counter):x}"
        record: dict[str, Any] = {"request_id": request_id}
        scope[RECORD] = record
        id_header = (b"x-request-id", request_id.encode("ascii"))
        status = 0
        size = 0

        async def logged_send(message: dict) -> None:
            nonlocal status, size
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), id_header]}
            elif kind == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            duration = time.perf_counter() - start
            path = scope.get("path", "")
            endpoint = path if path in ENDPOINTS else "other"  # endpoint_label, without a call
            self._count(endpoint, status, duration, record)
            if self.writer is not None:
                self.writer.write(self._line(scope, record, status, size, duration, forwarded))

    def _count(self, endpoint: str, status: int, duration: float, record: dict[str, Any]) -> None:
        """The request in /metrics, through a cache of label children: prometheus_client's
        ``labels()`` takes a lock and builds a key on every call."""
        children = self.children
        key = (endpoint, status)
        counter = children.get(key)
        if counter is None:
            counter = children[key] = self.metrics.requests.labels(endpoint, str(status))
        counter.inc()
        histogram = children.get(endpoint)
        if histogram is None:
            histogram = children[endpoint] = self.metrics.duration.labels(endpoint)
        histogram.observe(duration)
        if status == 200 and endpoint == "/oauth2/token" and "grant_type" in record:
            token_key = ("tokens", record["grant_type"], record.get("auth_method", "-"))
            issued = children.get(token_key)
            if issued is None:
                issued = children[token_key] = self.metrics.tokens.labels(*token_key[1:])
            issued.inc()

    def _line(
        self,
        scope: dict,
        record: dict[str, Any],
        status: int,
        size: int,
        duration: float,
        forwarded: str | None,
    ) -> str:
        now = time.time()
        client = scope.get("client")
        remote = client[0] if client else None
        tls = scope.get("extensions", {}).get("tls")
        digest = None
        if tls is not None:
            digest = tls.get(_DIGEST)
            if digest is None:
                chain = tls.get(DER_KEY)
                digest = hashlib.sha256(chain[0]).hexdigest() if chain else ""
                tls[_DIGEST] = digest  # once per connection: the extension is the connection's
        if self.json:
            stamp = f"{self.clock(now)}.{int(now * 1000) % 1000:03d}Z"
            client_id = record.get("client_id")
            auth_method = record.get("auth_method")
            grant_type = record.get("grant_type")
            reason = record.get("reason")
            tls_version = _TLS_NAMES.get(tls.get("tls_version")) if tls else None
            # Built by hand: json.dumps of the whole dict cost more than the rest of the line.
            # Every value a client could choose goes through _json_text; the others are ours.
            return (
                f'{{"time":"{stamp}","request_id":"{record["request_id"]}",'
                f'"remote_addr":{_json_text(remote) if remote else "null"},'
                f'"forwarded_for":{_json_text(forwarded) if forwarded else "null"},'
                f'"method":{_json_text(scope.get("method") or "")},'
                f'"path":{_json_text(scope.get("path") or "")},'
                f'"status":{status},"bytes":{size},"duration_ms":{duration * 1000:.3f},'
                f'"http_version":{_json_text(scope.get("http_version") or "")},'
                f'"tls_version":{f"{chr(34)}{tls_version}{chr(34)}" if tls_version else "null"},'
                f'"client_cert":{"true" if digest else "false"},'
                f'"client_cert_sha256":{f"{chr(34)}{digest}{chr(34)}" if digest else "null"},'
                f'"client_id":{_json_text(client_id) if client_id else "null"},'
                f'"auth_method":{_json_text(auth_method) if auth_method else "null"},'
                f'"grant_type":{_json_text(grant_type) if grant_type else "null"},'
                f'"reason":{_json_text(reason) if reason else "null"}}}'
            )
        request = _clf_escape(f"{scope.get('method')} {scope.get('path')} HTTP/{scope.get('http_version')}")
        user = _clf_field(record.get("client_id") or "-")
        extras = [
            f"rid={record['request_id']}",
            f"ms={duration * 1000:.3f}",
            f"tls={_TLS_NAMES.get(tls.get('tls_version'), '-') if tls else '-'}",
            f"cert={digest or '-'}",
        ]
        if forwarded:
            extras.append(f"for={_clf_field(forwarded)}")
        for key in ("auth_method", "grant_type", "reason"):
            if record.get(key):
                extras.append(f"{key}={_clf_field(str(record[key]))}")
        return (
            f'{_clf_field(remote) if remote else "-"} - {user} {self.clock(now)} "{request}" {status or "-"} {size}'
            f" {' '.join(extras)}"
        )
