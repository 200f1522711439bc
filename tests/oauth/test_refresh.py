"""Refresh tokens over real TLS: rotation, replay, binding (RFC 6749 §6, RFC 9700 §4.14.2, RFC 8705 §3-4)."""

from __future__ import annotations

import threading
from collections import Counter

import pki
import pytest
from servers import (
    introspect,
    password_grant,
    refresh,
    secret_client,
)


@pytest.fixture
def env(grants_server):  # noqa: ANN001, ANN201
    """The grants' server with its users, shared by the files that test its grants."""
    return grants_server


def test_no_refresh_token_without_the_refresh_grant(env) -> None:  # noqa: ANN001
    """A client not registered for refresh_token gets no refresh token from the password grant."""
    server, _ = env
    body = password_grant(server, secret_client(server, "password")).json()
    assert "refresh_token" not in body


def test_refresh_rotates_and_replay_revokes_the_family(env) -> None:  # noqa: ANN001
    """A refresh returns a new refresh token; replaying the old one is invalid_grant and kills all."""
    server, _ = env
    client = secret_client(server, "password", "refresh_token")
    first = password_grant(server, client).json()
    second = refresh(server, client, first["refresh_token"])
    assert second.status_code == 200, second.text
    second = second.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert introspect(server, second["access_token"])["active"] is True
    replay = refresh(server, client, first["refresh_token"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    for value in (first["access_token"], second["access_token"], second["refresh_token"]):
        assert introspect(server, value) == {"active": False}
    assert refresh(server, client, second["refresh_token"]).status_code == 400


def test_refresh_token_of_another_client_is_invalid_grant(env) -> None:  # noqa: ANN001
    """A refresh token presented by a client it was not issued to is 400 invalid_grant."""
    server, _ = env
    owner = secret_client(server, "password", "refresh_token")
    thief = secret_client(server, "password", "refresh_token")
    value = password_grant(server, owner).json()["refresh_token"]
    response = refresh(server, thief, value)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    assert refresh(server, owner, value).status_code == 200


def test_refresh_cannot_widen_scope(env) -> None:  # noqa: ANN001
    """A refresh may narrow the scope but asking for more is 400 invalid_scope."""
    server, _ = env
    client = secret_client(server, "password", "refresh_token", scopes=("read", "write", "admin"))
    tokens = password_grant(server, client, scope="read write").json()
    wider = refresh(server, client, tokens["refresh_token"], scope="read admin")
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"
    narrower = refresh(server, client, tokens["refresh_token"], scope="read")
    assert narrower.status_code == 200 and narrower.json()["scope"] == "read"
    again = refresh(server, client, narrower.json()["refresh_token"], scope="read write")
    assert again.status_code == 200 and again.json()["scope"] == "read write"


def test_concurrent_refreshes_give_exactly_one_success(env) -> None:  # noqa: ANN001
    """50 concurrent uses of one refresh token give exactly one 200."""
    server, _ = env
    client = secret_client(server, "password", "refresh_token")
    value = password_grant(server, client).json()["refresh_token"]
    statuses: Counter[int] = Counter()
    barrier = threading.Barrier(50)

    def use() -> None:
        with server.client() as http:
            barrier.wait()
            response = http.post(
                "/oauth2/token",
                data={"grant_type": "refresh_token", "refresh_token": value},
                auth=(client["client_id"], client["client_secret"]),
            )
            statuses[response.status_code] += 1

    threads = [threading.Thread(target=use) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert statuses == Counter({200: 1, 400: 49})


def test_mtls_client_refresh_binds_the_new_token_to_this_certificate(env) -> None:  # noqa: ANN001
    """K/S refreshing with its certificate gets 200 and an access token bound to that certificate."""
    server, root = env
    old, new = pki.self_signed(), pki.self_signed()
    old_files, new_files = old.write(root, "r-old"), new.write(root, "r-new")
    client = server.deployment.add_client(
        "m",
        "--grant-type=password",
        "--grant-type=refresh_token",
        "--auth-method",
        "self_signed_tls_client_auth",
        "--cert",
        str(old_files[0]),
        "--cert",
        str(new_files[0]),
    )
    tokens = password_grant(server, client, cert=old_files).json()
    assert introspect(server, tokens["access_token"])["cnf"]["x5t#S256"] == old.x5t_s256()
    renewed = refresh(server, client, tokens["refresh_token"], cert=new_files)
    assert renewed.status_code == 200, renewed.text
    assert introspect(server, renewed.json()["access_token"])["cnf"]["x5t#S256"] == new.x5t_s256()


def test_public_client_refresh_token_is_bound_to_its_certificate(env) -> None:  # noqa: ANN001
    """A public client's refresh token only works with the certificate it was issued with."""
    server, root = env
    mine, other = pki.self_signed(), pki.self_signed()
    mine_files, other_files = mine.write(root, "pub-mine"), other.write(root, "pub-other")
    client = server.deployment.add_client(
        "pub", "--grant-type=password", "--grant-type=refresh_token", "--auth-method", "none", "--force"
    )
    assert "client_secret" not in client
    tokens = password_grant(server, client, cert=mine_files).json()
    stolen = refresh(server, client, tokens["refresh_token"], cert=other_files)
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
    bare = refresh(server, client, tokens["refresh_token"])
    assert bare.status_code == 400
    assert refresh(server, client, tokens["refresh_token"], cert=mine_files).status_code == 200
