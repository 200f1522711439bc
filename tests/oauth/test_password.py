"""Password and refresh-token grants, introspection and revocation, over real TLS.

RFC 6749 §6, RFC 8705 §3-4, RFC 9700 §4.14, RFC 7662, RFC 7009, and what the store and the
log keep.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pki
import pytest
from conftest import Server, new_deployment, start_server

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def env(tmp_path_factory, keystore, wheel_cache) -> Iterator[tuple[Server, Path]]:  # noqa: ANN001
    root = tmp_path_factory.mktemp("grants")
    dep = new_deployment(
        root / "ts",
        keystore,
        wheel_cache,
        oauth="<MaxFailedLogins>3</MaxFailedLogins><LockoutSeconds>600</LockoutSeconds>",
    )
    for name in ("alice", "bob", "carol", "dave"):
        dep.cli("user", "add", name, "--password-stdin", input=PASSWORD + "\n")
    server = start_server(dep)
    yield server, root
    server.stop()


def secret_client(server: Server, *grants: str, scopes: tuple[str, ...] = ("read", "write")) -> dict:
    args = [f"--grant-type={g}" for g in grants] + [f"--scope={s}" for s in scopes]
    return server.deployment.add_client("c", *args, "--auth-method", "client_secret_basic")


def post(
    server: Server, path: str, data: dict, client: dict | None = None, cert: tuple[Path, Path] | None = None
):  # noqa: ANN201
    auth = (client["client_id"], client["client_secret"]) if client and "client_secret" in client else None
    if client and auth is None:
        data = {**data, "client_id": client["client_id"]}
    with server.client(cert=cert) as http:
        return http.post(path, data=data, auth=auth)


def password_grant(
    server: Server,
    client: dict,
    user: str = "alice",
    password: str = PASSWORD,
    cert: tuple[Path, Path] | None = None,
    **extra: str,
):  # noqa: ANN201
    return post(
        server,
        "/oauth2/token",
        {"grant_type": "password", "username": user, "password": password, **extra},
        client,
        cert,
    )


def refresh(server: Server, client: dict, value: str, cert: tuple[Path, Path] | None = None, **extra: str):  # noqa: ANN201
    return post(
        server,
        "/oauth2/token",
        {"grant_type": "refresh_token", "refresh_token": value, **extra},
        client,
        cert,
    )


def resource_server(server: Server) -> dict:
    return server.deployment.add_client(
        "rs", "--grant-type=client_credentials", "--resource-server", "--auth-method", "client_secret_basic"
    )


def introspect(server: Server, value: str, caller: dict | None = None) -> dict:
    """Introspect *value* as *caller*, by default a new resource server (sp add --resource-server)."""
    return post(server, "/oauth2/introspect", {"token": value}, caller or resource_server(server)).json()


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


def test_client_credentials_gets_no_refresh_token(env) -> None:  # noqa: ANN001
    """client_credentials issues no refresh token (RFC 6749 §4.4.3)."""
    server, _ = env
    client = secret_client(server, "client_credentials", "refresh_token")
    body = post(server, "/oauth2/token", {"grant_type": "client_credentials"}, client).json()
    assert "refresh_token" not in body and body["access_token"]


def test_no_refresh_token_without_the_refresh_grant(env) -> None:  # noqa: ANN001
    """A client not registered for refresh_token gets no refresh token from the password grant."""
    server, _ = env
    body = password_grant(server, secret_client(server, "password")).json()
    assert "refresh_token" not in body


# --- refresh tokens (RFC 6749 §6, RFC 9700 §4.14.2) ----------------------------------------------


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


# --- introspection (RFC 7662) ---------------------------------------------------------------------


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


# --- revocation (RFC 7009) ------------------------------------------------------------------------


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


# --- secrets at rest (RFC 6749 §10.10, RFC 6819 §5.1.4) --------------------------------------------


def test_no_secret_or_token_in_clear_in_store_or_log(env) -> None:  # noqa: ANN001
    """After a session of every kind of request, no secret, password or token is in the files."""
    server, root = env
    seen: list[str] = [PASSWORD]
    client = secret_client(server, "password", "refresh_token", "client_credentials")
    seen.append(str(client["client_secret"]))
    tokens = password_grant(server, client).json()
    renewed = refresh(server, client, tokens["refresh_token"]).json()
    refresh(server, client, tokens["refresh_token"])  # a replay, logged
    cc = post(server, "/oauth2/token", {"grant_type": "client_credentials"}, client).json()
    password_grant(server, client, password="wrong-password-123")
    introspect(server, cc["access_token"])
    post(server, "/oauth2/revoke", {"token": renewed["refresh_token"]}, client)
    seen += [
        tokens["access_token"],
        tokens["refresh_token"],
        renewed["access_token"],
        renewed["refresh_token"],
        cc["access_token"],
        "wrong-password-123",
    ]
    files = [p for p in server.deployment.database.parent.iterdir() if p.is_file()]
    files.append(server.log_path)
    assert any(p.name.endswith("-wal") or p.suffix == ".db" for p in files)
    for path in files:
        data = path.read_bytes()
        for value in seen:
            assert value.encode() not in data, f"{value[:6]}... in clear in {path.name}"


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
