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
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import logging.handlers
import re
import secrets
import sys
import time
from collections.abc import Callable
from typing import Any

from tokensmith.app.fastlane import DER_KEY
from tokensmith.config.settings import AccessLogSettings, Network
from tokensmith.metrics import endpoint_label, metrics
from tokensmith.requestlog import RECORD, forwarded_for, trusted_peer

__all__ = ["AccessLog"]

_TLS_NAMES = {0x0303: "TLSv1.2", 0x0304: "TLSv1.3"}
#: A request id a proxy may set: what common proxies and tracing systems generate (UUIDs,
#: hex, base64url), bounded, with nothing that could break a log line.
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:+/=-]{1,128}")
_DIGEST = "tokensmith.client_cert_sha256"


def _writer(settings: AccessLogSettings) -> tuple[logging.Logger, logging.Handler] | None:
    if not settings.enabled:
        return None
    # A logger of its own, outside logging's tree: no propagation to the server's log, and
    # no handler left behind for another app in the same process.
    logger = logging.Logger("tokensmith.access", logging.INFO)
    handler: logging.Handler
    if settings.file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        settings.file.parent.mkdir(parents=True, exist_ok=True)
        # Reopened when logrotate moves the file away.
        handler = logging.handlers.WatchedFileHandler(settings.file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    return logger, handler


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


def _clf_escape(text: str) -> str:
    """Apache's escaping for a quoted field: no quote, backslash or control character."""
    return "".join(
        ch if ch.isprintable() and ch not in '"\\' and ord(ch) < 128 else f"\\x{ord(ch) & 0xFF:02x}"
        for ch in text
    )


class AccessLog:
    """ASGI middleware: request ids, the access log, and the request metrics."""

    def __init__(self, app: Any, settings: AccessLogSettings, trusted: tuple[Network, ...]):
        self.app = app
        self.settings = settings
        self.trusted = trusted
        writer = _writer(settings)
        self.logger: logging.Logger | None = writer[0] if writer is not None else None
        self.handler: logging.Handler | None = writer[1] if writer is not None else None
        self.json = settings.format == "json"
        self.clock = _Clock(_iso if self.json else _clf_time)
        # Unique across workers and restarts without a random draw per request.
        self.prefix = secrets.token_hex(4)
        self.counter = itertools.count(1)
        self.metrics = metrics()

    def close(self) -> None:
        if self.handler is not None:
            self.handler.close()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = forwarded = None
        if self.trusted and trusted_peer(scope, self.trusted):
            for name, value in scope["headers"]:
                if name == b"x-request-id" and _REQUEST_ID.fullmatch(value.strip()):
                    request_id = value.strip().decode("ascii")
            forwarded = forwarded_for(scope["headers"])[0]
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
            endpoint = endpoint_label(scope.get("path", ""))
            m = self.metrics
            m.requests.labels(endpoint, str(status)).inc()
            m.duration.labels(endpoint).observe(duration)
            if status == 200 and endpoint == "/oauth2/token" and "grant_type" in record:
                m.tokens.labels(record["grant_type"], record.get("auth_method", "-")).inc()
            if self.logger is not None:
                self.logger.info(self._line(scope, record, status, size, duration, forwarded))

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
            return json.dumps(
                {
                    "time": stamp,
                    "request_id": record["request_id"],
                    "remote_addr": remote,
                    "forwarded_for": forwarded,
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "status": status,
                    "bytes": size,
                    "duration_ms": round(duration * 1000, 3),
                    "http_version": scope.get("http_version"),
                    "tls_version": _TLS_NAMES.get(tls.get("tls_version")) if tls else None,
                    "client_cert": bool(digest),
                    "client_cert_sha256": digest or None,
                    "client_id": record.get("client_id"),
                    "auth_method": record.get("auth_method"),
                    "grant_type": record.get("grant_type"),
                    "reason": record.get("reason"),
                },
                separators=(",", ":"),
                ensure_ascii=True,
            )
        request = _clf_escape(f"{scope.get('method')} {scope.get('path')} HTTP/{scope.get('http_version')}")
        user = _clf_escape(record.get("client_id") or "-").replace(" ", "_")
        extras = [
            f"rid={record['request_id']}",
            f"ms={duration * 1000:.3f}",
            f"tls={_TLS_NAMES.get(tls.get('tls_version'), '-') if tls else '-'}",
            f"cert={digest or '-'}",
        ]
        if forwarded:
            extras.append(f"for={forwarded}")
        for key in ("auth_method", "grant_type", "reason"):
            if record.get(key):
                extras.append(f"{key}={_clf_escape(str(record[key]))}")
        return (
            f'{remote or "-"} - {user} {self.clock(now)} "{request}" {status or "-"} {size}'
            f" {' '.join(extras)}"
        )
