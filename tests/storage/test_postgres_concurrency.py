"""A slow PostgreSQL holds only the requests that wait for it (issue 18).

Requests' store calls go through ``Storage.call``: PostgreSQL runs them in a pool of threads
and connections, so that while one call waits for the database (here: for a table lock that
another connection holds) the event loop answers everything else, and N stalled calls take
one deadline, not N of them. SQLite calls stay on the caller's thread.

The PostgreSQL tests skip, saying how to run them, without TOKENSMITH_TEST_POSTGRES_URL.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from xml.sax.saxutils import quoteattr

import httpx
import pytest
from conftest import Server, new_deployment, start_server
from tokensmith.models import StorageError, TokenRecord
from tokensmith.storage.postgres import PostgresStorage
from tokensmith.storage.sqlite import SQLiteStorage


@contextmanager
def tokens_locked(url: str) -> Iterator[None]:
    """Another session holds the tokens table: every read of a token waits for it."""
    import psycopg

    with psycopg.connect(url) as locker:
        locker.execute("LOCK TABLE tokens IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            locker.rollback()


def test_pool_size_is_read_from_server_xml_and_bounded(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """``<Database poolSize>``: 8 unless given; outside 1..256 a file+line error."""
    from tokensmith.config.settings import load_server
    from tokensmith.config.xml import ConfigError
    from tokensmith.storage.postgres import POOL_SIZE

    monkeypatch.delenv("TOKENSMITH_DATABASE_URL", raising=False)
    path = tmp_path / "server.xml"

    def server(database: str) -> Path:
        path.write_text(
            '<?xml version="1.0" encoding="UTF-8"?>\n<Server>\n'
            '    <Keystore certificateFile="security/server.crt" keyFile="security/server.key"/>\n'
            f'    <Connector port="0"/>\n    {database}\n</Server>\n'
        )
        return path

    assert load_server(server('<Database url="postgresql://h/db"/>')).database_pool_size == POOL_SIZE == 8
    assert load_server(server('<Database url="postgresql://h/db" poolSize="3"/>')).database_pool_size == 3
    for bad in ("0", "257", "x"):
        with pytest.raises(ConfigError, match=r"server\.xml:5"):
            load_server(server(f'<Database url="postgresql://h/db" poolSize="{bad}"/>'))


def test_sqlite_calls_stay_on_the_callers_thread(tmp_path: Path) -> None:
    """No thread hop for the embedded store: its reads take less than one would."""
    store = SQLiteStorage(tmp_path / "s.db")
    try:
        store.add_tokens([TokenRecord("t", "access", "c", "", 0, 10_000)])

        async def main() -> tuple[int, TokenRecord | None]:
            return await store.call(lambda: threading.get_ident()), await store.call(store.get_token, "t")

        ident, token = asyncio.run(main())
        assert ident == threading.get_ident()
        assert token is not None and token.token_hash == "t"
    finally:
        store.close()


def test_a_stalled_postgres_call_leaves_the_event_loop_free(postgres_url: str) -> None:
    """While a read waits for a lock, the loop keeps turning; the read then completes."""
    store = PostgresStorage(postgres_url)
    try:
        store.add_tokens([TokenRecord("t", "access", "c", "", 0, 10_000)])

        async def main() -> tuple[float, TokenRecord | None, int]:
            with tokens_locked(postgres_url):
                read = asyncio.ensure_future(store.call(store.get_token, "t"))
                worst, ticks = 0.0, 0
                for _ in range(30):
                    started = time.monotonic()
                    await asyncio.sleep(0.01)
                    worst = max(worst, time.monotonic() - started)
                    ticks += 1
                assert not read.done()  # still waiting for the lock
            return worst, await read, threading.get_ident()

        worst, token, _ = asyncio.run(main())
        assert worst < 0.2
        assert token is not None
    finally:
        store.close()


def test_n_stalled_postgres_calls_take_one_deadline_not_n(postgres_url: str, monkeypatch) -> None:  # noqa: ANN001
    """Four reads stalled on a lock each fail at their own lock timeout, together: not one
    after the other. With a pool of two, the two queued behind them still end within the
    call's deadline (StorageError), never later."""
    from tokensmith.storage import postgres

    monkeypatch.setattr(postgres, "STATEMENT_TIMEOUT_MS", 1_000)
    for pool_size, limit in ((4, 1.0 + 0.9), (2, postgres.call_deadline() + postgres._QUEUE_MARGIN + 0.5)):
        store = PostgresStorage(postgres_url, pool_size=pool_size)
        try:
            store.add_tokens([TokenRecord(f"t{pool_size}", "access", "c", "", 0, 10_000)])

            async def main(store: PostgresStorage = store) -> list[object]:
                return await asyncio.gather(
                    *(store.call(store.get_token, "t") for _ in range(4)), return_exceptions=True
                )

            with tokens_locked(postgres_url):
                started = time.monotonic()
                results = asyncio.run(main())
                elapsed = time.monotonic() - started
            assert all(isinstance(r, StorageError) for r in results), results
            assert elapsed < limit, (pool_size, elapsed)  # one after the other: 4 s
            assert store.get_token(f"t{pool_size}") is not None  # the pool serves again
        finally:
            store.close()


def test_the_watchdog_ends_every_stalled_connection_at_its_deadline(postgres_url: str, monkeypatch) -> None:  # noqa: ANN001
    """The database host freezes (nothing answers, the kernel still acknowledges) while three
    calls are at it on three connections: the one watchdog ends each at its client-side
    deadline, together, and the store serves again once the host does."""
    import pg
    from tokensmith.storage import postgres

    monkeypatch.setattr(postgres, "STATEMENT_TIMEOUT_MS", 500)
    monkeypatch.setattr(postgres, "CALL_MARGIN", 0.5)
    with pg.Proxy(postgres_url) as proxy:
        store = PostgresStorage(proxy.url, pool_size=3)
        try:
            store.add_tokens([TokenRecord("t", "access", "c", "", 0, 10_000)])

            async def main() -> list[object]:
                # Three connections open first, so that the freeze finds each mid-call.
                await asyncio.gather(*(store.call(store.get_token, "t") for _ in range(3)))
                proxy.freeze()
                return await asyncio.gather(
                    *(store.call(store.get_token, "t") for _ in range(3)), return_exceptions=True
                )

            started = time.monotonic()
            results = asyncio.run(main())
            elapsed = time.monotonic() - started
            assert all(isinstance(r, StorageError) and "deadline" in str(r) for r in results), results
            assert elapsed < 2.5  # one deadline (1 s), not three
            proxy.thaw()
            time.sleep(0.6)  # past the reconnect back-off
            assert store.get_token("t") is not None
        finally:
            store.close()


# -- one `tokensmith serve` process ----------------------------------------------------------


@pytest.fixture
def pg_server(tmp_path, keystore, wheel_cache, postgres_url) -> Iterator[tuple[Server, dict]]:  # noqa: ANN001
    """A server on PostgreSQL whose lock waits end after 2 s (the URL's own options win),
    and a client of it."""
    assert "options=" in postgres_url  # its schema's search_path (tests/pg.py)
    url = postgres_url.replace("options=", "options=-clock_timeout%3D2000%20", 1)
    dep = new_deployment(
        tmp_path / "ts", keystore, wheel_cache, database_xml=f"<Database url={quoteattr(url)}/>"
    )
    server = start_server(dep)
    try:
        client = dep.add_client(
            "c", "--grant-type=client_credentials", "--scope=read", "--auth-method", "client_secret_basic"
        )
        yield server, client
    finally:
        server.stop()


def _token(server: Server, client: dict) -> str:
    with server.client() as http:
        response = http.post(
            "/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=(client["client_id"], client["client_secret"]),
        )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def _introspect(server: Server, client: dict, value: str) -> tuple[httpx.Response, float]:
    with server.client() as http:
        response = http.post(
            "/oauth2/introspect", data={"token": value}, auth=(client["client_id"], client["client_secret"])
        )
    return response, time.monotonic()


def test_while_a_request_waits_for_the_database_the_server_answers_others(pg_server, postgres_url) -> None:  # noqa: ANN001
    """One process, one introspection stalled on a lock: /healthz, /metrics and a token request
    refused before it needs the store are answered at once, while the introspection is still
    waiting; it is answered once the lock is gone."""
    server, client = pg_server
    value = _token(server, client)
    with ThreadPoolExecutor(1) as pool, server.client() as http:
        with tokens_locked(postgres_url):
            stalled = pool.submit(_introspect, server, client, value)
            time.sleep(0.3)  # the introspection is at the database now
            for method, path, data in (
                ("GET", "/healthz", None),
                ("GET", "/metrics", None),
                ("POST", "/oauth2/token", {"grant_type": "urn:example:unknown"}),
            ):
                started = time.monotonic()
                answer = http.request(method, path, data=data)
                assert time.monotonic() - started < 1.0, path
                assert answer.status_code in (200, 400), (path, answer.text)
            assert not stalled.done()
            released = time.monotonic()
        response, answered = stalled.result()
    assert response.status_code == 200 and response.json()["active"] is True
    assert answered >= released


def test_n_stalled_requests_are_answered_together_503_with_retry_after(pg_server, postgres_url) -> None:  # noqa: ANN001
    """Four introspections wait on the lock until their lock timeout (2 s): each is 503
    temporarily_unavailable with Retry-After, all within about one timeout, not four."""
    server, client = pg_server
    value = _token(server, client)
    with tokens_locked(postgres_url), ThreadPoolExecutor(4) as pool:
        started = time.monotonic()
        answers = list(pool.map(lambda _: _introspect(server, client, value), range(4)))
        elapsed = time.monotonic() - started
    for response, _ in answers:
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "temporarily_unavailable"
        assert response.headers["Retry-After"] == "1"
    assert elapsed < 5.0  # one after the other: 8 s
    response, _ = _introspect(server, client, value)
    assert response.status_code == 200 and response.json()["active"] is True


def test_withdrawing_consent_cannot_deadlock_with_a_grant_revocation(postgres_url: str, monkeypatch) -> None:  # noqa: ANN001
    """Withdrawing a consent while a code of it is redeemed and its grant revoked at once: the
    consent's transaction takes the tokens' rows last, as revoke_grant does, so neither waits
    on the other in a cycle. A refactor that locked the rows before inserting the codes'
    grants made PostgreSQL abort one of them as a deadlock (an outside review found it)."""
    import psycopg

    store = PostgresStorage(postgres_url, pool_size=4)
    admin = psycopg.connect(postgres_url, autocommit=True)
    try:
        admin.execute(
            "INSERT INTO consents (user_id, client_id, scopes, granted_at) VALUES ('u1', 'c1', 's', 1)"
        )
        admin.execute(
            "INSERT INTO authorization_codes (code_hash, client_id, redirect_uri, redirect_uri_given, scope,"
            " code_challenge, user_id, username, grant_id, issued_at, expires_at, used)"
            " VALUES ('K', 'c1', 'r', true, 's', 'cc', 'u1', 'n', 'G2', 1, 2, true)"
        )
        first_insert, resume, tokens_step, finish = (threading.Event() for _ in range(4))
        real_execute = psycopg.Cursor.execute

        def execute(self, query, params=None, **kwargs):  # noqa: ANN001, ANN202
            # Pause the consent's transaction after its first statement and before its last,
            # so that the redemption and the revocation fall exactly in between.
            result = real_execute(self, query, params, **kwargs)
            if threading.current_thread().name == "consent":
                text = query if isinstance(query, str) else str(query)
                if text.startswith("INSERT INTO revoked_grants") and not first_insert.is_set():
                    first_insert.set()
                    resume.wait(10)
                elif text.startswith("UPDATE tokens SET revoked"):
                    tokens_step.set()
                    finish.wait(10)
            return result

        monkeypatch.setattr(psycopg.Cursor, "execute", execute)
        outcome: dict[str, object] = {}

        def run(name: str, call, *args: str) -> None:  # noqa: ANN001
            try:
                outcome[name] = call(*args)
            except StorageError as exc:
                outcome[name] = exc

        consent = threading.Thread(
            target=run, name="consent", args=("consent", store.revoke_consent, "u1", "c1")
        )
        consent.start()
        assert first_insert.wait(10)
        # The code is redeemed meanwhile: its token is stored, in a transaction of its own.
        admin.execute(
            "INSERT INTO tokens (token_hash, kind, client_id, scope, issued_at, expires_at, grant_id, user_id)"
            " VALUES ('X', 'refresh', 'c1', 's', 1, 9999999999, 'G2', 'u1')"
        )
        resume.set()
        tokens_step.wait(10)
        revoke = threading.Thread(target=run, name="revoke", args=("revoke", store.revoke_grant, "G2"))
        revoke.start()
        time.sleep(0.5)
        finish.set()
        consent.join(15)
        revoke.join(15)
        assert outcome.get("consent") is True, outcome
        assert not isinstance(outcome.get("revoke"), StorageError), outcome
        assert admin.execute("SELECT revoked FROM tokens WHERE token_hash = 'X'").fetchone() == (True,)
    finally:
        admin.close()
        store.close()


def _signed_in_with_consent(store: PostgresStorage) -> str:
    """User u1 with a live sign-in session "s1" and consent to client c1; their user id."""
    from tokensmith.models import Consent, SignInSession, User

    store.add_user(User("u1", "hash"))
    user = store.get_user("u1")
    assert user is not None
    now = int(time.time())
    store.add_session(SignInSession("s1", user.user_id, "u1", now, now + 600))
    store.add_consent(Consent(user.user_id, "c1", ("read",), now))
    return user.user_id


def _code(user_id: str, name: str):  # noqa: ANN202
    from tokensmith.models import AuthorizationCode

    now = int(time.time())
    return AuthorizationCode(
        name, "c1", "https://c/cb", True, "read", "x" * 43, user_id, "u1", f"g-{name}", now, now + 60
    )


@pytest.mark.parametrize("revocation", ["user", "consent"])
def test_a_code_issued_while_a_revocation_commits_is_not_stored(postgres_url: str, revocation: str) -> None:
    """The revocation has deleted the session (user revoke) or the consent (withdrawal) and
    not yet committed when a code is issued: the code's insert waits on that row and then
    finds it gone. Without the row lock it read the row from before the revocation and stored
    a code that gave live tokens afterwards (an outside review found it)."""
    import psycopg

    store = PostgresStorage(postgres_url, pool_size=2)
    revoker = psycopg.connect(postgres_url)
    try:
        user_id = _signed_in_with_consent(store)
        if revocation == "user":
            revoker.execute("DELETE FROM signin_sessions WHERE user_id = %s", (user_id,))
        else:
            revoker.execute("DELETE FROM consents WHERE user_id = %s AND client_id = 'c1'", (user_id,))
        with ThreadPoolExecutor(1) as pool:
            issuing = pool.submit(store.add_authorization_code, _code(user_id, "late"), "s1")
            time.sleep(0.5)
            assert not issuing.done()  # waiting for the revocation's row
            revoker.commit()
            assert issuing.result(10) is False
        assert store.get_authorization_code("late") is None
    finally:
        revoker.close()
        store.close()


@pytest.mark.parametrize("revocation", ["user", "consent"])
def test_a_revocation_waits_for_a_code_being_issued_and_revokes_it(
    postgres_url: str, revocation: str
) -> None:
    """The other order: a code's insert holds the session's and the consent's rows when the
    revocation starts. The revocation deletes that row first, so it waits for the code, then
    sees it: the code is deleted and its grant revoked. A withdrawal that deleted the consent
    last read the codes before this one committed and left it."""
    import psycopg
    from tokensmith.models import TokenRecord as Token

    store = PostgresStorage(postgres_url, pool_size=2)
    issuer = psycopg.connect(postgres_url)
    try:
        user_id = _signed_in_with_consent(store)
        issuer.execute("SELECT 1 FROM signin_sessions WHERE session_hash = 's1' FOR SHARE")
        issuer.execute("SELECT 1 FROM consents WHERE user_id = %s AND client_id = 'c1' FOR SHARE", (user_id,))
        issuer.execute(
            "INSERT INTO authorization_codes VALUES (%s, 'c1', 'https://c/cb', true, 'read', %s, %s, 'u1',"
            " 'g-racing', 1, 9999999999, false)",
            ("racing", "x" * 43, user_id),
        )
        with ThreadPoolExecutor(1) as pool:
            if revocation == "user":
                revoking = pool.submit(store.revoke_user_tokens, user_id)
            else:
                revoking = pool.submit(store.revoke_consent, user_id, "c1")
            time.sleep(0.5)
            assert not revoking.done()  # waiting for the code's transaction
            issuer.commit()
            revoking.result(10)
        assert store.get_authorization_code("racing") is None
        now = int(time.time())
        store.add_token(
            Token("redeemed", "access", "c1", "read", now, now + 600, user_id=user_id, grant_id="g-racing")
        )
        assert store.get_token("redeemed").revoked
    finally:
        issuer.close()
        store.close()


def test_removing_a_user_cannot_deadlock_with_a_consent_withdrawal(postgres_url: str, monkeypatch) -> None:  # noqa: ANN001
    """`user remove` paused after it took the grants' keys, and the user's consent withdrawn
    meanwhile: every revocation takes the consent's row before the keys, so the withdrawal
    waits for the removal. A removal that deleted the consents last took the keys first and
    then waited on the row the withdrawal held, while the withdrawal waited on the keys: a
    deadlock that PostgreSQL ended by failing one of them (an outside review found it)."""
    import psycopg
    from tokensmith.models import TokenRecord as Token

    store = PostgresStorage(postgres_url, pool_size=4)
    try:
        user_id = _signed_in_with_consent(store)
        now = int(time.time())
        store.add_token(Token("t1", "access", "c1", "read", now, now + 600, user_id=user_id, grant_id="g1"))
        store.add_authorization_code(_code(user_id, "pending"))
        took_keys, resume = threading.Event(), threading.Event()
        real_execute = psycopg.Cursor.execute

        def execute(self, query, params=None, **kwargs):  # noqa: ANN001, ANN202
            result = real_execute(self, query, params, **kwargs)
            text = query if isinstance(query, str) else str(query)
            if threading.current_thread().name == "remove" and text.startswith("INSERT INTO revoked_grants"):
                took_keys.set()
                resume.wait(10)
            return result

        monkeypatch.setattr(psycopg.Cursor, "execute", execute)
        outcome: dict[str, object] = {}

        def run(name: str, call, *args: str) -> None:  # noqa: ANN001
            try:
                outcome[name] = call(*args)
            except StorageError as exc:
                outcome[name] = exc

        remove = threading.Thread(target=run, name="remove", args=("remove", store.remove_user, "u1"))
        remove.start()
        assert took_keys.wait(10)
        withdraw = threading.Thread(
            target=run, name="withdraw", args=("withdraw", store.revoke_consent, user_id, "c1")
        )
        withdraw.start()
        time.sleep(0.5)
        resume.set()
        remove.join(15)
        withdraw.join(15)
        assert outcome.get("remove") is True, outcome
        assert outcome.get("withdraw") is False, outcome  # the removal took the consent with it
        assert store.get_token("t1").revoked and store.get_authorization_code("pending") is None
    finally:
        store.close()


def test_revoking_a_client_and_one_of_its_users_at_once_cannot_deadlock(postgres_url: str) -> None:
    """`sp` token revocation for a client and `user revoke` for one of its users, at once, on
    grants stored in no particular order: both take the grants' keys in grant id order, so
    neither holds a key the other waits for while it waits on one of the other's. Taken in
    the tables' order, they deadlocked in most runs (an outside review found it)."""
    import random

    import psycopg
    from tokensmith.models import TokenRecord as Token
    from tokensmith.models import User

    store = PostgresStorage(postgres_url, pool_size=4)
    try:
        for round_ in range(6):
            users = []
            for name in (f"dave{round_}", f"bob{round_}"):
                store.add_user(User(name, "hash"))
                user = store.get_user(name)
                assert user is not None
                users.append(user.user_id)
            now = int(time.time())
            client = f"c-{round_}"
            grants = [(user_id, f"{random.random():.12f}") for user_id in users for _ in range(5000)]
            random.shuffle(grants)
            store.add_tokens(
                [
                    Token(
                        f"{client}-{n}",
                        "access",
                        client,
                        "read",
                        now,
                        now + 600,
                        user_id=user_id,
                        grant_id=grant,
                    )
                    for n, (user_id, grant) in enumerate(grants)
                ]
            )
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                admin.execute("ANALYZE tokens")  # plans as on a store in use: hashed, unordered
            with ThreadPoolExecutor(2) as pool:
                by_client = pool.submit(store.revoke_client_tokens, client)
                time.sleep(0.01)  # the client's scan under way when the user's starts
                by_user = pool.submit(store.revoke_user_tokens, users[0])
                by_client.result(30)
                by_user.result(30)
    finally:
        store.close()


@contextmanager
def _held(url: str, statement: str, params: tuple = ()) -> Iterator[None]:
    """Another session runs *statement* and keeps what it locked until the block ends (then
    rolls back): the calls made meanwhile stop at a known point."""
    import psycopg

    with psycopg.connect(url) as blocker:
        blocker.execute(statement, params)
        try:
            yield
        finally:
            blocker.rollback()


def _both(first, second, wait: float = 0.5) -> tuple[ThreadPoolExecutor, Future, Future]:  # noqa: ANN001
    """Start *first*, then *second*, each in a thread of the pool returned (close it to wait):
    their futures give what each returned, or the StorageError it raised."""

    def run(call):  # noqa: ANN001, ANN202
        try:
            return call()
        except StorageError as exc:
            return exc

    pool = ThreadPoolExecutor(2)
    one = pool.submit(run, first)
    time.sleep(wait)
    two = pool.submit(run, second)
    time.sleep(wait)
    return pool, one, two


def test_removing_a_client_cannot_deadlock_with_a_consent_withdrawal(postgres_url: str) -> None:
    """A consent withdrawal waiting on a grant's key, while the client is removed: the removal
    takes the consents' rows before the codes', as the revocations do, so it waits behind the
    withdrawal. Codes first, it held the code the withdrawal was about to delete while waiting
    on the consent the withdrawal held (an outside review found it)."""
    from tokensmith.models import Client
    from tokensmith.models import TokenRecord as Token

    store = PostgresStorage(postgres_url, pool_size=4)
    try:
        user_id = _signed_in_with_consent(store)
        store.add_client(Client("c1", "client one", "client_secret_basic", ("authorization_code",)))
        now = int(time.time())
        store.add_token(
            Token("t1", "access", "c1", "read", now, now + 600, user_id=user_id, grant_id="g-code1")
        )
        store.add_authorization_code(_code(user_id, "code1"))
        with _held(postgres_url, "INSERT INTO revoked_grants VALUES ('g-code1', 0)"):
            pool, withdraw, remove = _both(
                lambda: store.revoke_consent(user_id, "c1"), lambda: store.remove_client("c1")
            )
        with pool:
            assert withdraw.result(15) is True and remove.result(15) is True, (
                withdraw.result(),
                remove.result(),
            )
        assert store.get_authorization_code("code1") is None and store.get_token("t1").revoked
    finally:
        store.close()


def test_a_batch_of_rotations_cannot_deadlock_with_a_user_revocation(postgres_url: str) -> None:
    """A batch of refresh rotations (one transaction, try_issue) and `user revoke` on the same
    tokens: both lock the rows in token hash order. The batch went in the requests' order and
    the revocation in the table's, each held a row the other waited for, and PostgreSQL
    cancelled one, leaving the user's tokens active when it was the revocation (an outside
    review found it)."""
    from tokensmith.models import Issue, User
    from tokensmith.models import TokenRecord as Token

    store = PostgresStorage(postgres_url, pool_size=4)
    try:
        user_id = _signed_in_with_consent(store)
        store.add_user(User("v1", "hash"))
        other = store.get_user("v1").user_id
        now = int(time.time())
        for name, owner in (("t1", user_id), ("t2", user_id), ("t3", other)):
            store.add_token(
                Token(name, "refresh", "c1", "read", now, now + 600, user_id=owner, grant_id=f"g-{name}")
            )

        def successor(name: str, owner: str) -> Issue:
            return Issue(
                (
                    Token(
                        f"n-{name}",
                        "refresh",
                        "c1",
                        "read",
                        now,
                        now + 600,
                        user_id=owner,
                        grant_id=f"g-{name}",
                    ),
                ),
                name,
            )

        batch = [successor("t2", user_id), successor("t3", other), successor("t1", user_id)]
        with _held(postgres_url, "SELECT 1 FROM tokens WHERE token_hash = 't3' FOR UPDATE"):
            pool, rotated, revoked = _both(
                lambda: store.try_issue(batch, now), lambda: store.revoke_user_tokens(user_id)
            )
        with pool:
            assert rotated.result(15) == [True, True, True], rotated.result()
            assert revoked.result(15) == 2, revoked.result()
        for name in ("t1", "t2", "n-t1", "n-t2"):
            assert store.get_token(name).revoked, name
        assert not store.get_token("n-t3").revoked
    finally:
        store.close()


def test_a_purge_cannot_deadlock_with_a_user_revocation(postgres_url: str) -> None:
    """Purging expired rows while `user revoke` waits on a grant's key: the purge takes the
    sessions, codes and tokens in the revocations' order, so it waits behind the revocation.
    Tokens first, it held the user's expired token and code while waiting on the session the
    revocation held (an outside review found it)."""
    from tokensmith.models import SignInSession
    from tokensmith.models import TokenRecord as Token

    store = PostgresStorage(postgres_url, pool_size=4)
    try:
        user_id = _signed_in_with_consent(store)
        now = int(time.time())
        old = now - 3 * 86400
        store.add_session(SignInSession("expired", user_id, "u1", old - 600, old))
        store.add_authorization_code(replace(_code(user_id, "old-code"), issued_at=old - 60, expires_at=old))
        store.add_token(
            Token("old", "access", "c1", "read", old - 600, old, user_id=user_id, grant_id="g-old")
        )
        store.add_token(
            Token("live", "access", "c1", "read", now, now + 600, user_id=user_id, grant_id="g-live")
        )
        with _held(postgres_url, "INSERT INTO revoked_grants VALUES ('g-live', 0)"):
            pool, revoked, purged = _both(
                lambda: store.revoke_user_tokens(user_id), lambda: store.purge_expired(now, 1000)
            )
        with pool:
            assert not isinstance(revoked.result(15), StorageError), revoked.result()
            assert not isinstance(purged.result(15), StorageError), purged.result()
        assert store.get_token("live").revoked
    finally:
        store.close()


def test_a_purge_skips_the_expired_tokens_a_revocation_holds(postgres_url: str) -> None:
    """A revocation locks a user's tokens in hash order, expired ones included, and the purge
    deletes expired tokens in the table's order: a purge that waited for a row the revocation
    held, while holding one it wanted, deadlocked, and the revocation could be the side
    cancelled (an outside review found it). The purge skips rows another transaction holds."""
    from tokensmith.models import TokenRecord as Token

    store = PostgresStorage(postgres_url, pool_size=4)
    try:
        user_id = _signed_in_with_consent(store)
        old = int(time.time()) - 86400
        for name in ("b" * 32, "a" * 32):  # the second by hash stored first
            store.add_token(
                Token(name, "access", "c1", "read", old - 600, old, user_id=user_id, grant_id=f"g-{name}")
            )
        with _held(postgres_url, "SELECT 1 FROM tokens WHERE token_hash = %s FOR UPDATE", ("a" * 32,)):
            pool, revoked, purged = _both(
                lambda: store.revoke_user_tokens(user_id), lambda: store.purge_expired(int(time.time()))
            )
        with pool:
            assert not isinstance(revoked.result(15), StorageError), revoked.result()
            assert not isinstance(purged.result(15), StorageError), purged.result()
    finally:
        store.close()


@pytest.mark.parametrize("other", ["purge", "sign-in"])
def test_removing_a_user_cannot_deadlock_with_a_purge_or_a_sign_in(postgres_url: str, other: str) -> None:
    """`user remove` holds the user's row and waits on a session while a purge (deleting old
    login failures) or a successful sign-in (clearing them, then the user's counters) runs:
    both take the user's row before the failures', or skip what is held, so neither waits on
    the removal in a cycle. Failures first, each deadlocked with it (an outside review)."""
    from tokensmith.models import LoginPolicy, SignInSession

    store = PostgresStorage(postgres_url, pool_size=4)
    try:
        user_id = _signed_in_with_consent(store)
        now = int(time.time())
        store.add_session(SignInSession("expired", user_id, "u1", now - 7200, now - 3600))
        if other == "purge":
            import psycopg

            with psycopg.connect(postgres_url, autocommit=True) as admin:
                admin.execute(
                    "INSERT INTO login_failures VALUES ('u1', '192.0.2.1', 3, %s, 0)", (now - 2 * 86400,)
                )
            call = lambda: store.purge_expired(now)  # noqa: E731
        else:
            assert store.take_login_attempt("u1", "192.0.2.1", now, LoginPolicy())
            call = lambda: store.end_login_attempt("u1", "192.0.2.1", True)  # noqa: E731
        with _held(postgres_url, "SELECT 1 FROM signin_sessions WHERE session_hash = 'expired' FOR UPDATE"):
            pool, removed, done = _both(lambda: store.remove_user("u1"), call)
        with pool:
            assert removed.result(15) is True, removed.result()
            assert not isinstance(done.result(15), StorageError), done.result()
        assert store.get_user("u1") is None
    finally:
        store.close()
