"""The OAuth POST endpoints as plain ASGI, in front of the Quart app.

The token, introspection and revocation endpoints take a small form and answer a small JSON
object. Served through Quart, each request pays for its request and response objects,
context variables, signals and routing before our code runs; profiling showed that to be
about as much as Hypercorn's own HTTP handling. So ``OAuthEndpoints`` answers those three
paths itself and passes everything else (metadata, JWKS, lifespan, 404s) to Quart.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tokensmith.errors import InvalidRequestError, OAuth2Error, ServerError, TemporarilyUnavailableError
from tokensmith.models import StorageError
from tokensmith.requestlog import refused as log_refusal

__all__ = ["OAuthEndpoints", "HttpRequest", "Headers", "Answer", "DER_KEY", "TIMEOUT_KEY", "NO_STORE"]

log = logging.getLogger("tokensmith")

#: Where server.py puts the DER of the client's certificates, next to the ASGI TLS
#: extension's PEM, so that no request converts them again.
DER_KEY = "tokensmith.client_cert_der"
#: Where server.py puts the connector's connectionTimeout (seconds), in scope["extensions"].
TIMEOUT_KEY = "tokensmith.timeout"

#: RFC 6749 §5.1: token responses "MUST include ... Cache-Control: no-store ... Pragma: no-cache".
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_JSON_HEADERS = [
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-store"),
    (b"pragma", b"no-cache"),
]


class Headers(Mapping[str, str]):
    """A request's headers, looked up case-insensitively (the last of repeated names wins)."""

    __slots__ = ("_items",)

    def __init__(self, raw: list[tuple[bytes, bytes]]):
        self._items = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in raw}

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return self._items.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class HttpRequest:
    """What an endpoint needs of one HTTP request."""

    scope: Mapping[str, Any]
    headers: Headers
    body: bytes

    @property
    def query_string(self) -> bytes:
        return self.scope.get("query_string", b"")

    @property
    def remote_addr(self) -> str | None:
        client = self.scope.get("client")
        return client[0] if client else None


@dataclass
class Answer:
    """An endpoint's response: a JSON body (None: empty) and extra headers."""

    status: int
    body: dict[str, Any] | None
    headers: dict[str, str] = field(default_factory=dict)


Endpoint = Callable[[Any, HttpRequest], Awaitable[Answer]]


class OAuthEndpoints:
    """ASGI middleware: POST endpoints from *routes* here, everything else to *fallback*."""

    def __init__(
        self,
        routes: Mapping[str, Endpoint],
        runtime: Callable[[], Any],
        max_body: Callable[[], int],
        fallback: Callable[..., Awaitable[None]],
    ):
        self.routes = routes
        self.runtime = runtime
        self.max_body = max_body
        self.fallback = fallback

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        endpoint = self.routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if endpoint is None:
            await self.fallback(scope, receive, send)
            return
        if scope["method"] != "POST":
            # RFC 6749 §3.2: "The client MUST use the HTTP "POST" method".
            log_refusal(
                scope,
                405,
                InvalidRequestError("use POST", reason="not_post", detail=f"method {scope['method']}"),
            )
            await _send(
                send,
                Answer(405, {"error": "invalid_request", "error_description": "use POST"}, {"Allow": "POST"}),
            )
            return
        headers = Headers(scope["headers"])
        timeout = scope.get("extensions", {}).get(TIMEOUT_KEY, 10.0)
        try:
            try:
                async with asyncio.timeout(timeout):  # slow bodies are cut off, as slow headers are
                    body = await _read_body(receive, headers, self.max_body())
            except TimeoutError:
                raise _Refused(408, "the request body did not arrive in time", "body_timeout") from None
            answer = await endpoint(self.runtime(), HttpRequest(scope, headers, body))
        except _Refused as refused:
            # HTTP/1.1: the rest of the body would follow on the connection, so it closes. HTTP/2
            # has no Connection field (RFC 9113 §8.2.2: sending one is a connection error);
            # the stream ends with the answer and the connection goes on.
            close = {"Connection": "close"} if scope.get("http_version") != "2" else {}
            answer = Answer(
                refused.status, {"error": "invalid_request", "error_description": refused.reason}, close
            )
            log_refusal(scope, refused.status, InvalidRequestError(refused.reason, reason=refused.code))
        except OAuth2Error as error:
            answer = Answer(error.status_code, error.body(), error.headers)
            log_refusal(scope, error.status_code, error)
        except StorageError as error:
            log.error("storage unavailable: %s", error)
            unavailable = TemporarilyUnavailableError("storage is unavailable")
            answer = Answer(unavailable.status_code, unavailable.body())
        except Exception:
            log.exception("unexpected error at %s", scope.get("path"))
            answer = Answer(500, ServerError("an internal error occurred").body())
        await _send(send, answer)


class _Refused(Exception):
    """The request is refused before it reaches an endpoint; the connection is closed."""

    def __init__(self, status: int, reason: str, code: str = "body_too_large"):
        super().__init__(reason)
        self.status, self.reason, self.code = status, reason, code


async def _read_body(receive: Callable, headers: Headers, limit: int) -> bytes:
    """The request body, refused as soon as it is known to exceed *limit* bytes."""
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequestError("Content-Length is not a number")
        if int(declared) > limit:
            raise _Refused(413, "the request body is too large")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequestError("the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _Refused(413, "the request body is too large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send(send: Callable, answer: Answer) -> None:
    body = b"" if answer.body is None else json.dumps(answer.body, separators=(",", ":")).encode()
    headers = list(_JSON_HEADERS) if answer.body is not None else [(b"cache-control", b"no-store")]
    headers += [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers.items()
    ]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
