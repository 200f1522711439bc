"""Token revocation over real TLS (RFC 7009)."""

from __future__ import annotations

import pytest
from servers import (
    introspect,
    password_grant,
    post,
    refresh,
    secret_client,
)


@pytest.fixture
def env(grants_server):  # noqa: ANN001, ANN201
    """The grants' server with its users, shared by the files that test its grants."""
    return grants_server


def test_revoking_a_refresh_token_revokes_its_access_tokens(env) -> None:  # noqa: ANN001
    """Revoking one's own refresh token is 200 and the grant's access tokens go inactive."""
    server, _ = env
    client = secret_client(server, "password", "refresh_token")
    tokens = password_grant(server, client).json()
    response = post(
        server,
        "/oauth2/revoke",
        {"token": tokens["refresh_token"], "token_type_hint": "refresh_token"},
        client,
    )
    assert response.status_code == 200
    assert introspect(server, tokens["access_token"]) == {"active": False}
    assert refresh(server, client, tokens["refresh_token"]).status_code == 400


def test_revoking_garbage_is_200(env) -> None:  # noqa: ANN001
    """An unknown token gets 200 (RFC 7009 §2.2)."""
    server, _ = env
    assert (
        post(
            server, "/oauth2/revoke", {"token": "garbage"}, secret_client(server, "client_credentials")
        ).status_code
        == 200
    )


def test_revoking_another_clients_token_is_refused(env) -> None:  # noqa: ANN001
    """A client cannot revoke another client's token, which stays active."""
    server, _ = env
    owner, other = secret_client(server, "client_credentials"), secret_client(server, "client_credentials")
    value = post(server, "/oauth2/token", {"grant_type": "client_credentials"}, owner).json()["access_token"]
    response = post(server, "/oauth2/revoke", {"token": value}, other)
    assert response.status_code == 400 and response.json()["error"] == "unauthorized_client"
    assert introspect(server, value)["active"] is True
