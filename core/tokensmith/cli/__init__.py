"""The ``tokensmith`` command: serve, manage plugins; ``sp``, ``keystore`` and ``truststore``
live in ``cli_clients`` and ``cli_security``.

Every mistake is one line on stderr and a non-zero exit status, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tokensmith.admin.audit import OperationError
from tokensmith.cli import clients as cli_clients
from tokensmith.cli import db as cli_db
from tokensmith.cli import doctor as cli_doctor
from tokensmith.cli import security as cli_security
from tokensmith.cli import signing as cli_signing
from tokensmith.cli import users as cli_users
from tokensmith.cli.base import CLIError, Parser, common_options, open_storage
from tokensmith.config.settings import ConfigError, load_config, public_urls
from tokensmith.models import StorageError
from tokensmith.oauth.registration import RegistrationError
from tokensmith.security.signing import SigningKeyError
from tokensmith.security.truststore import TruststoreError
from tokensmith.security.x509 import CertificateError

__all__ = ["main", "CLIError"]

Command = Callable[[argparse.Namespace], int]
#: Errors whose message is meant for the user as it stands: one line, exit status 1.
USER_ERRORS = (
    CLIError,
    OperationError,
    ConfigError,
    StorageError,
    RegistrationError,
    CertificateError,
    TruststoreError,
    SigningKeyError,
)


def _parser() -> argparse.ArgumentParser:
    common = common_options()
    parser = Parser(
        prog="tokensmith",
        description="An OAuth 2.0 token server with pluggable"
        " client authentication and mutual TLS (RFC 8705).",
    )
    parser.add_argument("--version", action="version", version=f"tokensmith {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True

    serve = commands.add_parser(
        "serve",
        parents=[common],
        help="run the server",
        description="Run the HTTPS server on the connectors of"
        " server.xml. Ctrl-C or SIGTERM stops it; SIGHUP reloads"
        " identity.xml and dropins/ without a restart.",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes, each with its own socket per connector on the"
        " same address (SO_REUSEPORT); the kernel spreads connections (default: 1)",
    )

    serve.set_defaults(handler=cmd_serve)
    cli_clients.add_commands(commands, common)

    plugins = commands.add_parser(
        "plugins",
        help="build and list listener plugins",
        description="Build plugin wheels and list loaded listeners.",
    )
    plugin_commands = plugins.add_subparsers(dest="plugins_command", metavar="ACTION", parser_class=Parser)
    plugin_commands.required = True
    build = plugin_commands.add_parser(
        "build",
        help="build plugin source trees into wheels",
        description="Build each plugin directory into a wheel, skipping those whose sources did not change.",
    )
    build.set_defaults(handler=cmd_plugins_build)
    build.add_argument("sources", nargs="+", type=Path, metavar="DIR")
    build.add_argument(
        "--out",
        type=Path,
        default=Path("dropins"),
        metavar="DIR",
        help="where to put the wheels (default: ./dropins)",
    )
    build.add_argument("--force", action="store_true", help="rebuild even if unchanged")
    plist = plugin_commands.add_parser(
        "list",
        parents=[common],
        help="list listeners",
        description="Load dropins/ as the server would and list every listener in calling order.",
    )
    plist.set_defaults(handler=cmd_plugins_list)
    plist.add_argument("--json", action="store_true", help="print JSON")
    pin = plugin_commands.add_parser(
        "pin",
        parents=[common],
        help="print the wheels' pins, or pin and unpin them in identity.xml",
        description="Check every wheel in dropins/ and print its SHA-256"
        " in sha256sum's format, for an <AllowedWheelsFile> in"
        " identity.xml. With --add, --add-all or --remove, change the"
        " <Dropins><AllowedWheel> pins of identity.xml instead (comments kept, audited, as"
        " the admin API does); a running server applies them on SIGHUP. Pinning turns on"
        " with the first pin, and then every wheel in dropins/ must be pinned: a change"
        " that would leave one out is refused.",
    )
    pin.add_argument(
        "--add", action="append", default=[], metavar="SHA256", help="pin this digest (repeatable)"
    )
    pin.add_argument("--add-all", action="store_true", help="pin every wheel now in dropins/")
    pin.add_argument(
        "--remove",
        action="append",
        default=[],
        metavar="SHA256",
        help="remove this pin (refused while its wheel is in dropins/; repeatable)",
    )

    pin.set_defaults(handler=cmd_plugins_pin)
    cli_security.add_commands(commands, common)
    cli_users.add_commands(commands, common)
    cli_signing.add_commands(commands, common)
    cli_doctor.add_commands(commands, common)
    cli_db.add_commands(commands, common)
    return parser


def _version() -> str:
    """The installed distribution's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tokensmith")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _listener_lines(listeners, *, detail: bool = False, described: bool = False) -> list[str]:  # noqa: ANN001
    lines = []
    for r in listeners if described else (item.describe() for item in listeners):
        line = (
            f"listener {r['type']:<22} {r['name']:<18} orderId={r['orderId']:<5}"
            f" {'enabled ' if r['enabled'] else 'disabled'} {r['wheel']}"
        )
        if detail:
            line += f" version={r['version']} sha256={r['sha256']}"
        lines.append(line)
    return lines


def cmd_serve(args: argparse.Namespace) -> int:
    from tokensmith.app.factory import bound_ports, create_app, reload_app, runtime
    from tokensmith.app.state import RELOAD_ALL
    from tokensmith.http.server import bind, serve
    from tokensmith.security.keystore import load_keystore

    if not 1 <= args.workers <= 64:
        raise CLIError(f"--workers {args.workers}: use 1 to 64")
    config = load_config(args.conf)
    # Before any plugin loads or socket binds: a wrong keystore password is one clear line.
    load_keystore(config.server.keystore)

    def ready(urls: list[str]) -> None:
        # The URLs clients can use: a wildcard address is named, and the issuer and the mTLS
        # aliases are said with the reason they were chosen (RFC 8414 §2, RFC 8705 §5).
        public = public_urls(config.server, config.identity, bound_ports(urls))
        for url, named in zip(urls, public.connectors):
            listening = f" (listening on {url.removeprefix('https://')})" if named != url else ""
            print(f"tokensmith serving {named}/oauth2/token{listening}", flush=True)
        for reason in public.reasons:
            print(f"tokensmith: {reason}", flush=True)

    if args.workers > 1:
        from tokensmith.cli.supervisor import supervise

        def listed(described: list[dict]) -> None:
            for line in _listener_lines(described, described=True):
                print(line, flush=True)

        status = supervise(config, args.workers, ready, listed)
    else:
        app = create_app(config)
        # The admin API reloads the server as SIGHUP does (app/admin.py).
        app.extensions[RELOAD_ALL] = lambda: os.kill(os.getpid(), signal.SIGHUP)
        for line in _listener_lines(runtime(app).listeners):
            print(line)
        sockets = bind(config)[0]
        asyncio.run(serve(app, config, sockets=sockets, ready=ready, reload=lambda: reload_app(app)))
        status = 0
    print("tokensmith stopped", flush=True)
    # Without waiting for threads a plugin started and never ended: they would keep a
    # stopped server's process alive.
    sys.stderr.flush()
    logging.shutdown()
    os._exit(status)


def cmd_plugins_build(args: argparse.Namespace) -> int:
    from tokensmith.listeners.wheelbuild import BuildError, build_plugin

    for source in args.sources:
        try:
            wheel, built = build_plugin(source, args.out, force=args.force)
        except BuildError as exc:
            raise CLIError(str(exc)) from None
        print(f"{'built    ' if built else 'unchanged'} {wheel}")
    return 0


def cmd_plugins_list(args: argparse.Namespace) -> int:
    from tokensmith.app.factory import inspect_listeners

    listeners = inspect_listeners(load_config(args.conf))
    if args.json:
        print(json.dumps([item.describe() for item in listeners], indent=2))
    else:
        for line in _listener_lines(listeners, detail=True):
            print(line)
    return 0


def cmd_plugins_pin(args: argparse.Namespace) -> int:
    from tokensmith.admin import configuration as config_ops
    from tokensmith.admin.audit import local_actor
    from tokensmith.listeners.dropins import scan_dropins

    config = load_config(args.conf)
    if not (args.add or args.add_all or args.remove):
        for info in scan_dropins(config.server.dropins):
            print(f"{info.sha256}  {info.path.name}")
        return 0
    if args.add_all and args.add:
        raise CLIError("--add-all pins every wheel already; give it without --add")
    with open_storage(config) as store:
        if args.add or args.add_all:
            added = config_ops.pin_wheels(
                config.identity.path,
                config.server.dropins,
                store,
                None if args.add_all else args.add,
                local_actor(),
            )
            for digest in added:
                print(f"pinned {digest}")
            if not added:
                print("pinned already; nothing changed")
        for digest in args.remove:
            config_ops.unpin_wheel(config.identity.path, config.server.dropins, store, digest, local_actor())
            print(f"unpinned {digest}")
    print("identity.xml changed: send the server SIGHUP to apply it", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    if list(argv if argv is not None else sys.argv[1:])[:1] == ["serve"]:
        # As the package does when imported for `tokensmith serve` (see __init__), for callers
        # that reach serve another way.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    args = _parser().parse_args(argv)
    handler: Command = args.handler
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        status = handler(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
        return status
    except BrokenPipeError:
        # The reader went away (`tokensmith sp list | head -1`): normal for a command-line
        # tool. Nothing more can be written; point stdout at /dev/null so that the
        # interpreter's last flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    except USER_ERRORS as exc:
        # One line whatever the message holds (OpenSSL and OS errors can span lines).
        print(f"tokensmith: error: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug of ours: one line, the traceback only on request
        if os.environ.get("TOKENSMITH_DEBUG"):
            raise
        print(
            f"tokensmith: internal error: {type(exc).__name__}: {exc}"
            " (set TOKENSMITH_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 70


if __name__ == "__main__":
    sys.exit(main())
