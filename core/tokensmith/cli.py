"""The ``tokensmith`` command: serve, manage service providers, plugins and the keystore."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import sys
import time
from pathlib import Path
from typing import NoReturn, Sequence

from . import kdf
from .config import Config, ConfigError, load_config
from .storage import Client, StorageError

__all__ = ["main"]

SECRET_METHODS = ("client_secret_basic", "client_secret_post")
KNOWN_METHODS = (*SECRET_METHODS, "tls_client_auth", "self_signed_tls_client_auth", "none")


class CLIError(Exception):
    """A mistake on the command line or in its input: one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--conf", type=Path, default=Path("conf"), metavar="DIR",
                        help="configuration directory with server.xml and identity.xml"
                             " (default: ./conf)")
    parser = _Parser(prog="tokensmith", description="An OAuth 2.0 token server with pluggable"
                     " client authentication and mutual TLS (RFC 8705).")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    serve = commands.add_parser("serve", parents=[common], help="run the server",
                                description="Run the HTTPS server on the connectors of"
                                " server.xml. Ctrl-C or SIGTERM stops it; SIGHUP reloads"
                                " identity.xml and dropins/ without a restart.")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="worker processes sharing the sockets (default: 1)")

    sp = commands.add_parser("sp", help="manage service providers (OAuth clients)",
                             description="Register, list and remove service providers.")
    sp_commands = sp.add_subparsers(dest="sp_command", metavar="ACTION", parser_class=_Parser)
    sp_commands.required = True
    add = sp_commands.add_parser("add", parents=[common], help="register a service provider",
                                 description="Register a service provider and print its"
                                 " credentials as JSON. A client secret is shown only once.")
    add.add_argument("name", help="a name for people to recognise the client by")
    add.add_argument("--grant-type", action="append", dest="grant_types", required=True,
                     metavar="GRANT", help="a grant type the client may use (repeatable),"
                     " e.g. client_credentials")
    add.add_argument("--auth-method", required=True, metavar="METHOD",
                     help="token_endpoint_auth_method (RFC 7591): "
                          + ", ".join(KNOWN_METHODS))
    add.add_argument("--scope", action="append", dest="scopes", default=[], metavar="SCOPE",
                     help="a scope the client may ask for (repeatable)")
    listing = sp_commands.add_parser("list", parents=[common], help="list service providers",
                                     description="List the registered service providers.")
    listing.add_argument("--json", action="store_true", help="print JSON")
    remove = sp_commands.add_parser("remove", parents=[common], help="remove a service provider",
                                    description="Remove a service provider by client_id.")
    remove.add_argument("client_id")

    plugins = commands.add_parser("plugins", help="build and list listener plugins",
                                  description="Build plugin wheels and list loaded listeners.")
    plugin_commands = plugins.add_subparsers(dest="plugins_command", metavar="ACTION",
                                             parser_class=_Parser)
    plugin_commands.required = True
    build = plugin_commands.add_parser("build", help="build plugin source trees into wheels",
                                       description="Build each plugin directory into a wheel,"
                                       " skipping those whose sources did not change.")
    build.add_argument("sources", nargs="+", type=Path, metavar="DIR")
    build.add_argument("--out", type=Path, default=Path("dropins"), metavar="DIR",
                       help="where to put the wheels (default: ./dropins)")
    build.add_argument("--force", action="store_true", help="rebuild even if unchanged")
    plist = plugin_commands.add_parser("list", parents=[common], help="list listeners",
                                       description="Load dropins/ as the server would and list"
                                       " every listener in calling order.")
    plist.add_argument("--json", action="store_true", help="print JSON")
    plugin_commands.add_parser("pin", parents=[common], help="print pins for the current wheels",
                               description="Check every wheel in dropins/ and print its SHA-256"
                               " in sha256sum's format, for an <AllowedWheelsFile> in"
                               " identity.xml.")

    keystore = commands.add_parser("keystore", help="manage the server keystore",
                                   description="Create or export the server's certificate.")
    ks_commands = keystore.add_subparsers(dest="keystore_command", metavar="ACTION",
                                          parser_class=_Parser)
    ks_commands.required = True
    ks_commands.add_parser("init", parents=[common], help="create a development keystore",
                           description="Create a self-signed ECDSA P-256 certificate for"
                           " localhost and 127.0.0.1 where server.xml's <Keystore> points (PEM"
                           " files, or a PKCS#12 file for type=\"PKCS12\"; encrypted with its"
                           " password= if set), unless it exists.")
    export = ks_commands.add_parser("export", parents=[common],
                                    help="write the server certificate (PEM)",
                                    description="Write the server's public certificate (PEM),"
                                    " from PEM or PKCS#12 keystores, for clients to trust"
                                    " (keytool -export).")
    export.add_argument("--out", type=Path, required=True, metavar="FILE")
    return parser


def _storage(config: Config):  # noqa: ANN202 - the concrete store
    from .sqlite_store import SQLiteStorage

    return SQLiteStorage(config.server.database)


def _listener_lines(listeners, *, detail: bool = False) -> list[str]:  # noqa: ANN001
    lines = []
    for r in (item.describe() for item in listeners):
        line = (f"listener {r['type']:<22} {r['name']:<18} orderId={r['orderId']:<5}"
                f" {'enabled ' if r['enabled'] else 'disabled'} {r['wheel']}")
        if detail:
            line += f" version={r['version']} sha256={r['sha256']}"
        lines.append(line)
    return lines


def cmd_serve(args: argparse.Namespace) -> int:
    from .app import create_app, inspect_listeners, reload_app, runtime
    from .keystore import load_keystore
    from .server import bind, serve

    if not 1 <= args.workers <= 64:
        raise CLIError(f"--workers {args.workers}: use 1 to 64")
    config = load_config(args.conf)
    # Before any plugin loads or socket binds: a wrong keystore password is one clear line.
    load_keystore(config.server.keystore)

    def ready(urls: list[str]) -> None:
        for url in urls:
            print(f"tokensmith serving {url}/oauth2/token", flush=True)

    if args.workers > 1:
        from .supervisor import check_reload, supervise

        for line in _listener_lines(inspect_listeners(config)):
            print(line)
        status = supervise(config, args.workers, check_reload, ready)
    else:
        app = create_app(config)
        for line in _listener_lines(runtime(app).listeners):
            print(line)
        sockets = bind(config)
        asyncio.run(serve(app, config, sockets=sockets, ready=ready, reload=lambda: reload_app(app)))
        status = 0
    print("tokensmith stopped", flush=True)
    return status


def cmd_sp_add(args: argparse.Namespace) -> int:
    config = load_config(args.conf)
    method = args.auth_method
    if method not in KNOWN_METHODS:
        raise CLIError(f"unknown --auth-method {method!r}; use one of {', '.join(KNOWN_METHODS)}")
    client_id = secrets.token_urlsafe(18)
    secret = secrets.token_urlsafe(32) if method in SECRET_METHODS else None
    client = Client(
        client_id=client_id,
        name=args.name,
        token_endpoint_auth_method=method,
        grant_types=tuple(dict.fromkeys(args.grant_types)),
        scopes=tuple(dict.fromkeys(args.scopes)),
        secret_hash=kdf.hash_secret(secret) if secret else None,
        created_at=int(time.time()),
    )
    store = _storage(config)
    try:
        store.add_client(client)
    finally:
        store.close()
    shown = client.public_view()
    if secret is not None:
        shown["client_secret"] = secret
    print(json.dumps(shown, indent=2))
    return 0


def cmd_sp_list(args: argparse.Namespace) -> int:
    store = _storage(load_config(args.conf))
    try:
        clients = store.list_clients()
    finally:
        store.close()
    if args.json:
        print(json.dumps([c.public_view() for c in clients], indent=2))
    else:
        for c in clients:
            print(f"{c.client_id}  {c.token_endpoint_auth_method:<28} {','.join(c.grant_types):<24} {c.name}")
    return 0


def cmd_sp_remove(args: argparse.Namespace) -> int:
    store = _storage(load_config(args.conf))
    try:
        removed = store.remove_client(args.client_id)
    finally:
        store.close()
    if not removed:
        raise CLIError(f"no service provider with client_id {args.client_id!r}")
    print(f"removed {args.client_id}")
    return 0


def cmd_plugins_build(args: argparse.Namespace) -> int:
    from .wheelbuild import BuildError, build_plugin

    for source in args.sources:
        try:
            wheel, built = build_plugin(source, args.out, force=args.force)
        except BuildError as exc:
            raise CLIError(str(exc)) from None
        print(f"{'built    ' if built else 'unchanged'} {wheel}")
    return 0


def cmd_plugins_list(args: argparse.Namespace) -> int:
    from .app import inspect_listeners

    listeners = inspect_listeners(load_config(args.conf))
    if args.json:
        print(json.dumps([item.describe() for item in listeners], indent=2))
    else:
        for line in _listener_lines(listeners, detail=True):
            print(line)
    return 0


def cmd_plugins_pin(args: argparse.Namespace) -> int:
    from .dropins import scan_dropins

    for info in scan_dropins(load_config(args.conf).server.dropins):
        print(f"{info.sha256}  {info.path.name}")
    return 0


def cmd_keystore_init(args: argparse.Namespace) -> int:
    from .keystore import generate_dev_keystore, generate_dev_pkcs12

    settings = load_config(args.conf).server.keystore
    try:
        if settings.type == "PKCS12":
            assert settings.file is not None
            target, made = settings.file, generate_dev_pkcs12(settings.file, settings.password)
        else:
            assert settings.certificate_file is not None and settings.key_file is not None
            target = settings.certificate_file
            made = generate_dev_keystore(settings.certificate_file, settings.key_file,
                                         settings.password)
    except OSError as exc:
        raise CLIError(str(exc)) from None
    print(f"{'created' if made else 'kept existing'} keystore {target}")
    return 0


def cmd_keystore_export(args: argparse.Namespace) -> int:
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from .keystore import export_certificate

    pem = export_certificate(load_config(args.conf).server.keystore)
    try:
        args.out.write_bytes(pem)
    except OSError as exc:
        raise CLIError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    cert = x509.load_pem_x509_certificate(pem)
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    print(f"wrote {args.out}: {cert.subject.rfc4514_string()} sha256={digest}")
    return 0


COMMANDS = {
    ("serve", None): cmd_serve,
    ("sp", "add"): cmd_sp_add,
    ("sp", "list"): cmd_sp_list,
    ("sp", "remove"): cmd_sp_remove,
    ("plugins", "build"): cmd_plugins_build,
    ("plugins", "list"): cmd_plugins_list,
    ("plugins", "pin"): cmd_plugins_pin,
    ("keystore", "init"): cmd_keystore_init,
    ("keystore", "export"): cmd_keystore_export,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    action = getattr(args, f"{args.command}_command", None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command, action](args)
    except (CLIError, ConfigError, StorageError) as exc:
        # One line whatever the message holds (OpenSSL and OS errors can span lines).
        print(f"tokensmith: error: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug of ours: one line, the traceback only on request
        if os.environ.get("TOKENSMITH_DEBUG"):
            raise
        print(f"tokensmith: internal error: {type(exc).__name__}: {exc}"
              " (set TOKENSMITH_DEBUG=1 for the traceback)", file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
