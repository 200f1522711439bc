"""``tokensmith db``: the store's schema (``migrate``, ``status``).

``serve`` migrates the schema itself on start; ``db migrate`` does it ahead of a rollout, so
that instances of a new release start on a schema that is ready, and ``db status`` says
which store server.xml names and whether its schema is this release's. Never a password:
the database URL is shown with it replaced.
"""

from __future__ import annotations

import argparse
import json
import sqlite3

from tokensmith.cli.base import Parser
from tokensmith.config.settings import load_config
from tokensmith.models import StorageError
from tokensmith.storage import describe_store

__all__ = ["add_commands", "NEEDS_MIGRATE", "NEWER"]

#: ``db status``'s exit status when the schema is older than this release's.
NEEDS_MIGRATE = 3
#: ``db status``'s exit status when the schema is newer than this release's.
NEWER = 4


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``db`` and its actions to *commands*, each with its handler."""
    db = commands.add_parser(
        "db",
        help="create, migrate and inspect the store's schema",
        description="The store of server.xml's <Database> (or TOKENSMITH_DATABASE_URL).",
    )
    actions = db.add_subparsers(dest="db_command", metavar="ACTION", parser_class=Parser)
    actions.required = True
    migrate = actions.add_parser(
        "migrate",
        parents=[common],
        help="create or upgrade the schema",
        description="Create or upgrade the schema to this release's. Safe to run while"
        " instances serve and from several machines at once: PostgreSQL migrations run once,"
        " in one transaction, under an advisory lock.",
    )
    status = actions.add_parser(
        "status",
        parents=[common],
        help="show the store and its schema version",
        description="Show which store is configured, its schema version and this release's.",
        epilog="Exit status: 0 when the schema is this release's, 3 when it needs `tokensmith db"
        " migrate`, 4 when it is newer than this release (a newer release migrated it), 1 when"
        " the store cannot be read or the configuration is wrong.",
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    migrate.set_defaults(handler=cmd_migrate)
    status.set_defaults(handler=cmd_status)


def _versions(args: argparse.Namespace) -> tuple[str, int, int]:
    """(the store, its schema version, this release's)."""
    config = load_config(args.conf)
    server = config.server
    if server.database_url is not None:
        from tokensmith.storage.postgres import SCHEMA_VERSION, PostgresStorage

        with PostgresStorage(server.database_url, migrate=False, check=False) as store:
            return describe_store(server), store.schema_version(), SCHEMA_VERSION
    from tokensmith.storage.sqlite import _SCHEMA_VERSION

    if not server.database.exists():
        return describe_store(server), 0, _SCHEMA_VERSION
    try:
        with sqlite3.connect(f"file:{server.database}?mode=ro", uri=True) as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        raise StorageError(f"{server.database}: {exc}") from exc
    return describe_store(server), version, _SCHEMA_VERSION


def cmd_status(args: argparse.Namespace) -> int:
    store, version, current = _versions(args)
    state = (
        "up to date"
        if version == current
        else ("newer than this release" if version > current else "needs migrate")
    )
    if args.json:
        print(
            json.dumps(
                {"store": store, "schema_version": version, "release_schema_version": current, "state": state}
            )
        )
    else:
        print(f"store: {store}")
        print(f"schema version: {version} (this release: {current}): {state}")
    # Scripts and deployment checks act on the exit status: only a ready schema is 0.
    return 0 if version == current else (NEWER if version > current else NEEDS_MIGRATE)


def cmd_migrate(args: argparse.Namespace) -> int:
    config = load_config(args.conf)
    server = config.server
    if server.database_url is not None:
        from tokensmith.storage.postgres import SCHEMA_VERSION, PostgresStorage

        with PostgresStorage(server.database_url, migrate=False, check=False) as store:
            applied = store.migrate()
        done = f"applied {', '.join(map(str, applied))}" if applied else "nothing to do"
        print(f"{describe_store(server)}: schema version {SCHEMA_VERSION} ({done})")
        return 0
    from tokensmith.storage.sqlite import _SCHEMA_VERSION, SQLiteStorage

    SQLiteStorage(server.database).close()  # opening upgrades it, in one transaction
    print(f"{describe_store(server)}: schema version {_SCHEMA_VERSION}")
    return 0
