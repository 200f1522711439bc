"""The embedded store: one SQLite file in WAL mode.

WAL with ``synchronous=NORMAL``: a committed transaction survives the process being killed
(the WAL is in the OS page cache and replayed on the next open); only a power loss can undo
the last transactions. Every write is one short transaction.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

from .storage import Client, RegisteredCertificate, StorageError, TokenRecord

_SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS clients (
    client_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    token_endpoint_auth_method TEXT NOT NULL,
    grant_types TEXT NOT NULL,
    scopes TEXT NOT NULL,
    secret_hash TEXT,
    bind_tokens INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    certificates TEXT NOT NULL DEFAULT '[]',
    tls_subject TEXT
);
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    client_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    issued_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    username TEXT,
    cnf_x5t_s256 TEXT,
    grant_id TEXT,
    revoked INTEGER NOT NULL DEFAULT 0,
    claims TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS tokens_grant ON tokens(grant_id);
"""

#: Schema upgrades, by the version they lead to; each runs once, in one transaction.
_MIGRATIONS = {
    2: """
ALTER TABLE clients ADD COLUMN certificates TEXT NOT NULL DEFAULT '[]';
ALTER TABLE clients ADD COLUMN tls_subject TEXT;
""",
}


class SQLiteStorage:
    """``Storage`` over one SQLite file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise StorageError(
                    f"{self.path}: database schema {version} is newer than this tokensmith"
                    f" ({_SCHEMA_VERSION})"
                )
            if version == 0:
                self._db.executescript(_SCHEMA)
            else:
                for target in range(version + 1, _SCHEMA_VERSION + 1):
                    self._db.executescript(f"BEGIN; {_MIGRATIONS[target]} COMMIT;")
            self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"{self.path}: {exc}") from exc

    def _run(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: {exc}") from exc

    # -- clients --------------------------------------------------------------------------

    def add_client(self, client: Client) -> None:
        self._run(
            "INSERT INTO clients VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", _client_row(client)
        )

    def update_client(self, client: Client) -> bool:
        row = _client_row(client)
        cursor = self._run(
            "UPDATE clients SET name = ?, token_endpoint_auth_method = ?, grant_types = ?,"
            " scopes = ?, secret_hash = ?, bind_tokens = ?, created_at = ?, certificates = ?,"
            " tls_subject = ? WHERE client_id = ?",
            (*row[1:], row[0]),
        )
        return cursor.rowcount > 0

    def get_client(self, client_id: str) -> Client | None:
        row = self._run("SELECT * FROM clients WHERE client_id = ?", (client_id,)).fetchone()
        return _client(row) if row else None

    def list_clients(self) -> list[Client]:
        return [_client(r) for r in self._run("SELECT * FROM clients ORDER BY created_at, name")]

    def remove_client(self, client_id: str) -> bool:
        return self._run("DELETE FROM clients WHERE client_id = ?", (client_id,)).rowcount > 0

    # -- tokens ---------------------------------------------------------------------------

    def add_token(self, token: TokenRecord) -> None:
        self._run(
            "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                token.token_hash,
                token.kind,
                token.client_id,
                token.scope,
                token.issued_at,
                token.expires_at,
                token.username,
                token.cnf_x5t_s256,
                token.grant_id,
                int(token.revoked),
                json.dumps(token.claims),
            ),
        )

    def get_token(self, token_hash: str) -> TokenRecord | None:
        row = self._run("SELECT * FROM tokens WHERE token_hash = ?", (token_hash,)).fetchone()
        if row is None:
            return None
        return TokenRecord(*row[:9], revoked=bool(row[9]), claims=json.loads(row[10]))

    def revoke_token(self, token_hash: str) -> bool:
        cursor = self._run("UPDATE tokens SET revoked = 1 WHERE token_hash = ? AND revoked = 0",
                           (token_hash,))
        return cursor.rowcount > 0

    def revoke_grant(self, grant_id: str) -> int:
        cursor = self._run("UPDATE tokens SET revoked = 1 WHERE grant_id = ? AND revoked = 0",
                           (grant_id,))
        return cursor.rowcount

    def close(self) -> None:
        self._db.close()


def _client_row(client: Client) -> tuple[object, ...]:
    return (
        client.client_id,
        client.name,
        client.token_endpoint_auth_method,
        json.dumps(list(client.grant_types)),
        json.dumps(list(client.scopes)),
        client.secret_hash,
        int(client.bind_tokens),
        client.created_at,
        json.dumps([{**c.view(), "der": base64.b64encode(c.der).decode()} for c in client.certificates]),
        json.dumps(list(client.tls_subject)) if client.tls_subject else None,
    )


def _client(row: tuple) -> Client:
    return Client(
        client_id=row[0],
        name=row[1],
        token_endpoint_auth_method=row[2],
        grant_types=tuple(json.loads(row[3])),
        scopes=tuple(json.loads(row[4])),
        secret_hash=row[5],
        bind_tokens=bool(row[6]),
        created_at=row[7],
        certificates=tuple(
            RegisteredCertificate(c["sha256"], c["subject"], c["not_before"], c["not_after"],
                                  base64.b64decode(c["der"]))
            for c in json.loads(row[8])
        ),
        tls_subject=tuple(json.loads(row[9])) if row[9] else None,  # type: ignore[arg-type]
    )
