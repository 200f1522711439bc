"""The embedded store: one SQLite file in WAL mode.

WAL with ``synchronous=NORMAL``: a committed transaction survives the process being killed
(the WAL is in the OS page cache and replayed on the next open); only a power loss can undo
the last transactions. Every write is one short transaction.

A serving process (``serving()``) turns SQLite's automatic checkpoints off: one of them ran
inside whichever request's commit pushed the WAL past 1,000 pages, copying pages and calling
fsync on the event loop's thread. ``checkpoint()`` does that work on its own connection
instead, which the server calls from a worker thread once a second.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
import time
from pathlib import Path

from .fileperm import private_file
from .storage import Client, RegisteredCertificate, StorageError, TokenRecord, User

_SCHEMA_VERSION = 4

#: Any change to clients, from any connection, bumps clients_version (see get_client).
_CLIENTS_VERSION = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('clients_version', 0);
CREATE TRIGGER IF NOT EXISTS clients_inserted AFTER INSERT ON clients
    BEGIN UPDATE meta SET value = value + 1 WHERE key = 'clients_version'; END;
CREATE TRIGGER IF NOT EXISTS clients_updated AFTER UPDATE ON clients
    BEGIN UPDATE meta SET value = value + 1 WHERE key = 'clients_version'; END;
CREATE TRIGGER IF NOT EXISTS clients_deleted AFTER DELETE ON clients
    BEGIN UPDATE meta SET value = value + 1 WHERE key = 'clients_version'; END;
"""

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
    tls_subject TEXT,
    access_token_lifetime INTEGER,
    refresh_token_lifetime INTEGER,
    jwt_access_tokens INTEGER
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
    claims TEXT NOT NULL DEFAULT '{}',
    used INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tokens_grant ON tokens(grant_id);
CREATE INDEX IF NOT EXISTS tokens_expiry ON tokens(expires_at);
CREATE TABLE IF NOT EXISTS revoked_grants (
    grant_id TEXT PRIMARY KEY,
    revoked_at INTEGER NOT NULL
);
""" + _CLIENTS_VERSION + """
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    failed_attempts INTEGER NOT NULL DEFAULT 0,
    locked_until INTEGER NOT NULL DEFAULT 0
);
"""

_CLIENT_CACHE = 200_000
_INSERT_TOKEN = "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
#: After a checkpoint, a WAL larger than this is truncated to it.
_WAL_SIZE_LIMIT = 64 * 1024 * 1024
#: A WAL longer than this (4 KiB frames) is restarted by the next checkpoint.
_RESTART_FRAMES = 4096

#: Schema upgrades, by the version they lead to; each runs once, in one transaction.
_MIGRATIONS = {
    2: """
ALTER TABLE clients ADD COLUMN certificates TEXT NOT NULL DEFAULT '[]';
ALTER TABLE clients ADD COLUMN tls_subject TEXT;
""",
    3: """
ALTER TABLE tokens ADD COLUMN used INTEGER NOT NULL DEFAULT 0;
ALTER TABLE clients ADD COLUMN access_token_lifetime INTEGER;
ALTER TABLE clients ADD COLUMN refresh_token_lifetime INTEGER;
ALTER TABLE clients ADD COLUMN jwt_access_tokens INTEGER;
CREATE TABLE revoked_grants (
    grant_id TEXT PRIMARY KEY,
    revoked_at INTEGER NOT NULL
);
CREATE TABLE users (
    username TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    failed_attempts INTEGER NOT NULL DEFAULT 0,
    locked_until INTEGER NOT NULL DEFAULT 0
);
""",
    4: _CLIENTS_VERSION + "CREATE INDEX IF NOT EXISTS tokens_expiry ON tokens(expires_at);",
}


class SQLiteStorage:
    """``Storage`` over one SQLite file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._clients: dict[str, Client] = {}
        self._clients_version = -1
        self._checkpointer: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._serving = False
        self._checkpoint_lock = threading.Lock()
        try:
            # 0600 before SQLite opens it: SQLite gives the -wal and -shm files its mode.
            private_file(self.path)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout=5000")  # first: workers open it together
            self._wal()
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
            self._upgrade()
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"{self.path}: {exc}") from exc

    def _wal(self) -> None:
        """Switch a new database to WAL. The switch needs the exclusive lock, and SQLite
        answers 'database is locked' at once, without waiting, when waiting could deadlock
        (another connection is upgrading its own lock): so wait here, up to 5 s."""
        deadline = time.monotonic() + 5
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _upgrade(self) -> None:
        """Create or upgrade the schema, in one transaction that holds the write lock, so that
        workers starting together do it once and a crash midway leaves the old schema."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise StorageError(
                    f"{self.path}: database schema {version} is newer than this tokensmith"
                    f" ({_SCHEMA_VERSION})"
                )
            scripts = [_SCHEMA] if version == 0 else [
                _MIGRATIONS[target] for target in range(version + 1, _SCHEMA_VERSION + 1)]
            for script in scripts:
                for statement in _statements(script):
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def serving(self) -> None:
        """Leave checkpoints to ``checkpoint()``: no request's commit runs one."""
        self._serving = True
        self._run("PRAGMA wal_autocheckpoint=0")
        if self._writer is not None:
            self._writer.execute("PRAGMA wal_autocheckpoint=0")

    def checkpoint(self) -> None:
        """Copy committed WAL pages into the database file; safe to call from another thread.

        A PASSIVE checkpoint never waits for readers or writers; what it cannot copy yet, the
        next call does (a long WAL is restarted, see below). It runs on a connection of its
        own, so the requests' connection is not held while it copies and syncs.
        """
        with self._checkpoint_lock:
            try:
                if self._checkpointer is None:
                    self._checkpointer = sqlite3.connect(self.path, isolation_level=None,
                                                         check_same_thread=False)
                    self._checkpointer.execute("PRAGMA busy_timeout=1000")
                frames = self._passive()
                if frames > _RESTART_FRAMES:
                    # Under steady writes a passive checkpoint never catches up with the last
                    # commit, and the WAL only starts over once one has. RESTART does, but
                    # holds writers while it copies and syncs: 60-70 ms after a second of
                    # load. Passive rounds first copy what arrived during the previous one,
                    # until little is left, so that RESTART holds them a few ms at most.
                    for _ in range(4):
                        before, frames = frames, self._passive()
                        if frames - before < 256:
                            break
                    self._checkpointer.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: checkpoint: {exc}") from exc

    def _passive(self) -> int:
        """One PASSIVE checkpoint; the WAL's length in frames."""
        assert self._checkpointer is not None
        return self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]

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
            "INSERT INTO clients VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", _client_row(client)
        )

    def update_client(self, client: Client) -> bool:
        row = _client_row(client)
        cursor = self._run(
            "UPDATE clients SET name = ?, token_endpoint_auth_method = ?, grant_types = ?,"
            " scopes = ?, secret_hash = ?, bind_tokens = ?, created_at = ?, certificates = ?,"
            " tls_subject = ?, access_token_lifetime = ?, refresh_token_lifetime = ?,"
            " jwt_access_tokens = ? WHERE client_id = ?",
            (*row[1:], row[0]),
        )
        return cursor.rowcount > 0

    def get_client(self, client_id: str) -> Client | None:
        # Clients are read on every request and change rarely: they are cached, and the cache
        # is dropped whenever clients_version moves. Triggers bump it on any change to
        # clients, from this process, another worker or the CLI, so a client registered or
        # rotated while the server runs is seen on the next request.
        version = self._run("SELECT value FROM meta WHERE key = 'clients_version'").fetchone()[0]
        if version != self._clients_version:
            self._clients.clear()
            self._clients_version = version
        client = self._clients.get(client_id)
        if client is None:
            row = self._run("SELECT * FROM clients WHERE client_id = ?", (client_id,)).fetchone()
            if row is None:
                return None  # unknown ids are not cached: anyone can make up millions
            client = _client(row)
            if len(self._clients) >= _CLIENT_CACHE:
                self._clients.clear()
            self._clients[client_id] = client
        return client

    def list_clients(self) -> list[Client]:
        return [_client(r) for r in self._run("SELECT * FROM clients ORDER BY created_at, name")]

    def scopes_in_use(self) -> list[str]:
        rows = self._run("SELECT DISTINCT s.value FROM clients, json_each(clients.scopes) s"
                         " ORDER BY s.value")
        return [row[0] for row in rows]

    def remove_client(self, client_id: str) -> bool:
        return self._run("DELETE FROM clients WHERE client_id = ?", (client_id,)).rowcount > 0

    # -- tokens ---------------------------------------------------------------------------

    def add_token(self, token: TokenRecord) -> None:
        self.add_tokens([token])

    def add_tokens(self, tokens: list[TokenRecord]) -> None:
        try:
            with self._db:  # one transaction: the token response is stored whole or not at all
                self._db.execute("BEGIN")
                self._db.executemany(_INSERT_TOKEN, [_token_row(token) for token in tokens])
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: {exc}") from exc

    def try_add_tokens(self, tokens: list[TokenRecord]) -> bool:
        """``add_tokens``, but False at once, storing nothing, while another connection holds
        the write lock (another worker's commit, a checkpoint restart, the CLI).

        SQLite's busy handler would sleep on the event loop's thread instead, 1 ms and more
        per collision; with two workers writing, collisions are frequent. The writes go
        through a connection of their own with no busy timeout.
        """
        if self._writer is None:
            try:
                self._writer = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                               timeout=0)
                self._writer.execute("PRAGMA synchronous=NORMAL")
                if self._serving:
                    self._writer.execute("PRAGMA wal_autocheckpoint=0")
                self._writer.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: {exc}") from exc
        try:
            self._writer.execute("BEGIN IMMEDIATE")  # the write lock now, or SQLITE_BUSY now
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode == sqlite3.SQLITE_BUSY:
                return False
            raise StorageError(f"{self.path}: {exc}") from exc
        try:
            self._writer.executemany(_INSERT_TOKEN, [_token_row(token) for token in tokens])
            self._writer.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._writer.in_transaction:
                self._writer.execute("ROLLBACK")
            raise StorageError(f"{self.path}: {exc}") from exc
        return True

    def get_token(self, token_hash: str) -> TokenRecord | None:
        # A revoked grant revokes every token of it, also those stored after the revocation
        # (a refresh that raced with a replay detection).
        row = self._run(
            "SELECT t.*, EXISTS(SELECT 1 FROM revoked_grants g WHERE g.grant_id = t.grant_id)"
            " FROM tokens t WHERE t.token_hash = ?", (token_hash,)).fetchone()
        if row is None:
            return None
        return TokenRecord(*row[:9], revoked=bool(row[9] or row[12]), claims=json.loads(row[10]),
                           used=bool(row[11]))

    def revoke_token(self, token_hash: str) -> bool:
        cursor = self._run("UPDATE tokens SET revoked = 1 WHERE token_hash = ? AND revoked = 0",
                           (token_hash,))
        return cursor.rowcount > 0

    def revoke_grant(self, grant_id: str) -> int:
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.execute("INSERT OR IGNORE INTO revoked_grants VALUES (?, ?)",
                                 (grant_id, int(time.time())))
                cursor = self._db.execute(
                    "UPDATE tokens SET revoked = 1 WHERE grant_id = ? AND revoked = 0", (grant_id,))
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: {exc}") from exc
        return cursor.rowcount

    def use_refresh_token(self, token_hash: str, now: int) -> bool:
        # One UPDATE, so that among concurrent callers (threads or processes) exactly one
        # sees a row change: SQLite serialises writers.
        cursor = self._run(
            "UPDATE tokens SET used = 1 WHERE token_hash = ? AND kind = 'refresh' AND used = 0"
            " AND revoked = 0 AND expires_at > ?"
            " AND grant_id NOT IN (SELECT grant_id FROM revoked_grants)",
            (token_hash, now),
        )
        return cursor.rowcount == 1

    def purge_expired(self, before: int) -> int:
        # Expired tokens answer introspection as inactive whether or not they are kept, so
        # keeping them only grows the file (about 1 MB per 4,000 tokens).
        return self._run("DELETE FROM tokens WHERE expires_at < ?", (before,)).rowcount

    # -- users ----------------------------------------------------------------------------

    def add_user(self, user: User) -> None:
        self._run("INSERT INTO users VALUES (?, ?, ?, ?, ?)",
                  (user.username, user.password_hash, user.created_at, user.failed_attempts,
                   user.locked_until))

    def get_user(self, username: str) -> User | None:
        row = self._run("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
        return User(*row) if row else None

    def list_users(self) -> list[User]:
        return [User(*row) for row in self._run("SELECT * FROM users ORDER BY username")]

    def remove_user(self, username: str) -> bool:
        return self._run("DELETE FROM users WHERE username = ?", (username,)).rowcount > 0

    def record_login_failure(self, username: str, now: int, limit: int, lockout: int) -> None:
        self._run(
            "UPDATE users SET failed_attempts = failed_attempts + 1,"
            " locked_until = CASE WHEN failed_attempts + 1 >= ? THEN ? ELSE locked_until END"
            " WHERE username = ?",
            (limit, now + lockout, username),
        )

    def clear_login_failures(self, username: str) -> None:
        self._run("UPDATE users SET failed_attempts = 0, locked_until = 0 WHERE username = ?",
                  (username,))

    def close(self) -> None:
        with self._checkpoint_lock:
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None
        if self._writer is not None:
            self._writer.close()
        self._db.close()

    def __enter__(self) -> SQLiteStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _statements(script: str) -> list[str]:
    """The statements of *script* (``executescript`` would commit the open transaction)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    assert not current.strip(), f"incomplete SQL: {current!r}"
    return statements


def _token_row(token: TokenRecord) -> tuple[object, ...]:
    return (
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
        int(token.used),
    )


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
        client.access_token_lifetime,
        client.refresh_token_lifetime,
        None if client.jwt_access_tokens is None else int(client.jwt_access_tokens),
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
        access_token_lifetime=row[10],
        refresh_token_lifetime=row[11],
        jwt_access_tokens=None if row[12] is None else bool(row[12]),
    )
