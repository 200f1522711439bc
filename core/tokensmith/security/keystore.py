"""The server keystore: loading it (PEM or PKCS#12), exporting its certificate, a dev keystore.

``<Keystore>`` in server.xml names PEM certificate and key files, or one PKCS#12 file (what
``keytool -importkeystore -deststoretype PKCS12`` and ``openssl pkcs12 -export`` write).
RSA and ECDSA keys both work. ``load_keystore`` reads either form with ``cryptography`` so
that a wrong password, a key that does not match its certificate or a file of the wrong kind
is reported as one ``ConfigError`` naming the file; ``load_into`` then hands the keystore to
an ``ssl.SSLContext``.

The development keystore is an ECDSA P-256 self-signed certificate for ``localhost`` and
``127.0.0.1``, valid for a year; its key is written with mode 0600 and never overwritten.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tokensmith.config.settings import KeystoreSettings
from tokensmith.config.xml import ConfigError
from tokensmith.security.files import private_dir

__all__ = [
    "LoadedKeystore",
    "load_keystore",
    "load_into",
    "export_certificate",
    "generate_dev_keystore",
    "generate_dev_pkcs12",
]

ServerKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
# A keystore holds a key and a few certificates; anything this large is the wrong file.
_MAX_KEYSTORE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class LoadedKeystore:
    """The server's private key and certificate chain, leaf first."""

    key: ServerKey
    chain: tuple[x509.Certificate, ...]

    def pem(self) -> bytes:
        """Key (PKCS#8, unencrypted) then the chain: what ``load_cert_chain`` reads."""
        key = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return key + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)


def _read(settings: KeystoreSettings, path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{settings.where}: keystore file {path} not found") from None
    except OSError as exc:
        raise ConfigError(
            f"{settings.where}: cannot read keystore file {path}: {exc.strerror or exc}"
        ) from None
    if len(data) > _MAX_KEYSTORE_BYTES:
        raise ConfigError(f"{settings.where}: keystore file {path} is too large to be a keystore")
    return data


def _password(settings: KeystoreSettings) -> bytes | None:
    return settings.password.encode("utf-8") if settings.password is not None else None


def _pem_certificates(settings: KeystoreSettings, path: Path) -> list[x509.Certificate]:
    data = _read(settings, path)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ConfigError(
            f"{settings.where}: {path} holds no PEM certificate ('-----BEGIN CERTIFICATE-----')"
        )
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"{settings.where}: {path}: malformed PEM certificate") from None


def _pem_key(settings: KeystoreSettings, path: Path) -> object:
    data = _read(settings, path)
    if b"PRIVATE KEY-----" not in data:
        raise ConfigError(f"{settings.where}: {path} holds no PEM private key")
    password = _password(settings)
    try:
        try:
            return serialization.load_pem_private_key(data, password)
        except TypeError:
            if password is None:
                raise ConfigError(
                    f"{settings.where}: private key {path} is encrypted: set password= on <Keystore>"
                ) from None
            # A password for a key that is not encrypted: OpenSSL ignores it, and so do we.
            return serialization.load_pem_private_key(data, None)
    except ValueError as exc:
        reason = (
            "wrong password" if "password" in str(exc).lower() else "malformed or unsupported private key"
        )
        raise ConfigError(f"{settings.where}: private key {path}: {reason}") from None


def _pkcs12(settings: KeystoreSettings, path: Path) -> tuple[object, list[x509.Certificate]]:
    data = _read(settings, path)
    if data.lstrip().startswith(b"-----BEGIN"):
        raise ConfigError(
            f"{settings.where}: {path} is PEM, not PKCS#12: use <Keystore"
            " certificateFile= keyFile=> for PEM files"
        )
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, _password(settings))
    except ValueError as exc:
        # cryptography says "Invalid password or PKCS12 data" once the outer structure
        # parsed (the MAC check failed) and "Could not deserialize" when it did not.
        reason = (
            "not a PKCS#12 file"
            if "deserialize" in str(exc)
            else "wrong password"
            if settings.password is not None
            else "it is password-protected: set password= on <Keystore>"
        )
        raise ConfigError(f"{settings.where}: PKCS#12 keystore {path}: {reason}") from None
    if key is None:
        raise ConfigError(f"{settings.where}: PKCS#12 keystore {path} holds no private key")
    if cert is None:
        raise ConfigError(
            f"{settings.where}: PKCS#12 keystore {path} holds no certificate for its private key"
        )
    leaf_der = cert.public_bytes(serialization.Encoding.DER)
    rest = [c for c in extra if c.public_bytes(serialization.Encoding.DER) != leaf_der]
    return key, [cert, *rest]


def load_keystore(settings: KeystoreSettings) -> LoadedKeystore:
    """The keystore *settings* name, checked: an RSA or ECDSA key matching the first certificate.

    Every problem raises ``ConfigError`` with server.xml's line and the keystore file.
    """
    if settings.type == "PKCS12":
        assert settings.file is not None
        key, chain = _pkcs12(settings, settings.file)
        key_path = settings.file
    else:
        assert settings.certificate_file is not None and settings.key_file is not None
        chain = _pem_certificates(settings, settings.certificate_file)
        key, key_path = _pem_key(settings, settings.key_file), settings.key_file
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise ConfigError(
            f"{settings.where}: {key_path}: the server key must be RSA or ECDSA, not {type(key).__name__}"
        )
    if key.public_key() != chain[0].public_key():
        raise ConfigError(
            f"{settings.where}: the private key in {key_path} does not belong to"
            f" the certificate {chain[0].subject.rfc4514_string()!r}"
        )
    return LoadedKeystore(key, tuple(chain))


@contextmanager
def _private_file(data: bytes) -> Iterator[str]:
    """A path to *data* that only this user can read, gone when the block ends.

    ``ssl`` loads keys only from files. On Linux the file is anonymous memory (memfd): it is
    in no directory, and disappears with its descriptor even if the process is killed.
    Elsewhere it is a 0600 temporary file, removed as soon as it was read.
    """
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and os.path.isdir("/proc/self/fd"):
        fd = memfd_create("tokensmith-keystore", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    fd, name = tempfile.mkstemp(prefix="tokensmith-keystore-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        yield name
    finally:
        with suppress(FileNotFoundError):
            os.unlink(name)


def load_into(context: ssl.SSLContext, settings: KeystoreSettings) -> None:
    """Give *context* the server's certificate chain and key; ``ConfigError`` if unusable."""
    loaded = load_keystore(settings)  # checks everything, with messages naming the file
    try:
        if settings.type == "PEM":
            # As written, so OpenSSL reads exactly the operator's files.
            assert settings.certificate_file is not None  # load_keystore checked both
            context.load_cert_chain(settings.certificate_file, settings.key_file, password=settings.password)
        else:
            with _private_file(loaded.pem()) as path:
                context.load_cert_chain(path)
    except (ssl.SSLError, OSError) as exc:
        source = settings.file or settings.certificate_file
        raise ConfigError(f"{settings.where}: OpenSSL cannot use keystore {source}: {exc}") from None


def export_certificate(settings: KeystoreSettings) -> bytes:
    """The PEM of the server's certificate (the leaf), as ``keytool -export`` writes it.

    A PEM keystore's certificate file is read without touching the key; a PKCS#12 file has
    to be opened with its password.
    """
    if settings.type == "PKCS12":
        leaf = load_keystore(settings).chain[0]
    else:
        assert settings.certificate_file is not None
        leaf = _pem_certificates(settings, settings.certificate_file)[0]
    return leaf.public_bytes(serialization.Encoding.PEM)


def _dev_certificate() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tokensmith development"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
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
    return key, cert


def _write_private(path: Path, data: bytes) -> None:
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _encryption(password: str | None) -> serialization.KeySerializationEncryption:
    if not password:
        return serialization.NoEncryption()
    return serialization.BestAvailableEncryption(password.encode("utf-8"))


def generate_dev_keystore(certificate_file: Path, key_file: Path, password: str | None = None) -> bool:
    """Create the PEM development keystore unless both files exist; return whether it did.

    One file without the other is an error: nothing is overwritten. With *password* the key
    is encrypted with it.
    """
    if certificate_file.exists() and key_file.exists():
        return False
    if certificate_file.exists() or key_file.exists():
        missing = key_file if certificate_file.exists() else certificate_file
        raise FileNotFoundError(f"{missing} is missing but its pair exists; not overwriting")
    key, cert = _dev_certificate()
    _write_private(
        key_file,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, _encryption(password)
        ),
    )
    private_dir(certificate_file.parent)
    certificate_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return True


def generate_dev_pkcs12(file: Path, password: str | None = None) -> bool:
    """Create the development keystore as one PKCS#12 file unless it exists; return whether it did."""
    if file.exists():
        return False
    key, cert = _dev_certificate()
    _write_private(
        file, pkcs12.serialize_key_and_certificates(b"tokensmith", key, cert, None, _encryption(password))
    )
    return True
