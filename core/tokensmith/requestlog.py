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

__all__ = [
    "RECORD",
    "PLAIN_HTTP_PATHS",
    "note",
    "request_id",
    "refused",
    "trusted_peer",
    "forwarded_for",
    "plain_http_refused",
]

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
    # An IPv6 zone id (RFC 4007 §11) is any text at all; it says nothing about the client.
    text = text.partition("%")[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


#: The paths a plain-HTTP request that did not reach a trusted proxy over TLS may still ask
#: for: the probes (which say nothing) and /metrics (which has its own access control).
PLAIN_HTTP_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def _values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[str]:
    """The comma-separated values of every *name* field, in order (RFC 9110 §5.3)."""
    values: list[str] = []
    for key, value in headers:
        if key == name:
            values += [item.strip() for item in value.decode("latin-1").split(",")]
    return values


def forwarded_for(
    headers: list[tuple[bytes, bytes]], mode: str = "x-forwarded"
) -> tuple[str | None, str | None]:
    """The client address and protocol a trusted proxy forwarded, from its headers.

    *mode* names the one header family the proxy is believed for: ``x-forwarded``
    (X-Forwarded-For and X-Forwarded-Proto) or ``forwarded`` (RFC 7239). The other family is
    ignored, since a proxy that sets one usually passes the client's copy of the other through.
    The last entry is the one the proxy next to us added (RFC 7239 §5.2, and X-Forwarded-For
    as proxies append to it); anything before it came from further away, unverified.
    """
    if mode == "forwarded":
        elements = _values(headers, b"forwarded")
        address = proto = None
        if elements:
            for pair in elements[-1].split(";"):
                key, _, text = pair.strip().partition("=")
                key = key.lower()
                if key == "for":
                    address = _address(text)
                elif key == "proto":
                    proto = text.strip().strip('"').lower()
        return address, proto
    addresses = _values(headers, b"x-forwarded-for")
    protos = _values(headers, b"x-forwarded-proto")
    return (_address(addresses[-1]) if addresses else None), (protos[-1].lower() if protos else None)


def plain_http_refused(scope: Mapping[str, Any], trusted: tuple[Network, ...], mode: str) -> bool:
    """Whether a request that came without TLS must be refused: it did, unless a trusted proxy
    says the client reached it over https, or the path is one of ``PLAIN_HTTP_PATHS`` (RFC 6749
    §3.1 and §3.2 require TLS at the endpoints; RFC 7662 §4 and RFC 7009 §5 likewise). The path
    must match exactly: a variant (``//oauth2/token``) is refused too."""
    if scope.get("scheme") == "https":
        return False
    if trusted_peer(scope, trusted) and forwarded_for(scope["headers"], mode)[1] == "https":
        return False
    return scope.get("path") not in PLAIN_HTTP_PATHS
