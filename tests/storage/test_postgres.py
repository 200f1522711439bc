"""What is PostgreSQL's own: selecting it in server.xml, the password kept out of sight,
migrations under an advisory lock, deadlines and recovery when the database goes away.

The storage contract both backends share is in test_sqlite.py (the tests taking ``open_store``).
"""

from __future__ import annotations

import threading
import time

import pg
import pytest
from tokensmith.config.settings import load_server
from tokensmith.config.xml import ConfigError
from tokensmith.models import Client, StorageError, TokenRecord
from tokensmith.storage import describe_store
from tokensmith.storage.postgres import SCHEMA_VERSION, PostgresStorage, redact_url

SERVER = """<?xml version="1.0" encoding="UTF-8"?>
<Server>
    <Keystore certificateFile="security/server.crt" keyFile="security/server.key"/>
    <Connector port="0"/>
    {database}
</Server>
"""


def _backend_pid(store: PostgresStorage) -> int:
    """The backend of the connection this thread's next call uses (the pool's most recent)."""
    with store._pool.take() as holder:
        return holder.get().info.backend_pid


def server_xml(tmp_path, database: str):  # noqa: ANN001, ANN201
    path = tmp_path / "server.xml"
    path.write_text(SERVER.format(database=database))
    return path


def test_database_url_selects_postgres_and_the_env_overrides_it(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.delenv("TOKENSMITH_DATABASE_URL", raising=False)
    path = server_xml(tmp_path, '<Database url="postgresql://ts:s3cret@db.example:5432/tokensmith"/>')
    server = load_server(path)
    assert server.database_url == "postgresql://ts:s3cret@db.example:5432/tokensmith"
    assert describe_store(server) == "PostgreSQL postgresql://ts:***@db.example:5432/tokensmith"
    assert "s3cret" not in repr(server)
    monkeypatch.setenv("TOKENSMITH_DATABASE_URL", "postgresql://other@db2/ts")
    assert load_server(path).database_url == "postgresql://other@db2/ts"
    sqlite = server_xml(tmp_path, '<Database path="x.db"/>')
    assert load_server(sqlite).database_url == "postgresql://other@db2/ts"  # overrides SQLite too
    monkeypatch.delenv("TOKENSMITH_DATABASE_URL")
    assert load_server(sqlite).database_url is None and load_server(sqlite).database == tmp_path / "x.db"


@pytest.mark.parametrize(
    ("database", "message"),
    [
        ('<Database url="postgresql://a/b" path="x.db"/>', r"server\.xml:5: <Database> needs either path="),
        ("<Database/>", r"server\.xml:5: <Database> needs either path="),
        (
            '<Database url="mysql://u:pw@h/b"/>',
            r"server\.xml:5: the database URL must start with postgresql://",
        ),
        (
            '<Database url="postgresql://u:pw@rd@127.0.0.1:1/x"/>',
            r"server\.xml:5: the database URL is not valid: an @ in the user name or password must be written %40$",
        ),
        (
            '<Database url="postgresql://u:pw@[::1:1/x"/>',
            r"server\.xml:5: the database URL is not valid: .*IPv6 host address$",
        ),
        (
            '<Database url="postgresql://u:pw@127.0.0.1:99999/x"/>',
            r"server\.xml:5: the database URL is not valid: port '99999' is not a port number",
        ),
        (
            '<Database url="postgresql://u@h/x?password=pw&amp;bogus=1"/>',
            r'server\.xml:5: the database URL is not valid: invalid URI query parameter: "bogus"$',
        ),
    ],
)
def test_a_bad_database_element_names_the_line_and_never_the_password(
    tmp_path, monkeypatch, database, message
) -> None:  # noqa: ANN001
    monkeypatch.delenv("TOKENSMITH_DATABASE_URL", raising=False)
    with pytest.raises(ConfigError, match=message) as error:
        load_server(server_xml(tmp_path, database))
    assert "pw" not in str(error.value)


def test_redact_url_hides_only_the_password() -> None:
    assert (
        redact_url("postgresql://u:p%40ss@h:5/d?sslmode=require")
        == "postgresql://u:***@h:5/d?sslmode=require"
    )
    assert redact_url("postgresql://u@[::1]/d") == "postgresql://u@[::1]/d"
    assert redact_url("postgresql://u:x@[::1]:5432/d") == "postgresql://u:***@[::1]:5432/d"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://h/d?password=s3cret&sslmode=require", "postgresql://h/d?password=***&sslmode=require"),
        ("postgresql://h/d?user=u&PassWord=s3cret#f", "postgresql://h/d?user=u&PassWord=***#f"),
        ("postgresql://h/d?pass%77ord=s3cret", "postgresql://h/d?pass%77ord=***"),
        ("postgresql://h/d?sslpassword=s3cret", "postgresql://h/d?sslpassword=***"),
        # libpq splits a raw @ at the first, urlsplit at the last: hide up to the last.
        ("postgresql://postgres:s3@cret@127.0.0.1:1/x", "postgresql://postgres:***@127.0.0.1:1/x"),
        ("host=h password=s3cret dbname=x", "host=h password=*** dbname=x"),
        ("host=h password = 's3 cret' sslpassword=s3cret", "host=h password = *** sslpassword=***"),
        ("postgresql://[::1:1", "postgresql://[::1:1"),
    ],
)
def test_redact_url_hides_every_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_an_unreachable_store_with_a_password_parameter_never_shows_it(deployment, monkeypatch) -> None:  # noqa: ANN001
    """`db status` on a database that cannot be reached: one line, the password replaced."""
    monkeypatch.setenv(
        "TOKENSMITH_DATABASE_URL", "postgresql://u@127.0.0.1:1/x?password=s3cret&connect_timeout=2"
    )
    result = deployment.cli("db", "status", check=False)
    assert result.returncode != 0
    assert "s3cret" not in result.stdout + result.stderr
    assert "password=***" in result.stderr and "Traceback" not in result.stderr


def test_instances_starting_together_migrate_once(postgres_url) -> None:  # noqa: ANN001
    """Six stores opened at once on an empty schema: one migrates under the advisory lock,
    the others find it done; `db status`'s reading agrees."""
    stores: list[PostgresStorage] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def open_one() -> None:
        start.wait()
        try:
            stores.append(PostgresStorage(postgres_url))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert not errors and len(stores) == 6
        assert stores[0].schema_version() == SCHEMA_VERSION and stores[1].migrate() == []
        import psycopg

        with psycopg.connect(postgres_url) as db:
            assert db.execute("SELECT count(*) FROM tokensmith_schema").fetchone() == (SCHEMA_VERSION,)
    finally:
        for store in stores:
            store.close()


def test_a_schema_newer_or_older_than_this_release_is_refused(postgres_url) -> None:  # noqa: ANN001
    import psycopg

    with pytest.raises(StorageError, match=r"schema 0 is not this tokensmith's .*tokensmith db migrate"):
        PostgresStorage(postgres_url, migrate=False)
    PostgresStorage(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("INSERT INTO tokensmith_schema VALUES (%s, 0)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StorageError, match="newer than this tokensmith"):
        PostgresStorage(postgres_url)


def test_an_unreachable_database_fails_fast_and_recovers(postgres_url) -> None:  # noqa: ANN001
    """Cut mid-session: calls raise StorageError within the deadlines, without the password,
    and answer again once the database is back; what was committed before is all there."""
    with pg.Proxy(postgres_url.replace("postgresql://postgres@", "postgresql://postgres:hunter2@")) as proxy:
        store = PostgresStorage(proxy.url)
        try:
            store.serving()
            store.add_client(Client("c", "c", "client_secret_basic", ("client_credentials",)))
            store.add_tokens([TokenRecord("t", "access", "c", "", 0, 10_000)])
            proxy.cut()
            for call in (
                lambda: store.get_token("t"),
                lambda: store.get_client("c"),
                lambda: store.revoke_token("t"),
            ):
                started = time.monotonic()
                with pytest.raises(StorageError) as error:
                    call()
                assert time.monotonic() - started < 5
                assert "hunter2" not in str(error.value) and "\n" not in str(error.value)
            proxy.restore()
            deadline = time.monotonic() + 5
            while True:
                try:
                    assert store.get_token("t") is not None and store.get_client("c") is not None
                    break
                except StorageError:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
        finally:
            store.close()


def test_a_read_after_the_database_dropped_the_connection_is_answered(postgres_url) -> None:  # noqa: ANN001
    """The database ends the store's connection (a restart, a failover): the next read is
    answered on a new connection, not failed for the stale one."""
    import psycopg

    store = PostgresStorage(postgres_url)
    try:
        store.add_tokens([TokenRecord("t", "access", "c", "", 0, 10_000)])
        pid = _backend_pid(store)
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        assert store.get_token("t") is not None
    finally:
        store.close()


def test_a_statement_timeout_is_not_taken_for_a_lost_connection(postgres_url, monkeypatch) -> None:  # noqa: ANN001
    """A read that waits out its lock timeout fails once, after one timeout, on the
    connection it used: the session is sound, so it is neither replaced nor repeated."""
    import psycopg
    from tokensmith.storage import postgres

    monkeypatch.setattr(postgres, "STATEMENT_TIMEOUT_MS", 1_000)
    store = PostgresStorage(postgres_url)
    try:
        store.add_tokens([TokenRecord("t", "access", "c", "", 0, 10_000)])
        pid = _backend_pid(store)
        with psycopg.connect(postgres_url) as locker:
            locker.execute("LOCK TABLE tokens IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(StorageError, match="timeout"):
                store.get_token("t")
            elapsed = time.monotonic() - started
            locker.rollback()
        assert 0.9 < elapsed < 1.8  # one timeout, not two
        assert _backend_pid(store) == pid
        assert store.get_token("t") is not None
    finally:
        store.close()


def test_the_first_write_after_the_database_dropped_the_connection_is_stored(postgres_url) -> None:  # noqa: ANN001
    """The database ended the writer's idle connection: the next try_issue finds it closed
    before sending anything, and stores on a new connection instead of failing (503)."""
    import psycopg
    from tokensmith.models import Issue

    store = PostgresStorage(postgres_url)
    try:
        assert store.try_issue([Issue((TokenRecord("a", "access", "c", "", 0, 10_000),))], 1) == [True]
        pid = store._writer.get().info.backend_pid
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
            deadline = time.monotonic() + 5
            while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert store.try_issue([Issue((TokenRecord("b", "access", "c", "", 0, 10_000),))], 1) == [True]
        assert store.get_token("b") is not None
        assert store._writer.get().info.backend_pid != pid
    finally:
        store.close()


def test_a_stalled_database_fails_each_call_at_its_client_side_deadline(postgres_url, monkeypatch) -> None:  # noqa: ANN001
    """The database stops answering but its host still acknowledges (a frozen host, a stuck
    pooler): the server's own timeouts cannot fire, so a read and a write each fail at the
    client's deadline instead of hanging; once the database answers again, so does the store."""
    from tokensmith.models import Issue
    from tokensmith.storage import postgres

    monkeypatch.setattr(postgres, "STATEMENT_TIMEOUT_MS", 500)
    monkeypatch.setattr(postgres, "CALL_MARGIN", 0.5)
    with pg.Proxy(postgres_url) as proxy:
        store = PostgresStorage(proxy.url)
        try:
            store.add_tokens([TokenRecord("t", "access", "c", "", 0, 10_000)])
            assert store.try_issue([Issue((TokenRecord("a", "access", "c", "", 0, 10_000),))], 1) == [True]
            proxy.freeze()
            for call in (
                lambda: store.get_token("t"),
                lambda: store.try_issue([Issue((TokenRecord("b", "access", "c", "", 0, 10_000),))], 1),
            ):
                started = time.monotonic()
                with pytest.raises(StorageError, match="no answer within the deadline"):
                    call()
                assert 0.9 < time.monotonic() - started < 3  # one deadline, no retry
            proxy.thaw()
            time.sleep(0.6)  # past the reconnect back-off
            assert store.get_token("t") is not None
            assert store.try_issue([Issue((TokenRecord("c", "access", "c", "", 0, 10_000),))], 1) == [True]
        finally:
            store.close()


def test_a_connection_dropped_during_commits_loses_nothing_acknowledged(postgres_url) -> None:  # noqa: ANN001
    """Batches committed while the connection is cut: every batch that was answered as
    stored is stored whole; the others failed with StorageError (the client got 503)."""
    from tokensmith.models import Issue

    with pg.Proxy(postgres_url) as proxy:
        store = PostgresStorage(proxy.url)
        acknowledged: list[str] = []
        failed = 0
        try:
            for batch in range(300):
                names = [f"b{batch}-{i}" for i in range(5)]
                if batch == 100:
                    threading.Timer(0.0, proxy.cut).start()
                if batch == 200:
                    proxy.restore()
                    time.sleep(0.6)  # past the reconnect back-off
                try:
                    answer = store.try_issue(
                        [Issue((TokenRecord(n, "access", "c", "", 0, 10_000),)) for n in names], 1
                    )
                except StorageError:
                    failed += 1
                    continue
                assert answer == [True] * 5
                acknowledged += names
        finally:
            store.close()
    assert failed and len(acknowledged) >= 5 * 150
    check = PostgresStorage(postgres_url)
    try:
        assert all(check.get_token(name) is not None for name in acknowledged)
    finally:
        check.close()


def test_while_the_listening_connection_is_down_nothing_is_cached(postgres_url) -> None:  # noqa: ANN001
    """The notification of a change may be lost while the LISTEN connection is down: the
    store then reads clients from the database, and caches them again once it listens."""
    import psycopg

    server, cli = PostgresStorage(postgres_url), PostgresStorage(postgres_url)
    try:
        server.serving()
        deadline = time.monotonic() + 10
        while server.listener_pid is None or not server._listening:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        cli.add_client(Client("c", "first", "client_secret_basic", ("client_credentials",)))
        assert server.get_client("c").name == "first"
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (server.listener_pid,))
        deadline = time.monotonic() + 5
        while server._listening and time.monotonic() < deadline:
            time.sleep(0.005)  # the listener notices within its 1 s poll
        # A change made now is not notified to anyone; it must still be seen.
        cli.update_client(Client("c", "second", "client_secret_basic", ("client_credentials",)))
        assert server.get_client("c").name == "second"
    finally:
        server.close()
        cli.close()


def test_the_cached_client_is_current_and_only_there_while_listening(postgres_url) -> None:  # noqa: ANN001
    """``cached_client`` answers from memory (the token path asks it on the event loop, before
    any trip to the store's threads): a client once read is there, a change made by another
    instance takes it out (NOTIFY) until it is read again, and nothing is cached before the
    store listens."""
    server, cli = PostgresStorage(postgres_url), PostgresStorage(postgres_url)
    try:
        cli.add_client(Client("c", "first", "client_secret_basic", ("client_credentials",)))
        assert server.get_client("c").name == "first"
        assert server.cached_client("c") is None  # not listening yet: nothing would tell it
        server.serving()
        deadline = time.monotonic() + 10
        while not server._listening:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert server.cached_client("c") is None  # not read since
        assert server.get_client("c").name == "first"
        assert server.cached_client("c").name == "first"
        assert server.cached_client("unknown") is None
        cli.update_client(Client("c", "second", "client_secret_basic", ("client_credentials",)))
        deadline = time.monotonic() + 5
        while server.cached_client("c") is not None:
            assert time.monotonic() < deadline, "the NOTIFY of the change never reached the cache"
            time.sleep(0.01)
        assert server.get_client("c").name == "second"
        assert server.cached_client("c").name == "second"
    finally:
        server.close()
        cli.close()


def test_serve_with_an_unreachable_database_fails_in_one_line(deployment, monkeypatch) -> None:  # noqa: ANN001
    """`tokensmith serve` whose database cannot be reached: exit status 1, one line naming
    the URL without its password, no traceback. (Needs no PostgreSQL server.)"""
    import socket
    import subprocess

    from conftest import TOKENSMITH

    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://ts:hunter2@127.0.0.1:{port}/tokensmith"
    result = subprocess.run(
        [TOKENSMITH, "serve", "--conf", str(deployment.conf)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**__import__("os").environ, "TOKENSMITH_DATABASE_URL": url},
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert f"postgresql://ts:***@127.0.0.1:{port}/tokensmith" in lines[0] and "hunter2" not in result.stderr


def test_a_version_1_schema_gains_client_metadata_and_plugin_state(postgres_url) -> None:  # noqa: ANN001
    """Migration 2 on a database an earlier release made: clients keep their rows and gain
    metadata; plugin_state appears; the version table records both migrations."""
    from dataclasses import replace

    import psycopg

    with PostgresStorage(postgres_url) as store:
        store.add_client(Client("c1", "one", "client_secret_basic", ("client_credentials",)))
    with psycopg.connect(postgres_url, autocommit=True) as db:  # back to schema 1
        for table in (
            "authorization_codes",
            "consents",
            "signin_sessions",
            "audit_log",
            "registration_tokens",
        ):
            db.execute(f"DROP TABLE {table}")  # schemas 4 and 3
        db.execute("ALTER TABLE users DROP COLUMN role")
        db.execute("DROP TABLE plugin_state")
        db.execute("ALTER TABLE clients DROP COLUMN metadata")
        db.execute("DELETE FROM tokensmith_schema WHERE version > 1")
    with PostgresStorage(postgres_url, migrate=False, check=False) as store:
        assert store.schema_version() == 1 and store.migrate() == list(range(2, SCHEMA_VERSION + 1))
    with PostgresStorage(postgres_url, migrate=False) as store:
        client = store.get_client("c1")
        assert client is not None and dict(client.metadata) == {}
        store.update_client(replace(client, metadata={"jwks_uri": "https://c.example/jwks"}))
        assert store.get_client("c1").metadata == {"jwks_uri": "https://c.example/jwks"}
        assert store.put_if_absent("p", "k", int(time.time()) + 60)


def test_db_status_and_migrate_on_sqlite(deployment) -> None:  # noqa: ANN001
    """`db status` and `db migrate` work on the embedded store too. (Needs no PostgreSQL.)"""
    import json

    from tokensmith.storage.sqlite import _SCHEMA_VERSION

    result = deployment.cli("db", "status", "--json", check=False)
    assert result.returncode == 3  # documented in --help: needs migrate
    status = json.loads(result.stdout)
    assert status["store"].startswith("SQLite ") and status["state"] == "needs migrate"
    assert not deployment.database.exists()  # status only reads
    assert f"schema version {_SCHEMA_VERSION}" in deployment.cli("db", "migrate").stdout
    status = json.loads(deployment.cli("db", "status", "--json").stdout)
    assert status["schema_version"] == status["release_schema_version"] == _SCHEMA_VERSION
    assert status["state"] == "up to date"
    import sqlite3

    with sqlite3.connect(deployment.database) as db:
        db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION + 1}")
    newer = deployment.cli("db", "status", check=False)
    assert newer.returncode == 4 and "newer than this release" in newer.stdout
    assert "3 when it needs" in deployment.cli("db", "status", "--help").stdout
    wrong = deployment.cli("db", "nonsense", check=False)
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1


def test_db_status_in_process_names_the_store_without_the_password(deployment, monkeypatch, capsys) -> None:  # noqa: ANN001
    """cmd_status reads only: for a PostgreSQL URL it shows the URL with the password
    replaced, and an unreachable database is StorageError (one line from main)."""
    import argparse

    from tokensmith.cli.db import cmd_status

    cmd_status(argparse.Namespace(conf=deployment.conf, json=False))
    assert capsys.readouterr().out.startswith("store: SQLite ")
    monkeypatch.setenv("TOKENSMITH_DATABASE_URL", "postgresql://ts:hunter2@127.0.0.1:1/x")
    with pytest.raises(StorageError) as error:
        cmd_status(argparse.Namespace(conf=deployment.conf, json=True))
    assert "postgresql://ts:***@127.0.0.1:1/x" in str(error.value) and "hunter2" not in str(error.value)
