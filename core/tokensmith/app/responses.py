"""Every response the application sends is rendered here, once, from an ``Answer``.

The fast lane (``fastlane.py``) sends an ``Answer`` over raw ASGI, the Quart views and error
handlers turn one into a Quart ``Response``: the bytes on the wire are the same either way.
Errors become answers in one function, ``error_answer``, whichever way they were raised.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from quart import Response

from tokensmith.errors import OAuth2Error, RequestRefused, ServerError, TemporarilyUnavailableError
from tokensmith.models import StorageError
from tokensmith.oauth.messages import Answer

__all__ = ["json_bytes", "render", "send_answer", "to_response", "error_answer", "plain_error"]

log = logging.getLogger("tokensmith")


def json_bytes(body: Any) -> bytes:
    """*body* as compact JSON."""
    return json.dumps(body, separators=(",", ":")).encode()


def render(answer: Answer) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The header fields and the body of *answer*."""
    body = b"" if answer.body is None else json_bytes(answer.body)
    headers: list[tuple[bytes, bytes]] = []
    if answer.body is not None:
        headers.append((b"content-type", answer.content_type.encode()))
    if answer.no_store:
        # RFC 6749 §5.1: "Cache-Control: no-store" and "Pragma: no-cache" on token responses.
        headers.append((b"cache-control", b"no-store"))
        if answer.body is not None:
            headers.append((b"pragma", b"no-cache"))
    headers += [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers.items()
    ]
    headers.append((b"content-length", str(len(body)).encode()))
    return headers, body


async def send_answer(send: Callable[..., Any], answer: Answer) -> None:
    """Send *answer* over raw ASGI."""
    headers, body = render(answer)
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def to_response(answer: Answer) -> Response:
    """*answer* as a Quart response, with exactly the fields ``render`` gives."""
    headers, body = render(answer)
    response = Response(body, status=answer.status)
    del response.headers["Content-Type"]  # Quart's default; render says whether there is one
    for name, value in headers:
        if name != b"content-length":
            response.headers.add(name.decode("latin-1"), value.decode("latin-1"))
    return response


def error_answer(error: BaseException, *, path: str = "", http2: bool = False) -> Answer:
    """The answer to a request that raised *error*.

    OAuth errors are RFC 6749 §5.2 JSON with their status and headers. A request refused
    before an endpoint read it (too large, too slow) is ``invalid_request``, and an HTTP/1.1
    connection closes after it, since the rest of its body would follow; HTTP/2 has no
    Connection field (RFC 9113 §8.2.2) and the stream ends with the answer. A store that does
    not answer is 503 ``temporarily_unavailable``; anything else is logged with its traceback
    and the client learns only that it was a ``server_error``.
    """
    if isinstance(error, RequestRefused):
        close = {} if http2 else {"Connection": "close"}
        return Answer(error.status, {"error": "invalid_request", "error_description": error.reason}, close)
    if isinstance(error, OAuth2Error):
        return Answer(error.status_code, error.body(), error.headers)
    if isinstance(error, StorageError):
        log.error("storage unavailable: %s", error)
        unavailable = TemporarilyUnavailableError("storage is unavailable")
        # RFC 9110 §10.2.3: with a 503, when to try again; the store's own deadlines are
        # seconds, and a client that retries at once only adds to the queue.
        return Answer(unavailable.status_code, unavailable.body(), {"Retry-After": "1"})
    log.error("unexpected error at %s", path or "?", exc_info=error)
    return Answer(500, ServerError("an internal error occurred").body())


def plain_error(status: int, name: str, allow: list[str] | None = None) -> Response:
    """A plain-text HTTP error for anything that is not an OAuth endpoint (404, 405, ...).

    A 405 says in Allow which methods the resource has (RFC 9110 §15.5.6).
    """
    headers = {"Cache-Control": "no-store"}
    if status == 405:
        headers["Allow"] = ", ".join(sorted(set(allow or ["GET"])))
    return Response(
        f"{status} {name}\n", status=status, headers=headers, content_type="text/plain; charset=utf-8"
    )
