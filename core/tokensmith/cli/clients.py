"""``tokensmith sp``: register, update, list and remove service providers (OAuth clients).

A client is its RFC 7591 metadata (``oauth/clientmetadata.py``): ``--metadata FILE.json``
gives a whole document, and the other options are shorthands for members of it. Any method a
loaded ClientAuthenticator declares can be registered, and that authenticator checks the
metadata (its ``check_client_metadata`` hook) before anything is stored.

Mutual-TLS clients (RFC 8705 §2) are registered here as WSO2's console does it: a
``self_signed_tls_client_auth`` client with its "Application Certificate" (``--cert``), a
``tls_client_auth`` client with the one subject attribute its CA-issued certificate must carry.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tokensmith.admin import clients as client_ops
from tokensmith.admin.audit import OperationError, local_actor
from tokensmith.admin.configuration import issue_initial_access_token
from tokensmith.cli.base import CLIError, Parser, open_storage, warn
from tokensmith.config.settings import Config, load_config
from tokensmith.config.xml import ConfigError
from tokensmith.errors import InvalidClientMetadataError, OAuth2Error
from tokensmith.models import Client, RegisteredCertificate, Storage
from tokensmith.oauth import clientauth
from tokensmith.oauth.clientmetadata import apply_metadata, certificate_jwk, client_metadata
from tokensmith.oauth.grants import GRANT_TYPES
from tokensmith.oauth.registration import (
    certificates_from_file,
    check_grant_types,
    check_registration,
    check_scope,
    check_text,
    parse_fingerprint,
    printable,
    tls_subject,
)

if TYPE_CHECKING:
    from tokensmith.listeners.registry import ListenerSet

__all__ = ["add_commands", "client_view", "SECRET_METHODS", "KNOWN_METHODS"]

SECRET_METHODS = ("client_secret_basic", "client_secret_post")
SELF_SIGNED = "self_signed_tls_client_auth"
PKI = "tls_client_auth"
KNOWN_METHODS = (*SECRET_METHODS, PKI, SELF_SIGNED, "none")
#: --option -> Client.tls_subject kind (RFC 8705 §2.1.2 metadata names).
SUBJECT_OPTIONS = {
    "subject_dn": "tls_client_auth_subject_dn",
    "san_dns": "tls_client_auth_san_dns",
    "san_uri": "tls_client_auth_san_uri",
    "san_ip": "tls_client_auth_san_ip",
    "san_email": "tls_client_auth_san_email",
}

Command = Callable[[argparse.Namespace], int]

ADD_DESCRIPTION = """\
Register a service provider and print its credentials as JSON. A client secret is shown only
once. Mutual-TLS clients (RFC 8705) get no secret:
self_signed_tls_client_auth registers the client's own certificate with --cert FILE (the
"Application Certificate"); every certificate in a PEM file is registered, and --cert may be
repeated, so a client can hold its current and its next certificate. tls_client_auth
registers exactly one attribute that the client's CA-issued certificate must carry:
--subject-dn, --san-dns, --san-uri, --san-ip or --san-email (its CA goes into the truststore:
tokensmith truststore import).

Any other method a ClientAuthenticator in dropins/ declares is accepted too (the plugins are
loaded to learn them), and that plugin checks the client's metadata. --metadata FILE.json
gives an RFC 7591 client metadata document (client_name, grant_types, scope,
token_endpoint_auth_method, jwks, jwks_uri, token_endpoint_auth_signing_alg, contacts, ...,
and plugins' own "<plugin>.<name>" members); the options override its members. --jwks and
--jwks-uri register the client's public keys; --cert registers a certificate for a client of
any method, as a JWK with x5c in its jwks (RFC 8705 §2.2)."""

UPDATE_DESCRIPTION = """\
Change a client's certificates or metadata and print the updated client as JSON.
--add-cert registers every certificate in FILE; --remove-cert takes a SHA-256 fingerprint as
`openssl x509 -noout -fingerprint -sha256` or `sp list --json` prints it (colons and case do
not matter). Both may be repeated and combined; removing the last certificate of a
self_signed_tls_client_auth client is refused. --metadata FILE.json changes the members it
gives (null removes one); --jwks and --jwks-uri replace the client's keys. The client's
authenticator checks the result before it is stored."""


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``sp`` and its actions to *commands*; return their implementations."""
    sp = commands.add_parser(
        "sp",
        help="manage service providers (OAuth clients)",
        description="Register, update, list and remove service providers.",
    )
    actions = sp.add_subparsers(dest="sp_command", metavar="ACTION", parser_class=Parser)
    actions.required = True

    add = actions.add_parser(
        "add", parents=[common], help="register a service provider", description=ADD_DESCRIPTION
    )
    add.set_defaults(handler=cmd_sp_add)
    add.add_argument("name", help="a name for people to recognise the client by")
    add.add_argument(
        "--grant-type",
        action="append",
        dest="grant_types",
        metavar="GRANT",
        help="a grant type the client may use (repeatable): "
        + ", ".join(GRANT_TYPES)
        + "; a public client (--auth-method none) may not"
        " use client_credentials; required unless --metadata gives grant_types",
    )
    add.add_argument(
        "--auth-method",
        metavar="METHOD",
        help="token_endpoint_auth_method (RFC 7591): "
        + ", ".join(KNOWN_METHODS)
        + ", or one a ClientAuthenticator in dropins/ declares; required unless"
        " --metadata gives it",
    )
    _metadata_options(add)
    add.add_argument(
        "--scope",
        action="append",
        dest="scopes",
        default=[],
        metavar="SCOPE",
        help="a scope the client may ask for (repeatable)",
    )
    add.add_argument(
        "--cert",
        action="append",
        dest="certs",
        default=[],
        type=Path,
        metavar="FILE",
        help="a PEM (or DER) file with the client's certificate, required for"
        " self_signed_tls_client_auth; every certificate in it is registered, as a JWK"
        " with x5c in the client's jwks (repeatable)",
    )
    subject = add.add_mutually_exclusive_group()
    subject.add_argument(
        "--subject-dn",
        metavar="DN",
        help="tls_client_auth: the certificate's subject DN, RFC 4514, e.g. 'CN=client,O=Example,C=SE'",
    )
    subject.add_argument("--san-dns", metavar="NAME", help="tls_client_auth: a dNSName SAN")
    subject.add_argument("--san-uri", metavar="URI", help="tls_client_auth: a URI SAN")
    subject.add_argument(
        "--san-ip", metavar="ADDRESS", help="tls_client_auth: an iPAddress SAN (IPv4 or IPv6)"
    )
    subject.add_argument("--san-email", metavar="ADDRESS", help="tls_client_auth: an rfc822Name SAN")
    add.add_argument(
        "--bind-tokens",
        action="store_true",
        help="client_secret_basic/post: bind the tokens to the TLS client"
        " certificate when the client presents one (RFC 8705 §3); mutual-TLS"
        " clients' tokens are always bound",
    )
    add.add_argument(
        "--token-format",
        choices=("opaque", "jwt"),
        metavar="FORMAT",
        help="opaque or jwt (RFC 9068) access tokens for this client; default:"
        " identity.xml's <AccessTokenFormat>",
    )
    add.add_argument(
        "--access-token-lifetime",
        type=_seconds,
        metavar="SECONDS",
        help="override identity.xml's <AccessTokenLifetime> for this client",
    )
    add.add_argument(
        "--refresh-token-lifetime",
        type=_seconds,
        metavar="SECONDS",
        help="override identity.xml's <RefreshTokenLifetime> for this client",
    )
    add.add_argument(
        "--refresh-token-max-lifetime",
        type=_seconds,
        metavar="SECONDS",
        help="override identity.xml's <RefreshTokenMaxLifetime> (a grant's"
        " absolute lifetime) for this client",
    )
    add.add_argument(
        "--resource-server",
        action="store_true",
        help="the client is a resource server: it may introspect access tokens"
        " issued to other clients (RFC 7662 §4); others see only their own",
    )
    add.add_argument(
        "--force",
        action="store_true",
        help="register a public client for the password grant all the same"
        " (RFC 9700 §2.4 says it must not be used)",
    )

    listing = actions.add_parser(
        "list",
        parents=[common],
        help="list service providers",
        description="List the registered service providers; --json includes their certificates and subjects.",
    )
    listing.set_defaults(handler=cmd_sp_list)
    listing.add_argument("--json", action="store_true", help="print JSON")

    update = actions.add_parser(
        "update",
        parents=[common],
        help="change a client's certificates or metadata",
        description=UPDATE_DESCRIPTION,
    )
    update.set_defaults(handler=cmd_sp_update)
    update.add_argument("client_id", help="the client to change")
    update.add_argument(
        "--add-cert",
        action="append",
        dest="add_certs",
        default=[],
        type=Path,
        metavar="FILE",
        help="register the certificates in FILE (repeatable)",
    )
    update.add_argument(
        "--remove-cert",
        action="append",
        dest="remove_certs",
        default=[],
        metavar="SHA256",
        help="unregister the certificate with this SHA-256 fingerprint (repeatable)",
    )
    _metadata_options(update)

    show = actions.add_parser(
        "show",
        parents=[common],
        help="show one service provider",
        description="Print one service provider as JSON, as sp list --json does (never its"
        ' secret), with its whole RFC 7591 metadata document under "client_metadata".',
    )
    show.set_defaults(handler=cmd_sp_show)
    show.add_argument("client_id")

    reset = actions.add_parser(
        "reset-secret",
        parents=[common],
        help="give a client a new secret",
        description="Replace the client secret of a client_secret_basic or"
        " client_secret_post client and print the client with its new"
        " secret as JSON, once. The old secret stops working at once, also"
        " on a running server.",
    )
    reset.set_defaults(handler=cmd_sp_reset_secret)
    reset.add_argument("client_id")

    remove = actions.add_parser(
        "remove",
        parents=[common],
        help="remove a service provider",
        description="Remove a service provider by client_id;"
        " every token issued to it is revoked (RFC 7592 §2.3).",
    )
    remove.set_defaults(handler=cmd_sp_remove)
    remove.add_argument("client_id")

    revoke = actions.add_parser(
        "revoke",
        parents=[common],
        help="revoke a client's tokens",
        description="Revoke every access and refresh token issued to a client, and its grants,"
        " without removing the client.",
    )
    revoke.set_defaults(handler=cmd_sp_revoke)
    revoke.add_argument("client_id")

    initial = actions.add_parser(
        "initial-token",
        parents=[common],
        help="issue an initial access token for dynamic registration",
        description="Print a new RFC 7591 initial access token: with <DynamicClientRegistration"
        ' mode="initial_access_token"> in authenticators.xml, a client registers itself at'
        " /oauth2/register with it, once, before it expires.",
    )
    initial.set_defaults(handler=cmd_sp_initial_token)
    initial.add_argument(
        "--lifetime", type=_seconds, metavar="SECONDS", help="default: authenticators.xml's lifetime"
    )


def _metadata_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metadata",
        type=Path,
        metavar="FILE.json",
        help="an RFC 7591 client metadata document (a JSON object)",
    )
    parser.add_argument(
        "--redirect-uri",
        action="append",
        dest="redirect_uris",
        metavar="URI",
        help="a redirect URI for the authorization_code grant (repeatable; metadata"
        " redirect_uris, compared exactly): https, or http to 127.0.0.1 or [::1], as"
        " http://127.0.0.1:8080/callback (RFC 8252 §7.3); sp update replaces the list",
    )
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument(
        "--jwks",
        type=Path,
        metavar="FILE",
        help="the client's public keys: a JWK Set or one JWK, as JSON (metadata jwks)",
    )
    keys.add_argument(
        "--jwks-uri",
        metavar="URL",
        help="the https URL of the client's JWK Set (metadata jwks_uri)",
    )


#: The largest --metadata or --jwks file: client metadata is a small document.
MAX_JSON_FILE_BYTES = 1024 * 1024


def _json_file(path: Path, what: str) -> dict[str, object]:
    """The JSON object in the regular file *path*, of at most ``MAX_JSON_FILE_BYTES``
    (a device such as /dev/zero or a FIFO would never end)."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer.
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise CLIError(f"{path}: not a regular file")
            data = file.read(MAX_JSON_FILE_BYTES + 1)
    except OSError as exc:
        raise CLIError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_JSON_FILE_BYTES:
        raise CLIError(f"{path}: larger than {MAX_JSON_FILE_BYTES} bytes")
    try:
        value = json.loads(data)
    except RecursionError:
        raise CLIError(f"{path}: not JSON: nested too deeply") from None
    except ValueError as exc:
        raise CLIError(f"{path}: not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CLIError(f"{path}: {what} must be a JSON object")
    return value


def _metadata_changes(args: argparse.Namespace) -> dict[str, object]:
    """The members --metadata, --jwks and --jwks-uri give."""
    document = _json_file(args.metadata, "client metadata") if args.metadata else {}
    if args.jwks is not None:
        jwks = _json_file(args.jwks, "a JWK Set")
        document["jwks"] = jwks if "keys" in jwks else {"keys": [jwks]}
        document.pop("jwks_uri", None)
    if args.jwks_uri is not None:
        document["jwks_uri"] = args.jwks_uri
        document.pop("jwks", None)
    if args.redirect_uris:
        document["redirect_uris"] = list(args.redirect_uris)
    return document


def load_authenticators(config: Config) -> ListenerSet:
    """The listeners of dropins/ as the server would load them, for their methods and their
    metadata checks; a configuration that would not load is refused in one line."""
    from tokensmith.app.factory import inspect_listeners

    try:
        return inspect_listeners(config)
    except ConfigError as exc:
        raise CLIError(f"cannot load the plugins in dropins/ to check the registration: {exc}") from None


def check_with_authenticator(listeners: ListenerSet, client: Client) -> None:
    """Run the client's authenticator's ``check_client_metadata`` (RFC 7591 §3.2.2)."""
    try:
        clientauth.check_client_metadata(listeners, client_metadata(client))
    except InvalidClientMetadataError as exc:
        raise CLIError(
            f"invalid_client_metadata: {exc.description or 'refused by its authenticator'}"
        ) from None
    except OAuth2Error:
        raise CLIError(
            f"the authenticator of {client.token_endpoint_auth_method} failed while checking the"
            " client's metadata; its log line above says why"
        ) from None


def client_view(client: Client) -> dict[str, object]:
    """What the sp commands print of *client*: its public view, with ``bind_tokens`` saying
    what happens to its tokens (RFC 8705 §3, §4) rather than only the registered flag."""
    view = client.public_view()
    method = client.token_endpoint_auth_method
    if method in (PKI, SELF_SIGNED):
        view["bind_tokens"] = True
        view["token_binding"] = "always: bound to the certificate the client authenticates with"
    elif method in SECRET_METHODS and not client.bind_tokens:
        view["bind_tokens"] = False
        view["token_binding"] = "never: bearer tokens"
    else:
        view["bind_tokens"] = True
        view["token_binding"] = (
            "bound to the TLS client certificate when the client presents one; bearer tokens when it does not"
        )
    return view


def _certificates(files: list[Path]) -> list[RegisteredCertificate]:
    """Every certificate in *files*, each once; the same certificate twice is a mistake."""
    found: dict[str, RegisteredCertificate] = {}
    for path in files:
        for cert in certificates_from_file(path):
            if cert.sha256 in found:
                raise CLIError(f"{path}: certificate {cert.sha256} ({cert.subject}) is given twice")
            found[cert.sha256] = cert
    return list(found.values())


def _check_method_options(
    args: argparse.Namespace, methods: list[str], document: dict[str, object]
) -> tuple[str, str] | None:
    """Refuse options that do not fit --auth-method; the chosen subject option, if any."""
    method = args.auth_method
    if method not in methods:
        raise CLIError(f"unknown --auth-method {method!r}; use one of {', '.join(methods)}")
    chosen = next(
        ((option, getattr(args, option)) for option in SUBJECT_OPTIONS if getattr(args, option) is not None),
        None,
    )
    flag = f"--{chosen[0].replace('_', '-')}" if chosen else ""
    has_certificate = args.certs or any(
        isinstance(key, dict) and "x5c" in key
        for key in (document.get("jwks") or {}).get("keys", [])  # type: ignore[attr-defined]
    )
    if method == SELF_SIGNED and not has_certificate:
        raise CLIError(f"{SELF_SIGNED} needs the client's certificate: --cert FILE")
    if args.certs and "jwks_uri" in document:
        raise CLIError(
            "--cert registers the certificate in jwks, and jwks_uri must not be given with jwks (RFC 7591 §2)"
        )
    if chosen and method != PKI:
        raise CLIError(f"{flag} is for {PKI} clients, not {method}")
    if method == PKI and not chosen and not any(kind in document for kind in SUBJECT_OPTIONS.values()):
        raise CLIError(
            f"{PKI} needs the subject its certificate must carry: one of --subject-dn,"
            " --san-dns, --san-uri, --san-ip, --san-email"
        )
    if args.bind_tokens and method not in SECRET_METHODS:
        reason = (
            "its tokens are always bound to its certificate"
            if method in (PKI, SELF_SIGNED)
            else "it is for client_secret_basic and client_secret_post"
        )
        raise CLIError(f"--bind-tokens does not apply to a {method} client: {reason}")
    return (SUBJECT_OPTIONS[chosen[0]], chosen[1]) if chosen else None


def _seconds(text: str) -> int:
    """A positive number of seconds, for argparse."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if not 1 <= value <= 10 * 365 * 24 * 3600:
        raise argparse.ArgumentTypeError(f"{value} is outside 1..315360000 seconds")
    return value


def new_client_id() -> str:
    """A random client_id (144 bits) that never starts with '-'.

    A leading '-' (1 in 64 of token_urlsafe's outputs) would make every later command line
    that names the client (sp update, sp remove) read it as an option.
    """
    while (client_id := secrets.token_urlsafe(18)).startswith("-"):
        pass
    return client_id


def cmd_sp_add(args: argparse.Namespace) -> int:
    document = _metadata_changes(args)
    if args.auth_method is None:
        method = document.get("token_endpoint_auth_method")
        if not isinstance(method, str):
            raise CLIError("give --auth-method METHOD (or token_endpoint_auth_method in --metadata)")
        args.auth_method = method
    if not args.grant_types:
        grant_types = document.get("grant_types")
        if not isinstance(grant_types, list) or not grant_types:
            raise CLIError("give --grant-type GRANT (or grant_types in --metadata)")
        args.grant_types = grant_types
    if args.scopes:
        document["scope"] = " ".join(args.scopes)
    config = load_config(args.conf)
    listeners = load_authenticators(config)
    methods = list(dict.fromkeys([*KNOWN_METHODS, *clientauth.auth_methods_supported(listeners)]))
    subject = _check_method_options(args, methods, document)
    check_registration(args.auth_method, args.grant_types)
    check_text(args.name, "the name")
    if subject is not None:
        check_text(subject[1], "the subject")
    for scope in args.scopes:
        check_scope(scope)
    check_grant_types(args.grant_types, args.auth_method, args.force)  # refused early, in CLI words
    certificates = _certificates(args.certs)
    method = args.auth_method
    document.update(
        client_name=args.name, token_endpoint_auth_method=method, grant_types=list(args.grant_types)
    )
    if subject is not None:
        for kind in SUBJECT_OPTIONS.values():
            document.pop(kind, None)
        document[subject[0]] = tls_subject(*subject)[1]
    if certificates:
        jwks = document.setdefault("jwks", {"keys": []})
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            raise CLIError('the metadata\'s jwks must be a JWK Set: {"keys": [...]}')
        jwks["keys"] = [*jwks["keys"], *map(certificate_jwk, certificates)]
    options = client_ops.ClientOptions(
        bind_tokens=args.bind_tokens,
        resource_server=args.resource_server,
        token_format=args.token_format,
        access_token_lifetime=args.access_token_lifetime,
        refresh_token_lifetime=args.refresh_token_lifetime,
        refresh_token_max_lifetime=args.refresh_token_max_lifetime,
        force=args.force,
    )
    # The one implementation the admin API and dynamic registration use too.
    with open_storage(config) as store, _metadata_refusals(method):
        created = client_ops.register_client(store, listeners, document, local_actor(), options)
    for line in created.warnings:
        warn(line)
    shown = client_view(created.client)
    if created.secret is not None:
        shown["client_secret"] = created.secret
    print(json.dumps(shown, indent=2))
    return 0


@contextlib.contextmanager
def _metadata_refusals(method: str) -> Iterator[None]:
    """An authenticator's refusal of the metadata as one CLI line."""
    try:
        yield
    except OperationError as exc:
        if exc.error != "invalid_client_metadata":
            raise
        raise CLIError(f"invalid_client_metadata: {exc}") from None
    except InvalidClientMetadataError as exc:
        raise CLIError(
            f"invalid_client_metadata: {exc.description or 'refused by its authenticator'}"
        ) from None
    except OAuth2Error:
        raise CLIError(
            f"the authenticator of {method} failed while checking the client's metadata; its log line"
            " above says why"
        ) from None


def _applied(client: Client, document: dict[str, object], *, merge: bool) -> Client:
    try:
        return apply_metadata(client, document, merge=merge)
    except InvalidClientMetadataError as exc:
        raise CLIError(f"invalid_client_metadata: {exc.description}") from None


def cmd_sp_update(args: argparse.Namespace) -> int:
    changes_metadata = (
        args.metadata is not None
        or args.jwks is not None
        or args.jwks_uri is not None
        or bool(args.redirect_uris)
    )
    if not args.add_certs and not args.remove_certs and not changes_metadata:
        raise CLIError(
            "nothing to change: give --add-cert FILE, --remove-cert SHA256, --metadata FILE.json,"
            " --jwks FILE, --jwks-uri URL or --redirect-uri URI"
        )
    remove = [parse_fingerprint(text) for text in args.remove_certs]
    config = load_config(args.conf)
    added = _certificates(args.add_certs)
    document = _metadata_changes(args)
    if changes_metadata and (added or remove) and "jwks" in document:
        raise CLIError("give either new jwks or --add-cert/--remove-cert, not both")
    listeners = load_authenticators(config)
    # The one implementation the admin API and RFC 7592 use too.
    with open_storage(config) as store:
        method = _client(store, args.client_id).token_endpoint_auth_method
        with _metadata_refusals(method):
            changed = client_ops.change_client(
                store,
                listeners,
                args.client_id,
                local_actor(),
                document=document if changes_metadata else None,
                add=added,
                remove=remove,
            )
    for line in changed.warnings:
        warn(line)
    print(json.dumps(client_view(changed.client), indent=2))
    return 0


def cmd_sp_list(args: argparse.Namespace) -> int:
    with open_storage(load_config(args.conf)) as store:
        clients = store.list_clients()
    if args.json:
        print(json.dumps([client_view(c) for c in clients], indent=2))
        return 0
    rows = [("CLIENT_ID", "AUTH_METHOD", "GRANT_TYPES", "NAME")]
    # Names registered before control characters were refused are escaped.
    rows += [
        (c.client_id, c.token_endpoint_auth_method, ",".join(c.grant_types), printable(c.name))
        for c in clients
    ]
    # Columns as wide as their widest cell, so that they stay in line whatever the values.
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    return 0


def _client(store: Storage, client_id: str) -> Client:
    client = store.get_client(client_id) if clientauth.storable_id(client_id) else None
    if client is None:
        raise CLIError(f"no service provider with client_id {client_id!r} (sp list shows them)")
    return client


def cmd_sp_show(args: argparse.Namespace) -> int:
    with open_storage(load_config(args.conf)) as store:
        client = _client(store, args.client_id)
    view = client_view(client)
    view["client_metadata"] = client_metadata(client)
    print(json.dumps(view, indent=2))
    return 0


def cmd_sp_reset_secret(args: argparse.Namespace) -> int:
    # A new hash: the server's client cache follows the store's change counter, and its
    # cache of verified secrets is keyed by the stored hash, so the old secret stops at once.
    with open_storage(load_config(args.conf)) as store:
        updated = client_ops.reset_secret(store, args.client_id, local_actor())
    shown = client_view(updated.client)
    shown["client_secret"] = updated.secret
    print(json.dumps(shown, indent=2))
    return 0


def cmd_sp_remove(args: argparse.Namespace) -> int:
    with open_storage(load_config(args.conf)) as store:
        client_ops.remove_client(store, args.client_id, local_actor())
    print(f"removed {args.client_id} and revoked its tokens")
    return 0


def cmd_sp_revoke(args: argparse.Namespace) -> int:
    with open_storage(load_config(args.conf)) as store:
        count = client_ops.revoke_client_tokens(store, args.client_id, local_actor())
    print(f"revoked {count} tokens of {args.client_id}")
    return 0


def cmd_sp_initial_token(args: argparse.Namespace) -> int:
    from tokensmith.config.authenticators import (
        load_authenticators as load_admin_settings,  # the lifetime only
    )

    config = load_config(args.conf)
    lifetime = (
        args.lifetime
        or load_admin_settings(config.conf_dir / "authenticators.xml").initial_access_token_lifetime
    )
    with open_storage(config) as store:
        value, expires_at = issue_initial_access_token(store, lifetime, local_actor())
    print(json.dumps({"initial_access_token": value, "expires_at": expires_at}))
    return 0
