"""Token introspection over real TLS (RFC 7662): who may ask, and what it answers."""

from __future__ import annotations

import pytest
from conftest import Server, new_deployment
from servers import (
    introspect,
    post,
    resource_server,
    secret_client,
)


@pytest.fixture
def env(grants_server):  # noqa: ANN001, ANN201
    """The grants' server with its users, shared by the files that test its grants."""
    return grants_server


def test_introspection_of_an_active_token(env) -> None:  # noqa: ANN001
    """An active token introspects with client_id, scope, exp, iat and token_type, no-store."""
    server, _ = env
    client = secret_client(server, "client_credentials")
    value = post(
        server, "/oauth2/token", {"grant_type": "client_credentials", "scope": "read"}, client
    ).json()
    caller = resource_server(server)
    response = post(server, "/oauth2/introspect", {"token": value["access_token"]}, caller)
    assert response.headers["cache-control"] == "no-store"
    info = response.json()
    assert info["active"] is True and info["client_id"] == client["client_id"] and info["scope"] == "read"
    assert info["token_type"] == "Bearer" and info["exp"] - info["iat"] == 3600


@pytest.mark.parametrize("auth", [None, ("nobody", "x")], ids=["none", "bad"])
def test_introspection_needs_caller_authentication(env, auth) -> None:  # noqa: ANN001
    """Introspection without valid client authentication is 401."""
    server, _ = env
    with server.client() as http:
        response = http.post("/oauth2/introspect", data={"token": "x"}, auth=auth)
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


def test_introspection_of_dead_tokens_says_only_inactive(env) -> None:  # noqa: ANN001
    """Unknown, garbage and revoked tokens give exactly {"active": false}; a missing token is 400."""
    server, _ = env
    client = secret_client(server, "client_credentials")
    value = post(server, "/oauth2/token", {"grant_type": "client_credentials"}, client).json()["access_token"]
    post(server, "/oauth2/revoke", {"token": value}, client)
    for token in (value, "garbage", "x" * 500, "Zm9v"):
        assert introspect(server, token) == {"active": False}
    caller = secret_client(server, "client_credentials")
    missing = post(server, "/oauth2/introspect", {}, caller)
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"


def test_public_client_cannot_introspect(env) -> None:  # noqa: ANN001
    """A public client has no authentication to offer, so introspection refuses it."""
    server, _ = env
    client = server.deployment.add_client("pub", "--grant-type=password", "--auth-method", "none", "--force")
    response = post(server, "/oauth2/introspect", {"token": "x"}, client)
    assert response.status_code == 401


def test_expired_access_token_is_inactive(tmp_path, keystore, wheel_cache, serve) -> None:  # noqa: ANN001
    """A token past its exp introspects as {"active": false}."""
    import time

    dep = new_deployment(
        tmp_path / "ts", keystore, wheel_cache, oauth="<AccessTokenLifetime>1</AccessTokenLifetime>"
    )
    client = dep.add_client("e", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic")
    server = serve(dep)
    auth = (client["client_id"], client["client_secret"])
    with server.client() as http:
        value = http.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=auth).json()[
            "access_token"
        ]
        time.sleep(2.1)
        assert http.post("/oauth2/introspect", data={"token": value}, auth=auth).json() == {"active": False}


@pytest.fixture
def server(token_server) -> Server:  # noqa: ANN001
    """A server of the default deployment (the token endpoint's, tests/servers.py)."""
    return token_server[0]


def test_introspection_leaves_out_an_empty_scope(server) -> None:  # noqa: ANN001
    """A token granted no scope introspects without a scope member (RFC 7662 §2.2)."""
    client = server.deployment.add_client(
        "noscope", "--grant-type", "client_credentials", "--auth-method", "client_secret_basic"
    )
    auth = (client["client_id"], client["client_secret"])
    with server.client() as http:
        issued = http.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=auth).json()
        assert "scope" not in issued
        info = http.post("/oauth2/introspect", data={"token": issued["access_token"]}, auth=auth).json()
    assert info["active"] is True and info["client_id"] == client["client_id"]
    assert "scope" not in info
