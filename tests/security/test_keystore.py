"""The server keystore: PEM (RSA, ECDSA, encrypted key) or PKCS#12, served for real and exported.

Each keystore is generated here with ``cryptography``; the server is started as a user starts
it and asked over HTTPS, verifying against the certificate ``keystore export`` wrote.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import TOKENSMITH
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tokensmith.config.settings import Connector, load_config
from tokensmith.config.xml import ConfigError
from tokensmith.http import tls as tlsconf
from tokensmith.security.keystore import load_keystore

PASSWORD = "s3cret-Ünïcode"
Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class ServerPair:
    """A server certificate for localhost/127.0.0.1 and its key."""

    cert: x509.Certificate
    key: Key

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self, password: str | None = None) -> bytes:
        encryption = (
            serialization.BestAvailableEncryption(password.encode())
            if password
            else serialization.NoEncryption()
        )
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    def pkcs12(self, password: str | None, extra: tuple[x509.Certificate, ...] = ()) -> bytes:
        encryption = (
            serialization.BestAvailableEncryption(password.encode())
            if password
            else serialization.NoEncryption()
        )
        return pkcs12.serialize_key_and_certificates(
            b"server", self.key, self.cert, list(extra) or None, encryption
        )


def server_pair(kind: str, common_name: str = "localhost") -> ServerPair:
    """A self-signed server certificate with an RSA-2048 or ECDSA P-256 key."""
    key: Key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return ServerPair(cert, key)


def use_keystore(deployment, element: str) -> None:  # noqa: ANN001
    """Replace the deployment's <Keystore> element in server.xml with *element*."""
    path = deployment.conf / "server.xml"
    lines = path.read_text().splitlines(keepends=True)
    index = next(n for n, line in enumerate(lines) if "<Keystore" in line)
    lines[index] = f"    {element}\n"
    path.write_text("".join(lines))


def install(deployment, kind: str, form: str) -> ServerPair:  # noqa: ANN001
    """Write a *kind* ("rsa"/"ec") keystore in *form* and point server.xml at it."""
    pair = server_pair(kind)
    security = deployment.conf / "security"
    if form == "pem":
        (security / "own.crt").write_bytes(pair.pem)
        (security / "own.key").write_bytes(pair.key_pem())
        use_keystore(deployment, '<Keystore certificateFile="security/own.crt" keyFile="security/own.key"/>')
    elif form == "encrypted-pem":
        (security / "own.crt").write_bytes(pair.pem)
        (security / "own.key").write_bytes(pair.key_pem(PASSWORD))
        use_keystore(
            deployment,
            f'<Keystore certificateFile="security/own.crt"'
            f' keyFile="security/own.key" password="{PASSWORD}"/>',
        )
    else:
        (security / "server.p12").write_bytes(pair.pkcs12(PASSWORD))
        use_keystore(
            deployment, f'<Keystore type="PKCS12" file="security/server.p12" password="{PASSWORD}"/>'
        )
    return pair


def one_line_failure(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command (asserting there is exactly one)."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("tokensmith: error: ") and "Traceback" not in result.stderr
    return result.stderr.strip()


@pytest.mark.parametrize(
    ("kind", "form"),
    [
        ("rsa", "pem"),
        ("ec", "pem"),
        ("ec", "encrypted-pem"),
        ("rsa", "pkcs12"),
        ("ec", "pkcs12"),
    ],
    ids=["rsa-pem", "ec-pem", "encrypted-pem-key", "rsa-pkcs12", "ec-pkcs12"],
)
def test_server_serves_tls_with_keystore(deployment, serve, tmp_path, kind, form) -> None:  # noqa: ANN001
    """The server serves HTTPS with this keystore, verifiable against the exported certificate."""
    pair = install(deployment, kind, form)
    exported = tmp_path / "exported.crt"
    result = deployment.cli("keystore", "export", "--out", str(exported))
    assert exported.read_bytes() == pair.pem
    assert pair.cert.subject.rfc4514_string() in result.stdout
    server = serve(deployment)
    context = ssl.create_default_context(cafile=str(exported))
    with httpx.Client(base_url=server.url, verify=context, timeout=10) as http:
        response = http.post("/oauth2/token", data={"grant_type": "client_credentials"})
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_a_different_certificate_does_not_verify(deployment, serve, tmp_path) -> None:  # noqa: ANN001
    """A client trusting another certificate refuses the server: the check above can fail."""
    install(deployment, "ec", "pkcs12")
    stranger = tmp_path / "stranger.crt"
    stranger.write_bytes(server_pair("ec").pem)
    server = serve(deployment)
    context = ssl.create_default_context(cafile=str(stranger))
    with httpx.Client(base_url=server.url, verify=context, timeout=10) as http:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            http.post("/oauth2/token", data={"grant_type": "client_credentials"})


def test_pkcs12_extra_certificates_follow_the_leaf(deployment) -> None:  # noqa: ANN001
    """Extra certificates in a PKCS#12 file are loaded after the leaf, which stays first."""
    pair, ca = server_pair("ec"), server_pair("ec", "Example CA")
    (deployment.conf / "security" / "server.p12").write_bytes(pair.pkcs12(PASSWORD, (ca.cert,)))
    use_keystore(deployment, f'<Keystore type="PKCS12" file="security/server.p12" password="{PASSWORD}"/>')
    loaded = load_keystore(load_config(deployment.conf).server.keystore)
    assert [c.subject for c in loaded.chain] == [pair.cert.subject, ca.cert.subject]


def test_wrong_pkcs12_password_is_a_one_line_startup_error(deployment) -> None:  # noqa: ANN001
    """serve with a wrong PKCS#12 password exits 1 with one line naming server.xml and the file."""
    install(deployment, "rsa", "pkcs12")
    use_keystore(deployment, '<Keystore type="PKCS12" file="security/server.p12" password="wrong"/>')
    result = subprocess.run(
        [TOKENSMITH, "serve", "--conf", str(deployment.conf)], capture_output=True, text=True, timeout=60
    )
    line = one_line_failure(result)
    assert f"{deployment.conf / 'server.xml'}:3:" in line
    assert str(deployment.conf / "security" / "server.p12") in line and "wrong password" in line
    assert "tokensmith serving" not in result.stdout


@pytest.mark.parametrize(
    ("element", "expected", "export_fails"),
    [
        (
            '<Keystore type="PKCS12" file="security/server.p12"/>',
            "is password-protected: set password=",
            True,
        ),
        ('<Keystore type="PKCS12" file="security/server.crt" password="x"/>', "is PEM, not PKCS#12", True),
        ('<Keystore type="PKCS12" file="security/garbage.p12" password="x"/>', "not a PKCS#12 file", True),
        ('<Keystore type="PKCS12" file="security/missing.p12" password="x"/>', "missing.p12 not found", True),
        (
            '<Keystore certificateFile="security/own.crt" keyFile="security/own.key"/>',
            "own.key is encrypted: set password= on <Keystore>",
            False,
        ),
        (
            '<Keystore certificateFile="security/own.crt" keyFile="security/own.key" password="nope"/>',
            "own.key: wrong password",
            False,
        ),
        (
            '<Keystore certificateFile="security/own.crt" keyFile="security/server.key"'
            f' password="{PASSWORD}"/>',
            "server.key does not belong to the certificate 'CN=localhost'",
            False,
        ),
        (
            '<Keystore certificateFile="security/own.key" keyFile="security/own.key"/>',
            "own.key holds no PEM certificate",
            True,
        ),
    ],
    ids=[
        "p12-no-password",
        "p12-is-pem",
        "p12-garbage",
        "p12-missing",
        "pem-no-password",
        "pem-wrong-password",
        "key-mismatch",
        "key-as-certificate",
    ],
)
def test_unusable_keystore_is_one_line_naming_the_file(deployment, element, expected, export_fails) -> None:  # noqa: ANN001
    """An unusable keystore stops serve (and keystore export, which needs no PEM key) with one line naming it."""
    install(deployment, "ec", "encrypted-pem")
    pair = server_pair("ec")
    (deployment.conf / "security" / "server.p12").write_bytes(pair.pkcs12(PASSWORD))
    (deployment.conf / "security" / "garbage.p12").write_bytes(b"\x30\x82" + os.urandom(300))
    use_keystore(deployment, element)
    commands = [["serve"], ["keystore", "export", "--out", str(deployment.root / "x.crt")]]
    for command in commands[: 2 if export_fails else 1]:
        result = subprocess.run(
            [TOKENSMITH, *command, "--conf", str(deployment.conf)], capture_output=True, text=True, timeout=60
        )
        line = one_line_failure(result)
        assert "server.xml:3: " in line and expected in line, line
    if not export_fails:
        deployment.cli(*commands[1])


@pytest.mark.parametrize(
    ("element", "expected"),
    [
        (
            '<Keystore type="PKCS12" file="a.p12" certificateFile="a.crt"/>',
            '<Keystore type="PKCS12"> takes file=, not certificateFile=',
        ),
        ('<Keystore type="PKCS12" keyFile="a.key"/>', '<Keystore type="PKCS12"> takes file=, not keyFile='),
        ('<Keystore type="PKCS12" password="x"/>', '<Keystore type="PKCS12"> needs file='),
        ('<Keystore file="a.p12" password="x"/>', 'add type="PKCS12"'),
        ('<Keystore certificateFile="a.crt"/>', "<Keystore> needs keyFile="),
        (
            '<Keystore type="JKS" file="a.jks"/>',
            "attribute 'type': The value 'JKS' is not an element of the set {'PEM', 'PKCS12'}",
        ),
    ],
    ids=[
        "p12-with-certificateFile",
        "p12-with-keyFile",
        "p12-without-file",
        "file-without-type",
        "pem-without-key",
        "unknown-type",
    ],
)
def test_wrong_keystore_attributes_are_refused_with_the_line(deployment, element, expected) -> None:  # noqa: ANN001
    """A <Keystore> mixing the PEM and PKCS#12 forms is refused, naming server.xml and the line."""
    use_keystore(deployment, element)
    with pytest.raises(ConfigError) as error:
        load_config(deployment.conf)
    assert str(error.value).startswith(f"{deployment.conf / 'server.xml'}:3: ")
    assert expected in str(error.value)


def test_both_keystore_forms_validate(deployment) -> None:  # noqa: ANN001
    """The PEM form (as before) and the PKCS#12 form both load, with paths relative to server.xml."""
    settings = load_config(deployment.conf).server.keystore
    assert (settings.type, settings.certificate_file, settings.file) == (
        "PEM",
        deployment.conf / "security" / "server.crt",
        None,
    )
    use_keystore(deployment, '<Keystore type="PKCS12" file="security/server.p12" password="pw"/>')
    settings = load_config(deployment.conf).server.keystore
    assert (settings.type, settings.file, settings.password) == (
        "PKCS12",
        deployment.conf / "security" / "server.p12",
        "pw",
    )
    assert "pw" not in repr(settings)


def test_keystore_init_creates_a_pkcs12_keystore(deployment, tmp_path) -> None:  # noqa: ANN001
    """keystore init with a PKCS#12 <Keystore> writes an encrypted 0600 file that export reads."""
    use_keystore(deployment, f'<Keystore type="PKCS12" file="security/dev.p12" password="{PASSWORD}"/>')
    assert "created keystore" in deployment.cli("keystore", "init").stdout
    p12 = deployment.conf / "security" / "dev.p12"
    assert stat.S_IMODE(p12.stat().st_mode) == 0o600
    key, cert, _ = pkcs12.load_key_and_certificates(p12.read_bytes(), PASSWORD.encode())
    assert isinstance(key, ec.EllipticCurvePrivateKey) and cert is not None
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(p12.read_bytes(), None)
    deployment.cli("keystore", "export", "--out", str(tmp_path / "dev.crt"))
    assert x509.load_pem_x509_certificate((tmp_path / "dev.crt").read_bytes()) == cert
    assert "kept existing" in deployment.cli("keystore", "init").stdout


def _record_loads(monkeypatch) -> list[tuple[str, int, bool]]:  # noqa: ANN001
    """Record (path, mode, is a regular file on disk) of every file ssl loads a chain from."""
    seen: list[tuple[str, int, bool]] = []
    original = ssl.SSLContext.load_cert_chain

    def load_cert_chain(self, certfile, keyfile=None, password=None) -> None:  # noqa: ANN001
        info = os.stat(certfile)
        seen.append((str(certfile), stat.S_IMODE(info.st_mode), not str(certfile).startswith("/proc/")))
        original(self, certfile, keyfile, password)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", load_cert_chain)
    return seen


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="memfd is Linux-only")
def test_pkcs12_reaches_openssl_through_anonymous_memory(deployment, monkeypatch, tmp_path) -> None:  # noqa: ANN001
    """On Linux the decrypted PKCS#12 key is handed to OpenSSL in a memfd, never in a directory."""
    install(deployment, "ec", "pkcs12")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    seen = _record_loads(monkeypatch)
    config = load_config(deployment.conf)
    tlsconf.server_context(config.server, Connector("127.0.0.1", 0))
    # The keystore is loaded first; tls_accept loads throwaway certificates afterwards.
    assert seen[0][0].startswith("/proc/self/fd/") and not seen[0][2]
    assert list(scratch.iterdir()) == []


def test_pkcs12_without_memfd_uses_a_private_file_removed_after_loading(
    deployment, monkeypatch, tmp_path
) -> None:  # noqa: ANN001
    """Without memfd the PEM for OpenSSL is a 0600 temporary file, gone once loaded."""
    install(deployment, "rsa", "pkcs12")
    monkeypatch.delattr(os, "memfd_create", raising=False)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    seen = _record_loads(monkeypatch)
    config = load_config(deployment.conf)
    tlsconf.server_context(config.server, Connector("127.0.0.1", 0))
    path, mode, on_disk = seen[0]  # the keystore; tls_accept's throwaway loads come after
    assert on_disk and Path(path).parent == scratch and mode == 0o600
    assert Path(path).name.startswith("tokensmith-keystore-")
    assert list(scratch.iterdir()) == []
