"""The shared store: PostgreSQL, for several tokensmith instances on one database.

Every guarantee the embedded store gives within one machine holds here across machines,
because each is one statement or one transaction that PostgreSQL serialises:

- a refresh token is marked used by one ``UPDATE ... WHERE used = false``: of concurrent
  callers, on any instance, exactly one changes the row (under READ COMMITTED the others
  wait for its row lock and then re-check the condition against the committed row);
- a token response is stored in one transaction together with the rotation it follows
  (``try_issue``), so a crash or a dropped connection never acknowledges half of it;
- login attempts lock the user's row (``SELECT ... FOR UPDATE``) while they are counted;
- clients are cached per process and the cache is dropped on a ``NOTIFY`` that a trigger
  sends with every change to ``clients`` (from any instance or the CLI). While the listening
  connection is down nothing is cached, so a change can never be missed.

The server never calls this store from its event loop's thread: requests' calls go through
``call``, to a small pool of threads and connections (``<Database poolSize>``), so that a
database that is slow or stalled holds only the requests waiting for it while the others
(health checks, metrics, refusals that need no store) are answered. Every call is bounded by
deadlines (connect, statement, TCP, and the watchdog's deadline for the whole call), so that
a database that is unreachable answers ``StorageError`` (503) within seconds and never hangs
a request. After a failure a connection is opened again on a later call: no restart.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import json
import os
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, ParamSpec, TypeVar
from urllib.parse import unquote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from tokensmith.models import (
    AuditEntry,
    AuthorizationCode,
    Client,
    Consent,
    Issue,
    LoginPolicy,
    SignInSession,
    StorageError,
    TokenRecord,
    User,
)
from tokensmith.storage.sqlite import _client, _client_row, _count, _same_credentials, _token_row

__all__ = ["PostgresStorage", "SCHEMA_VERSION", "POOL_SIZE", "redact_url", "is_postgres_url"]

P = ParamSpec("P")
T = TypeVar("T")

#: Deadlines: establishing a connection, one statement, unacknowledged TCP data.
CONNECT_TIMEOUT = 3
STATEMENT_TIMEOUT_MS = 5_000
TCP_USER_TIMEOUT_MS = 5_000
#: After a failed connection attempt, calls fail at once for this long instead of each
#: waiting for a connect timeout of its own.
RETRY_AFTER = 0.5
#: A call may run this much longer than STATEMENT_TIMEOUT_MS before the client gives up on
#: it: the server's own deadlines cannot help when the server (or a pooler, or the host)
#: stalls while the kernel still acknowledges our packets.
CALL_MARGIN = 2.0
#: How much longer than call_deadline() a request waits for its call, in the queue and running.
_QUEUE_MARGIN = 1.0
#: Connections for requests' calls, per process (``<Database poolSize>`` in server.xml).
POOL_SIZE = 8
#: Chosen once; every tokensmith migrating any schema of a database takes this lock.
_MIGRATION_LOCK = 0x746F6B656E736D
_CLIENT_CACHE = 200_000
#: Login failure rows are kept this long after their last failure or lock.
_FAILURES_KEPT = 24 * 3600
#: A code is kept this long after it expired, so that a late replay still revokes the
#: tokens issued for it (RFC 6749 §4.1.2) rather than finding no code at all.
_USED_CODES_KEPT = 24 * 3600

#: Schema migrations, by the version they lead to; each runs once, in one transaction, under
#: an advisory lock (instances starting together migrate once). Times are Unix seconds.
_MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE clients (
    client_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    token_endpoint_auth_method TEXT NOT NULL,
    grant_types TEXT NOT NULL,
    scopes TEXT NOT NULL,
    secret_hash TEXT,
    bind_tokens BOOLEAN NOT NULL DEFAULT false,
    created_at BIGINT NOT NULL,
    certificates TEXT NOT NULL DEFAULT '[]',
    tls_subject TEXT,
    access_token_lifetime BIGINT,
    refresh_token_lifetime BIGINT,
    jwt_access_tokens BOOLEAN,
    resource_server BOOLEAN NOT NULL DEFAULT false,
    refresh_token_max_lifetime BIGINT
);
CREATE TABLE tokens (
    token_hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    client_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    username TEXT,
    cnf_x5t_s256 TEXT,
    grant_id TEXT,
    revoked BOOLEAN NOT NULL DEFAULT false,
    claims TEXT NOT NULL DEFAULT '{}',
    used BOOLEAN NOT NULL DEFAULT false,
    user_id TEXT,
    grant_type TEXT,
    grant_expires_at BIGINT
);
CREATE INDEX tokens_grant ON tokens(grant_id);
CREATE INDEX tokens_expiry ON tokens(expires_at);
CREATE INDEX tokens_user ON tokens(user_id) WHERE user_id IS NOT NULL;
CREATE INDEX tokens_bound ON tokens(client_id, cnf_x5t_s256) WHERE cnf_x5t_s256 IS NOT NULL;
CREATE TABLE revoked_grants (grant_id TEXT PRIMARY KEY, revoked_at BIGINT NOT NULL);
CREATE TABLE revoked_clients (client_id TEXT PRIMARY KEY, revoked_at BIGINT NOT NULL);
CREATE TABLE users (
    username TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    failed_attempts INTEGER NOT NULL DEFAULT 0,
    locked_until BIGINT NOT NULL DEFAULT 0,
    user_id TEXT NOT NULL UNIQUE,
    last_failure BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE login_failures (
    username TEXT NOT NULL,
    source TEXT NOT NULL,
    failures INTEGER NOT NULL,
    last_failure BIGINT NOT NULL,
    locked_until BIGINT NOT NULL,
    PRIMARY KEY (username, source)
);
CREATE FUNCTION tokensmith_clients_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tokensmith_clients_' || current_schema(), '');
    RETURN NULL;
END $$;
CREATE TRIGGER clients_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON clients
    FOR EACH STATEMENT EXECUTE FUNCTION tokensmith_clients_changed();
""",
    # What third-party authenticators need (as SQLite's schema 6): the client's RFC 7591
    # metadata beyond the typed columns, one JSON object; plugins' shared state per
    # namespace (the plugin's name), a row whose expires_at has passed being absent.
    2: """
ALTER TABLE clients ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}';
CREATE TABLE plugin_state (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT,
    expires_at BIGINT,
    PRIMARY KEY (namespace, key)
);
CREATE INDEX plugin_state_expiry ON plugin_state(expires_at) WHERE expires_at IS NOT NULL;
""",
    # Remote administration (as SQLite's schema 7): users' admin API role, the audit log,
    # and the hashes of RFC 7591 initial and RFC 7592 registration access tokens.
    3: """
ALTER TABLE users ADD COLUMN role TEXT;
CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    via TEXT NOT NULL,
    source TEXT,
    action TEXT NOT NULL,
    target TEXT,
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE registration_tokens (
    token_hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    client_id TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT
);
CREATE INDEX registration_tokens_client ON registration_tokens(client_id) WHERE client_id IS NOT NULL;
""",
    # The authorization code grant (as SQLite's schema 8): codes by the SHA-256 of the code
    # (never the code), single use; the scopes each user consented to give each client; the
    # login page's sessions, by the SHA-256 of the cookie value.
    4: """
CREATE TABLE authorization_codes (
    code_hash TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    redirect_uri_given BOOLEAN NOT NULL,
    scope TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    user_id TEXT NOT NULL,
    username TEXT NOT NULL,
    grant_id TEXT NOT NULL,
    issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX authorization_codes_expiry ON authorization_codes(expires_at);
CREATE INDEX authorization_codes_client ON authorization_codes(client_id);
CREATE TABLE consents (
    user_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    scopes TEXT NOT NULL,
    granted_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, client_id)
);
CREATE INDEX consents_client ON consents(client_id);
CREATE TABLE signin_sessions (
    session_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    username TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX signin_sessions_expiry ON signin_sessions(expires_at);
CREATE INDEX signin_sessions_user ON signin_sessions(user_id);
""",
}
SCHEMA_VERSION = max(_MIGRATIONS)

_TOKEN_COLUMNS = (
    "token_hash, kind, client_id, scope, issued_at, expires_at, username, cnf_x5t_s256,"
    " grant_id, revoked, claims, used, user_id, grant_type, grant_expires_at"
)
_LIVE_REFRESH = (
    "token_hash = %s AND kind = 'refresh' AND NOT used AND NOT revoked AND expires_at > %s"
    " AND NOT EXISTS (SELECT 1 FROM revoked_grants g WHERE g.grant_id = tokens.grant_id)"
    " AND NOT EXISTS (SELECT 1 FROM revoked_clients c WHERE c.client_id = tokens.client_id)"
)
#: One token response as one statement: the rotated refresh token is marked used and the
#: successors inserted only if that changed a row (RFC 9700 §4.14.2: both or neither).
_ROTATE_AND_INSERT = (
    f"WITH rotated AS (UPDATE tokens SET used = true WHERE {_LIVE_REFRESH} RETURNING 1)"
    f" INSERT INTO tokens ({_TOKEN_COLUMNS}) SELECT {_TOKEN_COLUMNS}"
    " FROM jsonb_populate_recordset(NULL::tokens, %s::jsonb) WHERE EXISTS (SELECT 1 FROM rotated)"
)
_INSERT = (
    f"INSERT INTO tokens ({_TOKEN_COLUMNS}) SELECT {_TOKEN_COLUMNS}"
    " FROM jsonb_populate_recordset(NULL::tokens, %s::jsonb)"
)
_TOKEN_NAMES = [name.strip() for name in _TOKEN_COLUMNS.split(",")]
_CLIENT_COLUMNS = (
    "client_id, name, token_endpoint_auth_method, grant_types, scopes, secret_hash, bind_tokens,"
    " created_at, certificates, tls_subject, access_token_lifetime, refresh_token_lifetime,"
    " jwt_access_tokens, resource_server, refresh_token_max_lifetime, metadata"
)
_USER_COLUMNS = (
    "username, password_hash, created_at, failed_attempts, locked_until, user_id, last_failure, role"
)


def call_deadline() -> float:
    """The longest a request's call may take, on the server and in the client together."""
    return STATEMENT_TIMEOUT_MS / 1000 + CALL_MARGIN


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


#: libpq parameters whose values are secrets (a URL query parameter or a key=value pair).
_SECRET_KEYS = frozenset({"password", "sslpassword"})
_SECRET_PAIR = re.compile(r"\b((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """*url* with every password replaced: what logs and messages may show.

    Never raises and never relies on the URL being well formed: the userinfo is everything
    before the last ``@`` of the authority (libpq splits at the first, Python's urlsplit at
    the last: up to the last hides what either would take for the password), and every
    ``password``/``sslpassword`` query parameter is replaced as well. A key=value connection
    string (``host=h password=p``) has its password pairs replaced.
    """
    if not is_postgres_url(url):
        return _SECRET_PAIR.sub(r"\1***", url)
    scheme, rest = url.split("://", 1)
    head, sep, query = rest.partition("?")
    fragment = ""
    if "#" in query:
        query, fragment = query.split("#", 1)
        fragment = "#" + fragment
    at = head.rfind("@")
    if at >= 0:
        userinfo, hostpart = head[:at], head[at + 1 :]
        if ":" in userinfo:
            head = f"{userinfo.split(':', 1)[0]}:***@{hostpart}"
    if sep:
        pairs = []
        for pair in query.split("&"):
            key, eq, _ = pair.partition("=")
            pairs.append(f"{key}=***" if eq and unquote(key).strip().lower() in _SECRET_KEYS else pair)
        query = "&".join(pairs)
    return f"{scheme}://{head}{sep}{query}{fragment}"


def _redact_message(message: str) -> str:
    """One line, and no password: libpq messages span lines and may quote the connection
    string."""
    message = " ".join(message.split())
    message = re.sub(r"(://[^:/@\s]*:)[^\s/]*@", r"\1***@", message)
    message = re.sub(r"([?&](?:ssl)?password=)[^&\s#]*", r"\1***", message, flags=re.IGNORECASE)
    return _SECRET_PAIR.sub(r"\1***", message)


def _closed_by_server(conn: psycopg.Connection[Any]) -> bool:
    """Whether the server has ended this idle connection (a restart, a failover, an idle
    timeout, pg_terminate_backend), seen before anything is sent on it: an idle session of
    ours is sent nothing unasked, so a readable socket is the server's goodbye (its error
    message, then end of file). Found now, a new connection is opened and the statement sent
    once on it, instead of failing on the dead one; a write cannot be repeated safely after
    it was sent, but this costs no round trip and sends nothing."""
    try:
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return True
    return bool(readable)


def _shut_down(conn: psycopg.Connection[Any]) -> None:
    """End *conn*'s TCP connection under the thread blocked reading it: that read then
    fails at once, and psycopg marks the connection broken."""
    try:
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
    except (OSError, psycopg.Error):
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


class _Failures:
    """The last failure to connect, shared by every connection of one store: after one
    attempt failed, calls on any connection fail at once for RETRY_AFTER, instead of each
    waiting for a connect timeout of its own."""

    def __init__(self) -> None:
        self.at = 0.0
        self.error = ""


class _Watchdog:
    """Client-side deadlines for the calls of every connection of one store, in one thread.

    Past a call's deadline the watchdog shuts its socket down, so that the blocked read
    returns an error now (StorageError, 503) instead of waiting as long as the stalled server
    does; the thread that made the call is then free for the next one.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._watched: dict[int, tuple[float, psycopg.Connection[Any], _Connection]] = {}
        self._next = 0
        self._thread: threading.Thread | None = None
        self._closing = False

    @contextmanager
    def watch(self, holder: _Connection, conn: psycopg.Connection[Any]) -> Iterator[None]:
        with self._cond:
            holder.killed = False
            key = self._next
            self._next += 1
            # Every call has the same deadline, so a new one is never the earliest: the
            # thread needs waking only when it waits for none.
            if not self._watched:
                self._cond.notify()
            self._watched[key] = (time.monotonic() + call_deadline(), conn, holder)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tokensmith-pg-watchdog", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._cond:
                self._watched.pop(key, None)

    def _run(self) -> None:
        with self._cond:
            while not self._closing:
                if not self._watched:
                    self._cond.wait()
                    continue
                now = time.monotonic()
                first = min(deadline for deadline, _, _ in self._watched.values())
                if first > now:
                    self._cond.wait(first - now)
                    continue
                for key, (deadline, conn, holder) in list(self._watched.items()):
                    if deadline <= now:
                        del self._watched[key]
                        holder.killed = True
                        _shut_down(conn)

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=3)


class _Connection:
    """One connection, opened on first use and again after it failed, with deadlines."""

    def __init__(self, url: str, failures: _Failures, watchdog: _Watchdog, autocommit: bool = True):
        self._url = url
        self._autocommit = autocommit
        self._conn: psycopg.Connection[Any] | None = None
        self._failures = failures
        self._watchdog = watchdog
        self.lock = threading.RLock()
        #: The last get() returned a connection opened earlier, which may have gone stale.
        self.was_open = False
        #: The last failure was the connection's own (closed by the server, broken), not a
        #: statement's: only then is a read worth repeating on a new connection.
        self.lost = False
        #: The watchdog ended the last call: it had no answer within its deadline.
        self.killed = False

    def get(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken and not _closed_by_server(conn):
            self.was_open = True
            return conn
        self.was_open = False
        self.drop()
        failures = self._failures
        if time.monotonic() - failures.at < RETRY_AFTER:
            raise StorageError(failures.error)
        try:
            self._conn = psycopg.connect(**_conninfo(self._url, "tokensmith"), autocommit=self._autocommit)
        except psycopg.Error as exc:
            failures.error = f"{redact_url(self._url)}: {_redact_message(str(exc).strip())}"
            failures.at = time.monotonic()
            raise StorageError(failures.error) from None
        return self._conn

    def watched(self, conn: psycopg.Connection[Any]) -> contextlib.AbstractContextManager[None]:
        """A client-side deadline for one call on *conn* (``_Watchdog``)."""
        return self._watchdog.watch(self, conn)

    def close(self) -> None:
        with self.lock:
            self.drop()

    def drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None


class _Pool:
    """Up to *size* connections for requests' calls, each used by one thread at a time
    (a psycopg connection serves one statement at a time). A thread that holds one and
    calls the store again (a read retried, a call made from within another) uses the same.

    A thread that finds every connection busy waits for one up to call_deadline(), then gets
    StorageError: a store whose every connection is stalled answers 503, it does not queue
    requests without end.
    """

    def __init__(self, url: str, size: int, failures: _Failures, watchdog: _Watchdog, shown: str):
        self._url = url
        self._size = size
        self._failures = failures
        self._watchdog = watchdog
        self._shown = shown
        self._idle: list[_Connection] = []
        self._all: list[_Connection] = []
        self._cond = threading.Condition()
        self._held = threading.local()
        self._closed = False

    @contextmanager
    def take(self) -> Iterator[_Connection]:
        held: _Connection | None = getattr(self._held, "holder", None)
        if held is not None:
            yield held
            return
        with self._cond:
            deadline = time.monotonic() + call_deadline()
            while not self._idle and len(self._all) >= self._size:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    raise StorageError(
                        f"{self._shown}: every connection stayed busy for {call_deadline():g} s"
                    )
                self._cond.wait(left)
            if self._idle:
                holder = self._idle.pop()  # the most recently used: the fewest go stale
            else:
                holder = _Connection(self._url, self._failures, self._watchdog)
                self._all.append(holder)
        self._held.holder = holder
        try:
            yield holder
        finally:
            self._held.holder = None
            with self._cond:
                if self._closed:
                    holder.close()
                else:
                    self._idle.append(holder)
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for holder in idle:
            holder.close()


class PostgresStorage:
    """``Storage`` over a PostgreSQL database (see the module docstring).

    *migrate*: create or upgrade the schema on open (what ``serve`` does); without it an
    out-of-date schema is an error that says to run ``tokensmith db migrate``, unless not
    *check* (``db status`` and ``db migrate`` themselves).
    """

    #: GroupCommit runs try_issue in a thread of its own: the loop serves meanwhile.
    commits_in_thread = True

    def __init__(self, url: str, migrate: bool = True, check: bool = True, pool_size: int = POOL_SIZE):
        self.url = url
        self.shown = redact_url(url)
        self.pool_size = pool_size
        failures, self._watchdog = _Failures(), _Watchdog()
        self._pool = _Pool(url, pool_size, failures, self._watchdog, self.shown)
        #: try_issue's own connection: the group commit thread uses it while the pool's
        #: threads read.
        self._writer = _Connection(url, failures, self._watchdog)
        self._maint = _Connection(url, failures, self._watchdog)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        self._clients: dict[str, Client] = {}
        self._generation = 0
        self._cache_lock = threading.Lock()
        self._listening = False
        #: The backend of the LISTEN connection, while there is one (for tests and operators).
        self.listener_pid: int | None = None
        self._listener: threading.Thread | None = None
        self._stop = threading.Event()
        try:
            if migrate:
                self.migrate()
            elif check:
                version = self.schema_version()
                if version != SCHEMA_VERSION:
                    raise StorageError(
                        f"{self.shown}: database schema {version} is not this tokensmith's"
                        f" ({SCHEMA_VERSION}): run `tokensmith db migrate`"
                    )
        except BaseException:
            self.close()
            raise

    # -- connections ---------------------------------------------------------------------

    async def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)``, a call of this store's, in one of the pool's threads: the
        event loop serves other requests meanwhile, and a stalled database holds only the
        requests that wait for it. The thread takes a connection of the pool for the call.

        The call has call_deadline() from now, its wait for a free thread included; past it,
        StorageError (503), and a call still queued is dropped. One running on a stalled
        connection is ended by the watchdog, which frees its thread.
        """
        loop = asyncio.get_running_loop()
        # In the caller's context, as asyncio.to_thread would: a function may read context
        # variables (the request's, a log's).
        context = contextvars.copy_context()
        future = loop.run_in_executor(self._threads(), functools.partial(context.run, fn, *args, **kwargs))
        try:
            # A little past the watchdog's deadline: a call that is running is ended by the
            # watchdog, with its own error; this bounds the wait for a thread as well.
            return await asyncio.wait_for(future, call_deadline() + _QUEUE_MARGIN)
        except TimeoutError:
            if future.cancelled():
                raise StorageError(f"{self.shown}: no answer within the deadline") from None
            raise

    def _threads(self) -> concurrent.futures.ThreadPoolExecutor:
        executor = self._executor
        if executor is None:
            with self._executor_lock:
                if self._executor is None:
                    self._executor = concurrent.futures.ThreadPoolExecutor(
                        self.pool_size, thread_name_prefix="tokensmith-pg"
                    )
                executor = self._executor
        return executor

    @contextmanager
    def _cursor(self, maintenance: bool = False, transaction: bool = False) -> Iterator[psycopg.Cursor[Any]]:
        with nullcontext(self._maint) if maintenance else self._pool.take() as holder, holder.lock:
            conn = holder.get()
            # Migrations (maintenance) may rightly take long; requests' calls may not.
            watch = nullcontext() if maintenance else holder.watched(conn)
            try:
                with watch:
                    if transaction:
                        with conn.transaction(), conn.cursor() as cur:
                            yield cur
                    else:
                        with conn.cursor() as cur:
                            yield cur
            except psycopg.errors.UniqueViolation:
                raise
            except psycopg.Error as exc:
                if holder.killed:
                    holder.lost = False  # the server stalls: asking again would stall too
                    holder.drop()
                    raise StorageError(f"{self.shown}: no answer within the deadline") from None
                # Only a connection the server closed (or that broke under us) is replaced: a
                # statement or lock timeout (QueryCanceled, LockNotAvailable) is an
                # OperationalError too, but the session is fine and repeating the statement
                # would only wait as long again.
                holder.lost = conn.broken or conn.closed
                if holder.lost:
                    holder.drop()
                raise StorageError(f"{self.shown}: {_redact_message(str(exc).strip())}") from None

    def _read_one(self, query: str, params: tuple[object, ...]) -> tuple[Any, ...] | None:
        """One row of a read. A read is safe to repeat: when the connection it used had been
        closed by the server meanwhile (a restart or failover of the database, an idle
        timeout of a proxy), it is tried once more on a new connection, so that the first
        request after the database came back is not answered 503 for a stale connection."""
        for attempt in (1, 2):
            with self._pool.take() as holder:
                try:
                    with self._cursor() as cur:
                        cur.execute(query, params)
                        return cur.fetchone()
                except StorageError:
                    if attempt == 2 or not holder.was_open or not holder.lost:
                        raise
        raise AssertionError("unreachable")

    # -- schema --------------------------------------------------------------------------

    def schema_version(self) -> int:
        """The schema version of the database; 0 if tokensmith never migrated it."""
        with self._cursor() as cur:
            cur.execute("SELECT to_regclass('tokensmith_schema') IS NOT NULL")
            row = cur.fetchone()
            if not row or not row[0]:
                return 0
            cur.execute("SELECT coalesce(max(version), 0) FROM tokensmith_schema")
            row = cur.fetchone()
            return int(row[0]) if row else 0

    def migrate(self) -> list[int]:
        """Bring the schema up to SCHEMA_VERSION; return the versions applied (none if it
        was already). One transaction under an advisory lock: instances started together
        migrate once, and a failure midway leaves the previous schema."""
        applied: list[int] = []
        with self._cursor(transaction=True) as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            cur.execute(
                "CREATE TABLE IF NOT EXISTS tokensmith_schema"
                " (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)"
            )
            cur.execute("SELECT coalesce(max(version), 0) FROM tokensmith_schema")
            row = cur.fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"{self.shown}: database schema {version} is newer than this tokensmith"
                    f" ({SCHEMA_VERSION})"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                cur.execute(_MIGRATIONS[target].encode())
                cur.execute("INSERT INTO tokensmith_schema VALUES (%s, %s)", (target, int(time.time())))
                applied.append(target)
        return applied

    # -- housekeeping ----------------------------------------------------------------------

    def serving(self) -> None:
        """Start listening for client changes, so that clients can be cached."""
        if self._listener is None:
            self._listener = threading.Thread(target=self._listen, name="tokensmith-pg-listen", daemon=True)
            self._listener.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            conn: psycopg.Connection[Any] | None = None
            try:
                conn = psycopg.connect(**_conninfo(self.url, "tokensmith-listen"), autocommit=True)
                row = conn.execute(
                    "SELECT 'tokensmith_clients_' || current_schema(), pg_backend_pid()"
                ).fetchone()
                assert row is not None
                self.listener_pid = row[1]
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(row[0])))
                self._invalidate(listening=True)  # changes made while not listening
                while not self._stop.is_set():
                    for _ in conn.notifies(timeout=1.0):
                        self._invalidate(listening=True)
                    conn.execute("SELECT 1")  # a dead connection shows here, within deadlines
            except (psycopg.Error, AssertionError):
                self._invalidate(listening=False)
                self._stop.wait(RETRY_AFTER)
            finally:
                if conn is not None:
                    try:
                        conn.close()
                    except psycopg.Error:
                        pass
        self._invalidate(listening=False)

    def _invalidate(self, listening: bool) -> None:
        with self._cache_lock:
            self._clients = {}
            self._generation += 1
            self._listening = listening

    def checkpoint(self) -> None:
        """Nothing to do: PostgreSQL checkpoints on its own."""

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.join(timeout=3)
            self._listener = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._pool.close()
        self._maint.close()
        self._writer.close()
        self._watchdog.close()

    def __enter__(self) -> PostgresStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- clients ---------------------------------------------------------------------------

    def add_client(self, client: Client) -> None:
        with self._cursor() as cur:
            cur.execute(
                f"INSERT INTO clients ({_CLIENT_COLUMNS}) VALUES ({_placeholders(16)})",
                _pg_client_row(client),
            )

    def update_client(self, client: Client, expected: Client | None = None) -> bool:
        row = _pg_client_row(client)
        with self._cursor(transaction=expected is not None) as cur:
            if expected is not None:
                # The row stays locked until the UPDATE commits: a concurrent change of it
                # waits, then reads what this one wrote.
                cur.execute(
                    "SELECT secret_hash, certificates FROM clients WHERE client_id = %s FOR UPDATE",
                    (client.client_id,),
                )
                stored = cur.fetchone()
                if stored is None or not _same_credentials(expected, stored[0], stored[1]):
                    return False
            cur.execute(
                "UPDATE clients SET name = %s, token_endpoint_auth_method = %s, grant_types = %s,"
                " scopes = %s, secret_hash = %s, bind_tokens = %s, created_at = %s, certificates = %s,"
                " tls_subject = %s, access_token_lifetime = %s, refresh_token_lifetime = %s,"
                " jwt_access_tokens = %s, resource_server = %s, refresh_token_max_lifetime = %s,"
                " metadata = %s WHERE client_id = %s",
                (*row[1:], row[0]),
            )
            return cur.rowcount > 0

    def cached_client(self, client_id: str) -> Client | None:
        """From the cache that LISTEN/NOTIFY keeps current (``get_client``); None while not
        listening, since then nothing would tell the cache that a client changed."""
        with self._cache_lock:
            return self._clients.get(client_id) if self._listening else None

    def get_client(self, client_id: str) -> Client | None:
        with self._cache_lock:
            cached = self._clients.get(client_id) if self._listening else None
            generation = self._generation
        if cached is not None:
            return cached
        row = self._read_one(f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE client_id = %s", (client_id,))
        if row is None:
            return None  # unknown ids are not cached: anyone can make up millions
        client = _client(row)
        with self._cache_lock:
            # Only if no change was announced since the read began: else it may be stale.
            if self._listening and generation == self._generation:
                if len(self._clients) >= _CLIENT_CACHE:
                    self._clients = {}
                self._clients[client_id] = client
        return client

    def list_clients(self) -> list[Client]:
        with self._cursor() as cur:
            cur.execute(f"SELECT {_CLIENT_COLUMNS} FROM clients ORDER BY created_at, name")
            return [_client(row) for row in cur.fetchall()]

    def search_clients(self, query: str = "", limit: int = 50, offset: int = 0) -> tuple[int, list[Client]]:
        # The page is cut in SQL (the console lists 100,000 clients as fast as 100); newest
        # first. strpos, not LIKE: the search text's % and _ are characters like any other.
        where = ""
        params: tuple[str, ...] = ()
        if query:
            where = " WHERE strpos(lower(name), %s) > 0 OR strpos(lower(client_id), %s) > 0"
            params = (query.lower(), query.lower())
        with self._cursor() as cur:
            cur.execute("SELECT count(*) FROM clients" + where, params)
            row = cur.fetchone()
            total = int(row[0]) if row is not None else 0
            cur.execute(
                f"SELECT {_CLIENT_COLUMNS} FROM clients" + where + " ORDER BY created_at DESC, client_id DESC"
                " LIMIT %s OFFSET %s",
                (*params, limit, offset),
            )
            return total, [_client(r) for r in cur.fetchall()]

    def scopes_in_use(self) -> list[str]:
        with self._cursor() as cur:
            cur.execute(
                "SELECT DISTINCT s FROM clients, jsonb_array_elements_text(clients.scopes::jsonb) s ORDER BY s"
            )
            return [row[0] for row in cur.fetchall()]

    def remove_client(self, client_id: str) -> bool:
        # As in SQLite: one revoked_clients row revokes every token of the client on read.
        with self._cursor(transaction=True) as cur:
            cur.execute("DELETE FROM clients WHERE client_id = %s", (client_id,))
            removed = cur.rowcount > 0
            if removed:
                cur.execute(
                    "INSERT INTO revoked_clients VALUES (%s, %s) ON CONFLICT DO NOTHING",
                    (client_id, int(time.time())),
                )
                cur.execute("DELETE FROM registration_tokens WHERE client_id = %s", (client_id,))
                # Its codes can no longer be redeemed (no client), and nobody consents to
                # a client that is gone. The consents first, in the revocations' order
                # (_revoke_grants): a code being issued holds its consent's row, and is then
                # waited for and deleted with the others.
                cur.execute("DELETE FROM consents WHERE client_id = %s", (client_id,))
                cur.execute("DELETE FROM authorization_codes WHERE client_id = %s", (client_id,))
        return removed

    # -- tokens ------------------------------------------------------------------------------

    def add_token(self, token: TokenRecord) -> None:
        self.add_tokens([token])

    def add_tokens(self, tokens: list[TokenRecord]) -> None:
        with self._cursor() as cur:
            cur.execute(_INSERT, (_token_json(tokens),))  # one statement: all or none

    def try_add_tokens(self, tokens: list[TokenRecord]) -> bool:
        return self.try_issue([Issue(tuple(tokens))], int(time.time())) is not None

    def try_issue(self, issues: list[Issue], now: int) -> list[bool] | None:
        """Store token responses in one transaction and one round trip (pipeline mode).

        Never busy: PostgreSQL's row locks let concurrent writers proceed together, so this
        never returns None. A rotation is one statement with its successors (see
        ``_ROTATE_AND_INSERT``): its row count says whether the rotated token was live.
        """
        holder = self._writer
        with holder.lock:
            conn = holder.get()
            try:
                # Pipeline mode on an autocommit connection: the statements go out together,
                # followed by one Sync, and the statements before a Sync are one implicit
                # transaction (all or none; committed at the Sync). One round trip for the
                # batch; an explicit transaction would add one for BEGIN and one for COMMIT.
                plain = [t for issue in issues if issue.rotates is None for t in issue.tokens]
                rotations: list[psycopg.Cursor[Any] | None] = [None] * len(issues)
                # The rotated tokens' rows are locked in token hash order, as revocations lock
                # them (_revoke_token_rows): in the requests' order, a batch and a revocation
                # could each hold a row the other waits for.
                order = sorted(
                    (i for i, issue in enumerate(issues) if issue.rotates is not None),
                    key=lambda i: issues[i].rotates or "",
                )
                with holder.watched(conn), conn.pipeline():
                    for i in order:
                        issue = issues[i]
                        rotation = conn.cursor()
                        if issue.tokens:
                            rotation.execute(
                                _ROTATE_AND_INSERT, (issue.rotates, now, _token_json(list(issue.tokens)))
                            )
                        else:
                            rotation.execute(
                                f"UPDATE tokens SET used = true WHERE {_LIVE_REFRESH}", (issue.rotates, now)
                            )
                        rotations[i] = rotation
                    if plain:
                        conn.cursor().execute(_INSERT, (_token_json(plain),))
                stored = [True if c is None else c.rowcount > 0 for c in rotations]
            except psycopg.Error as exc:
                holder.lost = (conn.broken or conn.closed) and not holder.killed
                if holder.lost or holder.killed:
                    holder.drop()
                if holder.killed:
                    raise StorageError(f"{self.shown}: no answer within the deadline") from None
                raise StorageError(f"{self.shown}: {_redact_message(str(exc).strip())}") from None
        return stored

    def get_token(self, token_hash: str) -> TokenRecord | None:
        # As in SQLite: a revoked grant, a removed client or user revokes every token of
        # theirs, also one stored after the revocation.
        row = self._read_one(
            f"SELECT {', '.join('t.' + n for n in _TOKEN_NAMES)},"
            " EXISTS(SELECT 1 FROM revoked_grants g WHERE g.grant_id = t.grant_id)"
            " OR EXISTS(SELECT 1 FROM revoked_clients c WHERE c.client_id = t.client_id)"
            " OR (t.user_id IS NOT NULL AND NOT EXISTS(SELECT 1 FROM users u WHERE u.user_id = t.user_id))"
            " FROM tokens t WHERE t.token_hash = %s",
            (token_hash,),
        )
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

    def revoke_token(self, token_hash: str) -> bool:
        with self._cursor() as cur:
            cur.execute(
                "UPDATE tokens SET revoked = true WHERE token_hash = %s AND NOT revoked", (token_hash,)
            )
            return cur.rowcount > 0

    def revoke_grant(self, grant_id: str) -> int:
        with self._cursor(transaction=True) as cur:
            cur.execute(
                "INSERT INTO revoked_grants VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (grant_id, int(time.time())),
            )
            return _revoke_token_rows(cur, "grant_id = %s", (grant_id,))

    def use_refresh_token(self, token_hash: str, now: int) -> bool:
        with self._cursor() as cur:
            cur.execute(f"UPDATE tokens SET used = true WHERE {_LIVE_REFRESH}", (token_hash, now))
            return cur.rowcount == 1

    def revoke_user_tokens(self, user_id: str) -> int:
        with self._cursor(transaction=True) as cur:
            # Their sign-ins on the login page end too: a revoked user signs in again.
            cur.execute("DELETE FROM signin_sessions WHERE user_id = %s", (user_id,))
            return _revoke_grants(cur, "user_id = %s", (user_id,))

    def revoke_bound_tokens(self, client_id: str, x5t_s256: str) -> int:
        with self._cursor(transaction=True) as cur:
            return _revoke_tokens(cur, "client_id = %s AND cnf_x5t_s256 = %s", (client_id, x5t_s256))

    def purge_expired(self, before: int, limit: int | None = None) -> int | None:
        # Rows another transaction holds (a revocation, a sign-in) are skipped, left to the
        # next purge: a purge that never waits for a row is never part of a deadlock, in
        # whatever order it and the others take their rows.
        with self._cursor(maintenance=True, transaction=True) as cur:

            def purge(table: str, condition: str, params: tuple[Any, ...]) -> int:
                cur.execute(
                    f"DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table}"
                    f" WHERE {condition} LIMIT %s FOR UPDATE SKIP LOCKED))",
                    (*params, limit),  # LIMIT NULL: no limit
                )
                return cur.rowcount

            removed = purge("tokens", "expires_at < %s", (before,))
            purge(
                "login_failures", "locked_until < %s AND last_failure < %s", (before, before - _FAILURES_KEPT)
            )
            purge("plugin_state", "expires_at < %s", (before,))
            purge("authorization_codes", "expires_at < %s", (before - _USED_CODES_KEPT,))
            purge("signin_sessions", "expires_at < %s", (before,))
        return removed

    # -- plugin state: shared by every instance on the database ------------------------------

    def put_if_absent(self, namespace: str, key: str, expires_at: int) -> bool:
        # One statement: of concurrent callers on any instance, the first inserts and the
        # others wait for its row lock, then find the row present (ON CONFLICT re-reads the
        # committed row), so exactly one changes a row. An expired row is taken over.
        with self._cursor() as cur:
            cur.execute(
                "INSERT INTO plugin_state VALUES (%s, %s, NULL, %s) ON CONFLICT (namespace, key)"
                " DO UPDATE SET value = NULL, expires_at = excluded.expires_at"
                " WHERE plugin_state.expires_at IS NOT NULL AND plugin_state.expires_at <= %s",
                (namespace, key, expires_at, int(time.time())),
            )
            return cur.rowcount == 1

    def get_state(self, namespace: str, key: str) -> str | None:
        row = self._read_one(
            "SELECT value FROM plugin_state WHERE namespace = %s AND key = %s"
            " AND (expires_at IS NULL OR expires_at > %s)",
            (namespace, key, int(time.time())),
        )
        return None if row is None else row[0]

    def set_state(self, namespace: str, key: str, value: str, expires_at: int | None = None) -> None:
        with self._cursor() as cur:
            cur.execute(
                "INSERT INTO plugin_state VALUES (%s, %s, %s, %s) ON CONFLICT (namespace, key)"
                " DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
                (namespace, key, value, expires_at),
            )

    def delete_state(self, namespace: str, key: str) -> bool:
        with self._cursor() as cur:
            cur.execute(
                "DELETE FROM plugin_state WHERE namespace = %s AND key = %s"
                " AND (expires_at IS NULL OR expires_at > %s)",
                (namespace, key, int(time.time())),
            )
            return cur.rowcount > 0

    def replace_state(self, namespace: str, key: str, value: str, expires_at: int | None = None) -> bool:
        with self._cursor() as cur:
            cur.execute(
                "UPDATE plugin_state SET value = %s, expires_at = %s WHERE namespace = %s AND key = %s"
                " AND (expires_at IS NULL OR expires_at > %s)",
                (value, expires_at, namespace, key, int(time.time())),
            )
            return cur.rowcount > 0

    # -- users -------------------------------------------------------------------------------

    def add_user(self, user: User) -> None:
        with self._cursor() as cur:
            cur.execute(
                f"INSERT INTO users ({_USER_COLUMNS}) VALUES ({_placeholders(8)})",
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

    def set_user_role(self, username: str, role: str | None) -> bool:
        with self._cursor() as cur:
            cur.execute("UPDATE users SET role = %s WHERE username = %s", (role, username))
            return cur.rowcount > 0

    def set_user_password(self, username: str, password_hash: str) -> bool:
        with self._cursor(transaction=True) as cur:
            cur.execute(
                "UPDATE users SET password_hash = %s WHERE username = %s RETURNING user_id",
                (password_hash, username),
            )
            row = cur.fetchone()
            if row is None:
                return False
            # As SQLite: the user's sign-ins on the login page end with the old password.
            cur.execute("DELETE FROM signin_sessions WHERE user_id = %s", (row[0],))
            return True

    def revoke_client_tokens(self, client_id: str) -> int:
        with self._cursor(transaction=True) as cur:
            return _revoke_grants(cur, "client_id = %s", (client_id,))

    def add_audit(self, entry: AuditEntry) -> None:
        with self._cursor() as cur:
            cur.execute(
                "INSERT INTO audit_log (at, actor, via, source, action, target, details)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
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

    def list_audit(self, limit: int = 100, before: int | None = None) -> list[AuditEntry]:
        with self._cursor() as cur:
            cur.execute(
                "SELECT id, at, actor, via, source, action, target, details FROM audit_log"
                " WHERE id < %s ORDER BY id DESC LIMIT %s",
                (before if before is not None else 2**62, limit),
            )
            rows = cur.fetchall()
        return [AuditEntry(r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]), id=r[0]) for r in rows]

    def add_registration_token(
        self, token_hash: str, kind: str, client_id: str | None, expires_at: int | None
    ) -> None:
        with self._cursor(transaction=True) as cur:
            if kind == "registration" and client_id is not None:
                # RFC 7592 §3: a new registration access token replaces the old one.
                cur.execute(
                    "DELETE FROM registration_tokens WHERE kind = 'registration' AND client_id = %s",
                    (client_id,),
                )
            cur.execute(
                "INSERT INTO registration_tokens VALUES (%s, %s, %s, %s, %s)",
                (token_hash, kind, client_id, int(time.time()), expires_at),
            )

    def find_registration_token(self, token_hash: str, kind: str) -> tuple[str | None, int | None] | None:
        with self._cursor() as cur:
            cur.execute(
                "SELECT client_id, expires_at FROM registration_tokens WHERE token_hash = %s AND kind = %s"
                " AND (expires_at IS NULL OR expires_at > %s)",
                (token_hash, kind, int(time.time())),
            )
            row = cur.fetchone()
        return (row[0], row[1]) if row else None

    def delete_registration_tokens(
        self, *, token_hash: str | None = None, client_id: str | None = None
    ) -> int:
        with self._cursor() as cur:
            if token_hash is not None:
                cur.execute("DELETE FROM registration_tokens WHERE token_hash = %s", (token_hash,))
            else:
                cur.execute("DELETE FROM registration_tokens WHERE client_id = %s", (client_id,))
            return cur.rowcount

    def get_user(self, username: str) -> User | None:
        with self._cursor() as cur:
            cur.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE username = %s", (username,))
            row = cur.fetchone()
        return User(*row) if row else None

    def list_users(self) -> list[User]:
        with self._cursor() as cur:
            cur.execute(f"SELECT {_USER_COLUMNS} FROM users ORDER BY username")
            return [User(*row) for row in cur.fetchall()]

    def remove_user(self, username: str) -> bool:
        with self._cursor(transaction=True) as cur:
            cur.execute("SELECT user_id FROM users WHERE username = %s FOR UPDATE", (username,))
            row = cur.fetchone()
            if row is None:
                return False
            # The sessions' and consents' rows first, as the other revocations take them
            # (_revoke_grants): a consent withdrawal that took its row before this took the
            # grants' keys waited on them while this waited on the row, a deadlock.
            cur.execute("DELETE FROM signin_sessions WHERE user_id = %s", (row[0],))
            cur.execute("DELETE FROM consents WHERE user_id = %s", (row[0],))
            _revoke_grants(cur, "user_id = %s", (row[0],))
            cur.execute("DELETE FROM login_failures WHERE username = %s", (username,))
            cur.execute("DELETE FROM users WHERE username = %s", (username,))
        return True

    def take_login_attempt(self, username: str, source: str, now: int, policy: LoginPolicy) -> bool:
        # The user's row lock orders concurrent attempts from every instance: no more than
        # the limit are let through to the password check.
        with self._cursor(transaction=True) as cur:
            cur.execute(
                "SELECT failed_attempts, last_failure, locked_until FROM users WHERE username = %s FOR UPDATE",
                (username,),
            )
            user = cur.fetchone()
            if user is None:
                return False
            cur.execute(
                "SELECT failures, last_failure, locked_until FROM login_failures"
                " WHERE username = %s AND source = %s",
                (username, source),
            )
            here = cur.fetchone()
            counted_here = _count(here, now, policy.max_failures, policy.lockout_seconds)
            counted_all = _count(user, now, policy.max_failures_per_user, policy.lockout_seconds)
            if counted_here is None or counted_all is None:
                return False  # locked out: not counted, so that the lock is not extended
            cur.execute(
                "INSERT INTO login_failures VALUES (%s, %s, %s, %s, %s) ON CONFLICT (username, source)"
                " DO UPDATE SET failures = excluded.failures, last_failure = excluded.last_failure,"
                " locked_until = excluded.locked_until",
                (username, source, *counted_here),
            )
            cur.execute(
                "UPDATE users SET failed_attempts = %s, last_failure = %s, locked_until = %s WHERE username = %s",
                (*counted_all, username),
            )
        return True

    def end_login_attempt(self, username: str, source: str, succeeded: bool) -> None:
        if not succeeded:
            return  # counted when it was taken
        with self._cursor(transaction=True) as cur:
            # The user's row before the failures', as take_login_attempt and remove_user take
            # them: the other way round, a sign-in and a removal deadlocked.
            cur.execute(
                "UPDATE users SET failed_attempts = 0, locked_until = 0 WHERE username = %s", (username,)
            )
            cur.execute("DELETE FROM login_failures WHERE username = %s AND source = %s", (username, source))

    def unlock_user(self, username: str) -> bool:
        with self._cursor(transaction=True) as cur:
            cur.execute(  # the user's row first, as end_login_attempt
                "UPDATE users SET failed_attempts = 0, locked_until = 0, last_failure = 0 WHERE username = %s",
                (username,),
            )
            found = cur.rowcount > 0
            cur.execute("DELETE FROM login_failures WHERE username = %s", (username,))
            return found

    # -- authorization code grant ------------------------------------------------------------

    def add_authorization_code(self, code: AuthorizationCode, session_hash: str | None = None) -> bool:
        values = (
            code.code_hash,
            code.client_id,
            code.redirect_uri,
            code.redirect_uri_given,
            code.scope,
            code.code_challenge,
            code.user_id,
            code.username,
            code.grant_id,
            code.issued_at,
            code.expires_at,
            code.used,
        )
        with self._cursor() as cur:
            if session_hash is None:
                cur.execute(
                    "INSERT INTO authorization_codes VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    values,
                )
                return True
            # The session's and the consent's rows are locked while the code goes in. A
            # revocation deletes one of them first: if it came first, this waits for it and
            # then finds the row gone; if this came first, the revocation waits, and its next
            # statements see the code and revoke it.
            cur.execute(
                "INSERT INTO authorization_codes"
                " SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s"
                " FROM signin_sessions s JOIN consents c ON c.user_id = s.user_id AND c.client_id = %s"
                " WHERE s.session_hash = %s AND s.user_id = %s AND s.expires_at > %s"
                " FOR SHARE OF s, c",
                (*values, code.client_id, session_hash, code.user_id, int(time.time())),
            )
            return cur.rowcount == 1

    def get_authorization_code(self, code_hash: str) -> AuthorizationCode | None:
        row = self._read_one(
            "SELECT code_hash, client_id, redirect_uri, redirect_uri_given, scope, code_challenge,"
            " user_id, username, grant_id, issued_at, expires_at, used"
            " FROM authorization_codes WHERE code_hash = %s",
            (code_hash,),
        )
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

    def use_authorization_code(self, code_hash: str) -> bool:
        # One UPDATE: of concurrent redeemers on any instance, the others wait for the first
        # one's row lock and then find the row used, so exactly one changes it.
        with self._cursor() as cur:
            cur.execute(
                "UPDATE authorization_codes SET used = true WHERE code_hash = %s AND NOT used", (code_hash,)
            )
            return cur.rowcount == 1

    def get_consent(self, user_id: str, client_id: str) -> Consent | None:
        row = self._read_one(
            "SELECT scopes, granted_at FROM consents WHERE user_id = %s AND client_id = %s",
            (user_id, client_id),
        )
        return None if row is None else Consent(user_id, client_id, tuple(row[0].split()), row[1])

    def add_consent(self, consent: Consent) -> None:
        # Adds to the scopes already consented to. The row lock (or, for a first consent, the
        # primary key's conflict) orders concurrent consents so that none is lost.
        with self._cursor(transaction=True) as cur:
            cur.execute(
                "INSERT INTO consents VALUES (%s, %s, '', %s) ON CONFLICT (user_id, client_id) DO NOTHING",
                (consent.user_id, consent.client_id, consent.granted_at),
            )
            cur.execute(
                "SELECT scopes FROM consents WHERE user_id = %s AND client_id = %s FOR UPDATE",
                (consent.user_id, consent.client_id),
            )
            row = cur.fetchone()
            scopes = dict.fromkeys([*(row[0].split() if row else ()), *consent.scopes])
            cur.execute(
                "UPDATE consents SET scopes = %s, granted_at = %s WHERE user_id = %s AND client_id = %s",
                (" ".join(scopes), consent.granted_at, consent.user_id, consent.client_id),
            )

    def list_consents(self, user_id: str) -> list[Consent]:
        with self._cursor() as cur:
            cur.execute(
                "SELECT client_id, scopes, granted_at FROM consents WHERE user_id = %s ORDER BY client_id",
                (user_id,),
            )
            rows = cur.fetchall()
        return [Consent(user_id, row[0], tuple(row[1].split()), row[2]) for row in rows]

    def revoke_consent(self, user_id: str, client_id: str) -> bool:
        with self._cursor(transaction=True) as cur:
            # The consent first: deleting its row holds off a code being issued meanwhile
            # (add_authorization_code), and then the revocation sees every code there is.
            cur.execute("DELETE FROM consents WHERE user_id = %s AND client_id = %s", (user_id, client_id))
            withdrawn = cur.rowcount > 0
            _revoke_grants(cur, "user_id = %s AND client_id = %s", (user_id, client_id))
            return withdrawn

    def add_session(self, session: SignInSession) -> None:
        with self._cursor() as cur:
            cur.execute(
                "INSERT INTO signin_sessions VALUES (%s, %s, %s, %s, %s)",
                (
                    session.session_hash,
                    session.user_id,
                    session.username,
                    session.created_at,
                    session.expires_at,
                ),
            )

    def get_session(self, session_hash: str) -> SignInSession | None:
        # The user must still exist as the same user: removing a user ends their sessions,
        # and a new user under the old name is not signed in by them.
        row = self._read_one(
            "SELECT s.session_hash, s.user_id, s.username, s.created_at, s.expires_at"
            " FROM signin_sessions s JOIN users u ON u.user_id = s.user_id"
            " WHERE s.session_hash = %s AND s.expires_at > %s",
            (session_hash, int(time.time())),
        )
        return None if row is None else SignInSession(*row)

    def delete_session(self, session_hash: str) -> bool:
        with self._cursor() as cur:
            cur.execute("DELETE FROM signin_sessions WHERE session_hash = %s", (session_hash,))
            return cur.rowcount > 0


def _revoke_grants(cur: psycopg.Cursor[Any], where: str, params: tuple[str, ...]) -> int:
    """In *cur*'s transaction: the authorization codes and the tokens matching *where* (a
    condition written here, with ``%s`` for *params*), and their grants; the number of tokens
    revoked. As in SQLite, the grants go into revoked_grants, so that a code redeemed meanwhile
    on any instance, or a refresh, gives only revoked tokens; the codes are deleted.

    Locks are taken in one order by every revocation, so that two of them never wait on each
    other in a cycle: first the row that admits new codes (a session, a consent: the caller
    deletes it before this), then the grants' keys, all in one statement and in grant id order,
    then the tokens' rows last, in token hash order (``_revoke_token_rows``)."""
    cur.execute(
        "INSERT INTO revoked_grants SELECT grant_id, %s::bigint FROM"
        f" (SELECT grant_id FROM authorization_codes WHERE {where}"
        f" UNION SELECT grant_id FROM tokens WHERE {where} AND grant_id IS NOT NULL) AS granted"
        " ORDER BY grant_id ON CONFLICT DO NOTHING",
        (int(time.time()), *params, *params),
    )
    cur.execute(f"DELETE FROM authorization_codes WHERE {where}", params)
    return _revoke_token_rows(cur, where, params)


def _revoke_tokens(cur: psycopg.Cursor[Any], where: str, params: tuple[str, ...]) -> int:
    """In *cur*'s transaction: the tokens matching *where* and their grants (as
    ``_revoke_grants``, without codes); the number of tokens revoked."""
    cur.execute(
        "INSERT INTO revoked_grants SELECT DISTINCT grant_id, %s::bigint FROM tokens"
        f" WHERE {where} AND grant_id IS NOT NULL ORDER BY grant_id ON CONFLICT DO NOTHING",
        (int(time.time()), *params),
    )
    return _revoke_token_rows(cur, where, params)


def _revoke_token_rows(cur: psycopg.Cursor[Any], where: str, params: tuple[str, ...]) -> int:
    """Mark the tokens matching *where* revoked, locking their rows in token hash order,
    the order a batch of refresh rotations takes them in (``try_issue``): in the order of a
    scan, two writers that met on two rows could each hold the one the other waits for."""
    cur.execute(
        "UPDATE tokens SET revoked = true WHERE token_hash IN (SELECT token_hash FROM tokens"
        f" WHERE {where} AND NOT revoked ORDER BY token_hash FOR UPDATE)",
        params,
    )
    return cur.rowcount


def _conninfo(url: str, application: str) -> dict[str, Any]:
    """Connection parameters: the URL's, with tokensmith's deadlines added to them (the
    URL's own ``options``, such as a search_path, are kept; its own timeouts win)."""
    try:
        params: dict[str, Any] = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise StorageError(f"{redact_url(url)}: {_redact_message(str(exc))}") from None
    deadlines = f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={STATEMENT_TIMEOUT_MS}"
    params["options"] = f"{deadlines} {params['options']}" if params.get("options") else deadlines
    params.setdefault("connect_timeout", CONNECT_TIMEOUT)
    params.setdefault("tcp_user_timeout", TCP_USER_TIMEOUT_MS)
    params.setdefault("keepalives", 1)
    params.setdefault("keepalives_idle", 5)
    params.setdefault("keepalives_interval", 2)
    params.setdefault("keepalives_count", 2)
    params.setdefault("application_name", application)
    return params


def _placeholders(count: int) -> str:
    return ", ".join(["%s"] * count)


def _pg_client_row(client: Client) -> tuple[object, ...]:
    """The SQLite row, with PostgreSQL booleans."""
    row = list(_client_row(client))
    row[6] = bool(row[6])
    row[12] = None if row[12] is None else bool(row[12])
    row[13] = bool(row[13])
    return tuple(row)


def _token_json(tokens: list[TokenRecord]) -> str:
    """Token rows as one JSON array, for jsonb_populate_recordset: one parameter however
    many tokens, typed by the table's own columns."""
    rows = []
    for token in tokens:
        row = dict(zip(_TOKEN_NAMES, _token_row(token)))
        row["revoked"], row["used"] = bool(row["revoked"]), bool(row["used"])
        rows.append(row)
    return json.dumps(rows)
