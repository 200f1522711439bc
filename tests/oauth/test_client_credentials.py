"""The client_credentials grant over real TLS with the bundled authenticators (RFC 6749 §4.4)."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import pytest
from servers import assert_no_store, basic, post, secret_client


@pytest.fixture
def env(token_server):  # noqa: ANN001, ANN201
    """The token endpoint's server with its basic and post clients (tests/servers.py)."""
    return token_server


@pytest.fixture
def http(env) -> Iterator[httpx.Client]:  # noqa: ANN001
    with env[0].client() as client:
        yield client


def test_basic_client_gets_an_opaque_bearer_token(env, http) -> None:  # noqa: ANN001
    """A client_secret_basic client gets 200 JSON with a Bearer token and no-store headers."""
    _, client, _ = env
    response = http.post("/oauth2/token", auth=basic(client), data={"grant_type": "client_credentials"})
    assert response.status_code == 200, response.text
    assert_no_store(response)
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == "read write"
    assert len(base64.urlsafe_b64decode(body["access_token"] + "=")) >= 16


def test_post_client_gets_a_token(env, http) -> None:  # noqa: ANN001
    """A client_secret_post client authenticates with client_id and client_secret in the body."""
    _, _, client = env
    response = http.post(
        "/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client["client_id"],
            "client_secret": client["client_secret"],
        },
    )
    assert response.status_code == 200, response.text
    assert "scope" not in response.json()


def test_http1_and_http2_both_serve(env) -> None:  # noqa: ANN001
    """The same request works over HTTP/1.1 and over HTTP/2 (ALPN)."""
    server, client, _ = env
    for http2 in (False, True):
        with server.client(http2=http2) as http:
            response = http.post(
                "/oauth2/token", auth=basic(client), data={"grant_type": "client_credentials"}
            )
            assert response.status_code == 200
            assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")


def test_client_credentials_gets_no_refresh_token(grants_server) -> None:  # noqa: ANN001
    """client_credentials issues no refresh token (RFC 6749 §4.4.3)."""
    server, _ = grants_server
    client = secret_client(server, "client_credentials", "refresh_token")
    body = post(server, "/oauth2/token", {"grant_type": "client_credentials"}, client).json()
    assert "refresh_token" not in body and body["access_token"]
