"""Certificates for tests, made with cryptography: CAs, client leaves, self-signed clients."""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


@dataclass
class Pair:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def x5t_s256(self) -> str:
        """RFC 8705 §3.1, computed here independently of tokensmith."""
        return base64.urlsafe_b64encode(hashlib.sha256(self.der).digest()).decode().rstrip("=")

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """Write NAME.pem (leaf, then chain) and NAME.key; return their paths."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        cert_path.write_bytes(
            self.pem + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)
        )
        key_path.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert_path, key_path


def _name(cn: str, org: str | None = None) -> x509.Name:
    """Most significant first, as CAs issue them: its RFC 4514 string is "CN=..,O=.."."""
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org else []
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def ca(
    cn: str = "Test Root CA",
    issuer: Pair | None = None,
    constraints: x509.NameConstraints | None = None,
    critical: bool = True,
) -> Pair:
    """A root CA, or with *issuer* an intermediate CA, optionally with name *constraints*."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(cn, "tokensmith tests")
    signer = issuer.key if issuer is not None else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + 365 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    if constraints is not None:
        builder = builder.add_extension(constraints, critical=critical)
    return Pair(builder.sign(signer, hashes.SHA256()), key)


def issue(
    issuer: Pair,
    cn: str,
    *,
    org: str | None = None,
    dns: tuple[str, ...] = (),
    uris: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    emails: tuple[str, ...] = (),
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    subject: x509.Name | None = None,
) -> Pair:
    """A client certificate (clientAuth EKU) signed by *issuer*; *subject* replaces CN and O."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject or _name(cn, org))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - DAY)
        .not_valid_after(not_after or NOW + 30 * DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    )
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    names += [x509.RFC822Name(e) for e in emails]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Pair(builder.sign(issuer.key, hashes.SHA256()), key)


def self_signed(
    cn: str = "localhost",
    *,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> Pair:
    """A self-signed client certificate, as `openssl req -x509` makes them."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(cn)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - DAY)
        .not_valid_after(not_after or NOW + 30 * DAY)
        .sign(key, hashes.SHA256())
    )
    return Pair(cert, key)


def big_self_signed(size: int, cn: str = "big") -> Pair:
    """A self-signed client certificate of about *size* bytes (many subjectAltName entries)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(cn)
    names = [x509.DNSName(f"host-{i:06d}.{'a' * 40}.example") for i in range(size // 60)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + DAY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Pair(cert, key)


def rsa_key_with_exponent(bits: int, exponent_bits: int) -> rsa.RSAPrivateKey:
    """An RSA key whose public exponent is an odd number of *exponent_bits* bits, which no
    key generator makes: checking a signature with it costs that many squarings."""
    base = rsa.generate_private_key(public_exponent=65537, key_size=bits).private_numbers()
    p, q = base.p, base.q
    phi = (p - 1) * (q - 1)
    e = (1 << (exponent_bits - 1)) | 1
    while True:
        try:
            d = pow(e, -1, phi)
            break
        except ValueError:
            e += 2
    return rsa.RSAPrivateNumbers(
        p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), rsa.RSAPublicNumbers(e, p * q)
    ).private_key()
