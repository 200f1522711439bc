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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from tokensmith.app.responses import error_answer, send_answer
from tokensmith.errors import InvalidRequestError, RequestRefused
from tokensmith.oauth.messages import Answer, Headers, HttpRequest
from tokensmith.oauth.runtime import Runtime
from tokensmith.requestlog import refused as log_refusal
from tokensmith.scope import TIMEOUT_KEY

__all__ = ["OAuthEndpoints", "answer", "collect", "not_post", "read_body"]

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
        await send_answer(send, await answer(endpoint, self.runtime(), scope, _messages(receive)))


def not_post(scope: Mapping[str, Any]) -> Answer:
    """RFC 6749 §3.2: "The client MUST use the HTTP "POST" method"."""
    log_refusal(scope, 405, InvalidRequestError("use POST", reason="not_post"))
    return Answer(405, {"error": "invalid_request", "error_description": "use POST"}, {"Allow": "POST"})


async def answer(
    endpoint: Endpoint, rt: Runtime, scope: Mapping[str, Any], chunks: AsyncIterator[bytes]
) -> Answer:
    """*endpoint*'s answer to the request of *scope*, whose body arrives as *chunks*: the body
    is held to the identity's size limit and to the connector's deadline, and every refusal
    is RFC 6749 §5.2 JSON. The Quart routes answer through here too (``routes.py``)."""
    if scope["method"] != "POST":
        return not_post(scope)
    headers = Headers(list(scope["headers"]))
    timeout = scope.get("extensions", {}).get(TIMEOUT_KEY, DEFAULT_TIMEOUT)
    try:
        try:
            async with asyncio.timeout(timeout):  # slow bodies are cut off, as slow headers are
                body = await collect(chunks, headers, rt.identity.max_body_bytes)
        except TimeoutError:
            raise RequestRefused(408, "the request body did not arrive in time") from None
        return await endpoint(rt, HttpRequest(scope, headers, body))
    except Exception as error:
        result = error_answer(error, path=scope.get("path", ""), http2=scope.get("http_version") == "2")
        log_refusal(scope, result.status, error)
        return result


async def _messages(receive: Callable[..., Any]) -> AsyncIterator[bytes]:
    """The body chunks of ASGI ``http.request`` messages."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequestError("the client went away")
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def read_body(receive: Callable[..., Any], headers: Headers, limit: int) -> bytes:
    """The request body, refused as soon as it is known to exceed *limit* bytes."""
    return await collect(_messages(receive), headers, limit)


async def collect(chunks: AsyncIterator[bytes], headers: Headers, limit: int) -> bytes:
    """The body of *chunks*, refused (413) as soon as it is known to exceed *limit* bytes."""
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequestError("Content-Length is not a number")
        if int(declared) > limit:
            raise RequestRefused(413, "the request body is too large")
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise RequestRefused(413, "the request body is too large")
        parts.append(chunk)
    return b"".join(parts)
