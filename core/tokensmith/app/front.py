"""The front of the application: every request comes in here and every response goes out here.

The Quart app's ``asgi_app`` is a ``Front``, whichever lane (Hypercorn's h11, the llhttp
lane, HTTP/2) carried the request. For each HTTP request it

- gives the request its id: the ``X-Request-Id`` a trusted proxy sent, else a new one, echoed
  in the response's ``X-Request-Id``; and its access-log record (``scope.RECORD``), which the
  endpoints fill with identifiers; and puts the client's own address in the scope;
- answers the token, introspection and revocation endpoints itself (the fast lane, below),
  and passes everything else (metadata, JWKS, management pages, plugins' routes, lifespan,
  404s) to Quart;
- counts the request and its duration for ``/metrics``, and the tokens issued; with
  ``<AccessLog>``, hands its line to ``accesslog.py``.

Every response is rendered here, once, from an ``Answer``: the fast lane sends one over raw
ASGI, the Quart views and error handlers turn one into a Quart ``Response``, and the bytes on
the wire are the same either way. Errors become answers in one function, ``error_answer``,
whichever way they were raised.

The fast lane: those three endpoints take a small form and answer a small JSON object.
Served through Quart, each request pays for its request and response objects, context
variables, signals and routing before our code runs, which costs about as much as
Hypercorn's own HTTP handling (docs/benchmarks.md). So ``Front`` calls those endpoints'
functions itself, the same ones the Quart routes call (``routes.py``), with the same body
limit and deadline (``answer``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from quart import Response

from tokensmith.app.accesslog import AccessLog
from tokensmith.app.accesslog import refused as log_refusal
from tokensmith.config.settings import AccessLogSettings, Network
from tokensmith.errors import (
    InvalidRequestError,
    OAuth2Error,
    RequestRefused,
    ServerError,
    TemporarilyUnavailableError,
)
from tokensmith.http.proxies import client_address, trusted_peer
from tokensmith.metrics import ENDPOINTS, metrics
from tokensmith.models import StorageError
from tokensmith.oauth.messages import Answer, HttpRequest
from tokensmith.oauth.runtime import Runtime
from tokensmith.scope import CLIENT_ADDRESS, RECORD, TIMEOUT_KEY

__all__ = [
    "json_bytes",
    "render",
    "to_response",
    "error_answer",
    "plain_error",
    "Front",
    "answer",
    "http_request",
    "collect",
    "not_post",
    "read_body",
    "json_object",
]

log = logging.getLogger("tokensmith")


def json_object(data: bytes) -> dict[str, Any] | None:
    """*data* parsed as a JSON object; None when it is not one: not JSON, not UTF-8, not an
    object, or nested deeper than the parser's recursion limit (``'[' * 60000`` fits in a body
    limit), each a client's mistake to be answered 400 by the caller."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


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


# -- The fast lane ----------------------------------------------------------------------------

Endpoint = Callable[[Runtime, HttpRequest], Awaitable[Answer]]

#: The body deadline when the server put none in the scope (a server that is not ours).
DEFAULT_TIMEOUT = 10.0


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
    # Lower-case names, the last of repeated names winning (``HttpRequest.headers``).
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
    timeout = scope.get("extensions", {}).get(TIMEOUT_KEY, DEFAULT_TIMEOUT)
    try:
        try:
            async with asyncio.timeout(timeout):  # slow bodies are cut off, as slow headers are
                body = await collect(chunks, headers, rt.identity.max_body_bytes)
        except TimeoutError:
            raise RequestRefused(408, "the request body did not arrive in time") from None
        return await endpoint(rt, http_request(scope, headers, body))
    except Exception as error:
        result = error_answer(error, path=scope.get("path", ""), http2=scope.get("http_version") == "2")
        log_refusal(scope, result.status, error)
        return result


def http_request(scope: Mapping[str, Any], headers: Mapping[str, str], body: bytes) -> HttpRequest:
    """The ``HttpRequest`` of *scope*: its addresses are read from the scope here, once."""
    client = scope.get("client")
    remote = client[0] if client else None
    return HttpRequest(
        scope, headers, body, scope.get("query_string", b""), remote, scope.get(CLIENT_ADDRESS, remote)
    )


async def _messages(receive: Callable[..., Any]) -> AsyncIterator[bytes]:
    """The body chunks of ASGI ``http.request`` messages."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequestError("the client went away")
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def read_body(receive: Callable[..., Any], headers: Mapping[str, str], limit: int) -> bytes:
    """The request body, refused as soon as it is known to exceed *limit* bytes."""
    return await collect(_messages(receive), headers, limit)


async def collect(chunks: AsyncIterator[bytes], headers: Mapping[str, str], limit: int) -> bytes:
    """The body of *chunks*, refused (413) as soon as it is known to exceed *limit* bytes."""
    declared = headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):  # "²".isdigit() is true
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


# -- The front door ---------------------------------------------------------------------------

#: A request id a proxy may set: what common proxies and tracing systems generate (UUIDs,
#: hex, base64url), bounded, with nothing that could break a log line.
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:+/=-]{1,128}")


class Front:
    """The app's ASGI entry: request ids, metrics and the access log for every request, the
    POST endpoints of *routes* answered here, everything else passed to *app* (Quart's)."""

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        settings: AccessLogSettings,
        trusted: tuple[Network, ...] = (),
        mode: str = "x-forwarded",
        *,
        routes: Mapping[str, Endpoint] | None = None,
        runtime: Callable[[], Runtime] | None = None,
    ):
        self.app = app
        self.routes = dict(routes or {})
        self.runtime = runtime
        self.trusted = trusted
        #: The forwarded headers the trusted proxies are believed for.
        self.mode = mode
        self.log = AccessLog(settings) if settings.enabled else None
        # Unique across workers and restarts without a random draw per request.
        self.prefix = secrets.token_hex(4)
        self.counter = itertools.count(1)
        self.metrics = metrics()
        self.children: dict[Any, Any] = {}

    def close(self) -> None:
        if self.log is not None:
            self.log.close()

    async def __call__(self, scope: dict, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
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
            forwarded = client_address(scope["headers"], self.mode)
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
        endpoint = self.routes.get(scope.get("path", ""))
        try:
            if endpoint is not None:
                assert self.runtime is not None
                result = await answer(endpoint, self.runtime(), scope, _messages(receive))
                headers, body = render(result)
                headers.append(id_header)
                status, size = result.status, len(body)
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
            else:

                async def counted_send(message: dict) -> None:
                    nonlocal status, size
                    kind = message["type"]
                    if kind == "http.response.start":
                        status = message["status"]
                        message = {**message, "headers": [*message.get("headers", ()), id_header]}
                    elif kind == "http.response.body":
                        size += len(message.get("body", b""))
                    await send(message)

                await self.app(scope, receive, counted_send)
        finally:
            duration = time.perf_counter() - start
            path = scope.get("path", "")
            label = path if path in ENDPOINTS else "other"  # metrics.endpoint_label, without a call
            self._count(label, status, duration, record)
            if self.log is not None:
                self.log.write(self.log.line(scope, record, status, size, duration, forwarded))

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
