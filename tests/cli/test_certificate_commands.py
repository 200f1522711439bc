"""Registering mutual-TLS clients and trust anchors from the command line, as a user does.

Certificates are generated here with ``cryptography`` and written to real files; every command
runs as a real ``tokensmith`` subprocess against a real deployment.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from conftest import TOKENSMITH
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tokensmith.cli import clients as cli_clients

NEW_SUBCOMMANDS = [
    ["sp", "update"],
    ["truststore"],
    ["truststore", "import"],
    ["truststore", "list"],
    ["truststore", "remove"],
]
CC = ("--grant-type", "client_credentials")
NOW = datetime.datetime.now(datetime.UTC)  # registration judges validity by the clock


def make_cert(common_name: str, *, ca: bool = False, days: int = 30) -> x509.Certificate:
    """A self-signed ECDSA P-256 certificate: a client certificate, or a CA with *ca*."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(key, hashes.SHA256())


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def openssl_fingerprint(cert: x509.Certificate) -> str:
    """The fingerprint as ``openssl x509 -noout -fingerprint -sha256`` prints it."""
    digest = sha256(cert).upper()
    return "sha256 Fingerprint=" + ":".join(digest[i : i + 2] for i in range(0, 64, 2))


def write(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


def run(deployment, *args: str) -> subprocess.CompletedProcess[str]:  # noqa: ANN001
    return deployment.cli(*args, check=False)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a refused command (asserting there is exactly one)."""
    assert result.returncode != 0, result.stdout
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("tokensmith") and "Traceback" not in result.stderr
    return result.stderr.strip()


def listed(deployment) -> list[dict]:  # noqa: ANN001
    return json.loads(deployment.cli("sp", "list", "--json").stdout)


def self_signed_client(deployment, *cert_files: Path) -> dict:  # noqa: ANN001
    args = [arg for path in cert_files for arg in ("--cert", str(path))]
    return deployment.add_client("app", *CC, "--auth-method", "self_signed_tls_client_auth", *args)


@pytest.mark.parametrize("words", NEW_SUBCOMMANDS, ids=" ".join)
def test_every_new_command_has_help(words) -> None:  # noqa: ANN001
    """Every new command answers --help with its usage text and exit 0."""
    result = subprocess.run([TOKENSMITH, *words, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: tokensmith {' '.join(words)}")


@pytest.mark.parametrize(
    "args",
    [
        ["sp", "update"],
        ["truststore"],
        ["truststore", "import", "--alias", "ca"],
        ["truststore", "import", "--file", "ca.pem"],
        ["truststore", "remove"],
        ["truststore", "list", "--verbose"],
    ],
    ids=[
        "update-without-client",
        "truststore-without-action",
        "import-without-file",
        "import-without-alias",
        "remove-without-alias",
        "list-unknown-option",
    ],
)
def test_usage_mistakes_in_new_commands_are_one_line(deployment, args) -> None:  # noqa: ANN001
    """A usage mistake in a new command is one line pointing at --help, exit status 2."""
    result = run(deployment, *args)
    assert result.returncode == 2
    assert one_line_error(result).endswith("--help)")


def test_self_signed_client_registers_its_certificate(deployment, tmp_path) -> None:  # noqa: ANN001
    """--cert stores the certificate's SHA-256, subject and validity, and no secret is issued."""
    cert = make_cert("client-one")
    added = self_signed_client(deployment, write(tmp_path, "client.pem", pem(cert)))
    assert "client_secret" not in added
    assert added["certificates"] == [
        {
            "sha256": sha256(cert),
            "subject": "O=Example,CN=client-one",
            "not_before": int(cert.not_valid_before_utc.timestamp()),
            "not_after": int(cert.not_valid_after_utc.timestamp()),
        }
    ]
    assert listed(deployment)[0]["certificates"] == added["certificates"]


def test_two_cert_options_register_both(deployment, tmp_path) -> None:  # noqa: ANN001
    """--cert given twice registers both certificates, and sp list --json shows both hashes."""
    first, second = make_cert("current"), make_cert("next")
    self_signed_client(
        deployment, write(tmp_path, "a.pem", pem(first)), write(tmp_path, "b.pem", pem(second))
    )
    assert [c["sha256"] for c in listed(deployment)[0]["certificates"]] == [sha256(first), sha256(second)]


def test_pem_bundle_registers_every_certificate(deployment, tmp_path) -> None:  # noqa: ANN001
    """A PEM file with two certificates registers each of them, in file order."""
    first, second = make_cert("current"), make_cert("next")
    self_signed_client(deployment, write(tmp_path, "both.pem", pem(first, second)))
    assert [c["sha256"] for c in listed(deployment)[0]["certificates"]] == [sha256(first), sha256(second)]


def test_der_certificate_is_accepted(deployment, tmp_path) -> None:  # noqa: ANN001
    """A DER certificate, as keytool -export writes it, registers like PEM."""
    cert = make_cert("der")
    self_signed_client(
        deployment, write(tmp_path, "client.der", cert.public_bytes(serialization.Encoding.DER))
    )
    assert listed(deployment)[0]["certificates"][0]["sha256"] == sha256(cert)


def test_expired_certificate_registers_with_a_warning(deployment, tmp_path) -> None:  # noqa: ANN001
    """An expired certificate is registered, with a warning on stderr that says so."""
    cert = make_cert("old", days=-1)
    path = write(tmp_path, "old.pem", pem(cert))
    result = deployment.cli(
        "sp", "add", "old", *CC, "--auth-method", "self_signed_tls_client_auth", "--cert", str(path)
    )
    assert result.stderr.startswith("tokensmith: warning: certificate ") and "expired on" in result.stderr
    assert json.loads(result.stdout)["certificates"][0]["sha256"] == sha256(cert)


@pytest.mark.parametrize(
    ("option", "value", "kind", "stored"),
    [
        (
            "--subject-dn",
            "CN=client, O=Example, C=SE",
            "tls_client_auth_subject_dn",
            "CN=client, O=Example, C=SE",
        ),
        ("--san-dns", "client.example.com", "tls_client_auth_san_dns", "client.example.com"),
        (
            "--san-uri",
            "spiffe://example.com/client",
            "tls_client_auth_san_uri",
            "spiffe://example.com/client",
        ),
        ("--san-ip", "2001:db8:0:0::1", "tls_client_auth_san_ip", "2001:db8::1"),
        ("--san-email", "ops@example.com", "tls_client_auth_san_email", "ops@example.com"),
    ],
    ids=["subject-dn", "san-dns", "san-uri", "san-ip", "san-email"],
)
def test_pki_client_registers_one_subject(deployment, option, value, kind, stored) -> None:  # noqa: ANN001
    """tls_client_auth stores its one subject attribute under its RFC 8705 §2.1.2 name."""
    added = deployment.add_client("pki", *CC, "--auth-method", "tls_client_auth", option, value)
    assert "client_secret" not in added and "certificates" not in added
    assert added[kind] == stored
    assert listed(deployment)[0][kind] == stored


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--auth-method", "self_signed_tls_client_auth"],
            "self_signed_tls_client_auth needs the client's certificate: --cert FILE",
        ),
        (
            ["--auth-method", "tls_client_auth"],
            "tls_client_auth needs the subject its certificate must carry",
        ),
        (
            ["--auth-method", "self_signed_tls_client_auth", "--cert", "{cert}", "--san-dns", "a.example"],
            "--san-dns is for tls_client_auth clients, not self_signed_tls_client_auth",
        ),
        (
            ["--auth-method", "client_secret_post", "--subject-dn", "CN=a"],
            "--subject-dn is for tls_client_auth clients, not client_secret_post",
        ),
        (
            ["--auth-method", "tls_client_auth", "--subject-dn", "CN=a", "--san-dns", "a.example"],
            "argument --san-dns: not allowed with argument --subject-dn",
        ),
        (
            ["--auth-method", "self_signed_tls_client_auth", "--cert", "{cert}", "--bind-tokens"],
            "--bind-tokens does not apply to a self_signed_tls_client_auth client",
        ),
        (
            ["--auth-method", "tls_client_auth", "--san-ip", "10.0.0.1", "--bind-tokens"],
            "--bind-tokens does not apply to a tls_client_auth client",
        ),
        (
            ["--auth-method", "tls_client_auth", "--subject-dn", "/C=SE/CN=client"],
            "looks like OpenSSL's '/C=../CN=..' form",
        ),
        (
            ["--auth-method", "tls_client_auth", "--subject-dn", "CN"],
            "--subject-dn 'CN': bad distinguished name",
        ),
        (["--auth-method", "tls_client_auth", "--subject-dn", " "], "--subject-dn is empty"),
        (
            ["--auth-method", "tls_client_auth", "--san-ip", "300.1.2.3"],
            "--san-ip '300.1.2.3' is not an IPv4 or IPv6 address",
        ),
        (["--auth-method", "tls_client_auth", "--san-ip", "fe80::1%eth0"], "is not an IPv4 or IPv6 address"),
        (
            ["--auth-method", "tls_client_auth", "--san-dns", "bad name.example"],
            "--san-dns 'bad name.example' is not a DNS name",
        ),
        (["--auth-method", "tls_client_auth", "--san-uri", "example.com/client"], "is not an absolute URI"),
        (
            ["--auth-method", "tls_client_auth", "--san-email", "ops"],
            "--san-email 'ops' is not an email address",
        ),
        (["--auth-method", "self_signed_tls_client_auth", "--cert", "{text}"], "text.pem: not a certificate"),
        (
            ["--auth-method", "self_signed_tls_client_auth", "--cert", "{key}"],
            "client.key: contains a private key, not a certificate: never share it",
        ),
        (["--auth-method", "self_signed_tls_client_auth", "--cert", "{missing}"], "missing.pem: cannot read"),
        (
            ["--auth-method", "self_signed_tls_client_auth", "--cert", "{cert}", "--cert", "{cert}"],
            "is given twice",
        ),
    ],
    ids=[
        "self-signed-without-cert",
        "pki-without-subject",
        "subject-with-self-signed",
        "subject-with-secret",
        "two-subjects",
        "bind-self-signed",
        "bind-pki",
        "openssl-dn",
        "bad-dn",
        "empty-dn",
        "bad-ip",
        "ip-zone",
        "bad-dns",
        "bad-uri",
        "bad-email",
        "not-a-certificate",
        "private-key",
        "missing-file",
        "same-cert-twice",
    ],
)
def test_registration_mistakes_are_one_line(deployment, tmp_path, args, expected) -> None:  # noqa: ANN001
    """Each registration mistake is one line on stderr, a non-zero exit, and registers nothing."""
    key = ec.generate_private_key(ec.SECP256R1())
    files = {
        "cert": write(tmp_path, "client.pem", pem(make_cert("client"))),
        "text": write(tmp_path, "text.pem", b"Application Certificate: see the portal\n"),
        "key": write(
            tmp_path,
            "client.key",
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        ),
        "missing": tmp_path / "missing.pem",
    }
    filled = [arg.format(**{name: str(path) for name, path in files.items()}) for arg in args]
    line = one_line_error(run(deployment, "sp", "add", "demo", *CC, *filled))
    assert expected in line, line
    assert listed(deployment) == []


def test_bind_tokens_for_a_secret_client(deployment) -> None:  # noqa: ANN001
    """--bind-tokens marks a client_secret_basic client for certificate-bound tokens."""
    added = deployment.add_client("bound", *CC, "--auth-method", "client_secret_basic", "--bind-tokens")
    assert added["bind_tokens"] is True and "client_secret" in added
    plain = deployment.add_client("plain", *CC, "--auth-method", "client_secret_post")
    assert [c["bind_tokens"] for c in listed(deployment)] == [True, False]
    assert plain["bind_tokens"] is False


def test_update_adds_and_removes_certificates(deployment, tmp_path) -> None:  # noqa: ANN001
    """sp update --add-cert adds a certificate; --remove-cert in openssl's colon form removes one."""
    old, new = make_cert("old"), make_cert("new")
    client_id = str(self_signed_client(deployment, write(tmp_path, "old.pem", pem(old)))["client_id"])
    added = json.loads(
        deployment.cli(
            "sp", "update", client_id, "--add-cert", str(write(tmp_path, "new.pem", pem(new)))
        ).stdout
    )
    assert [c["sha256"] for c in added["certificates"]] == [sha256(old), sha256(new)]
    removed = json.loads(
        deployment.cli("sp", "update", client_id, "--remove-cert", openssl_fingerprint(old)).stdout
    )
    assert [c["sha256"] for c in removed["certificates"]] == [sha256(new)]
    assert [c["sha256"] for c in listed(deployment)[0]["certificates"]] == [sha256(new)]


@pytest.mark.parametrize(
    "form",
    [
        lambda c: sha256(c),
        lambda c: sha256(c).upper(),
        lambda c: openssl_fingerprint(c).split("=")[1],
        lambda c: openssl_fingerprint(c).split("=")[1].lower(),
    ],
    ids=["hex", "HEX", "COLONS", "colons"],
)
def test_update_rotates_in_one_command(deployment, tmp_path, form) -> None:  # noqa: ANN001
    """Adding the new certificate and removing the only old one in one command is allowed."""
    old, new = make_cert("old"), make_cert("new")
    client_id = str(self_signed_client(deployment, write(tmp_path, "old.pem", pem(old)))["client_id"])
    updated = json.loads(
        deployment.cli(
            "sp",
            "update",
            client_id,
            "--remove-cert",
            form(old),
            "--add-cert",
            str(write(tmp_path, "new.pem", pem(new))),
        ).stdout
    )
    assert [c["sha256"] for c in updated["certificates"]] == [sha256(new)]


def test_removing_the_last_certificate_is_refused(deployment, tmp_path) -> None:  # noqa: ANN001
    """Removing a self-signed client's last certificate is refused and changes nothing."""
    cert = make_cert("only")
    client_id = str(self_signed_client(deployment, write(tmp_path, "only.pem", pem(cert)))["client_id"])
    line = one_line_error(run(deployment, "sp", "update", client_id, "--remove-cert", sha256(cert)))
    assert f"refusing to remove the last certificate of client {client_id}" in line
    assert [c["sha256"] for c in listed(deployment)[0]["certificates"]] == [sha256(cert)]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--remove-cert", "ab" * 32], "has no certificate with sha256 " + "ab" * 32),
        (["--remove-cert", "AB:CD"], "'AB:CD' is not a SHA-256 fingerprint"),
        (["--add-cert", "{registered}"], "is already registered for client"),
        (["--add-cert", "{key}"], "contains a private key, not a certificate"),
        ([], "nothing to change: give --add-cert FILE, --remove-cert SHA256, --metadata FILE.json"),
    ],
    ids=["unknown-hash", "not-a-hash", "already-registered", "private-key", "nothing"],
)
def test_update_mistakes_are_one_line(deployment, tmp_path, args, expected) -> None:  # noqa: ANN001
    """Each sp update mistake is one line, a non-zero exit, and leaves the certificates alone."""
    cert = make_cert("client")
    registered = write(tmp_path, "client.pem", pem(cert))
    key = write(
        tmp_path,
        "client.key",
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    client_id = str(self_signed_client(deployment, registered)["client_id"])
    filled = [a.format(registered=registered, key=key) for a in args]
    assert expected in one_line_error(run(deployment, "sp", "update", client_id, *filled))
    assert [c["sha256"] for c in listed(deployment)[0]["certificates"]] == [sha256(cert)]


def test_a_certificate_is_registered_for_a_client_of_any_method(deployment, tmp_path) -> None:  # noqa: ANN001
    """--cert and --add-cert register certificates for a secret-based client too (RFC 8705
    §2.2: a JWK with x5c in its jwks); sp show prints them in its metadata document."""
    first, second = make_cert("client"), make_cert("next")
    secret_client = deployment.add_client(
        "s", *CC, "--auth-method", "client_secret_basic", "--cert", str(write(tmp_path, "a.pem", pem(first)))
    )
    client_id = str(secret_client["client_id"])
    deployment.cli("sp", "update", client_id, "--add-cert", str(write(tmp_path, "b.pem", pem(second))))
    assert [c["sha256"] for c in listed(deployment)[0]["certificates"]] == [sha256(first), sha256(second)]
    shown = json.loads(deployment.cli("sp", "show", client_id).stdout)["client_metadata"]
    assert shown["token_endpoint_auth_method"] == "client_secret_basic"
    x5c = [key["x5c"][0] for key in shown["jwks"]["keys"]]
    assert x5c == [
        base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in (first, second)
    ]
    # Removing the last one is fine for a client that does not authenticate with it.
    deployment.cli("sp", "update", client_id, "--remove-cert", sha256(first), "--remove-cert", sha256(second))
    assert "certificates" not in listed(deployment)[0]


def test_update_refuses_an_unknown_client(deployment, tmp_path) -> None:  # noqa: ANN001
    path = write(tmp_path, "client.pem", pem(make_cert("client")))
    line = one_line_error(run(deployment, "sp", "update", "nobody", "--add-cert", str(path)))
    assert "no service provider with client_id 'nobody'" in line


def test_truststore_import_list_remove(deployment, tmp_path) -> None:  # noqa: ANN001
    """A CA imported under an alias is listed with its subject and SHA-256, and can be removed."""
    ca = make_cert("Example Client CA", ca=True)
    result = deployment.cli(
        "truststore", "import", "--alias", "partner-ca", "--file", str(write(tmp_path, "ca.pem", pem(ca)))
    )
    assert result.stdout.strip() == (
        f"imported partner-ca sha256={sha256(ca)} subject=O=Example,CN=Example Client CA"
    )
    assert (deployment.conf / "security" / "truststore" / "partner-ca.pem").read_bytes() == pem(ca)
    assert json.loads(deployment.cli("truststore", "list", "--json").stdout) == [
        {
            "alias": "partner-ca",
            "subject": "O=Example,CN=Example Client CA",
            "sha256": sha256(ca),
            "not_after": int(ca.not_valid_after_utc.timestamp()),
        }
    ]
    assert deployment.cli("truststore", "list").stdout.split()[:2] == ["partner-ca", sha256(ca)]
    assert deployment.cli("truststore", "remove", "partner-ca").stdout.strip() == "removed partner-ca"
    assert json.loads(deployment.cli("truststore", "list", "--json").stdout) == []
    line = one_line_error(run(deployment, "truststore", "remove", "partner-ca"))
    assert "no trusted certificate with alias 'partner-ca'" in line


def test_truststore_follows_server_xml(deployment, tmp_path) -> None:  # noqa: ANN001
    """truststore import writes where server.xml's <Truststore path> points."""
    server_xml = deployment.conf / "server.xml"
    server_xml.write_text(
        server_xml.read_text().replace("<Database", '<Truststore path="anchors"/>\n    <Database')
    )
    ca = make_cert("CA", ca=True)
    deployment.cli("truststore", "import", "--alias", "ca", "--file", str(write(tmp_path, "ca.pem", pem(ca))))
    assert (deployment.conf / "anchors" / "ca.pem").exists()
    assert not (deployment.conf / "security" / "truststore").exists()


@pytest.mark.parametrize(
    ("alias", "content", "expected"),
    [
        ("ca", b"hello\n", "not.pem: not a certificate"),
        ("ca", b"KEY", "not.pem: contains a private key, not a certificate"),
        ("ca", b"CLIENT", "not a CA certificate (basicConstraints cA is not set)"),
        ("ca", b"TWO", "not.pem: holds 2 certificates; import one per alias"),
        ("../evil", b"CA", "alias '../evil' must be 1-64 of"),
        ("taken", b"CA", "alias 'taken' already exists"),
    ],
    ids=["text", "private-key", "not-a-ca", "two-certificates", "bad-alias", "alias-taken"],
)
def test_truststore_import_mistakes_are_one_line(deployment, tmp_path, alias, content, expected) -> None:  # noqa: ANN001
    """A file that is no usable anchor, or a bad or taken alias, is one line and imports nothing."""
    key = ec.generate_private_key(ec.SECP256R1())
    data = {
        b"KEY": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        b"CLIENT": pem(make_cert("client")),
        b"TWO": pem(make_cert("a", ca=True), make_cert("b", ca=True)),
        b"CA": pem(make_cert("another CA", ca=True)),
    }.get(content, content)
    deployment.cli(
        "truststore",
        "import",
        "--alias",
        "taken",
        "--file",
        str(write(tmp_path, "taken.pem", pem(make_cert("taken CA", ca=True)))),
    )
    line = one_line_error(
        run(
            deployment,
            "truststore",
            "import",
            "--alias",
            alias,
            "--file",
            str(write(tmp_path, "not.pem", data)),
        )
    )
    assert expected in line, line
    assert [a["alias"] for a in json.loads(deployment.cli("truststore", "list", "--json").stdout)] == [
        "taken"
    ]


def test_truststore_import_can_trust_a_self_signed_client_directly(deployment, tmp_path) -> None:  # noqa: ANN001
    """--allow-non-ca imports a self-signed client certificate as its own anchor."""
    client = make_cert("client")
    deployment.cli(
        "truststore",
        "import",
        "--alias",
        "client",
        "--allow-non-ca",
        "--file",
        str(write(tmp_path, "client.pem", pem(client))),
    )
    assert [a["sha256"] for a in json.loads(deployment.cli("truststore", "list", "--json").stdout)] == [
        sha256(client)
    ]


def test_client_ids_never_start_with_a_dash(monkeypatch) -> None:  # noqa: ANN001
    """A generated client_id starting with '-' is drawn again, so that sp update can name it."""
    drawn = iter(["-looks-like-an-option", "_fine-id"])
    monkeypatch.setattr(cli_clients.secrets, "token_urlsafe", lambda size: next(drawn))
    assert cli_clients.new_client_id() == "_fine-id"
