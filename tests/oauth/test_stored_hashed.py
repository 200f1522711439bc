"""Secrets and tokens are stored only hashed and never logged (RFC 6749 §10.10, RFC 6819 §5.1.4)."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator

import httpx
import pytest
from servers import (
    PASSWORD,
    basic,
    introspect,
    password_grant,
    post,
    refresh,
    secret_client,
)


@pytest.fixture
def env(token_server):  # noqa: ANN001, ANN201
    """The token endpoint's server with its basic and post clients (tests/servers.py)."""
    return token_server


@pytest.fixture
def http(env) -> Iterator[httpx.Client]:  # noqa: ANN001
    with env[0].client() as client:
        yield client


def test_access_token_is_stored_only_as_its_hash(env, http) -> None:  # noqa: ANN001
    """The database holds the SHA-256 of the token and never the token itself."""
    server, client, _ = env
    token = http.post("/oauth2/token", auth=basic(client), data={"grant_type": "client_credentials"}).json()[
        "access_token"
    ]
    database = server.deployment.database
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT token_hash FROM tokens").fetchall()
    assert (hashlib.sha256(token.encode()).hexdigest(),) in rows
    for path in database.parent.iterdir():
        assert token.encode() not in path.read_bytes()


def test_client_secret_is_stored_only_as_a_slow_hash(env) -> None:  # noqa: ANN001
    """sp add stores an scrypt hash of the secret; the secret itself is nowhere in the store."""
    server, client, _ = env
    with sqlite3.connect(server.deployment.database) as db:
        stored = db.execute(
            "SELECT secret_hash FROM clients WHERE client_id = ?", (client["client_id"],)
        ).fetchone()[0]
    assert stored.startswith("scrypt$")
    for path in server.deployment.database.parent.iterdir():
        assert str(client["client_secret"]).encode() not in path.read_bytes()


def test_no_secret_or_token_in_clear_in_store_or_log(grants_server) -> None:  # noqa: ANN001
    """After a session of every kind of request, no secret, password or token is in the files."""
    server, root = grants_server
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
