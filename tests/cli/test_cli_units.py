"""Focused unit tests of the cli/ modules, in process: the shared parser and options, each
command group's parser, and the supervisor's reading of its check process's answer."""

from __future__ import annotations

import argparse
import json

import pytest
from tokensmith.cli import security as cli_security
from tokensmith.cli import signing as cli_signing
from tokensmith.cli import supervisor
from tokensmith.cli import users as cli_users
from tokensmith.cli.base import CLIError, Parser, common_options


def group(add_commands) -> argparse.ArgumentParser:  # noqa: ANN001
    parser = Parser(prog="tokensmith")
    add_commands(parser.add_subparsers(dest="command", parser_class=Parser), common_options())
    return parser


def test_parser_mistakes_are_one_line_errors() -> None:
    """A usage mistake is a CLIError (one line, exit 1 in main), not argparse's exit 2."""
    with pytest.raises((CLIError, SystemExit)) as mistake:
        Parser(prog="tokensmith").parse_args(["--bogus"])
    assert "\n" not in str(mistake.value).strip()


@pytest.mark.parametrize(
    "add_commands, argv, handler_module",
    [
        (cli_users.add_commands, ["user", "list"], cli_users),
        (cli_signing.add_commands, ["signing", "rotate", "--algorithm", "RS256"], cli_signing),
        (cli_security.add_commands, ["truststore", "list"], cli_security),
    ],
)
def test_each_group_sets_its_handler(add_commands, argv, handler_module) -> None:  # noqa: ANN001
    args = group(add_commands).parse_args([*argv, "--conf", "/nonexistent"])
    assert args.handler.__module__ == handler_module.__name__
    assert str(args.conf) == "/nonexistent"


@pytest.mark.parametrize(
    "data, expected",
    [
        (json.dumps([True, [{"name": "x"}]]).encode(), (True, [{"name": "x"}])),
        (json.dumps([False, "bad identity.xml"]).encode(), (False, "bad identity.xml")),
    ],
)
def test_the_supervisor_reads_a_checks_answer(data: bytes, expected: tuple) -> None:
    assert supervisor._parse_check_answer(data) == expected


@pytest.mark.parametrize(
    "data", [b"", b"garbage", b"[true, 1]", b'[true, [{"1": 2}, 3]]', b"[false, 7]", b"{}"]
)
def test_the_supervisor_trusts_no_other_answer(data: bytes) -> None:
    ok, reason = supervisor._parse_check_answer(data)
    assert ok is False and reason == "the configuration check gave an answer that is not its own"
