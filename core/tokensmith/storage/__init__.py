"""The stores: SQLite (embedded, one machine) and PostgreSQL (shared by several instances)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokensmith.config.settings import ServerSettings
    from tokensmith.storage.postgres import PostgresStorage
    from tokensmith.storage.sqlite import SQLiteStorage

__all__ = ["open_store", "describe_store"]


def open_store(server: ServerSettings, migrate: bool = True) -> SQLiteStorage | PostgresStorage:
    """The store server.xml names (the caller closes it). PostgreSQL's schema is created or
    migrated on open when *migrate*; psycopg is imported only when PostgreSQL is used."""
    if server.database_url is not None:
        from tokensmith.storage.postgres import PostgresStorage

        return PostgresStorage(server.database_url, migrate=migrate, pool_size=server.database_pool_size)
    from tokensmith.storage.sqlite import SQLiteStorage

    return SQLiteStorage(server.database)


def describe_store(server: ServerSettings) -> str:
    """Which store, for logs and messages: never a password."""
    if server.database_url is not None:
        from tokensmith.storage.postgres import redact_url

        return f"PostgreSQL {redact_url(server.database_url)}"
    return f"SQLite {server.database}"
