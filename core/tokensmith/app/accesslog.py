"""The access log, and the refusal line of the OAuth endpoints.

``Front`` (``front.py``) sees every request the app answers, whichever lane carried it, and
hands each to ``AccessLog.write`` when server.xml has an ``<AccessLog>``: one line per
request, JSON by default, or Apache's common log format with the request id and duration
after it.

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
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from tokensmith.config.settings import AccessLogSettings
from tokensmith.errors import InvalidClientError, InvalidRequestError, OAuth2Error, RequestRefused
from tokensmith.metrics import endpoint_label, metrics
from tokensmith.scope import DER_KEY, RECORD

__all__ = ["AccessLog", "refused", "request_id"]

_TLS_NAMES = {0x0303: "TLSv1.2", 0x0304: "TLSv1.3"}
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
    """The access log of ``<AccessLog>``: its file (or stderr) and its format."""

    def __init__(self, settings: AccessLogSettings):
        self.writer = _Writer(settings.file)
        self.json = settings.format == "json"
        self.clock = _Clock(_iso if self.json else _clf_time)

    def close(self) -> None:
        self.writer.close()

    def write(self, line: str) -> None:
        self.writer.write(line)

    def line(
        self,
        scope: dict,
        record: dict[str, Any],
        status: int,
        size: int,
        duration: float,
        forwarded: str | None,
    ) -> str:
        """The line of the request of *scope*, answered *status* with *size* body bytes."""
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
