"""What one request leaves for the operator: its access-log record and why it was refused.

The access log (``app/accesslog.py``) puts a dict into every HTTP scope under ``RECORD``
before the app runs; the endpoints add what only they know (the authenticated client and
method, the grant type) with ``note``. Nothing secret is ever noted: no secret, token,
assertion, password or code, only identifiers.

``refused`` logs each 400/401 at the OAuth endpoints once, at INFO on the
``tokensmith.refusals`` logger, with the request id, a reason code and words
(``OAuth2Error.reason`` and ``.detail``). The client's answer is the RFC 6749 §5.2 error
alone; the words are for the operator.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from tokensmith.errors import InvalidClientError, InvalidRequestError, OAuth2Error, RequestRefused
from tokensmith.metrics import endpoint_label, metrics

if TYPE_CHECKING:
    from tokensmith.config.settings import Network

__all__ = ["RECORD", "note", "request_id", "refused", "trusted_peer", "forwarded_for"]

#: The scope key of the request's access-log record (a dict).
RECORD = "tokensmith.record"

log = logging.getLogger("tokensmith.refusals")


def note(scope: Mapping[str, Any], **fields: Any) -> None:
    """Add *fields* to the request's access-log record (none without an access log)."""
    record = scope.get(RECORD)
    if record is not None:
        record.update(fields)


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
    log.info(
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


def trusted_peer(scope: Mapping[str, Any], trusted: tuple[Network, ...]) -> bool:
    """Whether the request's peer is one of the *trusted* proxies."""
    client = scope.get("client")
    if not trusted or not client:
        return False
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    return any(address in network for network in trusted)


def _address(text: str) -> str | None:
    """An address from X-Forwarded-For or Forwarded's for= (RFC 7239 §6), or None."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # IPv4 with a port
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def forwarded_for(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """The client address and protocol a trusted proxy forwarded, from its headers.

    The last entry is the one the proxy next to us added (RFC 7239 §5.2, and X-Forwarded-For
    as proxies append to it); anything before it came from further away, unverified.
    """
    xff: str | None = None
    proto: str | None = None
    forwarded: str | None = None
    for name, value in headers:
        if name == b"x-forwarded-for":
            xff = value.decode("latin-1")
        elif name == b"x-forwarded-proto":
            proto = value.decode("latin-1").strip().lower()
        elif name == b"forwarded":
            forwarded = value.decode("latin-1")
    address = None
    if forwarded is not None:
        last = forwarded.split(",")[-1]
        for pair in last.split(";"):
            key, _, text = pair.strip().partition("=")
            key = key.lower()
            if key == "for":
                address = _address(text)
            elif key == "proto":
                proto = text.strip().strip('"').lower()
    if address is None and xff is not None:
        address = _address(xff.split(",")[-1])
    return address, proto
