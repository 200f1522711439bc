"""``tokensmith keystore`` and ``tokensmith truststore``: the seed's keytool steps.

``keytool -export -alias wso2carbon -file carbon_public2.crt -keystore wso2carbon.jks`` is
``tokensmith keystore export --out server.crt``; ``keytool -import -trustcacerts -alias carbon
-file ca.crt -keystore client-truststore.jks`` is ``tokensmith truststore import --alias carbon
--file ca.crt``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tokensmith.admin.audit import OperationError, local_actor
from tokensmith.admin.configuration import import_anchor, remove_anchor
from tokensmith.cli.base import CLIError, Parser, open_storage
from tokensmith.config.settings import load_config
from tokensmith.security.truststore import Truststore
from tokensmith.security.x509 import load_pem_certificates

__all__ = ["add_commands"]

Command = Callable[[argparse.Namespace], int]


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``keystore`` and ``truststore`` to *commands*; return their implementations."""
    keystore = commands.add_parser(
        "keystore",
        help="manage the server keystore",
        description="Create or export the server's certificate.",
    )
    ks_actions = keystore.add_subparsers(dest="keystore_command", metavar="ACTION", parser_class=Parser)
    ks_actions.required = True
    ks_actions.add_parser(
        "init",
        parents=[common],
        help="create a development keystore",
        description="Create a self-signed ECDSA P-256 certificate for"
        " localhost and 127.0.0.1 where server.xml's <Keystore> points (PEM"
        ' files, or a PKCS#12 file for type="PKCS12"; encrypted with its'
        " password= if set), unless it exists.",
    ).set_defaults(handler=cmd_keystore_init)
    export = ks_actions.add_parser(
        "export",
        parents=[common],
        help="write the server certificate (PEM)",
        description="Write the server's public certificate (PEM),"
        " from PEM or PKCS#12 keystores, for clients to trust"
        " (keytool -export).",
    )
    export.set_defaults(handler=cmd_keystore_export)
    export.add_argument("--out", type=Path, required=True, metavar="FILE")

    truststore = commands.add_parser(
        "truststore",
        help="manage tls_client_auth trust anchors",
        description="Manage the CA certificates that"
        " tls_client_auth client certificates must chain to"
        " (server.xml <Truststore>, default conf/security/truststore)."
        " Changes apply to new requests without a restart.",
    )
    ts_actions = truststore.add_subparsers(dest="truststore_command", metavar="ACTION", parser_class=Parser)
    ts_actions.required = True
    imp = ts_actions.add_parser(
        "import",
        parents=[common],
        help="trust a CA certificate",
        description="Trust the one certificate in FILE (PEM or DER)"
        " under ALIAS (keytool -import -trustcacerts). It must be a CA"
        " certificate (basicConstraints cA, keyUsage keyCertSign) unless"
        " --allow-non-ca is given.",
    )
    imp.set_defaults(handler=cmd_truststore_import)
    imp.add_argument(
        "--alias",
        required=True,
        metavar="NAME",
        help="1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit",
    )
    imp.add_argument("--file", required=True, type=Path, metavar="FILE", help="the CA certificate")
    imp.add_argument(
        "--allow-non-ca",
        action="store_true",
        help="trust a self-signed client certificate as its own anchor, for"
        " a tls_client_auth client whose subject matches; it vouches for no"
        " other certificate",
    )
    listing = ts_actions.add_parser(
        "list",
        parents=[common],
        help="list trusted certificates",
        description="List the trust anchors: alias, SHA-256 fingerprint, expiry and subject.",
    )
    listing.set_defaults(handler=cmd_truststore_list)
    listing.add_argument("--json", action="store_true", help="print JSON")
    remove = ts_actions.add_parser(
        "remove",
        parents=[common],
        help="stop trusting a certificate",
        description="Remove the trust anchor ALIAS.",
    )
    remove.set_defaults(handler=cmd_truststore_remove)
    remove.add_argument("alias", help="the alias it was imported under")


def _fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def cmd_keystore_init(args: argparse.Namespace) -> int:
    from tokensmith.security.keystore import generate_dev_keystore, generate_dev_pkcs12

    settings = load_config(args.conf).server.keystore
    try:
        if settings.type == "PKCS12":
            assert settings.file is not None
            target, made = settings.file, generate_dev_pkcs12(settings.file, settings.password)
        else:
            assert settings.certificate_file is not None and settings.key_file is not None
            target = settings.certificate_file
            made = generate_dev_keystore(settings.certificate_file, settings.key_file, settings.password)
    except OSError as exc:
        raise CLIError(str(exc)) from None
    print(f"{'created' if made else 'kept existing'} keystore {target}")
    return 0


def cmd_keystore_export(args: argparse.Namespace) -> int:
    from tokensmith.security.keystore import export_certificate

    pem = export_certificate(load_config(args.conf).server.keystore)
    try:
        args.out.write_bytes(pem)
    except OSError as exc:
        raise CLIError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    cert = x509.load_pem_x509_certificate(pem)
    print(f"wrote {args.out}: {cert.subject.rfc4514_string()} sha256={_fingerprint(cert)}")
    return 0


def _truststore(args: argparse.Namespace) -> Truststore:
    return Truststore(load_config(args.conf).server.truststore)


def cmd_truststore_import(args: argparse.Namespace) -> int:
    store = _truststore(args)
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise CLIError(f"{args.file}: cannot read: {exc.strerror or exc}") from None
    # Parsed here first so that a file that is no certificate is refused naming the file.
    certs = load_pem_certificates(data, source=str(args.file))
    if len(certs) != 1:
        raise CLIError(f"{args.file}: holds {len(certs)} certificates; import one per alias")
    with open_storage(load_config(args.conf)) as db:  # for the audit log
        cert = import_anchor(store, db, args.alias, data, local_actor(), allow_non_ca=args.allow_non_ca)
    print(f"imported {args.alias} sha256={_fingerprint(cert)} subject={cert.subject.rfc4514_string()}")
    return 0


def cmd_truststore_list(args: argparse.Namespace) -> int:
    anchors = _truststore(args).list()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "alias": a.alias,
                        "subject": a.subject,
                        "sha256": a.sha256_hex,
                        "not_after": int(a.not_after.timestamp()),
                    }
                    for a in anchors
                ],
                indent=2,
            )
        )
    else:
        for a in anchors:
            print(f"{a.alias:<20} {a.sha256_hex} expires {a.not_after:%Y-%m-%d} {a.subject}")
    return 0


def cmd_truststore_remove(args: argparse.Namespace) -> int:
    store = _truststore(args)
    with open_storage(load_config(args.conf)) as db:  # for the audit log
        try:
            remove_anchor(store, db, args.alias, local_actor())
        except OperationError:
            raise CLIError(f"no trusted certificate with alias {args.alias!r} in {store.directory}") from None
    print(f"removed {args.alias}")
    return 0
