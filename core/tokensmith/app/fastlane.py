"""The OAuth POST endpoints as plain ASGI, in front of the Quart app.

The token, introspection and revocation endpoints take a small form and answer a small JSON
object. Served through Quart, each request pays for its request and response objects,
context variables, signals and routing before our code runs, which costs about as much as
Hypercorn's own HTTP handling (docs/benchmarks.md). So ``OAuthEndpoints`` calls those three
endpoints' functions itself, the same ones the Quart routes call (``routes.py``), and passes
everything else (metadata, JWKS, management pages, plugins' routes, lifespan, 404s) to Quart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from tokensmith.app.responses import error_answer, send_answer
from tokensmith.errors import InvalidRequestError, RequestRefused
from tokensmith.oauth.messages import Answer, Headers, HttpRequest
from tokensmith.oauth.runtime import Runtime
from tokensmith.requestlog import refused as log_refusal
from tokensmith.scope import TIMEOUT_KEY

__all__ = ["OAuthEndpoints", "read_body"]

Endpoint = Callable[[Runtime, HttpRequest], Awaitable[Answer]]

#: The body deadline when the server put none in the scope (a server that is not ours).
DEFAULT_TIMEOUT = 10.0


class OAuthEndpoints:
    """ASGI middleware: POST endpoints from *routes* here, everything else to *fallback*."""

    def __init__(
        self,
        routes: Mapping[str, Endpoint],
        runtime: Callable[[], Runtime],
        fallback: Callable[..., Awaitable[None]],
    ):
        self.routes = routes
        self.runtime = runtime
        self.fallback = fallback

    async def __call__(self, scope: Any, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        endpoint = self.routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if endpoint is None:
            await self.fallback(scope, receive, send)
            return
        if scope["method"] != "POST":
            # RFC 6749 §3.2: "The client MUST use the HTTP "POST" method".
            log_refusal(scope, 405, InvalidRequestError("use POST", reason="not_post"))
            await send_answer(
                send,
                Answer(405, {"error": "invalid_request", "error_description": "use POST"}, {"Allow": "POST"}),
            )
            return
        rt = self.runtime()
        headers = Headers(scope["headers"])
        timeout = scope.get("extensions", {}).get(TIMEOUT_KEY, DEFAULT_TIMEOUT)
        try:
            try:
                async with asyncio.timeout(timeout):  # slow bodies are cut off, as slow headers are
                    body = await read_body(receive, headers, rt.identity.max_body_bytes)
            except TimeoutError:
                raise RequestRefused(408, "the request body did not arrive in time") from None
            answer = await endpoint(rt, HttpRequest(scope, headers, body))
        except Exception as error:
            answer = error_answer(error, path=scope.get("path", ""), http2=scope.get("http_version") == "2")
            log_refusal(scope, answer.status, error)
        await send_answer(send, answer)


async def read_body(receive: Callable[..., Any], headers: Headers, limit: int) -> bytes:
    """The request body, refused as soon as it is known to exceed *limit* bytes."""
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequestError("Content-Length is not a number")
        if int(declared) > limit:
            raise RequestRefused(413, "the request body is too large")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequestError("the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestRefused(413, "the request body is too large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
