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

import logging
from collections.abc import Mapping, MutableMapping
from typing import Any

from tokensmith.errors import InvalidClientError, OAuth2Error
from tokensmith.metrics import endpoint_label, metrics

__all__ = ["RECORD", "note", "request_id", "refused"]

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


def refused(scope: Mapping[str, Any], status: int, error: OAuth2Error, client_id: str | None = None) -> None:
    """Log once that the request of *scope* was refused with *error*, and why."""
    if status >= 500:
        return  # server errors are logged where they happen, with their traceback
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
