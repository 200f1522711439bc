"""PostgreSQL for tests: the server named by TOKENSMITH_TEST_POSTGRES_URL, a schema per test.

Without the variable the PostgreSQL tests are skipped, and the run says so in one line; with
it, a server that cannot be reached fails them (CI sets it: .ci/run).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

ENV = "TOKENSMITH_TEST_POSTGRES_URL"
SKIPPED = (
    f"PostgreSQL tests skipped: {ENV} is not set; to run them, point it at a database the tests"
    f" may create schemas in, e.g. {ENV}=postgresql://postgres@127.0.0.1:5432/test"
)


def base_url() -> str | None:
    return os.environ.get(ENV) or None


def with_search_path(url: str, schema: str) -> str:
    """*url* with its sessions in *schema* (libpq's options parameter)."""
    return f"{url}{'&' if '?' in url else '?'}options={quote(f'-csearch_path={schema}', safe='')}"


@contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    """A new, empty schema of the test database, dropped with everything in it afterwards;
    yields a URL whose sessions use it."""
    import psycopg

    schema = f"tokensmith_test_{secrets.token_hex(6)}"
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
    except psycopg.OperationalError as exc:
        raise RuntimeError(f"{ENV} is set but PostgreSQL cannot be reached: {exc}") from None
    try:
        yield with_search_path(url, schema)
    finally:
        drop_schema(url, schema)


def drop_schema(url: str, schema: str) -> None:
    """Drop *schema*; sessions still holding locks in it (a store a test left in the middle of
    a transaction) are ended first, so that the cleanup never waits for ever."""
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute("SET lock_timeout = '5s'")
        for _ in range(3):
            try:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")
                return
            except psycopg.errors.LockNotAvailable:
                conn.execute(
                    "SELECT pg_terminate_backend(l.pid) FROM pg_locks l"
                    " JOIN pg_class c ON c.oid = l.relation"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = %s AND l.pid <> pg_backend_pid()",
                    (schema,),
                )
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


class Proxy:
    """A TCP proxy to the PostgreSQL server of *url* that a test can cut and restore: while
    cut, every open connection is closed and new ones are closed as soon as accepted, as
    when the database host goes away; while frozen, connections stay open but nothing is
    forwarded. ``url`` is *url* through the proxy."""

    def __init__(self, url: str):
        import socket
        import threading
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        port = self._listener.getsockname()[1]
        netloc = parts.netloc.rsplit("@", 1)
        userinfo = f"{netloc[0]}@" if len(netloc) == 2 else ""
        self.url = urlunsplit((parts.scheme, f"{userinfo}127.0.0.1:{port}", parts.path, parts.query, ""))
        self._cut = threading.Event()
        self._frozen = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        import socket
        import threading

        while not self._stop.is_set():
            try:
                downstream, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._cut.is_set():
                downstream.close()
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                downstream.close()
                continue
            with self._lock:
                self._sockets += [downstream, upstream]
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                thread = threading.Thread(target=self._pipe, args=(source, sink), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _pipe(self, source, sink) -> None:  # noqa: ANN001
        import time

        try:
            source.settimeout(None)  # in the try: a cut may have closed it already
            while data := source.recv(65536):
                while self._frozen.is_set() and not self._stop.is_set():
                    time.sleep(0.02)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.close()
                except OSError:
                    pass

    def cut(self) -> None:
        import socket

        self._cut.set()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def restore(self) -> None:
        self._cut.clear()

    def freeze(self) -> None:
        """Forward nothing more, keeping every connection open: the kernel still
        acknowledges what is sent, as when the database host or a pooler stalls."""
        self._frozen.set()

    def thaw(self) -> None:
        self._frozen.clear()

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
