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
import functools
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Concatenate, ParamSpec, TypeVar

from tokensmith.models import (
    AuditEntry,
    AuthorizationCode,
    Client,
    Consent,
    Issue,
    LoginPolicy,
    RegisteredCertificate,
    SignInSession,
    StorageError,
    TokenRecord,
    User,
)
from tokensmith.security.files import private_file

_SCHEMA_VERSION = 8

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

#: Schema 5: what the token lifecycle needs (see docs/reliability.md).
#: - users.user_id: grants refer to it, never to the username, which may be reused;
#: - tokens_user: a user's tokens are revoked with them (password grants only: partial);
#: - revoked_clients: a removed client's tokens are revoked (client_ids are never reused),
#:   checked on read rather than by rewriting every row of the client;
#: - login_failures: password failures per user and source address.
_LIFECYCLE = """
CREATE UNIQUE INDEX IF NOT EXISTS users_id ON users(user_id);
CREATE INDEX IF NOT EXISTS tokens_user ON tokens(user_id) WHERE user_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS revoked_clients (
    client_id TEXT PRIMARY KEY,
    revoked_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS login_failures (
    username TEXT NOT NULL,
    source TEXT NOT NULL,
    failures INTEGER NOT NULL,
    last_failure INTEGER NOT NULL,
    locked_until INTEGER NOT NULL,
    PRIMARY KEY (username, source)
) WITHOUT ROWID;
"""

#: Schema 6: what third-party authenticators need.
#: - clients.metadata: the client's RFC 7591 metadata beyond the typed columns (``jwks``,
#:   ``jwks_uri``, ``contacts``, namespaced members of plugins, ...), one JSON object;
#: - plugin_state: plugins' shared state (``put_if_absent`` for single-use values such as
#:   RFC 7523 ``jti``, and a small key-value store), per namespace (the plugin's name);
#:   a row whose ``expires_at`` has passed is absent to every read and purged with tokens.
_PLUGIN_STATE = """
CREATE TABLE IF NOT EXISTS plugin_state (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT,
    expires_at INTEGER,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS plugin_state_expiry ON plugin_state(expires_at)
    WHERE expires_at IS NOT NULL;
"""

#: Schema 7: remote administration (app/admin.py, app/registration.py).
#: - users.role: ``admin``, ``reader`` or NULL (a resource owner only), for the admin API;
#: - audit_log: every change made through the admin API, the CLI or dynamic registration;
#: - registration_tokens: RFC 7591 initial access tokens and RFC 7592 registration access
#:   tokens, by the SHA-256 of their value (never the value).
_ADMINISTRATION = """
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    via TEXT NOT NULL,
    source TEXT,
    action TEXT NOT NULL,
    target TEXT,
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS registration_tokens (
    token_hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    client_id TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER
);
CREATE INDEX IF NOT EXISTS registration_tokens_client ON registration_tokens(client_id)
    WHERE client_id IS NOT NULL;
"""

#: Schema 8: the authorization code grant (oauth/authorize.py, app/signin.py).
#: - authorization_codes: by the SHA-256 of the code (never the code), single use;
#: - consents: the scopes each user consented to give each client;
#: - signin_sessions: the login page's sessions, by the SHA-256 of the cookie value.
_AUTHORIZATION = """
CREATE TABLE IF NOT EXISTS authorization_codes (
    code_hash TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    redirect_uri_given INTEGER NOT NULL,
    scope TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    user_id TEXT NOT NULL,
    username TEXT NOT NULL,
    grant_id TEXT NOT NULL,
    issued_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS authorization_codes_expiry ON authorization_codes(expires_at);
CREATE TABLE IF NOT EXISTS consents (
    user_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    scopes TEXT NOT NULL,
    granted_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, client_id)
);
CREATE TABLE IF NOT EXISTS signin_sessions (
    session_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    username TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS signin_sessions_expiry ON signin_sessions(expires_at);
CREATE INDEX IF NOT EXISTS signin_sessions_user ON signin_sessions(user_id);
"""

#: A code is kept this long after it expired, so that a late replay still revokes the
#: tokens issued for it (RFC 6749 §4.1.2) rather than finding no code at all.
_USED_CODES_KEPT = 24 * 3600

_SCHEMA = (
    """
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
    jwt_access_tokens INTEGER,
    resource_server INTEGER NOT NULL DEFAULT 0,
    refresh_token_max_lifetime INTEGER,
    metadata TEXT NOT NULL DEFAULT '{}'
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
    used INTEGER NOT NULL DEFAULT 0,
    user_id TEXT,
    grant_type TEXT,
    grant_expires_at INTEGER
);
CREATE INDEX IF NOT EXISTS tokens_grant ON tokens(grant_id);
CREATE INDEX IF NOT EXISTS tokens_expiry ON tokens(expires_at);
CREATE TABLE IF NOT EXISTS revoked_grants (
    grant_id TEXT PRIMARY KEY,
    revoked_at INTEGER NOT NULL
);
"""
    + _CLIENTS_VERSION
    + """
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    failed_attempts INTEGER NOT NULL DEFAULT 0,
    locked_until INTEGER NOT NULL DEFAULT 0,
    user_id TEXT,
    last_failure INTEGER NOT NULL DEFAULT 0,
    role TEXT
);
"""
    + _LIFECYCLE
    + _PLUGIN_STATE
    + _ADMINISTRATION
    + _AUTHORIZATION
)

_CLIENT_CACHE = 200_000
_INSERT_TOKEN = "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
#: Marks a refresh token used if it is still live: exactly one caller changes the row.
_USE_REFRESH = (
    "UPDATE tokens SET used = 1 WHERE token_hash = ? AND kind = 'refresh' AND used = 0"
    " AND revoked = 0 AND expires_at > ?"
    " AND grant_id NOT IN (SELECT grant_id FROM revoked_grants)"
    " AND client_id NOT IN (SELECT client_id FROM revoked_clients)"
)
#: How long checkpoints and purges wait for the lock: they may hold writers this long.
_MAINTENANCE_BUSY_MS = 5
#: Login failure rows are kept this long after their last failure or lock.
_FAILURES_KEPT = 24 * 3600
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
    5: """
ALTER TABLE clients ADD COLUMN resource_server INTEGER NOT NULL DEFAULT 0;
ALTER TABLE clients ADD COLUMN refresh_token_max_lifetime INTEGER;
ALTER TABLE tokens ADD COLUMN user_id TEXT;
ALTER TABLE tokens ADD COLUMN grant_type TEXT;
ALTER TABLE tokens ADD COLUMN grant_expires_at INTEGER;
ALTER TABLE users ADD COLUMN user_id TEXT;
ALTER TABLE users ADD COLUMN last_failure INTEGER NOT NULL DEFAULT 0;
UPDATE users SET user_id = lower(hex(randomblob(16)));
UPDATE tokens SET user_id = (SELECT u.user_id FROM users u WHERE u.username = tokens.username)
    WHERE username IS NOT NULL;
UPDATE tokens SET revoked = 1 WHERE username IS NOT NULL AND user_id IS NULL;
"""
    + _LIFECYCLE,
    6: "ALTER TABLE clients ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}';\n" + _PLUGIN_STATE,
    7: "ALTER TABLE users ADD COLUMN role TEXT;\n" + _ADMINISTRATION,
    8: _AUTHORIZATION,
}


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _serialised(
    method: Callable[Concatenate[SQLiteStorage, _P], _R],
) -> Callable[Concatenate[SQLiteStorage, _P], _R]:
    """*method*, holding the store's lock while it uses the shared connection.

    The server calls the store from the event loop's thread and from worker threads
    (``asyncio.to_thread``) at once, on one connection. A connection has one transaction:
    without the lock, one thread's ``BEGIN`` inside another's transaction fails ("cannot
    start a transaction within a transaction"), and a statement run meanwhile joins the
    other thread's transaction and is rolled back with it. The lock is held for the whole
    method, so that its statements, and the rows it reads, are one unit; uncontended, as on
    the token path, it costs a fraction of a microsecond.
    """

    @functools.wraps(method)
    def locked(self: SQLiteStorage, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


class SQLiteStorage:
    """``Storage`` over one SQLite file, safe to call from several threads (``_serialised``)."""

    async def call(self, fn: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """``fn(*args, **kwargs)``, directly: a read of the local file takes microseconds,
        less than a hop to another thread and back would (``Storage.call``)."""
        return fn(*args, **kwargs)

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._clients: dict[str, Client] = {}
        self._clients_version = -1
        self._checkpointer: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._serving = False
        self._checkpoint_lock = threading.Lock()
        #: Held around each use of ``_db`` (``_serialised``); re-entrant, since add_token
        #: calls add_tokens.
        self._lock = threading.RLock()
        #: Held around each use of ``_writer`` (``try_issue``), which has its own transactions.
        self._writer_lock = threading.Lock()
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
            scripts = (
                [_SCHEMA]
                if version == 0
                else [_MIGRATIONS[target] for target in range(version + 1, _SCHEMA_VERSION + 1)]
            )
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
                self._maintenance()
                frames = self._passive()
                if frames > _RESTART_FRAMES:
                    # Under steady writes a passive checkpoint never catches up with the last
                    # commit, and the WAL only starts over once one has. RESTART does, but
                    # holds writers for as long as it copies and syncs, which grows with the
                    # WAL. Passive rounds first copy what arrived during the previous one,
                    # until little is left, so that RESTART has little left to hold them for.
                    # With a busy timeout of a few ms, RESTART soon gives up when a reader
                    # still uses the WAL: the WAL then grows until that reader is done.
                    for _ in range(4):
                        before, frames = frames, self._passive()
                        if frames - before < 256:
                            break
                    self._maintenance().execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
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

    @_serialised
    def add_client(self, client: Client) -> None:
        self._run(
            "INSERT INTO clients VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", _client_row(client)
        )

    @_serialised
    def update_client(self, client: Client, expected: Client | None = None) -> bool:
        row = _client_row(client)
        try:
            with self._db:
                # One write transaction: the check and the write see the same row, whoever
                # else (another worker, the CLI) writes the file.
                self._db.execute("BEGIN IMMEDIATE")
                if expected is not None:
                    stored = self._db.execute(
                        "SELECT secret_hash, certificates FROM clients WHERE client_id = ?",
                        (client.client_id,),
                    ).fetchone()
                    if stored is None or not _same_credentials(expected, stored[0], stored[1]):
                        return False
                cursor = self._db.execute(
                    "UPDATE clients SET name = ?, token_endpoint_auth_method = ?, grant_types = ?,"
                    " scopes = ?, secret_hash = ?, bind_tokens = ?, created_at = ?, certificates = ?,"
                    " tls_subject = ?, access_token_lifetime = ?, refresh_token_lifetime = ?,"
                    " jwt_access_tokens = ?, resource_server = ?, refresh_token_max_lifetime = ?,"
                    " metadata = ? WHERE client_id = ?",
                    (*row[1:], row[0]),
                )
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: {exc}") from exc
        return cursor.rowcount > 0

    def cached_client(self, client_id: str) -> Client | None:
        """None: ``call`` runs ``get_client`` directly, and it checks the cache's version
        first, so there is no trip to save (``Storage.cached_client``)."""
        return None

    @_serialised
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

    @_serialised
    def list_clients(self) -> list[Client]:
        return [_client(r) for r in self._run("SELECT * FROM clients ORDER BY created_at, name")]

    @_serialised
    def search_clients(self, query: str = "", limit: int = 50, offset: int = 0) -> tuple[int, list[Client]]:
        # The page is cut in SQL: the console lists 100,000 clients as fast as 100. Newest
        # first, by rowid (insertion order), which needs no index of its own; the search is a
        # case-insensitive substring of the name or the client_id.
        where = ""
        params: tuple[str, ...] = ()
        if query:
            where = " WHERE instr(lower(name), ?) > 0 OR instr(lower(client_id), ?) > 0"
            params = (query.lower(), query.lower())
        total = self._run("SELECT count(*) FROM clients" + where, params).fetchone()[0]
        rows = self._run(
            "SELECT * FROM clients" + where + " ORDER BY rowid DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return total, [_client(r) for r in rows]

    @_serialised
    def scopes_in_use(self) -> list[str]:
        rows = self._run("SELECT DISTINCT s.value FROM clients, json_each(clients.scopes) s ORDER BY s.value")
        return [row[0] for row in rows]

    @_serialised
    def remove_client(self, client_id: str) -> bool:
        # Its tokens are revoked through revoked_clients, which every read of a token and
        # every refresh checks: one row, however many tokens the client holds.
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                removed = (
                    self._db.execute("DELETE FROM clients WHERE client_id = ?", (client_id,)).rowcount > 0
                )
                if removed:
                    self._db.execute(
                        "INSERT OR IGNORE INTO revoked_clients VALUES (?, ?)", (client_id, int(time.time()))
                    )
                    self._db.execute("DELETE FROM registration_tokens WHERE client_id = ?", (client_id,))
                    # Its codes can no longer be redeemed (no client), and nobody consents to
                    # a client that is gone.
                    self._db.execute("DELETE FROM authorization_codes WHERE client_id = ?", (client_id,))
                    self._db.execute("DELETE FROM consents WHERE client_id = ?", (client_id,))
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: {exc}") from exc
        return removed

    # -- tokens ---------------------------------------------------------------------------

    @_serialised
    def add_token(self, token: TokenRecord) -> None:
        self.add_tokens([token])

    @_serialised
    def add_tokens(self, tokens: list[TokenRecord]) -> None:
        try:
            with self._db:  # one transaction: the token response is stored whole or not at all
                self._db.execute("BEGIN")
                self._db.executemany(_INSERT_TOKEN, [_token_row(token) for token in tokens])
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: {exc}") from exc

    def try_add_tokens(self, tokens: list[TokenRecord]) -> bool:
        """``add_tokens``, but False at once, storing nothing, while another connection holds
        the write lock (see ``try_issue``)."""
        return self.try_issue([Issue(tuple(tokens))], int(time.time())) is not None

    def _writer_connection(self) -> sqlite3.Connection:
        if self._writer is None:
            try:
                self._writer = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=0
                )
                self._writer.execute("PRAGMA synchronous=NORMAL")
                if self._serving:
                    self._writer.execute("PRAGMA wal_autocheckpoint=0")
                self._writer.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: {exc}") from exc
        return self._writer

    def try_issue(self, issues: list[Issue], now: int) -> list[bool] | None:
        """Store token responses in one transaction; None at once, storing nothing, while
        another connection holds the write lock (another worker's commit, the CLI).

        SQLite's busy handler would sleep on the event loop's thread instead, 1 ms and more
        per collision; with two workers writing, collisions are frequent. The writes go
        through a connection of their own with no busy timeout.

        A refresh token an issue rotates is marked used in the same transaction as its
        successors are stored: both happen or neither does (RFC 9700 §4.14.2 replay
        detection must not take a client's retry after a crash for a replay).
        """
        with self._writer_lock:
            return self._issue(issues, now)

    def _issue(self, issues: list[Issue], now: int) -> list[bool] | None:
        writer = self._writer_connection()
        try:
            writer.execute("BEGIN IMMEDIATE")  # the write lock now, or SQLITE_BUSY now
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode == sqlite3.SQLITE_BUSY:
                return None
            raise StorageError(f"{self.path}: {exc}") from exc
        stored: list[bool] = []
        try:
            rows: list[tuple[object, ...]] = []
            for issue in issues:
                if (
                    issue.rotates is not None
                    and writer.execute(_USE_REFRESH, (issue.rotates, now)).rowcount != 1
                ):
                    stored.append(False)
                    continue
                rows += [_token_row(token) for token in issue.tokens]
                stored.append(True)
            writer.executemany(_INSERT_TOKEN, rows)
            writer.execute("COMMIT")
        except sqlite3.Error as exc:
            if writer.in_transaction:
                writer.execute("ROLLBACK")
            raise StorageError(f"{self.path}: {exc}") from exc
        return stored

    @_serialised
    def get_token(self, token_hash: str) -> TokenRecord | None:
        # A revoked grant revokes every token of it, also those stored after the revocation
        # (a refresh that raced with a replay detection); a removed client or user, every
        # token of theirs, also one issued while the removal ran (user_ids are never reused).
        row = self._run(
            "SELECT t.*, EXISTS(SELECT 1 FROM revoked_grants g WHERE g.grant_id = t.grant_id)"
            " OR EXISTS(SELECT 1 FROM revoked_clients c WHERE c.client_id = t.client_id)"
            " OR (t.user_id IS NOT NULL AND NOT EXISTS(SELECT 1 FROM users u WHERE u.user_id = t.user_id))"
            " FROM tokens t WHERE t.token_hash = ?",
            (token_hash,),
        ).fetchone()
        if row is None:
            return None
        return TokenRecord(
            token_hash=row[0],
            kind=row[1],
            client_id=row[2],
            scope=row[3],
            issued_at=row[4],
            expires_at=row[5],
            username=row[6],
            cnf_x5t_s256=row[7],
            grant_id=row[8],
            revoked=bool(row[9] or row[15]),
            claims=json.loads(row[10]),
            used=bool(row[11]),
            user_id=row[12],
            grant_type=row[13],
            grant_expires_at=row[14],
        )

    @_serialised
    def revoke_token(self, token_hash: str) -> bool:
        cursor = self._run(
            "UPDATE tokens SET revoked = 1 WHERE token_hash = ? AND revoked = 0", (token_hash,)
        )
        return cursor.rowcount > 0

    @_serialised
    def revoke_grant(self, grant_id: str) -> int:
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.execute(
                    "INSERT OR IGNORE INTO revoked_grants VALUES (?, ?)", (grant_id, int(time.time()))
                )
                cursor = self._db.execute(
                    "UPDATE tokens SET revoked = 1 WHERE grant_id = ? AND revoked = 0", (grant_id,)
                )
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: {exc}") from exc
        return cursor.rowcount

    @_serialised
    def use_refresh_token(self, token_hash: str, now: int) -> bool:
        # One UPDATE, so that among concurrent callers (threads or processes) exactly one
        # sees a row change: SQLite serialises writers.
        return self._run(_USE_REFRESH, (token_hash, now)).rowcount == 1

    @_serialised
    def revoke_user_tokens(self, user_id: str) -> int:
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                # Their sign-ins on the login page end too: a revoked user signs in again.
                self._db.execute("DELETE FROM signin_sessions WHERE user_id = ?", (user_id,))
                return self._revoke_grants("user_id = ?", (user_id,))
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: {exc}") from exc

    @_serialised
    def revoke_bound_tokens(self, client_id: str, x5t_s256: str) -> int:
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                return self._revoke_tokens("client_id = ? AND cnf_x5t_s256 = ?", (client_id, x5t_s256))
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: {exc}") from exc

    def _revoke_grants(self, where: str, params: tuple[str, ...]) -> int:
        """Inside a transaction: ``_revoke_tokens``, and the authorization codes matching
        *where* not yet redeemed. Their grants go into revoked_grants, so that a code being
        redeemed meanwhile gives only tokens that are revoked already, and the codes are
        deleted. The number of tokens revoked."""
        self._db.execute(
            f"INSERT OR IGNORE INTO revoked_grants SELECT DISTINCT grant_id, ? FROM authorization_codes WHERE {where}",
            (int(time.time()), *params),
        )
        self._db.execute(f"DELETE FROM authorization_codes WHERE {where}", params)
        return self._revoke_tokens(where, params)

    def _revoke_tokens(self, where: str, params: tuple[str, ...]) -> int:
        """Inside a transaction: the tokens matching *where* (a condition written here, with
        ``?`` for *params*) and their grants, so that tokens of those grants stored later are
        revoked too; the number of tokens revoked."""
        self._db.execute(
            "INSERT OR IGNORE INTO revoked_grants SELECT DISTINCT grant_id, ? FROM tokens"
            f" WHERE {where} AND grant_id IS NOT NULL",
            (int(time.time()), *params),
        )
        return self._db.execute(
            f"UPDATE tokens SET revoked = 1 WHERE {where} AND revoked = 0", params
        ).rowcount

    def _maintenance(self) -> sqlite3.Connection:
        """The connection of checkpoint() and purge_expired(), which run in a worker thread.

        A busy timeout of a few milliseconds: enough to wait for a token commit to finish,
        and then a checkpoint or purge gives up and is tried again on the next round. A
        RESTART checkpoint holds the write lock while it waits for readers of the old WAL,
        so a long busy timeout made a long read hold every token request with it.
        """
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(
                self.path, isolation_level=None, timeout=0, check_same_thread=False
            )
            self._checkpointer.execute(f"PRAGMA busy_timeout={_MAINTENANCE_BUSY_MS}")
            if self._serving:
                self._checkpointer.execute("PRAGMA wal_autocheckpoint=0")
        return self._checkpointer

    def purge_expired(self, before: int, limit: int | None = None) -> int | None:
        # Expired tokens answer introspection as inactive whether or not they are kept, so
        # keeping them only grows the file (about 1 MB per 4,000 tokens). In batches of
        # *limit*, each a short transaction, so that token writes wait for none of them long.
        with self._checkpoint_lock:
            try:
                db = self._maintenance()
                try:
                    db.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    if exc.sqlite_errorcode == sqlite3.SQLITE_BUSY:
                        return None
                    raise
                try:
                    removed = db.execute(
                        "DELETE FROM tokens WHERE rowid IN (SELECT rowid FROM tokens"
                        " WHERE expires_at < ? LIMIT ?)",
                        (before, -1 if limit is None else limit),
                    ).rowcount
                    db.execute(
                        "DELETE FROM login_failures WHERE locked_until < ? AND last_failure < ?",
                        (before, before - _FAILURES_KEPT),
                    )
                    db.execute(
                        "DELETE FROM authorization_codes WHERE rowid IN (SELECT rowid FROM"
                        " authorization_codes WHERE expires_at < ? LIMIT ?)",
                        (before - _USED_CODES_KEPT, -1 if limit is None else limit),
                    )
                    db.execute(
                        "DELETE FROM signin_sessions WHERE rowid IN (SELECT rowid FROM"
                        " signin_sessions WHERE expires_at < ? LIMIT ?)",
                        (before, -1 if limit is None else limit),
                    )
                    db.execute(
                        "DELETE FROM plugin_state WHERE (namespace, key) IN (SELECT namespace, key"
                        " FROM plugin_state WHERE expires_at < ? LIMIT ?)",
                        (before, -1 if limit is None else limit),
                    )
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: purge: {exc}") from exc
        return removed

    # -- plugin state ---------------------------------------------------------------------

    @_serialised
    def put_if_absent(self, namespace: str, key: str, expires_at: int) -> bool:
        # One statement, so that among concurrent callers (threads, workers, the CLI) exactly
        # one changes a row: SQLite serialises writers. An expired row is taken over.
        return (
            self._run(
                "INSERT INTO plugin_state VALUES (?, ?, NULL, ?) ON CONFLICT (namespace, key)"
                " DO UPDATE SET value = NULL, expires_at = excluded.expires_at"
                " WHERE plugin_state.expires_at IS NOT NULL AND plugin_state.expires_at <= ?",
                (namespace, key, expires_at, int(time.time())),
            ).rowcount
            == 1
        )

    @_serialised
    def get_state(self, namespace: str, key: str) -> str | None:
        row = self._run(
            "SELECT value FROM plugin_state WHERE namespace = ? AND key = ?"
            " AND (expires_at IS NULL OR expires_at > ?)",
            (namespace, key, int(time.time())),
        ).fetchone()
        return None if row is None else row[0]

    @_serialised
    def set_state(self, namespace: str, key: str, value: str, expires_at: int | None = None) -> None:
        self._run(
            "INSERT OR REPLACE INTO plugin_state VALUES (?, ?, ?, ?)", (namespace, key, value, expires_at)
        )

    @_serialised
    def delete_state(self, namespace: str, key: str) -> bool:
        return (
            self._run(
                "DELETE FROM plugin_state WHERE namespace = ? AND key = ?"
                " AND (expires_at IS NULL OR expires_at > ?)",
                (namespace, key, int(time.time())),
            ).rowcount
            > 0
        )

    @_serialised
    def replace_state(self, namespace: str, key: str, value: str, expires_at: int | None = None) -> bool:
        return (
            self._run(
                "UPDATE plugin_state SET value = ?, expires_at = ? WHERE namespace = ? AND key = ?"
                " AND (expires_at IS NULL OR expires_at > ?)",
                (value, expires_at, namespace, key, int(time.time())),
            ).rowcount
            > 0
        )

    @_serialised
    def revoke_client_tokens(self, client_id: str) -> int:
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                return self._revoke_grants("client_id = ?", (client_id,))
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: {exc}") from exc

    # -- administration: audit log, registration tokens -----------------------------------

    @_serialised
    def add_audit(self, entry: AuditEntry) -> None:
        self._run(
            "INSERT INTO audit_log (at, actor, via, source, action, target, details)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                entry.at,
                entry.actor,
                entry.via,
                entry.source,
                entry.action,
                entry.target,
                json.dumps(dict(entry.details), separators=(",", ":")),
            ),
        )

    @_serialised
    def list_audit(self, limit: int = 100, before: int | None = None) -> list[AuditEntry]:
        rows = self._run(
            "SELECT id, at, actor, via, source, action, target, details FROM audit_log"
            " WHERE id < ? ORDER BY id DESC LIMIT ?",
            (before if before is not None else 2**62, limit),
        )
        return [AuditEntry(r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]), id=r[0]) for r in rows]

    @_serialised
    def add_registration_token(
        self, token_hash: str, kind: str, client_id: str | None, expires_at: int | None
    ) -> None:
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                if kind == "registration" and client_id is not None:
                    # RFC 7592 §3: a new registration access token replaces the old one.
                    self._db.execute(
                        "DELETE FROM registration_tokens WHERE kind = 'registration' AND client_id = ?",
                        (client_id,),
                    )
                self._db.execute(
                    "INSERT INTO registration_tokens VALUES (?, ?, ?, ?, ?)",
                    (token_hash, kind, client_id, int(time.time()), expires_at),
                )
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: {exc}") from exc

    @_serialised
    def find_registration_token(self, token_hash: str, kind: str) -> tuple[str | None, int | None] | None:
        row = self._run(
            "SELECT client_id, expires_at FROM registration_tokens WHERE token_hash = ? AND kind = ?"
            " AND (expires_at IS NULL OR expires_at > ?)",
            (token_hash, kind, int(time.time())),
        ).fetchone()
        return (row[0], row[1]) if row else None

    @_serialised
    def delete_registration_tokens(
        self, *, token_hash: str | None = None, client_id: str | None = None
    ) -> int:
        if token_hash is not None:
            return self._run("DELETE FROM registration_tokens WHERE token_hash = ?", (token_hash,)).rowcount
        return self._run("DELETE FROM registration_tokens WHERE client_id = ?", (client_id,)).rowcount

    # -- users ----------------------------------------------------------------------------

    @_serialised
    def add_user(self, user: User) -> None:
        self._run(
            "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                user.username,
                user.password_hash,
                user.created_at,
                user.failed_attempts,
                user.locked_until,
                user.user_id,
                user.last_failure,
                user.role,
            ),
        )

    @_serialised
    def set_user_role(self, username: str, role: str | None) -> bool:
        return self._run("UPDATE users SET role = ? WHERE username = ?", (role, username)).rowcount > 0

    @_serialised
    def set_user_password(self, username: str, password_hash: str) -> bool:
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                row = self._db.execute("SELECT user_id FROM users WHERE username = ?", (username,)).fetchone()
                if row is None:
                    return False
                self._db.execute(
                    "UPDATE users SET password_hash = ? WHERE username = ?", (password_hash, username)
                )
                # Their sign-ins on the login page end with the old password: a stolen
                # session cookie is worth no more than the stolen password it stood for.
                self._db.execute("DELETE FROM signin_sessions WHERE user_id = ?", (row[0],))
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: {exc}") from exc
        return True

    @_serialised
    def get_user(self, username: str) -> User | None:
        row = self._run("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
        return User(*row) if row else None

    @_serialised
    def list_users(self) -> list[User]:
        return [User(*row) for row in self._run("SELECT * FROM users ORDER BY username")]

    @_serialised
    def remove_user(self, username: str) -> bool:
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                row = self._db.execute("SELECT user_id FROM users WHERE username = ?", (username,)).fetchone()
                if row is None:
                    return False
                self._db.execute("DELETE FROM signin_sessions WHERE user_id = ?", (row[0],))
                self._db.execute("DELETE FROM consents WHERE user_id = ?", (row[0],))
                self._revoke_grants("user_id = ?", (row[0],))
                self._db.execute("DELETE FROM login_failures WHERE username = ?", (username,))
                self._db.execute("DELETE FROM users WHERE username = ?", (username,))
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: {exc}") from exc
        return True

    @_serialised
    def take_login_attempt(self, username: str, source: str, now: int, policy: LoginPolicy) -> bool:
        # One transaction holding the write lock: concurrent attempts, from this process or
        # another worker, are counted one after the other, so no more than the limit are
        # ever let through to the password check.
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                user = self._db.execute(
                    "SELECT failed_attempts, last_failure, locked_until FROM users WHERE username = ?",
                    (username,),
                ).fetchone()
                if user is None:
                    return False
                here = self._db.execute(
                    "SELECT failures, last_failure, locked_until FROM login_failures"
                    " WHERE username = ? AND source = ?",
                    (username, source),
                ).fetchone()
                counted_here = _count(here, now, policy.max_failures, policy.lockout_seconds)
                counted_all = _count(user, now, policy.max_failures_per_user, policy.lockout_seconds)
                if counted_here is None or counted_all is None:
                    return False  # locked out: not counted, so that the lock is not extended
                self._db.execute(
                    "INSERT OR REPLACE INTO login_failures VALUES (?, ?, ?, ?, ?)",
                    (username, source, *counted_here),
                )
                self._db.execute(
                    "UPDATE users SET failed_attempts = ?, last_failure = ?, locked_until = ?"
                    " WHERE username = ?",
                    (*counted_all, username),
                )
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: {exc}") from exc
        return True

    @_serialised
    def end_login_attempt(self, username: str, source: str, succeeded: bool) -> None:
        if not succeeded:
            return  # counted when it was taken
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "DELETE FROM login_failures WHERE username = ? AND source = ?", (username, source)
                )
                self._db.execute(
                    "UPDATE users SET failed_attempts = 0, locked_until = 0 WHERE username = ?", (username,)
                )
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: {exc}") from exc

    @_serialised
    def unlock_user(self, username: str) -> bool:
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("DELETE FROM login_failures WHERE username = ?", (username,))
                return (
                    self._db.execute(
                        "UPDATE users SET failed_attempts = 0, locked_until = 0, last_failure = 0"
                        " WHERE username = ?",
                        (username,),
                    ).rowcount
                    > 0
                )
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: {exc}") from exc

    # -- authorization code grant --------------------------------------------------------

    @_serialised
    def add_authorization_code(self, code: AuthorizationCode, session_hash: str | None = None) -> bool:
        values = (
            code.code_hash,
            code.client_id,
            code.redirect_uri,
            int(code.redirect_uri_given),
            code.scope,
            code.code_challenge,
            code.user_id,
            code.username,
            code.grant_id,
            code.issued_at,
            code.expires_at,
            int(code.used),
        )
        if session_hash is None:
            self._run("INSERT INTO authorization_codes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
            return True
        # One statement, so one write: a revocation's transaction is wholly before or after it.
        return (
            self._run(
                "INSERT INTO authorization_codes SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?"
                " WHERE EXISTS (SELECT 1 FROM signin_sessions"
                " WHERE session_hash = ? AND user_id = ? AND expires_at > ?)"
                " AND EXISTS (SELECT 1 FROM consents WHERE user_id = ? AND client_id = ?)",
                (*values, session_hash, code.user_id, int(time.time()), code.user_id, code.client_id),
            ).rowcount
            == 1
        )

    @_serialised
    def get_authorization_code(self, code_hash: str) -> AuthorizationCode | None:
        row = self._run("SELECT * FROM authorization_codes WHERE code_hash = ?", (code_hash,)).fetchone()
        if row is None:
            return None
        return AuthorizationCode(
            code_hash=row[0],
            client_id=row[1],
            redirect_uri=row[2],
            redirect_uri_given=bool(row[3]),
            scope=row[4],
            code_challenge=row[5],
            user_id=row[6],
            username=row[7],
            grant_id=row[8],
            issued_at=row[9],
            expires_at=row[10],
            used=bool(row[11]),
        )

    @_serialised
    def use_authorization_code(self, code_hash: str) -> bool:
        # One UPDATE: among concurrent redeemers (threads or workers) exactly one changes it.
        return (
            self._run(
                "UPDATE authorization_codes SET used = 1 WHERE code_hash = ? AND used = 0", (code_hash,)
            ).rowcount
            == 1
        )

    @_serialised
    def get_consent(self, user_id: str, client_id: str) -> Consent | None:
        row = self._run(
            "SELECT scopes, granted_at FROM consents WHERE user_id = ? AND client_id = ?",
            (user_id, client_id),
        ).fetchone()
        return None if row is None else Consent(user_id, client_id, tuple(row[0].split()), row[1])

    @_serialised
    def add_consent(self, consent: Consent) -> None:
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                row = self._db.execute(
                    "SELECT scopes FROM consents WHERE user_id = ? AND client_id = ?",
                    (consent.user_id, consent.client_id),
                ).fetchone()
                scopes = dict.fromkeys([*(row[0].split() if row else ()), *consent.scopes])
                self._db.execute(
                    "INSERT OR REPLACE INTO consents VALUES (?, ?, ?, ?)",
                    (consent.user_id, consent.client_id, " ".join(scopes), consent.granted_at),
                )
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: {exc}") from exc

    @_serialised
    def list_consents(self, user_id: str) -> list[Consent]:
        rows = self._run(
            "SELECT client_id, scopes, granted_at FROM consents WHERE user_id = ? ORDER BY client_id",
            (user_id,),
        ).fetchall()
        return [Consent(user_id, row[0], tuple(row[1].split()), row[2]) for row in rows]

    @_serialised
    def revoke_consent(self, user_id: str, client_id: str) -> bool:
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                # The consent first, as in PostgreSQL, where deleting it is what holds off a
                # code being issued meanwhile (add_authorization_code).
                withdrawn = self._db.execute(
                    "DELETE FROM consents WHERE user_id = ? AND client_id = ?", (user_id, client_id)
                ).rowcount
                self._revoke_grants("user_id = ? AND client_id = ?", (user_id, client_id))
                return withdrawn > 0
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: {exc}") from exc

    @_serialised
    def add_session(self, session: SignInSession) -> None:
        self._run(
            "INSERT INTO signin_sessions VALUES (?, ?, ?, ?, ?)",
            (session.session_hash, session.user_id, session.username, session.created_at, session.expires_at),
        )

    @_serialised
    def get_session(self, session_hash: str) -> SignInSession | None:
        # The user must still exist as the same user: removing a user ends their sessions,
        # and a new user under the old name is not signed in by them.
        row = self._run(
            "SELECT s.* FROM signin_sessions s JOIN users u ON u.user_id = s.user_id"
            " WHERE s.session_hash = ? AND s.expires_at > ?",
            (session_hash, int(time.time())),
        ).fetchone()
        return None if row is None else SignInSession(*row)

    @_serialised
    def delete_session(self, session_hash: str) -> bool:
        return self._run("DELETE FROM signin_sessions WHERE session_hash = ?", (session_hash,)).rowcount > 0

    def close(self) -> None:
        with self._checkpoint_lock:
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None
        with self._writer_lock:
            if self._writer is not None:
                self._writer.close()
        with self._lock:
            self._db.close()

    def __enter__(self) -> SQLiteStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _count(
    row: tuple[int, int, int] | None, now: int, limit: int, lockout: int
) -> tuple[int, int, int] | None:
    """One more attempt on a (failures, last_failure, locked_until) counter, as LoginPolicy
    says; None while the counter's lock holds."""
    failures, last, locked_until = row or (0, 0, 0)
    if locked_until > now:
        return None
    if locked_until or now - last >= lockout:
        failures, locked_until = 0, 0  # the lock is over, or a quiet period: start afresh
    failures += 1
    if failures >= limit:
        locked_until = now + lockout
    return failures, now, locked_until


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
        token.user_id,
        token.grant_type,
        token.grant_expires_at,
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
        int(client.resource_server),
        client.refresh_token_max_lifetime,
        json.dumps(dict(client.metadata)),
    )


def _same_credentials(expected: Client, secret_hash: str | None, certificates: str) -> bool:
    """Whether a stored client row still has *expected*'s secret and certificates: the
    compare of ``update_client``'s compare-and-swap. Certificates are compared by their
    SHA-256, not by the stored text, so that a row written by an older release compares
    equal to itself."""
    stored = [c["sha256"] for c in json.loads(certificates)]
    return secret_hash == expected.secret_hash and stored == [c.sha256 for c in expected.certificates]


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
            RegisteredCertificate(
                c["sha256"], c["subject"], c["not_before"], c["not_after"], base64.b64decode(c["der"])
            )
            for c in json.loads(row[8])
        ),
        tls_subject=tuple(json.loads(row[9])) if row[9] else None,
        access_token_lifetime=row[10],
        refresh_token_lifetime=row[11],
        jwt_access_tokens=None if row[12] is None else bool(row[12]),
        resource_server=bool(row[13]),
        refresh_token_max_lifetime=row[14],
        metadata=MappingProxyType(json.loads(row[15])),
    )
