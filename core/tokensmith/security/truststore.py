"""The trust anchors for ``tls_client_auth`` clients (RFC 8705 §2.1): one PEM file per alias.

The seed's ``keytool -import -alias NAME`` into ``client-truststore.jks`` becomes
``Truststore(conf/security/truststore).import_("NAME", pem)``, which writes ``NAME.pem``.
Only CA certificates are anchors by default. The TLS layer never loads these files: the
handshake accepts any certificate the client proves it holds, and ``x509.verify_chain``
decides trust per request: one verify store with many same-subject client certificates
breaks OpenSSL handshakes, and loading it grows faster than linearly.

Changes apply to the next request without a restart: ``anchors()`` re-reads the directory
whenever a file in it was added, removed or replaced, which one ``scandir`` detects
(``pemdir.PemDirectory``, shared with the signing keyring).
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import os
import re
import tempfile
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tokensmith.security.files import private_dir
from tokensmith.security.pemdir import PemDirectory
from tokensmith.security.x509 import CertificateError, load_pem_certificates, validity_problem

__all__ = ["Truststore", "TrustedCertificate", "TruststoreError", "ALIAS_PATTERN", "anchor_problem"]

log = logging.getLogger(__name__)


# The first character is alphanumeric so that an alias is never a hidden file, never '..',
# and never collides with the '.tmp' files written next to the certificates.
ALIAS_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SUFFIX = ".pem"
# The curves cryptography's chain verifier accepts for a CA key (its WebPKI profile).
_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


class TruststoreError(ValueError):
    """A truststore operation was refused: bad alias, or the alias or certificate exists."""


class TrustedCertificate(NamedTuple):
    """One anchor as ``list()`` shows it."""

    alias: str
    subject: str  # RFC 4514
    sha256_hex: str  # over the DER, as ``keytool -list`` prints fingerprints
    not_after: datetime


@dataclass(frozen=True)
class _Entry:
    alias: str
    cert: x509.Certificate


_E = TypeVar("_E", bound=x509.ExtensionType)


def _check_alias(alias: str) -> None:
    if not ALIAS_PATTERN.fullmatch(alias):
        raise TruststoreError(
            f"alias {alias!r} must be 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )


def _extension(cert: x509.Certificate, kind: type[_E]) -> x509.Extension[_E] | None:
    try:
        return cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return None


def _self_signed(cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _key_problem(cert: x509.Certificate) -> str | None:
    """Why the chain verifier could never use this key, mirroring its WebPKI key rules."""
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return "its public key algorithm is not supported"
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            return f"its {key.key_size}-bit RSA key is too weak (2048 minimum)"
        return None
    if isinstance(key, ec.EllipticCurvePublicKey):
        return None if isinstance(key.curve, _CURVES) else f"the curve {key.curve.name} is not accepted"
    return "only RSA and ECDSA P-256/P-384/P-521 keys can anchor a chain"


def anchor_problem(cert: x509.Certificate, now: datetime, *, allow_non_ca: bool = False) -> str | None:
    """Why *cert* cannot serve as a trust anchor, or None.

    A CA certificate needs what cryptography's verifier will demand of it: basicConstraints
    cA, marked critical, and keyUsage keyCertSign (RFC 5280 §4.2.1.9, §4.2.1.3). With
    *allow_non_ca*, a self-signed end-entity certificate is accepted too; the verifier then
    trusts exactly that certificate as a client leaf, and nothing it would sign.
    """
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is not None and constraints.value.ca:
        if not constraints.critical:
            return "its basicConstraints extension is not marked critical"
        usage = _extension(cert, x509.KeyUsage)
        if usage is None or not usage.value.key_cert_sign:
            return "it is a CA certificate without keyUsage keyCertSign"
    elif not allow_non_ca:
        return (
            "not a CA certificate (basicConstraints cA is not set); "
            "allow_non_ca trusts a self-signed client certificate directly"
        )
    elif not _self_signed(cert):
        return "neither a CA certificate nor self-signed, so it cannot anchor anything"
    if (problem := _key_problem(cert)) is not None:
        return problem
    # A CA that is not yet valid is accepted: staging the next CA before it starts is normal.
    problem = validity_problem(cert, now)
    return problem if problem is not None and problem.startswith("expired") else None


def _fsync_directory(directory: Path) -> None:
    # Makes the new directory entry itself durable, not only the file's contents.
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Truststore:
    """The PEM files in *directory*, one certificate each, named ``ALIAS.pem``.

    Other files in the directory (README, editor backups) are ignored. A file that is not
    exactly one valid certificate is skipped with a logged warning, so one bad file never
    takes every ``tls_client_auth`` client down. Nothing is cached outside the instance.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._files: PemDirectory[x509.Certificate] = PemDirectory(
            self.directory,
            label="truststore",
            accept=_is_anchor_file,
            parse=_read_anchor,
            describe=_why_skipped,
            log=log,
        )

    def import_(self, alias: str, pem: bytes, *, allow_non_ca: bool = False) -> x509.Certificate:
        """Trust the one certificate in *pem* (PEM or DER) under *alias*; return it.

        Raises ``TruststoreError`` for a bad alias, an alias that exists (aliases differing
        only in case clash too, so behaviour does not depend on the filesystem) or a
        certificate already trusted under another alias, and ``CertificateError`` for input
        that is not one usable anchor certificate (see ``anchor_problem``).
        """
        _check_alias(alias)
        source = f"certificate for alias {alias!r}"
        certs = load_pem_certificates(pem, source=source)
        if len(certs) != 1:
            raise CertificateError(f"{source}: contains {len(certs)} certificates; import one per alias")
        cert = certs[0]
        problem = anchor_problem(cert, datetime.now(UTC), allow_non_ca=allow_non_ca)
        if problem is not None:
            raise CertificateError(f"{source}: {problem}")
        for existing in self._files.stamp():
            if existing[0].lower() == f"{alias}{_SUFFIX}".lower():
                raise TruststoreError(f"alias {alias!r} already exists")
        der = cert.public_bytes(serialization.Encoding.DER)
        for entry in self._entries():
            if entry.cert.public_bytes(serialization.Encoding.DER) == der:
                raise TruststoreError(f"this certificate is already trusted as alias {entry.alias!r}")
        private_dir(self.directory)  # conf/security, if this makes it, holds keys too
        self._write_new(alias, cert.public_bytes(serialization.Encoding.PEM))
        return cert

    def _write_new(self, alias: str, data: bytes) -> None:
        """Write ``ALIAS.pem`` atomically, mode 0644, refusing to replace an existing file."""
        target = self.directory / f"{alias}{_SUFFIX}"
        fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fchmod(out.fileno(), 0o644)  # mkstemp creates 0600; certificates are public
                os.fsync(out.fileno())
            try:
                # link() publishes the complete file atomically and fails if the alias appeared
                # meanwhile, so two concurrent imports of one alias cannot both succeed.
                os.link(temporary, target)
            except FileExistsError:
                raise TruststoreError(f"alias {alias!r} already exists") from None
            except OSError:
                # Filesystems without hard links: replace() is still atomic, but the
                # existence check before it is not.
                if target.exists():
                    raise TruststoreError(f"alias {alias!r} already exists") from None
                os.replace(temporary, target)
        finally:
            with suppress(FileNotFoundError):
                os.unlink(temporary)
        _fsync_directory(self.directory)
        self._files.forget()

    def list(self) -> list[TrustedCertificate]:
        """Every valid anchor, by alias: subject, SHA-256 fingerprint (hex), expiry."""
        return [
            TrustedCertificate(
                entry.alias,
                entry.cert.subject.rfc4514_string(),
                hashlib.sha256(entry.cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
                entry.cert.not_valid_after_utc,
            )
            for entry in self._entries()
        ]

    def remove(self, alias: str) -> bool:
        """Stop trusting *alias*; False if there was no such alias."""
        _check_alias(alias)
        try:
            (self.directory / f"{alias}{_SUFFIX}").unlink()
        except FileNotFoundError:
            return False
        self._files.forget()
        return True

    # builtins.list: inside the class body, plain ``list`` is the method above.
    def anchors(self) -> builtins.list[x509.Certificate]:
        """The anchor certificates as of now, re-read only when the directory changed."""
        return [entry.cert for entry in self._entries()]

    def _entries(self) -> tuple[_Entry, ...]:
        entries = (_Entry(name[: -len(_SUFFIX)], cert) for name, cert in self._files.items())
        return tuple(sorted(entries, key=lambda entry: entry.alias))


def _is_anchor_file(item: os.DirEntry[str]) -> bool:
    """``ALIAS.pem`` files only: other files (README, editor backups, our temporaries) are not read."""
    alias = item.name[: -len(_SUFFIX)]
    return item.name.endswith(_SUFFIX) and ALIAS_PATTERN.fullmatch(alias) is not None and item.is_file()


def _read_anchor(path: Path) -> x509.Certificate:
    """The one certificate in *path*; ``CertificateError`` or ``ValueError`` if it is not one."""
    certs = load_pem_certificates(path.read_bytes(), source=str(path))
    if len(certs) != 1:
        raise ValueError(f"holds {len(certs)} certificates, not one")
    return certs[0]


def _why_skipped(path: Path, exc: Exception) -> str:
    if isinstance(exc, CertificateError):
        return str(exc)  # it names the file already
    return f"{path}: {getattr(exc, 'strerror', None) or exc}"
