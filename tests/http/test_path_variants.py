"""Spellings of an endpoint's path that the fast lane does not serve are not served at all.

Werkzeug's routing drops leading slashes and (with ``strict_slashes`` off) a trailing one, so
``//oauth2/token``, ``/oauth2/token/`` and an HTTP/2 ``:path`` of ``oauth2/token`` reached
the Quart routes, past every check keyed on the exact path, with Quart's own body deadline
and plain-text errors. Now they are 404s; and the Quart POST views, which answer when the
fast lane is not in front, read the body and answer errors exactly as the fast lane does.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import Deployment
from test_serving import h2_connection, h2_exchange
from tokensmith.app.factory import create_app
from tokensmith.app.front import Front
from tokensmith.config.settings import load_config


@pytest.fixture
def running(deployment: Deployment, serve):  # noqa: ANN001, ANN201
    deployment.connectors = (
        '<Connector address="127.0.0.1" port="0" clientAuth="want" connectionTimeout="1000"/>'
    )
    deployment.write()
    client = deployment.add_client(
        "v", "--grant-type", "client_credentials", "--auth-method", "client_secret_post"
    )
    return serve(deployment), client


def _post(server, target: str, body: bytes, length: int | None = None) -> bytes:  # noqa: ANN001
    with server.raw_tls() as sock:
        sock.sendall(
            f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n\r\n".encode()
            + body
        )
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return data


@pytest.mark.parametrize(
    "target", ["//oauth2/token", "///oauth2/token", "/oauth2/token/", "//oauth2/introspect"]
)
def test_path_variant_is_a_404_over_http1(running, target: str) -> None:  # noqa: ANN001
    server, client = running
    form = f"grant_type=client_credentials&client_id={client['client_id']}&client_secret={client['client_secret']}"
    answer = _post(server, target, form.encode())
    assert answer.startswith(b"HTTP/1.1 404"), answer[:200]
    assert b"access_token" not in answer


def test_path_variant_cannot_hold_a_body_open_longer(running) -> None:  # noqa: ANN001
    """The exact path cuts a slow body at connectionTimeout with RFC 6749 JSON; a variant is
    a 404 at once, rather than waiting for Quart's own 60-second body deadline."""
    server, _ = running
    started = time.monotonic()
    exact = _post(server, "/oauth2/token", b"ab", length=100)
    assert exact.startswith(b"HTTP/1.1 408") and b'"error":"invalid_request"' in exact, exact[:300]
    variant = _post(server, "/oauth2/token/", b"ab", length=100)
    assert variant.startswith(b"HTTP/1.1 404"), variant[:200]
    assert time.monotonic() - started < 20


def test_http2_path_without_its_slash_is_a_404(running) -> None:  # noqa: ANN001
    server, client = running
    sock, conn = h2_connection(server)
    form = f"grant_type=client_credentials&client_id={client['client_id']}&client_secret={client['client_secret']}"
    with sock:
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":authority", b"127.0.0.1"),
            (b":path", b"oauth2/token"),
            (b"content-type", b"application/x-www-form-urlencoded"),
        ]
        conn.send_headers(1, headers)
        conn.send_data(1, form.encode(), end_stream=True)
        sock.sendall(conn.data_to_send())
        seen = h2_exchange(sock, conn, 1)
    assert seen[1] in (b"404", "reset"), seen


def _without_fast_lane(app):  # noqa: ANN001, ANN202
    layer = app.asgi_app
    while not isinstance(layer, Front):
        layer = layer.app
    layer.routes = {}  # everything goes to the Quart routes, as under a test client of Quart alone


def test_quart_views_answer_as_the_fast_lane(deployment: Deployment) -> None:
    """Without the fast lane: a wrong method is the JSON 405, OPTIONS is not 200, a body over
    the limit is the JSON 413, and a variant path is a 404."""
    deployment.oauth = "<MaxRequestBodyBytes>100</MaxRequestBodyBytes>"
    deployment.write()
    app = create_app(load_config(deployment.conf))
    _without_fast_lane(app)

    async def run() -> None:
        http = app.test_client()
        wrong = await http.get("/oauth2/token")
        assert wrong.status_code == 405 and (await wrong.get_json())["error"] == "invalid_request"
        options = await http.options("/oauth2/token")
        assert options.status_code == 405
        big = await http.post(
            "/oauth2/token",
            data="x=" + "y" * 200,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert big.status_code == 413 and (await big.get_json())["error"] == "invalid_request"
        missing = await http.post("/oauth2/token", form={"grant_type": "client_credentials"})
        assert missing.status_code == 401 and (await missing.get_json())["error"] == "invalid_client"
        assert (
            await http.post("/oauth2/token/", form={"grant_type": "client_credentials"})
        ).status_code == 404

    asyncio.run(run())
