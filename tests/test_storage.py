"""The SQLite store: schema upgrades and the client cache."""

from __future__ import annotations

import sqlite3

from tokensmith.sqlite_store import SQLiteStorage
from tokensmith.storage import Client

# The first schema tokensmith shipped (user_version 1).
SCHEMA_1 = """
CREATE TABLE clients (client_id TEXT PRIMARY KEY, name TEXT NOT NULL,
    token_endpoint_auth_method TEXT NOT NULL, grant_types TEXT NOT NULL, scopes TEXT NOT NULL,
    secret_hash TEXT, bind_tokens INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL);
CREATE TABLE tokens (token_hash TEXT PRIMARY KEY, kind TEXT NOT NULL, client_id TEXT NOT NULL,
    scope TEXT NOT NULL, issued_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, username TEXT,
    cnf_x5t_s256 TEXT, grant_id TEXT, revoked INTEGER NOT NULL DEFAULT 0,
    claims TEXT NOT NULL DEFAULT '{}');
INSERT INTO clients VALUES ('old', 'old client', 'client_secret_basic', '["client_credentials"]', '[]', NULL, 0, 1);
PRAGMA user_version=1;
"""


def test_a_version_1_database_is_upgraded(tmp_path) -> None:  # noqa: ANN001
    """A database made by the first release opens, keeps its clients and gains the new tables."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_1)
    store = SQLiteStorage(path)
    try:
        assert store.get_client("old").name == "old client"
        assert store.get_user("nobody") is None and store.scopes_in_use() == []
        assert store.remove_client("old") and store.get_client("old") is None
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 4


def test_client_cache_sees_changes_from_another_connection(tmp_path) -> None:  # noqa: ANN001
    """A client changed through another connection (the CLI, another worker) is seen at once."""
    path = tmp_path / "store.db"
    server, cli = SQLiteStorage(path), SQLiteStorage(path)
    try:
        cli.add_client(Client("c1", "first", "client_secret_basic", ("client_credentials",)))
        assert server.get_client("c1").name == "first"
        cli.update_client(Client("c1", "renamed", "client_secret_basic", ("client_credentials",)))
        assert server.get_client("c1").name == "renamed"
        cli.remove_client("c1")
        assert server.get_client("c1") is None
    finally:
        server.close()
        cli.close()


def test_purge_removes_only_expired_tokens(tmp_path) -> None:  # noqa: ANN001
    """purge_expired deletes tokens past their expiry and keeps live ones."""
    from tokensmith.storage import TokenRecord

    store = SQLiteStorage(tmp_path / "store.db")
    try:
        store.add_tokens([TokenRecord("dead", "access", "c", "", 0, 100),
                          TokenRecord("live", "access", "c", "", 0, 10_000)])
        assert store.purge_expired(5_000) == 1
        assert store.get_token("dead") is None and store.get_token("live") is not None
    finally:
        store.close()
