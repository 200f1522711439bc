"""The stores: one contract for SQLite and PostgreSQL (the tests taking ``open_store`` run
once per backend), and what is SQLite's own: schema upgrades, group commit, checkpoints."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from tokensmith.models import (
    AuditEntry,
    AuthorizationCode,
    Client,
    Consent,
    Issue,
    SignInSession,
    StorageError,
    TokenRecord,
    User,
)
from tokensmith.storage import groupcommit
from tokensmith.storage.groupcommit import GroupCommit
from tokensmith.storage.sqlite import _RESTART_FRAMES, _SCHEMA_VERSION, SQLiteStorage

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
        assert db.execute("PRAGMA user_version").fetchone()[0] == _SCHEMA_VERSION


@pytest.mark.parametrize("serving", [False, True])
def test_client_cache_sees_changes_from_another_connection(open_store, serving) -> None:  # noqa: ANN001
    """A client changed through another connection (the CLI, another worker or instance) is
    seen at once, also by a serving store that caches clients."""
    server, cli = open_store(), open_store()
    if serving:
        server.serving()
        _wait_until_caching(server)
    cli.add_client(Client("c1", "first", "client_secret_basic", ("client_credentials",)))
    assert server.get_client("c1").name == "first"
    assert server.get_client("c1").name == "first"  # now cached
    cli.update_client(Client("c1", "renamed", "client_secret_basic", ("client_credentials",)))
    assert _eventually(lambda: server.get_client("c1").name) == "renamed"
    cli.remove_client("c1")
    assert _eventually(lambda: server.get_client("c1")) is None


def _wait_until_caching(store) -> None:  # noqa: ANN001
    """PostgreSQL caches clients once its LISTEN connection is up (see storage/postgres.py)."""
    deadline = time.monotonic() + 10
    while getattr(store, "_listening", True) is False:
        assert time.monotonic() < deadline, "the store never started listening"
        time.sleep(0.01)


def _eventually(read, within: float = 0.5):  # noqa: ANN001, ANN202
    """*read()* after a change another connection committed. SQLite sees it on the next
    read; PostgreSQL once the NOTIFY sent at commit has reached the listening connection: a
    read that still sees the old value is repeated for up to *within* seconds (a value that
    never changes still fails the assertion on it)."""
    first = read()
    deadline = time.monotonic() + within
    value = first
    while value == first and time.monotonic() < deadline:
        time.sleep(0.005)
        value = read()
    return value


def test_a_client_update_from_a_stale_read_is_refused(open_store) -> None:  # noqa: ANN001
    """update_client with *expected* is a compare-and-swap on the secret and certificates: a
    change computed from a read that another connection has since overtaken (a secret reset,
    a certificate removed) writes nothing, so that neither comes back; without *expected*
    the write is unconditional, as before."""
    from tokensmith.models import RegisteredCertificate

    one, two = (
        RegisteredCertificate("aa" * 32, "CN=one", 0, 10),
        RegisteredCertificate("bb" * 32, "CN=two", 0, 10),
    )
    store, other = open_store(), open_store()
    read = Client(
        "c", "c", "client_secret_basic", ("client_credentials",), secret_hash="old", certificates=(one, two)
    )
    store.add_client(read)
    # Another connection resets the secret; the stale read's metadata change must not undo it.
    assert other.update_client(replace(read, secret_hash="new"), expected=read)
    assert not store.update_client(replace(read, name="renamed"), expected=read)
    assert store.get_client("c").secret_hash == "new" and store.get_client("c").name == "c"
    # Another connection removes a certificate; the stale read's change must not restore it.
    current = store.get_client("c")
    assert other.update_client(replace(current, certificates=(one,)), expected=current)
    assert not store.update_client(replace(current, name="renamed"), expected=current)
    assert [c.sha256 for c in store.get_client("c").certificates] == [one.sha256]
    # From the current row it goes through, metadata alone or the secret too.
    current = other.get_client("c")
    assert store.update_client(replace(current, name="renamed", secret_hash="newer"), expected=current)
    assert other.get_client("c").name == "renamed" and other.get_client("c").secret_hash == "newer"
    # A removed client: False either way.
    assert other.remove_client("c")
    assert not store.update_client(current, expected=current) and not store.update_client(current)


def test_concurrent_secret_resets_have_one_winner(open_store) -> None:  # noqa: ANN001
    """Resets racing from one read, each on its own connection (workers, instances): exactly
    one compare-and-swap succeeds, and the stored secret is the winner's."""
    stores = [open_store() for _ in range(6)]
    read = Client("c", "c", "client_secret_basic", ("client_credentials",), secret_hash="old")
    stores[0].add_client(read)
    barrier = threading.Barrier(len(stores))

    def reset(index: int) -> bool:
        barrier.wait()
        return stores[index].update_client(replace(read, secret_hash=f"new{index}"), expected=read)

    with concurrent.futures.ThreadPoolExecutor(len(stores)) as pool:
        won = list(pool.map(reset, range(len(stores))))
    assert won.count(True) == 1
    assert stores[0].get_client("c").secret_hash == f"new{won.index(True)}"


def test_a_password_change_ends_the_users_sign_in_sessions(open_store) -> None:  # noqa: ANN001
    """set_user_password ends the user's login-page sessions (a stolen cookie is worth no more
    than the old password), and only that user's."""
    store, other = open_store(), open_store()
    alice, bob = User("alice", "h1"), User("bob", "h2")
    store.add_user(alice)
    store.add_user(bob)
    far = int(time.time()) + 3600
    store.add_session(SignInSession("s-alice", alice.user_id, "alice", 0, far))
    store.add_session(SignInSession("s-bob", bob.user_id, "bob", 0, far))
    assert other.set_user_password("alice", "h3")
    assert store.get_session("s-alice") is None and store.get_user("alice").password_hash == "h3"
    assert store.get_session("s-bob") is not None
    assert not other.set_user_password("nobody", "h4")


def test_purge_removes_only_expired_tokens(open_store) -> None:  # noqa: ANN001
    """purge_expired deletes tokens past their expiry and keeps live ones."""
    store = open_store()
    store.add_tokens(
        [
            TokenRecord("dead", "access", "c", "", 0, 100),
            TokenRecord("live", "access", "c", "", 0, 10_000),
        ]
    )
    assert store.purge_expired(5_000) == 1
    assert store.get_token("dead") is None and store.get_token("live") is not None


def _token(name: str) -> TokenRecord:
    return TokenRecord(name, "access", "c", "", 0, 10_000)


def test_concurrent_token_writes_share_one_transaction(tmp_path) -> None:  # noqa: ANN001
    """Tokens stored in the same event-loop turn are committed together, each caller returns
    once they are stored (groupcommit.GroupCommit)."""
    store = SQLiteStorage(tmp_path / "store.db")
    transactions: list[int] = []

    def try_issue(issues: list[Issue], now: int) -> list[bool] | None:
        transactions.append(sum(len(issue.tokens) for issue in issues))
        return store.try_issue(issues, now)

    commits = GroupCommit(try_issue)

    async def issue(name: str) -> bool:
        await commits.add([_token(name)])
        return store.get_token(name) is not None  # stored by the time add() returns

    async def run() -> list[bool]:
        first = await asyncio.gather(*(issue(f"t{i}") for i in range(20)))
        return [*first, await issue("later")]

    try:
        assert all(asyncio.run(run()))
        assert transactions == [20, 1]
    finally:
        store.close()


def test_a_failed_group_commit_fails_every_caller_and_stores_none(tmp_path) -> None:  # noqa: ANN001
    """When the shared transaction fails, every request in it gets the StorageError (503):
    none is told its token exists, and none of the batch is stored."""
    store = SQLiteStorage(tmp_path / "store.db")
    with sqlite3.connect(tmp_path / "store.db") as db:
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON tokens WHEN NEW.token_hash = 'poison'"
            " BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    commits = GroupCommit(store.try_issue)

    async def outcome(name: str) -> str:
        try:
            await commits.add([_token(name)])
        except StorageError as exc:
            return f"error: {exc}"
        return "stored"

    async def run() -> list[str]:
        return await asyncio.gather(*(outcome(n) for n in ("a", "poison", "b")))

    try:
        results = asyncio.run(run())
        assert all(r.startswith("error:") and "refused" in r for r in results), results
        assert [store.get_token(n) for n in ("a", "poison", "b")] == [None, None, None]
        assert asyncio.run(outcome("c")) == "stored"
    finally:
        store.close()


def test_a_busy_store_is_waited_for_without_blocking_the_loop(tmp_path) -> None:  # noqa: ANN001
    """While another connection holds the write lock, the batch waits on a timer: the event
    loop goes on running (a ticker keeps ticking), requests arriving meanwhile join the
    batch, and all are stored once the lock is released."""
    path = tmp_path / "store.db"
    store = SQLiteStorage(path)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    transactions: list[int] = []

    def try_issue(issues: list[Issue], now: int) -> list[bool] | None:
        stored = store.try_issue(issues, now)
        transactions.append(sum(len(issue.tokens) for issue in issues) if stored else 0)
        return stored

    commits = GroupCommit(try_issue)

    async def run() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        other.execute("BEGIN IMMEDIATE")
        asyncio.get_running_loop().call_later(0.2, other.execute, "COMMIT")
        first = asyncio.create_task(commits.add([_token("first")]))
        await asyncio.sleep(0.05)
        await asyncio.gather(first, commits.add([_token("joined")]))
        ticking.cancel()
        return ticks

    try:
        assert asyncio.run(run()) >= 50  # about 200 in 0.2 s; a blocked loop gives ~0
        assert transactions[-1] == 2 and set(transactions[:-1]) == {0}
        assert store.get_token("first") and store.get_token("joined")
    finally:
        other.close()
        store.close()


def test_a_store_busy_for_too_long_fails_the_batch(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """A store locked for longer than BUSY_TIMEOUT gives StorageError (503), storing nothing."""
    monkeypatch.setattr(groupcommit, "BUSY_TIMEOUT", 0.1)
    path = tmp_path / "store.db"
    store = SQLiteStorage(path)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StorageError, match="locked"):
            asyncio.run(GroupCommit(store.try_issue).add([_token("late")]))
        other.execute("ROLLBACK")
        assert store.get_token("late") is None
    finally:
        other.close()
        store.close()


def _wal_frames(path) -> int:  # noqa: ANN001
    with sqlite3.connect(path) as db:
        return db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]


def test_serving_store_leaves_checkpoints_to_checkpoint(tmp_path) -> None:  # noqa: ANN001
    """A serving store runs no checkpoint inside a commit; checkpoint() copies the WAL and
    restarts a long one, so the WAL does not grow without bound under steady writes."""
    path = tmp_path / "store.db"
    store = SQLiteStorage(path)
    try:
        store.serving()
        for i in range(3000):
            store.add_tokens([_token(f"t{i}")])
        wal = path.with_name(path.name + "-wal")
        frames = (wal.stat().st_size - 32) // (4096 + 24)  # WAL header, then frames
        assert frames > _RESTART_FRAMES  # SQLite alone would have checkpointed at 1,000
        store.checkpoint()
        store.add_tokens([_token("after")])
        assert _wal_frames(path) < 10  # the WAL started over
        assert store.get_token("t0") is not None and store.get_token("after") is not None
    finally:
        store.close()


@pytest.mark.parametrize("existing", [None, SCHEMA_1], ids=["fresh", "version-1"])
def test_stores_opened_together_create_or_upgrade_the_schema_once(tmp_path, existing) -> None:  # noqa: ANN001
    """Workers open the database at the same moment: one creates (or upgrades) the schema,
    the others wait for it, and none fails with 'database is locked' or a duplicate column.
    Twenty rounds of six: the switch to WAL lost this race a few times in a hundred."""
    for attempt in range(20):
        path = tmp_path / f"store-{attempt}.db"
        if existing is not None:
            with sqlite3.connect(path) as db:
                db.executescript(existing)
        barrier = threading.Barrier(6)
        outcomes: list[str] = []

        def open_store(
            path: Path = path, barrier: threading.Barrier = barrier, outcomes: list[str] = outcomes
        ) -> None:
            barrier.wait()
            try:
                SQLiteStorage(path).close()
            except StorageError as exc:
                outcomes.append(str(exc))
            else:
                outcomes.append("ok")

        threads = [threading.Thread(target=open_store) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert outcomes == ["ok"] * 6, (attempt, outcomes)
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == _SCHEMA_VERSION


def test_a_store_that_is_not_serving_checkpoints_by_itself(tmp_path) -> None:  # noqa: ANN001
    """Without serving() (the CLI, an embedding program) SQLite's own checkpoints stay on,
    for token writes too, so the WAL does not grow without bound when nobody calls
    checkpoint()."""
    path = tmp_path / "store.db"
    store = SQLiteStorage(path)
    try:
        for i in range(1500):
            assert store.try_add_tokens([_token(f"t{i}")])
        assert _wal_frames(path) < 1500  # restarted after SQLite's checkpoint at 1,000 pages
    finally:
        store.close()


def _refresh(name: str, expires_at: int = 10_000) -> TokenRecord:
    return TokenRecord(name, "refresh", "c", "", 0, expires_at, grant_id="g")


def _refuse_poison(open_store) -> None:  # noqa: ANN001
    """Make the store's database refuse to store the token 'poison' (a failed commit)."""
    if open_store.kind == "sqlite":
        with sqlite3.connect(open_store.location) as db:
            db.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON tokens WHEN NEW.token_hash = 'poison'"
                " BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        return
    import psycopg

    with psycopg.connect(open_store.location, autocommit=True) as db:
        db.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " IF NEW.token_hash = 'poison' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$"
        )
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON tokens FOR EACH ROW EXECUTE FUNCTION refuse()")


def test_rotation_and_its_successors_commit_together(open_store) -> None:  # noqa: ANN001
    """try_issue marks the rotated refresh token used only together with storing its
    successors: a failed store leaves it unused, and a second rotation of it stores nothing."""
    store = open_store()
    store.add_tokens([_refresh("r0")])
    _refuse_poison(open_store)
    with pytest.raises(StorageError, match="refused"):
        store.try_issue([Issue((_token("poison"),), rotates="r0")], 1)
    assert store.get_token("r0").used is False
    assert store.try_issue(
        [Issue((_refresh("r1"),), rotates="r0"), Issue((_refresh("r2"),), rotates="r0")], 1
    ) == [True, False]
    assert store.get_token("r0").used and store.get_token("r1") and store.get_token("r2") is None
    assert store.try_issue([Issue((_token("late"),), rotates="r1")], 20_000) == [False]
    # A failed batch stores none of its issues, also those that were fine.
    with pytest.raises(StorageError, match="refused"):
        store.try_issue([Issue((_token("fine"),)), Issue((_token("poison"),))], 1)
    assert store.get_token("fine") is None
    assert store.try_issue([Issue((_token("fine"),))], 1) == [True] and store.get_token("fine")


def test_login_attempts_are_counted_before_the_check_across_connections(open_store) -> None:  # noqa: ANN001
    """Two connections (two workers) taking attempts for one user and source get no more
    than the limit between them; another source is not affected; a success clears the
    count; after the lock the count starts afresh."""
    from tokensmith.models import LoginPolicy, User

    one, two = open_store(), open_store()
    policy = LoginPolicy(max_failures=3, max_failures_per_user=100, lockout_seconds=60)
    one.add_user(User("u", "hash"))
    taken = [store.take_login_attempt("u", "10.0.0.1", 1000, policy) for store in (one, two) * 4]
    assert taken.count(True) == 3 and taken[:3] == [True] * 3
    assert two.take_login_attempt("u", "10.0.0.2", 1000, policy)
    two.end_login_attempt("u", "10.0.0.2", succeeded=True)
    assert not one.take_login_attempt("u", "10.0.0.1", 1059, policy)
    assert one.take_login_attempt("u", "10.0.0.1", 1060, policy)  # the lock is over
    assert one.take_login_attempt("u", "10.0.0.1", 1060, policy)  # a new count
    assert one.remove_user("u") and not one.take_login_attempt("u", "10.0.0.1", 1060, policy)


def test_removals_and_revocations_reach_every_token(open_store) -> None:  # noqa: ANN001
    """A revoked grant, a removed client and a removed user revoke their tokens, also those
    stored after the revocation (a request that raced with it); a certificate's tokens go
    with their grants."""
    from tokensmith.models import User

    store, other = open_store(), open_store()
    store.add_client(Client("c", "c", "client_secret_basic", ("client_credentials",), scopes=("b", "a")))
    store.add_client(Client("d", "d", "client_secret_basic", ("client_credentials",), scopes=("a", "z")))
    assert store.scopes_in_use() == ["a", "b", "z"]
    assert [c.client_id for c in other.list_clients()] == ["c", "d"]

    store.add_tokens([TokenRecord("g1", "refresh", "c", "", 0, 10_000, grant_id="g")])
    assert other.revoke_grant("g") == 1
    store.add_tokens([TokenRecord("g2", "access", "c", "", 0, 10_000, grant_id="g")])
    assert store.get_token("g1").revoked and store.get_token("g2").revoked

    user = User("u", "hash")
    store.add_user(user)
    assert other.get_user("u") == user and [u.username for u in other.list_users()] == ["u"]
    store.add_tokens([TokenRecord("u1", "access", "d", "", 0, 10_000, user_id=user.user_id, grant_id="h")])
    assert other.revoke_user_tokens(user.user_id) == 1 and store.get_token("u1").revoked
    store.add_tokens([TokenRecord("u2", "access", "d", "", 0, 10_000, user_id=user.user_id)])
    assert not store.get_token("u2").revoked
    assert other.remove_user("u") and not other.remove_user("u")
    assert store.get_token("u2").revoked and store.get_user("u") is None

    store.add_tokens(
        [
            TokenRecord("b1", "access", "d", "", 0, 10_000, cnf_x5t_s256="X", grant_id="k"),
            TokenRecord("b2", "access", "d", "", 0, 10_000, cnf_x5t_s256="Y"),
        ]
    )
    assert other.revoke_bound_tokens("d", "X") == 1
    store.add_tokens([TokenRecord("b3", "refresh", "d", "", 0, 10_000, grant_id="k")])
    assert store.get_token("b3").revoked and not store.get_token("b2").revoked

    assert other.revoke_token("b2") and not other.revoke_token("b2") and store.get_token("b2").revoked
    store.add_tokens([TokenRecord("c1", "access", "c", "", 0, 10_000)])
    assert other.remove_client("c") and not other.remove_client("c")
    store.add_tokens([TokenRecord("c2", "access", "c", "", 0, 10_000)])
    assert store.get_token("c1").revoked and store.get_token("c2").revoked
    assert store.get_token("c2").claims == {} and store.get_token("nothing") is None


def test_a_refresh_token_is_used_once_among_concurrent_connections(open_store) -> None:  # noqa: ANN001
    """use_refresh_token and rotations through try_issue, from eight connections at once
    (workers or instances): exactly one caller wins."""
    stores = [open_store() for _ in range(8)]
    stores[0].add_tokens([_refresh("r0")])
    start = threading.Barrier(len(stores))
    results: list[bool] = []

    def use(index: int) -> None:
        start.wait()
        if index % 2:
            results.append(stores[index].use_refresh_token("r0", 1))
        else:
            answer = None
            while answer is None:  # SQLite: busy now, as the group commit would retry
                answer = stores[index].try_issue([Issue((_refresh(f"next{index}"),), rotates="r0")], 1)
            results.extend(answer)

    threads = [threading.Thread(target=use, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
    assert sum(stores[0].get_token(f"next{i}") is not None for i in range(0, 8, 2)) <= 1


def test_unlock_forgets_failures(open_store) -> None:  # noqa: ANN001
    from tokensmith.models import LoginPolicy, User

    store = open_store()
    policy = LoginPolicy(max_failures=1, max_failures_per_user=1, lockout_seconds=60)
    store.add_user(User("u", "hash"))
    assert store.take_login_attempt("u", "s", 1000, policy)
    assert not store.take_login_attempt("u", "s", 1001, policy)
    assert store.get_user("u").locked_until == 1060
    assert store.unlock_user("u") and not store.unlock_user("nobody")
    assert store.take_login_attempt("u", "s", 1002, policy)


def test_a_threaded_group_commit_keeps_the_loop_serving_and_batches_what_arrives() -> None:
    """A networked store commits in a thread: the event loop runs while a commit is in
    flight, the requests that arrive meanwhile are committed together in the next batch,
    and a failed batch fails only its own callers."""
    batches: list[list[str]] = []
    release = threading.Event()

    def try_issue(issues: list[Issue], now: int) -> list[bool] | None:
        names = [issue.tokens[0].token_hash for issue in issues]
        batches.append(names)
        if len(batches) == 1:
            release.wait(5)  # the first commit is slow
        if "bad" in names:
            raise StorageError("refused")
        return [True] * len(issues)

    commits = GroupCommit(try_issue, threaded=True)

    async def outcome(name: str) -> str:
        try:
            return str(await commits.add([_token(name)]))
        except StorageError:
            return "503"

    async def run() -> tuple[list[str], int]:
        first = asyncio.ensure_future(outcome("first"))
        await asyncio.sleep(0.05)  # the first batch is in flight, in its thread
        ticks = 0
        later = [asyncio.ensure_future(outcome(name)) for name in ("a", "b", "bad")]
        for _ in range(5):
            await asyncio.sleep(0.01)
            ticks += 1  # the loop turns while the commit waits
        release.set()
        return [await first, *[await task for task in later]], ticks

    results, ticks = asyncio.run(run())
    assert ticks == 5 and batches == [["first"], ["a", "b", "bad"]]
    assert results == ["True", "503", "503", "503"]


def test_a_version_5_database_gains_client_metadata_and_plugin_state(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "tokens.db"
    with SQLiteStorage(path) as store:
        store.add_client(Client("c1", "one", "client_secret_basic", ("client_credentials",)))
    with sqlite3.connect(path) as db:  # back to schema 5: no metadata, no plugin_state
        _drop_schema_8(db)
        _drop_schema_7(db)
        db.execute("DROP TABLE plugin_state")
        db.execute("ALTER TABLE clients DROP COLUMN metadata")
        db.execute("PRAGMA user_version=5")
    with SQLiteStorage(path) as store:
        client = store.get_client("c1")
        assert client is not None and dict(client.metadata) == {}
        store.update_client(replace(client, metadata={"jwks_uri": "https://c.example/jwks"}))
        assert store.put_if_absent("p", "k", int(time.time()) + 60)
    with SQLiteStorage(path) as store:
        client = store.get_client("c1")
        assert client is not None and client.metadata == {"jwks_uri": "https://c.example/jwks"}
        assert not store.put_if_absent("p", "k", int(time.time()) + 60)


def test_put_if_absent_admits_one_caller_across_connections(open_store) -> None:  # noqa: ANN001
    stores = [open_store() for _ in range(4)]
    later = int(time.time()) + 60
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: stores[i % 4].put_if_absent("jwt", "jti-1", later), range(32)))
    assert answers.count(True) == 1
    # Namespaces are apart; an expired key is absent and may be taken again.
    assert stores[0].put_if_absent("other", "jti-1", later)
    assert stores[0].put_if_absent("jwt", "old", int(time.time()) - 1)
    assert stores[1].put_if_absent("jwt", "old", later)
    assert not stores[2].put_if_absent("jwt", "old", later)


def test_replace_state_never_brings_back_a_deleted_key(open_store) -> None:  # noqa: ANN001
    """The console writes a session back only while it exists: a sign-out (a delete) between
    another request's read and its write wins."""
    one, two = open_store(), open_store()
    later = int(time.time()) + 60
    assert not one.replace_state("s", "k", "v", later)
    assert one.get_state("s", "k") is None
    one.set_state("s", "k", "v1", later)
    assert two.replace_state("s", "k", "v2", later + 1)
    assert one.get_state("s", "k") == "v2"
    assert one.delete_state("s", "k")
    assert not two.replace_state("s", "k", "v3", later)
    assert one.get_state("s", "k") is None
    one.set_state("s", "old", "v", int(time.time()) - 1)
    assert not one.replace_state("s", "old", "v", later)
    assert one.get_state("s", "old") is None


def _state_rows(open_store) -> list[tuple[str, str]]:  # noqa: ANN001
    """Every plugin_state row, expired or not, straight from the database."""
    query = "SELECT namespace, key FROM plugin_state ORDER BY 1, 2"
    if open_store.kind == "sqlite":
        with sqlite3.connect(open_store.location) as db:
            return db.execute(query).fetchall()
    import psycopg

    with psycopg.connect(open_store.location) as db:
        return db.execute(query).fetchall()


def test_plugin_key_value_state_expires_and_is_purged(open_store) -> None:  # noqa: ANN001
    store, other = open_store(), open_store()
    now = int(time.time())
    store.set_state("p", "kept", '{"a": 1}')
    store.set_state("p", "gone", "x", expires_at=now - 1)
    store.set_state("q", "kept", "q's")
    assert other.get_state("p", "kept") == '{"a": 1}'
    assert other.get_state("q", "kept") == "q's"
    assert other.get_state("p", "gone") is None
    assert not other.delete_state("p", "gone")
    store.set_state("p", "kept", "new")
    assert other.get_state("p", "kept") == "new"
    assert store.purge_expired(now) == 0
    assert _state_rows(open_store) == [("p", "kept"), ("q", "kept")]
    assert other.delete_state("p", "kept")
    assert store.get_state("p", "kept") is None


def _drop_schema_8(db: sqlite3.Connection) -> None:
    """Undo what schema 8 added: the authorization code grant's tables."""
    for table in ("authorization_codes", "consents", "signin_sessions"):
        db.execute(f"DROP TABLE {table}")


def _drop_schema_7(db: sqlite3.Connection) -> None:
    """Undo what schema 7 added: users.role, audit_log, registration_tokens."""
    db.execute("DROP TABLE audit_log")
    db.execute("DROP TABLE registration_tokens")
    db.execute("ALTER TABLE users DROP COLUMN role")


def test_a_version_6_database_gains_roles_audit_and_registration_tokens(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "tokens.db"
    with SQLiteStorage(path) as store:
        store.add_user(User("ann", "hash", 1))
    with sqlite3.connect(path) as db:
        _drop_schema_8(db)
        _drop_schema_7(db)
        db.execute("PRAGMA user_version=6")
    with SQLiteStorage(path) as store:
        user = store.get_user("ann")
        assert user is not None and user.role is None
        assert store.set_user_role("ann", "admin")
        store.add_audit(AuditEntry(1, "cli:x", "cli", None, "user.role", "ann", {"role": "admin"}))
        store.add_registration_token("h", "initial", None, None)
    with SQLiteStorage(path) as store:
        assert store.get_user("ann").role == "admin"  # type: ignore[union-attr]
        assert [e.action for e in store.list_audit()] == ["user.role"]
        assert store.find_registration_token("h", "initial") == (None, None)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == _SCHEMA_VERSION


def test_a_version_7_database_gains_codes_consents_and_sessions(tmp_path) -> None:  # noqa: ANN001
    """Schema 8 (the authorization code grant) upgrades a schema 7 database in place: the
    tables it adds work, and what was there stays."""
    path = tmp_path / "tokens.db"
    with SQLiteStorage(path) as store:
        store.add_user(User("alice", "hash"))
    with sqlite3.connect(path) as db:
        _drop_schema_8(db)
        db.execute("PRAGMA user_version=7")
    now = int(time.time())
    with SQLiteStorage(path) as store:
        user = store.get_user("alice")
        assert user is not None
        code = AuthorizationCode(
            "h", "c1", "https://c/cb", True, "read", "x" * 43, user.user_id, "alice", "g", now, now + 60
        )
        store.add_authorization_code(code)
        store.add_consent(Consent(user.user_id, "c1", ("read",), now))
        store.add_session(SignInSession("s", user.user_id, "alice", now, now + 60))
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 8
    with SQLiteStorage(path) as store:
        assert store.get_authorization_code("h") == code
        assert store.get_session("s") is not None and store.get_consent(user.user_id, "c1") is not None


def test_codes_are_single_use_across_connections(open_store) -> None:  # noqa: ANN001
    """use_authorization_code: exactly one of many concurrent callers redeems a code."""
    stores = [open_store() for _ in range(4)]
    now = int(time.time())
    stores[0].add_authorization_code(
        AuthorizationCode("h", "c1", "https://c/cb", False, "", "x" * 43, "u", "alice", "g", now, now + 60)
    )
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: stores[i % 4].use_authorization_code("h"), range(32)))
    assert answers.count(True) == 1
    stored = stores[1].get_authorization_code("h")
    assert stored is not None and stored.used and not stored.redirect_uri_given
    assert stored.client_id == "c1" and stored.expires_at == now + 60
    assert stores[2].get_authorization_code("other") is None


def test_codes_are_kept_a_day_past_expiry_and_go_with_their_client(open_store) -> None:  # noqa: ANN001
    store = open_store()
    now = int(time.time())
    store.add_client(Client("c1", "one", "client_secret_basic", ("authorization_code",), ("read",)))
    for name, client_id, expires_at in (
        ("recent", "c2", now - 60),
        ("ancient", "c2", now - 2 * 24 * 3600),
        ("mine", "c1", now + 60),
    ):
        store.add_authorization_code(
            AuthorizationCode(
                name, client_id, "https://c/cb", True, "", "x" * 43, "u", "alice", "g", now, expires_at
            )
        )
    store.add_consent(Consent("u", "c1", ("read",), now))
    store.purge_expired(now)
    assert store.get_authorization_code("recent") is not None
    assert store.get_authorization_code("ancient") is None
    code = store.get_authorization_code("mine")
    assert code is not None and code.redirect_uri_given
    assert store.remove_client("c1")
    assert store.get_authorization_code("mine") is None and store.get_consent("u", "c1") is None


def test_withdrawing_a_consent_revokes_the_clients_tokens_grants_and_codes_for_that_user(
    open_store,  # noqa: ANN001
) -> None:
    """revoke_consent takes with it what the client holds for the user: tokens, their grants
    (a token of one stored later is revoked too) and codes not yet redeemed; nothing of
    another user's or another client's."""
    store = open_store()
    now = int(time.time())
    ids = {}
    for name in ("u1", "u2"):
        store.add_user(User(name, "hash"))
        ids[name] = store.get_user(name).user_id

    def token(value: str, kind: str, name: str, client: str, grant: str) -> TokenRecord:
        return TokenRecord(value, kind, client, "read", now, now + 600, user_id=ids[name], grant_id=grant)

    for name, client in (("u1", "c1"), ("u1", "c2"), ("u2", "c1")):
        key = f"{name}-{client}"
        store.add_consent(Consent(ids[name], client, ("read",), now))
        store.add_tokens(
            [
                token(f"a-{key}", "access", name, client, f"g-{key}"),
                token(f"r-{key}", "refresh", name, client, f"g-{key}"),
            ]
        )
        store.add_authorization_code(
            AuthorizationCode(
                f"code-{key}",
                client,
                "https://c/cb",
                True,
                "read",
                "x" * 43,
                ids[name],
                name,
                f"cg-{key}",
                now,
                now + 60,
            )
        )
    assert store.revoke_consent(ids["u1"], "c1")
    assert store.get_consent(ids["u1"], "c1") is None
    assert store.get_token("a-u1-c1").revoked and store.get_token("r-u1-c1").revoked
    assert not store.use_refresh_token("r-u1-c1", now)
    assert store.get_authorization_code("code-u1-c1") is None
    # A token of the grant stored after the withdrawal (a refresh racing it) is revoked too,
    # and so is one issued for the withdrawn code's grant (a redemption racing it).
    store.add_token(token("late", "access", "u1", "c1", "g-u1-c1"))
    store.add_token(token("raced", "access", "u1", "c1", "cg-u1-c1"))
    assert store.get_token("late").revoked and store.get_token("raced").revoked
    for name, client in (("u1", "c2"), ("u2", "c1")):
        assert store.get_consent(ids[name], client) is not None
        assert not store.get_token(f"a-{name}-{client}").revoked
        code = store.get_authorization_code(f"code-{name}-{client}")
        assert code is not None and not code.used
    # Withdrawing again: no consent, nothing more to revoke, no error.
    assert not store.revoke_consent(ids["u1"], "c1")


def test_a_code_is_stored_only_while_its_sign_in_and_consent_last(open_store) -> None:  # noqa: ANN001
    """add_authorization_code with the session that signs the user in stores the code only
    while that session is live and the user's consent to the client is there, checked in the
    statement that stores it: a red team got a code that outlived `user revoke` or a consent
    withdrawal committed between the checks and the insert."""
    store = open_store()
    store.add_user(User("u1", "hash"))
    uid = store.get_user("u1").user_id
    now = int(time.time())
    store.add_session(SignInSession("live", uid, "u1", now, now + 600))
    store.add_session(SignInSession("old", uid, "u1", now - 120, now - 60))
    store.add_consent(Consent(uid, "c1", ("read",), now))

    def code(name: str, client: str = "c1") -> AuthorizationCode:
        return AuthorizationCode(
            name, client, "https://c/cb", True, "read", "x" * 43, uid, "u1", f"g-{name}", now, now + 60
        )

    assert store.add_authorization_code(code("a"), "live")
    refused = [
        ("another session", code("b"), "nobody's"),
        ("an expired session", code("c"), "old"),
        ("no consent to the client", code("d", "c2"), "live"),
    ]
    for why, candidate, session in refused:
        assert not store.add_authorization_code(candidate, session), why
    assert store.revoke_consent(uid, "c1")
    assert not store.add_authorization_code(code("e"), "live")
    store.add_consent(Consent(uid, "c1", ("read",), now))
    assert store.add_authorization_code(code("f"), "live")
    store.revoke_user_tokens(uid)
    assert not store.add_authorization_code(code("g"), "live")
    for name in "abcdefg":
        assert store.get_authorization_code(name) is None, name


@pytest.mark.parametrize("how", ["revoke", "remove"])
def test_revoking_or_removing_a_user_takes_their_codes_and_grants(open_store, how: str) -> None:  # noqa: ANN001
    """revoke_user_tokens and remove_user end every token and grant of the user, codes not
    yet redeemed included (a red team redeemed one after `user revoke`): the code is gone,
    and a token issued for its grant by a redemption racing the revocation is stored revoked.
    Another user's code and tokens are untouched."""
    store = open_store()
    now = int(time.time())
    ids = {}
    for name in ("u1", "u2"):
        store.add_user(User(name, "hash"))
        ids[name] = store.get_user(name).user_id
        store.add_token(
            TokenRecord(
                f"a-{name}", "access", "c1", "read", now, now + 600, user_id=ids[name], grant_id=f"g-{name}"
            )
        )
        store.add_authorization_code(
            AuthorizationCode(
                f"code-{name}",
                "c1",
                "https://c/cb",
                True,
                "read",
                "x" * 43,
                ids[name],
                name,
                f"cg-{name}",
                now,
                now + 60,
            )
        )
    if how == "revoke":
        assert store.revoke_user_tokens(ids["u1"]) == 1
    else:
        assert store.remove_user("u1")
    assert store.get_token("a-u1").revoked
    assert store.get_authorization_code("code-u1") is None
    store.add_token(
        TokenRecord("raced", "access", "c1", "read", now, now + 600, user_id=ids["u1"], grant_id="cg-u1")
    )
    assert store.get_token("raced").revoked
    code = store.get_authorization_code("code-u2")
    assert code is not None and not code.used and not store.get_token("a-u2").revoked


def test_revoking_a_clients_tokens_takes_its_unredeemed_codes_too(open_store) -> None:  # noqa: ANN001
    """revoke_client_tokens ends every token and grant of the client, as its docstring says:
    a code issued before and redeemed after it gave live tokens (an outside review read it
    in the code). Another client's code stays."""
    store = open_store()
    store.add_user(User("u1", "hash"))
    uid = store.get_user("u1").user_id
    now = int(time.time())
    for client in ("c1", "c2"):
        store.add_authorization_code(
            AuthorizationCode(
                f"code-{client}",
                client,
                "https://c/cb",
                True,
                "read",
                "x" * 43,
                uid,
                "u1",
                f"g-{client}",
                now,
                now + 60,
            )
        )
    store.revoke_client_tokens("c1")
    assert store.get_authorization_code("code-c1") is None
    store.add_token(
        TokenRecord("raced", "access", "c1", "read", now, now + 600, user_id=uid, grant_id="g-c1")
    )
    assert store.get_token("raced").revoked
    assert store.get_authorization_code("code-c2") is not None


def test_consents_add_up_and_are_revocable_and_sessions_end_with_their_user(open_store) -> None:  # noqa: ANN001
    store = open_store()
    store.add_user(User("alice", "hash"))
    user = store.get_user("alice")
    assert user is not None
    now = int(time.time())
    store.add_consent(Consent(user.user_id, "c1", ("read",), now))
    store.add_consent(Consent(user.user_id, "c1", ("write", "read"), now))
    store.add_consent(Consent(user.user_id, "c2", (), now))
    consent = store.get_consent(user.user_id, "c1")
    assert consent is not None and consent.scopes == ("read", "write")
    assert [c.client_id for c in store.list_consents(user.user_id)] == ["c1", "c2"]
    assert store.revoke_consent(user.user_id, "c1") and not store.revoke_consent(user.user_id, "c1")
    assert store.get_consent(user.user_id, "c1") is None
    store.add_session(SignInSession("live", user.user_id, "alice", now, now + 60))
    store.add_session(SignInSession("old", user.user_id, "alice", now - 120, now - 60))
    assert store.get_session("live") == SignInSession("live", user.user_id, "alice", now, now + 60)
    assert store.get_session("old") is None
    store.purge_expired(now)
    assert store.delete_session("live") and not store.delete_session("old")
    store.add_session(SignInSession("revoked", user.user_id, "alice", now, now + 60))
    store.revoke_user_tokens(user.user_id)
    assert store.get_session("revoked") is None
    store.add_session(SignInSession("again", user.user_id, "alice", now, now + 60))
    store.remove_user("alice")
    assert store.get_session("again") is None and store.list_consents(user.user_id) == []


def test_one_store_serves_many_threads_at_once(open_store) -> None:  # noqa: ANN001
    """The server calls one store object from the event loop's thread and from worker
    threads (asyncio.to_thread) at once: transactions of different threads must not mix
    ("cannot start a transaction within a transaction"), and none may be lost."""
    import threading

    from tokensmith.models import AuditEntry, LoginPolicy, User

    store = open_store()
    policy = LoginPolicy(max_failures=1000, max_failures_per_user=100000, lockout_seconds=60)
    threads, rounds = 8, 40
    for index in range(threads):
        store.add_user(User(f"u{index}", "hash"))
    barrier = threading.Barrier(threads)
    failures: list[BaseException] = []

    def work(index: int) -> None:
        barrier.wait()
        try:
            for round_ in range(rounds):
                assert store.take_login_attempt(f"u{index}", "10.0.0.1", 1000, policy)
                store.end_login_attempt(f"u{index}", "10.0.0.1", succeeded=round_ % 2 == 0)
                store.add_audit(AuditEntry(1, f"u{index}", "basic", None, "user.unlock", str(round_), {}))
                assert store.get_user(f"u{index}") is not None
        except BaseException as exc:  # noqa: BLE001 - reported below, with the thread's failure
            failures.append(exc)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not failures, failures[:3]
    assert len(store.list_audit(1000)) == threads * rounds
