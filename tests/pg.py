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
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
