"""Focused unit tests of app/: the one renderer (responses), the app's state helpers, the
routes on Quart's URL map, and the fast lane driven by plain ASGI calls. No server."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import new_deployment
from tokensmith.app.factory import create_app
from tokensmith.app.front import Front, error_answer, plain_error, render
from tokensmith.app.routes import oauth
from tokensmith.app.state import bound_ports
from tokensmith.config.settings import AccessLogSettings, load_config
from tokensmith.errors import InvalidClientError, ServerError
from tokensmith.models import StorageError
from tokensmith.oauth.messages import Answer


def test_render_adds_no_store_to_json_answers() -> None:
    """RFC 6749 §5.1: Cache-Control no-store and Pragma no-cache on token responses."""
    headers, body = render(Answer(200, {"a": 1}, {"X-Extra": "y"}))
    assert json.loads(body) == {"a": 1}
    assert dict(headers) == {
        b"content-type": b"application/json",
        b"cache-control": b"no-store",
        b"pragma": b"no-cache",
        b"x-extra": b"y",
        b"content-length": str(len(body)).encode(),
    }
    empty_headers, empty = render(Answer(200, None))
    assert empty == b"" and dict(empty_headers) == {b"cache-control": b"no-store", b"content-length": b"0"}


def test_error_answer_maps_each_kind_of_failure(caplog: pytest.LogCaptureFixture) -> None:
    """OAuth errors keep their status and headers; a store failure is 503; a bug is a 500 that
    tells the client nothing more."""
    refused = error_answer(InvalidClientError("no", headers={"WWW-Authenticate": "Basic"}))
    assert refused.status == 401 and refused.body["error"] == "invalid_client"
    assert refused.headers == {"WWW-Authenticate": "Basic"}
    assert error_answer(StorageError("locked")).status == 503
    bug = error_answer(ZeroDivisionError("secret detail"), path="/x")
    assert bug.status == 500 and bug.body == ServerError("an internal error occurred").body()
    assert "secret detail" not in json.dumps(bug.body)


def test_plain_error_says_allow_on_405() -> None:
    """RFC 9110 §15.5.6: a 405 lists the resource's methods in Allow."""
    response = plain_error(405, "Method Not Allowed", ["POST", "GET", "GET"])
    assert response.status_code == 405 and response.headers["Allow"] == "GET, POST"
    assert plain_error(404, "Not Found").headers["Content-Type"].startswith("text/plain")


def test_bound_ports() -> None:
    assert bound_ports(["https://127.0.0.1:8443", "https://h"]) == [8443, 443]
    assert bound_ports(None) is None and bound_ports([]) is None


def test_every_endpoint_is_on_the_url_map(tmp_path, keystore, wheel_cache) -> None:  # noqa: ANN001
    """The POST endpoints, metadata and JWKS are rules of the Quart app users get."""
    app = create_app(load_config(new_deployment(tmp_path / "ts", keystore, wheel_cache).conf))
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    assert {
        "/oauth2/token",
        "/oauth2/introspect",
        "/oauth2/revoke",
        "/oauth2/jwks",
        "/.well-known/oauth-authorization-server",
    } <= rules
    assert oauth.name in app.blueprints


async def _call(app: Any, scope: dict, chunks: list[bytes]) -> tuple[int, dict[bytes, bytes], bytes]:
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


def lane(endpoint: Any, max_body: int = 100) -> tuple[Front, list[str]]:
    passed: list[str] = []

    async def fallback(scope: dict, receive: Any, send: Any) -> None:
        passed.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    # Only what the lane reads of a Runtime: the body limit; the endpoint gets it unchanged.
    rt = SimpleNamespace(name="runtime", identity=SimpleNamespace(max_body_bytes=max_body))
    front = Front(
        fallback, AccessLogSettings(enabled=False), routes={"/oauth2/token": endpoint}, runtime=lambda: rt
    )
    return front, passed


def scope(method: str = "POST", path: str = "/oauth2/token", headers: list | None = None) -> dict:
    return {"type": "http", "method": method, "path": path, "headers": headers or [], "http_version": "1.1"}


def test_fast_lane_serves_its_endpoints_and_passes_the_rest_on() -> None:
    async def endpoint(rt: Any, request: Any) -> Answer:
        return Answer(200, {"rt": rt.name, "body": request.body.decode()})

    app, passed = lane(endpoint)
    status, headers, body = asyncio.run(_call(app, scope(), [b"a=", b"1"]))
    assert status == 200 and json.loads(body) == {"rt": "runtime", "body": "a=1"}
    assert headers[b"cache-control"] == b"no-store"
    assert asyncio.run(_call(app, scope("GET", "/elsewhere"), [b""]))[0] == 204 and passed == ["/elsewhere"]


def test_fast_lane_refusals_are_oauth_json() -> None:
    """GET is 405 with Allow: POST (RFC 6749 §3.2); a body over the limit is 413 and closes;
    an endpoint's bug is a 500 server_error."""

    async def broken(rt: Any, request: Any) -> Answer:
        raise RuntimeError("bug")

    app, _ = lane(broken, max_body=4)
    status, headers, body = asyncio.run(_call(app, scope("GET"), [b""]))
    assert status == 405 and headers[b"allow"] == b"POST" and json.loads(body)["error"] == "invalid_request"
    status, headers, body = asyncio.run(_call(app, scope(headers=[(b"content-length", b"10")]), [b"x" * 10]))
    assert status == 413 and headers[b"connection"] == b"close"
    status, _, body = asyncio.run(_call(app, scope(), [b"ab", b"cde"]))
    assert status == 413
    status, _, body = asyncio.run(_call(app, scope(), [b"ok"]))
    assert status == 500 and json.loads(body)["error"] == "server_error"


def test_a_content_length_of_unicode_digits_is_a_400() -> None:
    """``"²".isdigit()`` is true and ``int("²")`` raises: a server that passed such a field
    through would have had a 500 (the HTTP parsers here refuse it first)."""

    async def endpoint(rt: Any, request: Any) -> Answer:
        return Answer(200, {})

    app, _ = lane(endpoint)
    status, _, body = asyncio.run(_call(app, scope(headers=[(b"content-length", "²".encode())]), [b""]))
    assert status == 400 and json.loads(body)["error"] == "invalid_request"
