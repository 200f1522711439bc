"""The tls_client_auth truststore: one PEM file per alias, changes seen without a restart."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from tokensmith.security.truststore import TrustedCertificate, Truststore, TruststoreError
from tokensmith.security.x509 import CertificateError, verify_chain

NOW = datetime.now(UTC)  # import_ judges expiry by the real clock
Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
Pair = tuple[x509.Certificate, Key]


def make_cert(
    subject: str,
    issuer: Pair | None = None,
    *,
    ca: bool = True,
    ca_critical: bool = True,
    key_cert_sign: bool | None = None,
    not_after: datetime = NOW + timedelta(days=365),
    key: Key | None = None,
) -> Pair:
    """A certificate and its key; self-signed unless *issuer* is given."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name.from_rfc4514_string(subject)
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    sign = ca if key_cert_sign is None else key_cert_sign
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_cert.subject if issuer_cert else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(NOW, not_after) - timedelta(days=1))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=ca_critical)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=sign,
                crl_sign=sign,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256()), key


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def root() -> Pair:
    return make_cert("CN=Partner Root CA,O=Partner")


@pytest.fixture
def store(tmp_path: Path) -> Truststore:
    return Truststore(tmp_path / "truststore")


def test_import_writes_one_pem_file_per_alias(store: Truststore, root: Pair) -> None:
    """An import writes ALIAS.pem, mode 0644, holding exactly that certificate, and nothing else."""
    cert = store.import_("partner-root", pem(root[0]))
    assert cert == root[0]
    path = store.directory / "partner-root.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert x509.load_pem_x509_certificate(path.read_bytes()) == root[0]
    assert sorted(p.name for p in store.directory.iterdir()) == ["partner-root.pem"]  # no temp files left


def test_list_shows_alias_subject_fingerprint_and_expiry(store: Truststore, root: Pair) -> None:
    """list() gives each anchor's alias, RFC 4514 subject, SHA-256 of the DER in hex and notAfter."""
    store.import_("b-second", pem(make_cert("CN=Second CA")[0]))
    store.import_("a-first", pem(root[0]))
    entries = store.list()
    assert [e.alias for e in entries] == ["a-first", "b-second"]
    assert entries[0] == TrustedCertificate(
        "a-first",
        "CN=Partner Root CA,O=Partner",
        hashlib.sha256(der(root[0])).hexdigest(),
        root[0].not_valid_after_utc,
    )


def test_a_der_file_is_accepted(store: Truststore, root: Pair) -> None:
    """A DER certificate imports like a PEM one and is stored as PEM."""
    store.import_("from-der", der(root[0]))
    assert (store.directory / "from-der.pem").read_bytes() == pem(root[0])


def test_anchors_follow_imports_and_removals_without_restart(store: Truststore, root: Pair) -> None:
    """Another Truststore on the directory (another worker) sees imports and removals at once."""
    other = Truststore(store.directory)
    assert other.anchors() == []
    store.import_("partner", pem(root[0]))
    assert other.anchors() == [root[0]]
    assert store.remove("partner") is True
    assert other.anchors() == []
    assert store.remove("partner") is False


def test_anchors_notice_files_replaced_behind_their_back(store: Truststore, root: Pair) -> None:
    """A file added, replaced or deleted by an administrator is noticed by an existing instance."""
    store.directory.mkdir(parents=True)
    (store.directory / "ops.pem").write_bytes(pem(root[0]))
    assert store.anchors() == [root[0]]
    replacement = make_cert("CN=Replacement CA")[0]
    (store.directory / "new.tmp").write_bytes(pem(replacement))
    os.replace(store.directory / "new.tmp", store.directory / "ops.pem")
    assert store.anchors() == [replacement]
    (store.directory / "ops.pem").unlink()
    assert store.anchors() == []


def test_anchors_are_not_reread_when_nothing_changed(store: Truststore, root: Pair) -> None:
    """Unchanged files are served from the instance's cache: the same certificate objects come back."""
    store.import_("partner", pem(root[0]))
    first, second = store.anchors(), store.anchors()
    assert first == [root[0]] and first[0] is second[0]


def test_a_bad_file_is_skipped_with_a_warning(
    store: Truststore, root: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    """A file that is not one certificate is skipped and logged; the other anchors still work."""
    store.import_("good", pem(root[0]))
    (store.directory / "broken.pem").write_bytes(b"this is not a certificate")
    (store.directory / "README.txt").write_text("ignored: not a .pem file")
    with caplog.at_level(logging.WARNING, logger="tokensmith.security.truststore"):
        assert store.anchors() == [root[0]]
    assert "broken.pem" in caplog.text
    assert [e.alias for e in store.list()] == ["good"]


def test_a_missing_directory_is_an_empty_truststore(tmp_path: Path) -> None:
    """Before the first import there is no directory, and no anchors."""
    store = Truststore(tmp_path / "absent")
    assert store.anchors() == [] and store.list() == []
    assert store.remove("nothing") is False


@pytest.mark.parametrize("alias", ["", "../evil", ".hidden", "a/b", "a b", "x" * 65, "-dash-first", "é"])
def test_bad_aliases_are_refused(store: Truststore, root: Pair, alias: str) -> None:
    """Aliases outside [A-Za-z0-9._-]{1,64}, or not starting with a letter or digit, are refused."""
    with pytest.raises(TruststoreError, match="alias"):
        store.import_(alias, pem(root[0]))
    with pytest.raises(TruststoreError):
        store.remove(alias)
    assert not store.directory.exists() or list(store.directory.iterdir()) == []


def test_duplicates_are_refused(store: Truststore, root: Pair) -> None:
    """An existing alias, one differing only in case, or a certificate already trusted are refused."""
    store.import_("partner", pem(root[0]))
    other = make_cert("CN=Other CA")[0]
    with pytest.raises(TruststoreError, match="already exists"):
        store.import_("partner", pem(other))
    with pytest.raises(TruststoreError, match="already exists"):
        store.import_("PARTNER", pem(other))
    with pytest.raises(TruststoreError, match="already trusted as alias 'partner'"):
        store.import_("partner-again", pem(root[0]))
    assert store.anchors() == [root[0]]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "empty file"),
        (b"not a certificate at all", "expected PEM"),
    ],
)
def test_non_certificates_are_refused_in_one_line(store: Truststore, data: bytes, expected: str) -> None:
    """Input that is not a certificate raises a one-line CertificateError naming the alias."""
    with pytest.raises(CertificateError) as excinfo:
        store.import_("partner", data)
    message = str(excinfo.value)
    assert "\n" not in message and "alias 'partner'" in message and expected in message


def test_a_private_key_is_refused_with_a_warning(store: Truststore, root: Pair) -> None:
    """A private key pasted instead of (or with) the certificate is refused and never written."""
    key = root[1].private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(CertificateError, match="private key, not a certificate: never share it"):
        store.import_("partner", pem(root[0]) + key)
    assert store.anchors() == []


def test_a_bundle_is_refused(store: Truststore, root: Pair) -> None:
    """A file with two certificates is refused: one certificate per alias."""
    with pytest.raises(CertificateError, match="contains 2 certificates"):
        store.import_("bundle", pem(root[0]) + pem(make_cert("CN=Another CA")[0]))


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("end entity", "not a CA certificate"),
        ("no keyCertSign", "without keyUsage keyCertSign"),
        ("basicConstraints not critical", "not marked critical"),
        ("expired", "expired on"),
        ("weak RSA", "1024-bit RSA key is too weak"),
    ],
)
def test_unusable_anchors_are_refused(store: Truststore, root: Pair, case: str, expected: str) -> None:
    """A certificate the chain verifier could never use as an anchor is refused at import, with the reason."""
    cert = {
        "end entity": lambda: make_cert("CN=Client", root, ca=False)[0],
        "no keyCertSign": lambda: make_cert("CN=Lazy CA", key_cert_sign=False)[0],
        "basicConstraints not critical": lambda: make_cert("CN=Soft CA", ca_critical=False)[0],
        "expired": lambda: make_cert("CN=Old CA", not_after=NOW - timedelta(days=1))[0],
        "weak RSA": lambda: make_cert("CN=Weak CA", key=rsa.generate_private_key(65537, 1024))[0],
    }[case]()
    with pytest.raises(CertificateError, match=expected):
        store.import_("candidate", pem(cert))
    assert store.anchors() == []


def test_allow_non_ca_accepts_only_self_signed_end_entities(store: Truststore, root: Pair) -> None:
    """With allow_non_ca a self-signed client certificate is an anchor; an issued end entity is not."""
    issued = make_cert("CN=Issued Client", root, ca=False)[0]
    with pytest.raises(CertificateError, match="neither a CA certificate nor self-signed"):
        store.import_("issued", pem(issued), allow_non_ca=True)
    self_signed = make_cert("CN=Lone Client", ca=False)[0]
    store.import_("lone", pem(self_signed), allow_non_ca=True)
    # The verifier then trusts exactly that certificate as a client leaf.
    assert verify_chain([der(self_signed)], store.anchors(), NOW) == self_signed


def test_verify_chain_uses_the_current_anchors(store: Truststore, root: Pair) -> None:
    """A client under an imported CA validates against anchors(); once the CA is removed it does not."""
    client = make_cert("CN=Partner Client", root, ca=False)[0]
    store.import_("partner", pem(root[0]))
    assert verify_chain([der(client)], store.anchors(), NOW) == client
    store.remove("partner")
    with pytest.raises(CertificateError, match="no trust anchors"):
        verify_chain([der(client)], store.anchors(), NOW)
