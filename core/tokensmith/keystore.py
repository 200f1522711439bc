"""The server keystore: a development certificate when there is none, and its export.

The development keystore is an ECDSA P-256 self-signed certificate for ``localhost`` and
``127.0.0.1``, valid for a year; the key file is created with mode 0600 and never
overwritten. Production deployments point ``<Keystore>`` in server.xml at their own files.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["generate_dev_keystore", "export_certificate"]


def generate_dev_keystore(certificate_file: Path, key_file: Path) -> bool:
    """Create the development keystore unless both files exist; return whether it did."""
    if certificate_file.exists() and key_file.exists():
        return False
    if certificate_file.exists() or key_file.exists():
        missing = key_file if certificate_file.exists() else certificate_file
        raise FileNotFoundError(f"{missing} is missing but its pair exists; not overwriting")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tokensmith development")])
    now = datetime.datetime.now(datetime.timezone.utc)
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
    key_file.parent.mkdir(parents=True, exist_ok=True)
    certificate_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    certificate_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return True


def export_certificate(certificate_file: Path) -> bytes:
    """The PEM of the server's certificate (its first certificate), as ``keytool -export``."""
    certs = x509.load_pem_x509_certificates(certificate_file.read_bytes())
    return certs[0].public_bytes(serialization.Encoding.PEM)
