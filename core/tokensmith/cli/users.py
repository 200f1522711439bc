"""``tokensmith user``: the resource owners of the password grant (RFC 6749 §4.3).

Passwords are read from a prompt (no echo) or from standard input, never from the command
line, where other users could read them in the process list; they are stored with scrypt.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from collections.abc import Callable

from tokensmith.admin import users
from tokensmith.admin.audit import local_actor
from tokensmith.admin.users import ROLES
from tokensmith.cli.base import CLIError, Parser, open_storage
from tokensmith.config.settings import load_config
from tokensmith.oauth.registration import printable

__all__ = ["add_commands"]

Command = Callable[[argparse.Namespace], int]


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``user`` and its actions to *commands*; return their implementations."""
    user = commands.add_parser(
        "user", help="manage users of the password grant", description="Add, list and remove resource owners."
    )
    actions = user.add_subparsers(dest="user_command", metavar="ACTION", parser_class=Parser)
    actions.required = True
    # The option of every action that takes a new password.
    new_password = argparse.ArgumentParser(add_help=False)
    new_password.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input instead of a prompt",
    )
    add = actions.add_parser(
        "add",
        parents=[common, new_password],
        help="add a user",
        description="Add a user. The password (at least"
        f" {users.MIN_PASSWORD_LENGTH} characters) is asked for at a prompt,"
        " or read from the first line of standard input with"
        " --password-stdin.",
    )
    add.set_defaults(handler=cmd_add)
    add.add_argument("username")
    add.add_argument(
        "--role",
        choices=ROLES,
        help="a role for the admin API (/api/): admin may do everything, reader may only read;"
        " default: none (a resource owner of the password grant only)",
    )
    role = actions.add_parser(
        "role",
        parents=[common],
        help="set or clear a user's admin API role",
        description="Give a user the admin or reader role of the admin API, or take it away (none).",
    )
    role.set_defaults(handler=cmd_role)
    role.add_argument("username")
    role.add_argument("role", choices=(*ROLES, "none"))
    password = actions.add_parser(
        "password",
        parents=[common, new_password],
        help="set a user's password",
        description="Give a user a new password (at least"
        f" {users.MIN_PASSWORD_LENGTH} characters), asked for at a prompt or read from the first"
        " line of standard input with --password-stdin. Their console sessions and their sign-ins"
        " on the login page end; their tokens stay (revoke them with `user revoke`).",
    )
    password.set_defaults(handler=cmd_password)
    password.add_argument("username")
    listing = actions.add_parser(
        "list", parents=[common], help="list users", description="List users and their failed-login state."
    )
    listing.set_defaults(handler=cmd_list)
    listing.add_argument("--json", action="store_true", help="print JSON")
    remove = actions.add_parser(
        "remove",
        parents=[common],
        help="remove a user",
        description="Remove a user and revoke every token and grant"
        " issued for them (RFC 9700 §4.14.2); a user added later"
        " under the same name gets none of them.",
    )
    remove.set_defaults(handler=cmd_remove)
    remove.add_argument("username")
    revoke = actions.add_parser(
        "revoke",
        parents=[common],
        help="revoke a user's tokens",
        description="Revoke every access and refresh token issued"
        " for a user, and their grants, without removing the user"
        " (for example after a password change).",
    )
    revoke.set_defaults(handler=cmd_revoke)
    revoke.add_argument("username")
    unlock = actions.add_parser(
        "unlock",
        parents=[common],
        help="clear a user's failed logins",
        description="Forget a user's failed password attempts and"
        " end their lockouts, from every source address.",
    )
    unlock.set_defaults(handler=cmd_unlock)
    unlock.add_argument("username")


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise CLIError("no terminal to ask for the password; use --password-stdin")
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise CLIError("the passwords differ")
    return users.check_password_policy(password)


def cmd_add(args: argparse.Namespace) -> int:
    username = users.check_username(args.username)
    config = load_config(args.conf)
    password = _read_password(args.password_stdin)
    with open_storage(config) as store:
        user = users.add_user(store, username, password, args.role, local_actor())
    print(json.dumps({"username": user.username, **({"role": user.role} if user.role else {})}))
    return 0


def cmd_role(args: argparse.Namespace) -> int:
    role = None if args.role == "none" else args.role
    with open_storage(load_config(args.conf)) as store:
        user = users.set_role(store, args.username, role, local_actor())
    print(json.dumps({"username": user.username, "role": user.role}))
    return 0


def cmd_password(args: argparse.Namespace) -> int:
    config = load_config(args.conf)
    password = _read_password(args.password_stdin)
    with open_storage(config) as store:
        user = users.set_password(store, args.username, password, local_actor())
    print(json.dumps({"username": user.username, "password": "changed"}))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with open_storage(load_config(args.conf)) as store:
        users = store.list_users()
    if args.json:
        print(json.dumps([u.public_view() for u in users], indent=2))
    else:
        now = int(time.time())
        for u in users:
            state = "locked" if u.locked_until > now else "ok"
            print(
                f"{printable(u.username):<32} {state:<7} failed={u.failed_attempts}"
                + (f" role={u.role}" if u.role else "")
            )
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    with open_storage(load_config(args.conf)) as store:
        users.remove_user(store, args.username, local_actor())
    print(f"removed {args.username!r} and revoked their tokens")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    with open_storage(load_config(args.conf)) as store:
        count = users.revoke_user_tokens(store, args.username, local_actor())
    print(f"revoked {count} tokens of {args.username!r}")
    return 0


def cmd_unlock(args: argparse.Namespace) -> int:
    with open_storage(load_config(args.conf)) as store:
        users.unlock_user(store, args.username, local_actor())
    print(f"unlocked {args.username!r}")
    return 0
