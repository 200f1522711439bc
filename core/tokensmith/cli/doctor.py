"""``tokensmith doctor``: one line per check, ✓ or ✗, and for each ✗ what to do.

Without client options it checks the installation: server.xml and identity.xml, the
keystore and its expiry, that each connector's port is free to listen on, every wheel in
dropins/ and the pins, and the storage.

With ``--client-id ID --cert FILE --key FILE`` it answers "why does my mutual-TLS token
request fail?": the key against the certificate, the certificate's validity, the client's
registration (its registered certificates, or its chain against the truststore and its
subject), the mutual_tls listener, the proxy header settings, then a real TLS connection
to the server (is its certificate trusted, does the handshake complete, did the server ask
for a client certificate and was one sent) and a real token request with its answer.
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import ssl
import stat
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tokensmith.config.settings import Config, load_identity, load_server, public_urls
from tokensmith.config.xml import ConfigError

__all__ = ["add_commands"]

OK, FAIL = "✓", "✗"
#: Seconds a check over the network waits.
DEADLINE = 10.0
#: A server certificate that expires within this many days gets a ✗ before it is too late.
EXPIRY_WARNING_DAYS = 14


class Report:
    def __init__(self) -> None:
        self.failed = 0

    def ok(self, what: str) -> None:
        print(f"{OK} {what}", flush=True)

    def fail(self, what: str, fix: str) -> None:
        self.failed += 1
        print(f"{FAIL} {what}\n    fix: {fix}", flush=True)


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``doctor`` to *commands*."""
    doctor = commands.add_parser(
        "doctor",
        parents=[common],
        help="check the installation, or why a mutual-TLS client's token request fails",
        description="Without options: check server.xml, identity.xml, the keystore, the"
        " connectors' ports, the wheels in dropins/ and the storage. With --client-id, --cert"
        " and --key: check a mutual-TLS client's certificate, key and registration, connect"
        " to the server as that client and request a token. Each line starts with ✓ or ✗;"
        " each ✗ says what to do. Exit status 1 if any check failed.",
    )
    doctor.add_argument("--client-id", metavar="ID", help="the client to check")
    doctor.add_argument("--cert", type=Path, metavar="FILE", help="the client's certificate (PEM)")
    doctor.add_argument("--key", type=Path, metavar="FILE", help="the client's private key (PEM)")
    doctor.add_argument(
        "--url",
        metavar="URL",
        help="the server, https://host:port (default: the first connector of server.xml)",
    )
    doctor.add_argument(
        "--ca",
        type=Path,
        metavar="FILE",
        help="the CA certificates the client trusts for the server (default: the server's"
        " own certificate from server.xml's keystore when it is self-signed, else the system's)",
    )
    doctor.set_defaults(handler=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    from tokensmith.cli.base import CLIError

    client_options = (args.client_id, args.cert, args.key)
    if any(client_options) and not all(client_options):
        raise CLIError("doctor: --client-id, --cert and --key go together")
    if args.url is not None:
        args.url = _checked_url(args.url)
    report = Report()
    config = _configuration(args.conf, report)
    if args.client_id:
        _client(args, config, report)
    elif config is not None:
        _installation(config, report)
    print(f"{'all checks passed' if not report.failed else f'{report.failed} check(s) failed'}")
    return 1 if report.failed else 0


#: The most doctor reads of a --cert or --key file: a PEM certificate chain or key is far less.
MAX_FILE_BYTES = 1024 * 1024


def _shown(text: str) -> str:
    """*text* (the user's, or a file's) for the terminal: control characters escaped."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _checked_url(url: str) -> str:
    """*url* as doctor uses it: https, a host and a valid port, and no user or password (one
    given is dropped, never printed back); a CLIError naming what is wrong otherwise."""
    from tokensmith.cli.base import CLIError

    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise CLIError(f"doctor: --url is not a valid URL: {_shown(str(exc))}") from None
    if parts.scheme != "https" or not host:
        raise CLIError("doctor: --url must be https://host:port")
    netloc = f"[{host}]" if ":" in host else host
    return f"https://{netloc}{f':{port}' if port is not None else ''}{_shown(parts.path)}"


def _read_file(path: Path) -> bytes:
    """The bytes of *path*, a regular file of at most ``MAX_FILE_BYTES``: a FIFO, a device or
    a directory is refused at once rather than read (``/dev/zero`` never ends)."""
    status = path.stat()
    if not stat.S_ISREG(status.st_mode):
        raise ValueError("not a regular file")
    with path.open("rb") as file:
        data = file.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
    return data


# -- the installation ------------------------------------------------------------------------


def _configuration(conf: Path, report: Report) -> Config | None:
    conf = conf.resolve()
    try:
        server = load_server(conf / "server.xml")
        report.ok(f"{conf / 'server.xml'}: valid, {len(server.connectors)} connector(s)")
    except ConfigError as exc:
        report.fail(str(exc), "correct server.xml at that line (tokensmith serve reads nothing else)")
        return None
    try:
        identity = load_identity(conf / "identity.xml")
        enabled = sum(1 for entry in identity.listeners if entry.enabled)
        report.ok(f"{conf / 'identity.xml'}: valid, {enabled} listener(s) enabled")
    except ConfigError as exc:
        report.fail(str(exc), "correct identity.xml at that line")
        return None
    return Config(conf, server, identity)


def _installation(config: Config, report: Report) -> None:
    _keystore(config, report)
    _ports(config, report)
    _dropins(config, report)
    _storage(config, report)


def _keystore(config: Config, report: Report) -> None:
    from tokensmith.security.keystore import load_keystore

    try:
        leaf = load_keystore(config.server.keystore).chain[0]
    except ConfigError as exc:
        report.fail(
            f"keystore: {exc}",
            "point <Keystore> at the server's certificate and key (`tokensmith keystore init` makes a"
            " development pair)",
        )
        return
    left = (leaf.not_valid_after_utc - datetime.now(UTC)).total_seconds() / 86400
    subject = leaf.subject.rfc4514_string()
    if left <= 0:
        report.fail(
            f"keystore: the server certificate {subject!r} expired on {leaf.not_valid_after_utc:%Y-%m-%d}",
            "renew the certificate and restart the server",
        )
    elif left < EXPIRY_WARNING_DAYS:
        report.fail(
            f"keystore: the server certificate {subject!r} expires in {left:.0f} day(s)",
            "renew it now and restart the server",
        )
    else:
        report.ok(f"keystore: {subject}, valid until {leaf.not_valid_after_utc:%Y-%m-%d}")


def _ports(config: Config, report: Report) -> None:
    for connector in config.server.connectors:
        family = socket.AF_INET6 if ":" in connector.address else socket.AF_INET
        where = f"{connector.address}:{connector.port}"
        if connector.port == 0:
            report.ok(f"connector {where}: any free port")
            continue
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((connector.address, connector.port))
        except OSError as exc:
            report.fail(
                f"connector {where}: cannot listen: {exc.strerror or exc}",
                "stop what listens there (a tokensmith already running?) or change port= in server.xml",
            )
        else:
            report.ok(f"connector {where}: free to listen on")


def _dropins(config: Config, report: Report) -> None:
    from tokensmith.app.factory import inspect_listeners, one_line

    wheels = sorted(config.server.dropins.glob("*.whl"))
    pins = config.identity.allowed_wheels
    if pins is not None:
        unpinned = [w.name for w in wheels if hashlib.sha256(w.read_bytes()).hexdigest() not in pins]
        if unpinned:
            report.fail(
                f"dropins: not pinned: {', '.join(unpinned)}",
                "remove the wheel, or add its line from `tokensmith plugins pin` to the <AllowedWheelsFile>",
            )
        else:
            report.ok(f"dropins: every wheel pinned ({len(wheels)})")
    try:
        listeners = inspect_listeners(config)
    except Exception as exc:  # noqa: BLE001 - whatever a wheel does, the doctor reports it
        report.fail(
            f"dropins: {one_line(exc)}",
            f"remove or rebuild the wheel named (`tokensmith plugins build`), in {config.server.dropins}",
        )
        return
    names = ", ".join(item.name for item in listeners if item.enabled) or "none"
    report.ok(f"dropins: {len(wheels)} wheel(s) load; listeners enabled: {names}")


def _storage(config: Config, report: Report) -> None:
    """The store server.xml names (SQLite, or PostgreSQL with its schema checked, not
    migrated), asked for a client within DEADLINE; never shows a password."""
    import threading

    from tokensmith.models import StorageError
    from tokensmith.storage import describe_store, open_store

    server = config.server
    postgres = server.database_url is not None
    # SQLite keeps its path as the name; PostgreSQL's URL has its password replaced.
    label = describe_store(server) if postgres else str(server.database)
    answer: list[BaseException | None] = []

    def probe() -> None:
        try:
            storage = open_store(server, migrate=False)
            try:
                storage.get_client("")
            finally:
                storage.close()
            answer.append(None)
        except (StorageError, OSError, Exception) as exc:  # noqa: BLE001 - reported
            answer.append(exc)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(DEADLINE)
    if not answer:
        report.fail(
            f"storage {label}: no answer within {DEADLINE:g} s",
            "find what holds the database locked"
            if not postgres
            else "check that the database is up and reachable from this host",
        )
    elif answer[0] is not None:
        report.fail(
            f"storage {label}: {type(answer[0]).__name__}: {answer[0]}",
            "check the <Database path=> (or TOKENSMITH_DB), its directory and permissions"
            if not postgres
            else "check the <Database url=> (or TOKENSMITH_DATABASE_URL), that the database is"
            " reachable, and `tokensmith db status`",
        )
    else:
        report.ok(f"storage {label}: answers")


# -- a mutual-TLS client ------------------------------------------------------------------


def _client(args: argparse.Namespace, config: Config | None, report: Report) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        pem = _read_file(args.cert)
        chain = x509.load_pem_x509_certificates(pem)
    except (OSError, ValueError) as exc:
        report.fail(f"certificate {args.cert}: unreadable: {exc}", "give --cert a PEM certificate file")
        return
    leaf = chain[0]
    try:
        key = serialization.load_pem_private_key(_read_file(args.key), password=None)
    except (OSError, ValueError, TypeError) as exc:
        report.fail(
            f"key {args.key}: unreadable: {exc}", "give --key the certificate's private key, PEM, unencrypted"
        )
        key = None
    key_ok = False
    if key is not None:
        if key.public_key() == leaf.public_key():
            key_ok = True
            report.ok(f"key {args.key} belongs to the certificate")
        else:
            report.fail(
                f"key {args.key} does not belong to the certificate {args.cert}",
                "use the key the certificate was made for (the pair the client presents)",
            )
    now = datetime.now(UTC)
    if leaf.not_valid_before_utc > now:
        report.fail(
            f"certificate: not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
            "check the clock of the machine that made it, or wait",
        )
    elif leaf.not_valid_after_utc < now:
        report.fail(
            f"certificate: expired on {leaf.not_valid_after_utc:%Y-%m-%d}",
            "make a new certificate and register it (`tokensmith sp update ID --add-cert FILE`)",
        )
    else:
        report.ok(f"certificate: valid until {leaf.not_valid_after_utc:%Y-%m-%d}")
    der = [cert.public_bytes(serialization.Encoding.DER) for cert in chain]
    if config is not None:
        _registration(args.client_id, der, config, report)
        _listener(config, report)
        _proxy(config, report)
    url = args.url or (_default_url(config) if config is not None else None)
    if url is None:
        report.fail("server: no URL", "give --url https://host:port, or --conf with a server.xml")
        return
    _connect(args, config, url, key_ok, report)


def _registration(client_id: str, der: list[bytes], config: Config, report: Report) -> None:
    from tokensmith.models import StorageError
    from tokensmith.security.truststore import Truststore
    from tokensmith.security.x509 import CertificateError, dn_matches, san_matches, verify_chain
    from tokensmith.storage import open_store

    shown = _shown(client_id)
    try:
        storage = open_store(config.server, migrate=False)
    except StorageError as exc:
        report.fail(f"client {shown}: the store cannot be read: {exc}", "see the storage check")
        return
    try:
        client = storage.get_client(client_id)
    finally:
        storage.close()
    if client is None:
        report.fail(f"client {shown}: not registered", "register it with `tokensmith sp add`")
        return
    method = client.token_endpoint_auth_method
    digest = hashlib.sha256(der[0]).hexdigest()
    if method == "self_signed_tls_client_auth":
        registered = {c.sha256 for c in client.certificates}
        if digest in registered:
            report.ok(f"client {shown}: certificate SHA-256 {digest} is registered")
        else:
            report.fail(
                f"client {shown}: certificate SHA-256 {digest} is not among its"
                f" {len(registered)} registered certificate(s)",
                f"`tokensmith sp update {shown} --add-cert CERT`, or present a registered certificate",
            )
    elif method == "tls_client_auth":
        from cryptography import x509

        try:
            verify_chain(der, Truststore(config.server.truststore).anchors(), datetime.now(UTC))
        except CertificateError as exc:
            report.fail(
                f"client {shown}: chain refused against the truststore: {exc}",
                "import the issuing CA with `tokensmith truststore import`, or send the intermediates in --cert",
            )
            return
        report.ok(f"client {shown}: chain verifies against the truststore")
        if client.tls_subject is None:
            report.fail(f"client {shown}: no registered subject", "register one with `tokensmith sp add`")
            return
        kind, value = client.tls_subject
        cert = x509.load_der_x509_certificate(der[0])
        if kind == "tls_client_auth_subject_dn":
            matched = dn_matches(value, cert, "exact") or dn_matches(value, cert, "rfc4518")
        else:
            matched = san_matches(kind.removeprefix("tls_client_auth_"), value, cert)
        if matched:
            report.ok(f"client {shown}: {kind.removeprefix('tls_client_auth_')} matches {value!r}")
        else:
            report.fail(
                f"client {shown}: the certificate does not match the registered {kind} {value!r}"
                f" (subject {cert.subject.rfc4514_string()!r})",
                "register the certificate's subject, or use a certificate issued for the registered one",
            )
    else:
        report.fail(
            f"client {shown}: registered for {method}, not mutual TLS",
            "register a client with --auth-method self_signed_tls_client_auth or tls_client_auth",
        )


def _listener(config: Config, report: Report) -> None:
    entry = next((e for e in config.identity.listeners if e.name == "mutual_tls"), None)
    if entry is None:
        report.fail(
            "listener mutual_tls: not in identity.xml",
            'add <EventListener type="ClientAuthenticator" name="mutual_tls" orderId="158" enable="true"/>',
        )
    elif not entry.enabled:
        report.fail(
            "listener mutual_tls: disabled in identity.xml",
            f'set enable="true" on line {entry.line} of identity.xml and reload (SIGHUP)',
        )
    else:
        report.ok("listener mutual_tls: enabled")


def _proxy(config: Config, report: Report) -> None:
    forwarded = config.identity.forwarded_certificates
    if forwarded is None:
        report.ok(
            "proxy: no <ClientCertificateHeader>: the certificate must reach the server in the handshake"
        )
    else:
        proxies = ", ".join(str(n) for n in forwarded.trusted_proxies)
        report.ok(
            f"proxy: certificates are also taken from the {forwarded.header} header ({forwarded.format}),"
            f" from {proxies} only"
        )


def _default_url(config: Config) -> str:
    return public_urls(config.server, config.identity).connectors[0]


def _connector_for(config: Config | None, port: int) -> Any:
    if config is None:
        return None
    return next((c for c in config.server.connectors if c.port == port), None)


def _connect(args: argparse.Namespace, config: Config | None, url: str, key_ok: bool, report: Report) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        report.fail(f"server {url}: not an https URL", "give --url https://host:port")
        return
    host, port = parts.hostname, parts.port or 443
    context = ssl.create_default_context()
    trust = args.ca
    if trust is None and config is not None and config.server.keystore.certificate_file is not None:
        trust = config.server.keystore.certificate_file
    if trust is not None:
        try:
            _read_file(Path(trust))  # a regular file of sensible size, or why not
            context = ssl.create_default_context(cafile=str(trust))
        except (OSError, ValueError, ssl.SSLError) as exc:
            report.fail(
                f"CA file {_shown(str(trust))}: unusable: {_shown(str(getattr(exc, 'strerror', None) or exc))}",
                "give --ca a PEM file of CA certificates",
            )
            return
    if key_ok:
        context.load_cert_chain(str(args.cert), str(args.key))
    asked: list[bool] = []

    def seen(conn: Any, direction: str, version: Any, content_type: Any, msg_type: Any, data: Any) -> None:
        if direction == "read" and msg_type == ssl._TLSMessageType.CERTIFICATE_REQUEST:  # type: ignore[attr-defined]
            asked.append(True)

    context._msg_callback = seen  # type: ignore[attr-defined]  # debug hook: the CertificateRequest
    try:
        with socket.create_connection((host, port), timeout=DEADLINE) as raw:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                version = tls.version()
                tls.settimeout(DEADLINE)
                # TLS 1.3 sends the CertificateRequest with the server's first flight; reading
                # once settles the handshake, and a server that refuses the client says so here.
                tls.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                tls.recv(1)
    except ssl.SSLCertVerificationError as exc:
        report.fail(
            f"server {url}: its certificate is not trusted: {exc.verify_message}",
            "give --ca the CA certificate that issued the server's certificate (for the development"
            " keystore: conf/security/server.crt)",
        )
        return
    except ssl.SSLError as exc:
        report.fail(f"server {url}: TLS handshake failed: {exc.reason or exc}", _handshake_fix(config, port))
        return
    except OSError as exc:
        report.fail(
            f"server {url}: cannot connect: {exc.strerror or exc}",
            "start the server (`tokensmith serve`) or correct --url",
        )
        return
    trusted_by = args.ca or (trust if trust is not None else "the system's CA certificates")
    report.ok(f"server {url}: its certificate is trusted (by {trusted_by})")
    report.ok(f"server {url}: handshake completed ({version})")
    if asked and key_ok:
        report.ok(f"server asked for a client certificate, and the client sent {args.cert}")
    elif asked:
        report.fail(
            "server asked for a client certificate, but none was sent: the key does not fit it",
            "give --key the certificate's own key (see above)",
        )
    else:
        connector = _connector_for(config, port)
        why = f' (its connector says clientAuth="{connector.client_auth}")' if connector is not None else ""
        report.fail(
            f"server did not ask for a client certificate{why}, so none was sent",
            'set clientAuth="want" or "need" on the connector, or behind a TLS-terminating proxy configure'
            " <ClientCertificateHeader> in identity.xml",
        )
    _token(args, url, context, report)


def _handshake_fix(config: Config | None, port: int) -> str:
    connector = _connector_for(config, port)
    if connector is not None and connector.client_auth == "need":
        return 'the connector requires a client certificate (clientAuth="need"): check --cert and --key'
    return "check that the URL is tokensmith's TLS port, and the server's log for the handshake"


def _token(args: argparse.Namespace, url: str, context: ssl.SSLContext, report: Report) -> None:
    import http.client
    import json

    parts = urllib.parse.urlsplit(url)
    body = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": args.client_id})
    connection = http.client.HTTPSConnection(
        parts.hostname or "", parts.port or 443, context=context, timeout=DEADLINE
    )
    try:
        connection.request(
            "POST", "/oauth2/token", body, {"Content-Type": "application/x-www-form-urlencoded"}
        )
        response = connection.getresponse()
        status, request_id, text = response.status, response.getheader("x-request-id", "?"), response.read()
    except (OSError, http.client.HTTPException) as exc:
        report.fail(f"token request: {type(exc).__name__}: {exc}", "see the server's log")
        return
    finally:
        connection.close()
    try:
        answer = json.loads(text)
    except ValueError:
        answer = {"error": text[:100].decode("latin-1")}
    if status == 200:
        report.ok(
            f"token request: 200, a {answer.get('token_type', '?')} token issued, expires in"
            f" {answer.get('expires_in', '?')} s (not shown)"
        )
        return
    report.fail(
        f"token request: {status} {answer.get('error', '?')} (request id {request_id})",
        f"the server's log says why on the line with request_id={request_id} (tokensmith.refusals)",
    )
