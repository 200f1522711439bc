"""``tokensmith signing``: the keys that sign JWT access tokens (RFC 9068).

The keyring is ``conf/security/signing``: the newest key signs, older ones stay published in
the JWKS so that tokens they signed verify until they expire. A running server sees a
rotation at its next token; no restart.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from tokensmith.admin.audit import OperationError, local_actor
from tokensmith.admin.configuration import retire_signing_key, rotate_signing_key
from tokensmith.cli.base import CLIError, Parser, open_storage
from tokensmith.config.settings import load_config
from tokensmith.security.signing import ALGORITHMS, SigningKeys

__all__ = ["add_commands"]

Command = Callable[[argparse.Namespace], int]


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``signing`` and its actions to *commands*; return their implementations."""
    signing = commands.add_parser(
        "signing",
        help="manage the JWT access-token signing keys",
        description="List, rotate and retire the keys that sign JWT access tokens (conf/security/signing).",
    )
    actions = signing.add_subparsers(dest="signing_command", metavar="ACTION", parser_class=Parser)
    actions.required = True
    listing = actions.add_parser(
        "list",
        parents=[common],
        help="list the keys, newest first",
        description="List the signing keys; the first one signs.",
    )
    listing.set_defaults(handler=cmd_list)
    listing.add_argument("--json", action="store_true", help="print the JWK Set")
    rotate = actions.add_parser(
        "rotate",
        parents=[common],
        help="make a new signing key",
        description="Make a new key that signs from now on; the old keys"
        " stay published so their tokens verify until they expire.",
    )
    rotate.set_defaults(handler=cmd_rotate)
    rotate.add_argument(
        "--algorithm",
        choices=ALGORITHMS,
        default="ES256",
        help="ES256 (an EC P-256 key, the default) or RS256 (an RSA 2048 key)",
    )
    retire = actions.add_parser(
        "retire",
        parents=[common],
        help="stop publishing an old key",
        description="Remove a previous key. Tokens it signed stop"
        " verifying: wait one access-token lifetime after a rotation.",
    )
    retire.set_defaults(handler=cmd_retire)
    retire.add_argument("kid")


def _keys(args: argparse.Namespace) -> SigningKeys:
    return SigningKeys(load_config(args.conf).conf_dir / "security" / "signing")


def cmd_list(args: argparse.Namespace) -> int:
    keys = _keys(args)
    if args.json:
        print(json.dumps(keys.jwks(), indent=2))
        return 0
    for position, key in enumerate(keys.all()):
        created = key.created.isoformat() if key.created else "?"
        print(f"{key.kid}  {key.alg}  {created}  {'active' if position == 0 else 'published'}")
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    keys = _keys(args)
    with open_storage(load_config(args.conf)) as db:  # for the audit log
        kid = rotate_signing_key(keys, db, args.algorithm, local_actor())
    key = next(k for k in keys.all() if k.kid == kid)
    print(f"{key.kid}  {key.alg}  active")
    return 0


def cmd_retire(args: argparse.Namespace) -> int:
    keys = _keys(args)
    with open_storage(load_config(args.conf)) as db:  # for the audit log
        try:
            retire_signing_key(keys, db, args.kid, local_actor())
        except OperationError:
            raise CLIError(f"no signing key with kid {args.kid!r}") from None
    print(f"retired {args.kid}")
    return 0
