"""The password grant over real TLS (RFC 6749 §4.3): tokens, wrong passwords, lockout."""

from __future__ import annotations

import pytest
from servers import (
    PASSWORD,
    introspect,
    password_grant,
    secret_client,
)


@pytest.fixture
def env(grants_server):  # noqa: ANN001, ANN201
    """The grants' server with its users, shared by the files that test its grants."""
    return grants_server


# --- password grant (RFC 6749 §4.3) ------------------------------------------------------------


def test_password_grant_gives_tokens_with_username(env) -> None:  # noqa: ANN001
    """The password grant returns an access and a refresh token; introspection names the user."""
    server, _ = env
    client = secret_client(server, "password", "refresh_token")
    response = password_grant(server, client)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["refresh_token"] and body["token_type"] == "Bearer" and body["scope"] == "read write"
    info = introspect(server, body["access_token"])
    assert info["active"] is True and info["username"] == "alice" and info["client_id"] == client["client_id"]


def test_wrong_password_is_invalid_grant_and_not_logged(env) -> None:  # noqa: ANN001
    """A wrong password is 400 invalid_grant; the log names the user, never the password."""
    server, _ = env
    client = secret_client(server, "password")
    wrong = "hunter2-is-not-it"
    response = password_grant(server, client, user="bob", password=wrong)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    unknown = password_grant(server, client, user="nobody", password=wrong)
    assert unknown.json() == response.json()
    assert "'bob'" in server.log() and wrong not in server.log() and PASSWORD not in server.log()


def test_repeated_failures_lock_only_that_user(env) -> None:  # noqa: ANN001
    """After MaxFailedLogins wrong passwords the user is locked, even for the right one (the
    answer is that of a wrong password: docs/reliability.md); others are not."""
    server, _ = env
    client = secret_client(server, "password")
    for _ in range(3):
        assert password_grant(server, client, user="carol", password="nope").status_code == 400
    locked = password_grant(server, client, user="carol")
    assert (
        locked.status_code == 400
        and locked.json()["error_description"] == "the resource owner credentials are invalid"
    )
    assert "user 'carol' is locked out" in server.log()
    assert password_grant(server, client, user="dave").status_code == 200
