"""What every ``tokensmith`` subcommand shares: its parser class, ``--conf``, errors, storage."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from tokensmith.config.settings import Config

if TYPE_CHECKING:
    from tokensmith.storage.postgres import PostgresStorage
    from tokensmith.storage.sqlite import SQLiteStorage

__all__ = ["CLIError", "Parser", "common_options", "open_storage", "warn"]


class CLIError(Exception):
    """A mistake on the command line or in its input: one line, exit status 1."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line that points at --help (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def common_options() -> Parser:
    """The parent parser of every command that reads the configuration: ``--conf DIR``."""
    common = Parser(add_help=False)
    common.add_argument(
        "--conf",
        type=Path,
        default=Path("conf"),
        metavar="DIR",
        help="configuration directory with server.xml and identity.xml (default: ./conf)",
    )
    return common


def open_storage(config: Config) -> SQLiteStorage | PostgresStorage:
    """The store server.xml names (the caller closes it)."""
    from tokensmith.storage import open_store

    return open_store(config.server)


def warn(message: str) -> None:
    """A one-line warning on stderr about something done all the same."""
    print(f"tokensmith: warning: {message}", file=sys.stderr)
