"""Certificate facts for mutual-TLS client authentication (tokensmith.security.x509, the
forwarded-header parsing of tokensmith.oauth.mtls and the thumbprint of tokensmith.security.jose).

Every certificate is generated here with ``cryptography``, valid around a fixed instant
``NOW`` so that no test depends on the wall clock; the one exception is RFC 8705's own
Appendix A certificate, used as a known-answer vector.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pki
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tokensmith.oauth.mtls import MAX_HEADER_CHARS, parse_forwarded_certificate
from tokensmith.security.jose import x5t_s256
from tokensmith.security.x509 import (
    MAX_CERTIFICATE_BYTES,
    MAX_INTERMEDIATES,
    CertificateError,
    dn_matches,
    load_pem_certificates,
    normalize_dn,
    san_matches,
    validity_problem,
    verify_chain,
)

NOW = datetime(2031, 3, 14, 12, 0, tzinfo=UTC)
CLIENT_AUTH = (ExtendedKeyUsageOID.CLIENT_AUTH,)

# RFC 8705 Appendix A, Figure 6: the client certificate whose x5t#S256 is in Figure 5
# (A4DtL2JmUMhAsvJj5tKyn64SqzmuXbMrJa0n761y5v0; confirmed with `openssl x509 -outform DER |
# openssl dgst -sha256 -binary | basenc --base64url`). Its base64 contains '+' and '/'.
RFC8705_PEM = b"""-----BEGIN CERTIFICATE-----
MIIBBjCBrAIBAjAKBggqhkjOPQQDAjAPMQ0wCwYDVQQDDARtdGxzMB4XDTE4MTAx
ODEyMzcwOVoXDTIyMDUwMjEyMzcwOVowDzENMAsGA1UEAwwEbXRsczBZMBMGByqG
SM49AgEGCCqGSM49AwEHA0IABNcnyxwqV6hY8QnhxxzFQ03C7HKW9OylMbnQZjjJ
/Au08/coZwxS7LfA4vOLS9WuneIXhbGGWvsDSb0tH6IxLm8wCgYIKoZIzj0EAwID
SQAwRgIhAP0RC1E+vwJD/D1AGHGzuri+hlV/PpQEKTWUVeORWz83AiEA5x2eXZOV
bUlJSGQgjwD5vaUaKlLR50Q2DmFfQj1L+SY=
-----END CERTIFICATE-----
"""
RFC8705_DER = x509.load_pem_x509_certificate(RFC8705_PEM).public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class Issued:
    """A generated certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def issue(
    subject: str | x509.Name,
    issuer: Issued | None = None,
    *,
    ca: bool = False,
    sans: tuple[x509.GeneralName, ...] = (),
    eku: tuple[x509.ObjectIdentifier, ...] | None = CLIENT_AUTH,
    not_before: datetime = NOW - timedelta(days=1),
    not_after: datetime = NOW + timedelta(days=30),
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
    constraints: x509.NameConstraints | None = None,
) -> Issued:
    """A certificate for *subject*, signed by *issuer* (self-signed without one)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = subject if isinstance(subject, x509.Name) else x509.Name.from_rfc4514_string(subject)
    signer = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if constraints is not None:
        builder = builder.add_extension(constraints, critical=True)
    return Issued(builder.sign(signer, hashes.SHA256()), key)


@pytest.fixture(scope="module")
def ca() -> Issued:
    return issue(
        "CN=Test Root CA,O=Example",
        ca=True,
        eku=None,
        not_before=NOW - timedelta(days=365),
        not_after=NOW + timedelta(days=3650),
    )


@pytest.fixture(scope="module")
def intermediate(ca: Issued) -> Issued:
    return issue(
        "CN=Test Issuing CA,O=Example",
        ca,
        ca=True,
        eku=None,
        not_before=NOW - timedelta(days=30),
        not_after=NOW + timedelta(days=365),
    )


@pytest.fixture(scope="module")
def leaf(intermediate: Issued) -> Issued:
    return issue(
        "CN=Client One,OU=Payments,O=Example Corp,C=US",
        intermediate,
        sans=(
            x509.DNSName("client.Example.com"),
            x509.DNSName("*.clients.example.com"),
            x509.UniformResourceIdentifier("spiffe://example.com/client/one"),
            x509.IPAddress(ipaddress.ip_address("::1")),
            x509.IPAddress(ipaddress.ip_address("192.0.2.7")),
            x509.RFC822Name("Client.One@Example.COM"),
        ),
    )


@pytest.fixture(scope="module")
def rsa4096_leaf(ca: Issued) -> Issued:
    return issue("CN=Big Key Client", ca, key=rsa.generate_private_key(65537, 4096))


def one_line_error(excinfo: pytest.ExceptionInfo[CertificateError]) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


# --- x5t#S256 ----------------------------------------------------------------------------


def test_x5t_s256_matches_rfc8705_appendix_a() -> None:
    """The thumbprint of RFC 8705's Appendix A certificate is the RFC's own x5t#S256."""
    assert x5t_s256(RFC8705_DER) == "A4DtL2JmUMhAsvJj5tKyn64SqzmuXbMrJa0n761y5v0"


def test_x5t_s256_is_unpadded_base64url_of_sha256_of_der(rsa4096_leaf: Issued) -> None:
    """A thumbprint is 43 base64url characters without '=' that decode to SHA-256(DER)."""
    thumbprint = x5t_s256(rsa4096_leaf.der)
    assert len(thumbprint) == 43 and "=" not in thumbprint
    assert set(thumbprint) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert base64.urlsafe_b64decode(thumbprint + "=") == hashlib.sha256(rsa4096_leaf.der).digest()
    assert thumbprint != x5t_s256(rsa4096_leaf.pem)  # never a hash of the PEM text


# --- load_pem_certificates ---------------------------------------------------------------


def test_load_pem_returns_every_certificate_in_order(leaf: Issued, intermediate: Issued) -> None:
    """A PEM bundle with surrounding text yields its certificates in file order."""
    data = b"subject=CN = Client One\n" + leaf.pem + b"\nBag Attributes\n" + intermediate.pem
    certs = load_pem_certificates(data, source="bundle.pem")
    assert [c.public_bytes(serialization.Encoding.DER) for c in certs] == [leaf.der, intermediate.der]


def test_load_pem_accepts_a_single_der_certificate(leaf: Issued) -> None:
    """One DER certificate is accepted as a convenience."""
    [cert] = load_pem_certificates(leaf.der, source="client.der")
    assert cert.public_bytes(serialization.Encoding.DER) == leaf.der


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "client.pem: empty file"),
        (b" \n\t\n", "client.pem: empty file"),
        (b"hello, this is not a certificate", "expected PEM"),
        (
            b"-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n",
            "contains a PUBLIC KEY, not a CERTIFICATE",
        ),
        (b"-----BEGIN CERTIFICATE-----\nMIIB!!!\n-----END CERTIFICATE-----\n", "not base64"),
        (b"-----BEGIN CERTIFICATE-----\nMIIBBjCBrAIBAjAK\n", "has no END line"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "malformed ASN.1"),
        (b"\x30\x82\x01\x00garbage", "malformed ASN.1"),
        (b"\x30" + b"\x00" * (MAX_CERTIFICATE_BYTES + 1), f"at most {MAX_CERTIFICATE_BYTES}"),
    ],
)
def test_load_pem_refuses_bad_input_with_one_line(data: bytes, expected: str) -> None:
    """Empty, non-PEM, non-certificate, unterminated, malformed or oversize input is refused in one line."""
    with pytest.raises(CertificateError) as excinfo:
        load_pem_certificates(data, source="client.pem")
    message = one_line_error(excinfo)
    assert message.startswith("client.pem: ") and expected in message


@pytest.mark.parametrize(
    "fmt", [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL]
)
def test_load_pem_refuses_a_private_key_with_a_warning(
    leaf: Issued, fmt: serialization.PrivateFormat
) -> None:
    """A pasted private key, alone or next to its certificate, is refused with a warning not to share it."""
    key_pem = leaf.key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    for data in (key_pem, leaf.pem + key_pem):
        with pytest.raises(CertificateError) as excinfo:
            load_pem_certificates(data, source="client.pem")
        assert one_line_error(excinfo) == (
            "client.pem: contains a private key, not a certificate: never share it"
        )


def test_load_pem_refuses_a_der_private_key(leaf: Issued) -> None:
    """A DER (PKCS#8) private key is recognised as a key, not reported as garbage."""
    der_key = leaf.key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(CertificateError, match="contains a private key"):
        load_pem_certificates(der_key, source="key.der")


def mutations(seed: bytes, rng: random.Random, count: int) -> list[bytes]:
    """*count* damaged copies of *seed*: bit flips, truncations, insertions, deletions, splices."""
    out = []
    for _ in range(count):
        data = bytearray(seed)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(max(len(data), 1))
            action = rng.randrange(5)
            if action == 0 and data:
                data[pos] ^= 1 << rng.randrange(8)
            elif action == 1:
                del data[pos:]
            elif action == 2:
                data[pos:pos] = rng.randbytes(rng.randint(1, 8))
            elif action == 3:
                del data[pos : pos + rng.randint(1, 16)]
            else:
                data[pos:pos] = data[rng.randrange(max(len(data), 1)) :][: rng.randint(1, 64)]
        out.append(bytes(data))
    return out


def test_load_pem_raises_only_certificate_error_for_damaged_input(leaf: Issued, rsa4096_leaf: Issued) -> None:
    """Hundreds of deterministic mutations of DER and PEM load or raise CertificateError, nothing else."""
    rng = random.Random(8705)
    inputs = [
        *mutations(leaf.der, rng, 200),
        *mutations(rsa4096_leaf.der, rng, 100),
        *mutations(leaf.pem, rng, 100),
        *(b"\x30" + rng.randbytes(rng.randint(0, 300)) for _ in range(50)),
    ]
    # Damaged DER wrapped in valid PEM armour reaches the ASN.1 parser through the PEM path.
    inputs += [
        b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(d) + b"-----END CERTIFICATE-----\n"
        for d in mutations(leaf.der, rng, 100)
    ]
    loaded = refused = 0
    for data in inputs:
        try:
            certs = load_pem_certificates(data, source="fuzz")
        except CertificateError as exc:
            assert str(exc).startswith("fuzz") and "\n" not in str(exc)
            refused += 1
        else:
            assert certs and all(isinstance(c, x509.Certificate) for c in certs)
            loaded += 1
    assert loaded > 0 and refused > 0  # both paths were exercised


# --- distinguished names -----------------------------------------------------------------


@pytest.mark.parametrize("matching", ["exact", "rfc4518"])
@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("CN=Foo,O=Bar", "cn=Foo, o=Bar"),
        ("CN=Foo,O=Bar", "2.5.4.3=Foo,OID.2.5.4.10=Bar"),
        ("CN=Foo Bar,O=Bar", "CN= Foo Bar ,O=Bar  "),  # unescaped spaces around separators are layout
        ("CN=a+O=b,C=US", "o=b + cn=a,c=US"),
        ("CN=Foo", "CN=#0c03466f6f"),  # RFC 4514 §2.4 hex of a BER UTF8String
        ("CN=Foo", "CN=#1303466f6f"),  # ...and of a PrintableString: the same text
        ("E=client@example.com,CN=x", "1.2.840.113549.1.9.1=#1612636c69656e74406578616d706c652e636f6d,CN=x"),
        ("CN=a\\,b", "CN=a\\2cb"),
        ("CN=\\C3\\A9cole", "CN=\u00e9cole"),
        ("CN=Foo;O=Bar", "CN=Foo,O=Bar"),
    ],
)
def test_normalize_dn_equates_equivalent_names(left: str, right: str, matching: str) -> None:
    """Label case, layout spaces, labels vs OIDs, multi-valued RDN order, string type, hex and escaped forms do not matter."""
    assert normalize_dn(left, matching) == normalize_dn(right, matching)


@pytest.mark.parametrize("matching", ["exact", "rfc4518"])
@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("CN=Foo,O=Bar", "O=Bar,CN=Foo"),  # RDN order is significant
        ("CN=Foo,O=Bar", "CN=Foo,OU=Bar"),  # another attribute type
        ("CN=Foo,O=Bar", "CN=Foo,O=Bar,C=US"),
        ("CN=Foo Bar", "CN=FooBar"),  # whitespace is collapsed, not removed
        ("CN=a+O=b", "CN=a,O=b"),  # one multi-valued RDN is not two RDNs
        ("CN=a\\,O=b", "CN=a,O=b"),  # an escaped comma is part of the value
        ("CN=svc+CN=svc,O=Acme", "CN=svc,O=Acme"),  # an RDN is a multiset (RFC 4517 §4.2.15)
        ("CN=svc,O=Acme+O=Acme", "CN=svc,O=Acme"),
    ],
)
def test_normalize_dn_distinguishes_different_names(left: str, right: str, matching: str) -> None:
    """Names that differ in RDN order, attribute types, values or RDN structure stay different."""
    assert normalize_dn(left, matching) != normalize_dn(right, matching)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("CN=svc,O=Acme", "CN=SVC,O=ACME"),
        ("CN=svc", "CN=\u017fvc"),  # LATIN SMALL LETTER LONG S, which case folds to 's'
        ("CN=svc,O=Acme", "CN=\uff53\uff56\uff43,O=\uff21\uff43\uff4d\uff45"),  # fullwidth: NFKC
        ("CN=Foo Bar", "CN=Foo   Bar"),
        ("CN=Foo\\ ", "CN=Foo"),  # an escaped trailing space is part of the value, but insignificant
    ],
)
def test_look_alikes_match_only_under_rfc4518(left: str, right: str) -> None:
    """Case, compatibility forms and inner spacing differ by default and match under rfc4518."""
    assert normalize_dn(left) != normalize_dn(right)
    assert normalize_dn(left, "exact") != normalize_dn(right, "exact")
    assert normalize_dn(left, "rfc4518") == normalize_dn(right, "rfc4518")


def test_a_repeated_attribute_is_not_collapsed_under_rfc4518() -> None:
    """CN=svc+CN=SVC holds two values; it never matches a one-value CN=svc RDN."""
    assert normalize_dn("CN=svc+CN=SVC,O=Acme", "rfc4518") != normalize_dn("CN=svc,O=Acme", "rfc4518")
    assert normalize_dn("CN=svc,O=ACME+O=Acme", "rfc4518") != normalize_dn("CN=svc,O=Acme", "rfc4518")


@pytest.mark.parametrize("kind", [_ASN1Type.OctetString, _ASN1Type.UTCTime, _ASN1Type.GeneralizedTime])
def test_a_certificate_attribute_that_is_not_a_string_is_refused(kind: _ASN1Type) -> None:
    """A CN held in an OCTET STRING or a time type is refused, not read as the text it holds."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "svc", _type=kind)])
    cert = x509.load_der_x509_certificate(issue(subject).der)
    with pytest.raises(CertificateError, match="not a string"):
        dn_matches("CN=svc", cert)


def test_normalize_dn_refuses_an_unknown_matching() -> None:
    with pytest.raises(CertificateError, match="matching"):
        normalize_dn("CN=a", "loose")


def test_normalize_dn_of_a_certificate_name_equals_its_text() -> None:
    """An x509.Name, multi-valued RDN included, normalises like its RFC 4514 text."""
    name = x509.Name(
        [
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "US")]),
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "Client"),
                ]
            ),
        ]
    )
    assert normalize_dn(name) == normalize_dn("cn=Client + o=Example, c=US")
    assert normalize_dn(name) == normalize_dn(name.rfc4514_string())


@pytest.mark.parametrize(
    "text",
    [
        "garbage",
        "CN",
        "=x",
        "CN=a,,O=b",
        "CN=a,",
        "foo=bar",
        "/C=US/O=Example/CN=x",
        "CN=#zz",
        "CN=#0c05466f6f",
        "CN=#0403737663",
        "CN=x\\zz",
        'CN="quoted"',
        "CN=a<b",
        "CN=\\ff",
        "1.2.=x",
    ],
)
def test_normalize_dn_refuses_bad_text(text: str) -> None:
    """Text that is not an RFC 4514 distinguished name raises CertificateError."""
    with pytest.raises(CertificateError):
        normalize_dn(text)


def test_dn_matches_the_registered_subject(leaf: Issued) -> None:
    """A registration matches the subject exactly by default, regardless of case under rfc4518."""
    assert dn_matches("CN=Client One, OU=Payments, O=Example Corp, C=US", leaf.cert)
    assert not dn_matches("cn=client one, ou=payments, o=example corp, c=us", leaf.cert)
    assert dn_matches("cn=client one, ou=payments, o=example corp, c=us", leaf.cert, "rfc4518")
    assert not dn_matches("CN=Client Two,OU=Payments,O=Example Corp,C=US", leaf.cert)
    assert not dn_matches("CN=Client One,OU=Payments,O=Example Corp", leaf.cert)
    with pytest.raises(CertificateError, match="empty"):
        dn_matches("", leaf.cert)


# --- subject alternative names -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("san_dns", "CLIENT.example.COM", True),
        ("san_dns", "other.example.com", False),
        ("san_dns", "a.clients.example.com", False),  # the certificate's wildcard is not expanded
        ("san_dns", "*.Clients.example.com", True),  # ...but matches as a literal entry
        ("san_uri", "spiffe://example.com/client/one", True),
        ("san_uri", "spiffe://example.com/client/ONE", False),
        ("san_uri", "spiffe://example.com/client/one/", False),
        ("san_uri", "SPIFFE://EXAMPLE.com/client/one", True),  # RFC 5280 §7.4: scheme and host
        ("san_uri", "spiffe://user@example.com/client/one", False),
        ("san_ip", "0:0::1", True),
        ("san_ip", "0000:0000:0000:0000:0000:0000:0000:0001", True),
        ("san_ip", "192.0.2.7", True),
        ("san_ip", "::ffff:192.0.2.7", False),
        ("san_ip", "192.0.2.8", False),
        ("san_email", "Client.One@example.com", True),
        ("san_email", "client.one@Example.COM", False),  # the local part is case-sensitive
        ("san_email", "Client.One@example.org", False),
    ],
)
def test_san_matches_each_kind(leaf: Issued, kind: str, value: str, expected: bool) -> None:
    """Each SAN kind compares by its own rule: DNS, URI, IP address and email (RFC 8705 §2.1.2)."""
    assert san_matches(kind, value, leaf.cert) is expected


def test_san_matches_is_false_without_a_san_extension(ca: Issued) -> None:
    """A certificate with no subjectAltName matches no SAN registration."""
    client = issue("CN=client.example.com", ca)
    assert not san_matches("san_dns", "client.example.com", client.cert)


def test_a_registered_wildcard_matches_only_a_literal_wildcard(ca: Issued) -> None:
    """A registered '*.example.com' does not match a certificate for 'a.example.com'."""
    client = issue("CN=a", ca, sans=(x509.DNSName("a.example.com"),))
    assert not san_matches("san_dns", "*.example.com", client.cert)
    assert san_matches("san_dns", "A.example.com", client.cert)


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("san_ip", "not-an-ip"),
        ("san_ip", "fe80::1%eth0"),
        ("san_email", "no-at-sign"),
        ("san_email", "@example.com"),
        ("san_x400", "anything"),
    ],
)
def test_san_matches_refuses_bad_registrations(leaf: Issued, kind: str, value: str) -> None:
    """A malformed registered value or an unknown SAN kind raises CertificateError instead of answering."""
    with pytest.raises(CertificateError):
        san_matches(kind, value, leaf.cert)


# --- validity ----------------------------------------------------------------------------


def test_validity_problem_names_the_date(leaf: Issued) -> None:
    """Inside the period (bounds included) there is no problem; outside, the reason names the bound."""
    cert = leaf.cert
    assert validity_problem(cert, NOW) is None
    assert validity_problem(cert, cert.not_valid_before_utc) is None
    assert validity_problem(cert, cert.not_valid_after_utc) is None
    after = validity_problem(cert, cert.not_valid_after_utc + timedelta(seconds=1))
    assert after == f"expired on {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
    before = validity_problem(cert, cert.not_valid_before_utc - timedelta(seconds=1))
    assert before == f"not valid before {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}"
    with pytest.raises(ValueError, match="timezone-aware"):
        validity_problem(cert, NOW.replace(tzinfo=None))


# --- chain validation --------------------------------------------------------------------


def test_verify_chain_accepts_a_chain_to_the_truststore(
    leaf: Issued, intermediate: Issued, ca: Issued
) -> None:
    """A leaf sent with its intermediate, chaining to a trusted root, is accepted and returned."""
    cert = verify_chain([leaf.der, intermediate.der], [ca.cert], NOW)
    assert cert.public_bytes(serialization.Encoding.DER) == leaf.der


def test_verify_chain_accepts_dn_only_and_eku_free_leaves(ca: Issued) -> None:
    """A leaf with no subjectAltName (registered by DN) and one with no EKU are both accepted."""
    for client in (issue("CN=DN Only Client", ca), issue("CN=No EKU", ca, eku=None)):
        assert verify_chain([client.der], [ca.cert], NOW) == client.cert


def test_verify_chain_accepts_rsa4096(rsa4096_leaf: Issued, ca: Issued) -> None:
    """An RSA-4096 client certificate validates like any other."""
    assert verify_chain([rsa4096_leaf.der], [ca.cert], NOW) == rsa4096_leaf.cert


def test_verify_chain_accepts_the_maximum_depth(ca: Issued) -> None:
    """A chain with exactly MAX_INTERMEDIATES intermediates is accepted."""
    issuer, chain = ca, list[bytes]()
    for n in range(MAX_INTERMEDIATES):
        issuer = issue(f"CN=Level {n}", issuer, ca=True, eku=None)
        chain.insert(0, issuer.der)
    client = issue("CN=Deep Client", issuer)
    assert verify_chain([client.der, *chain], [ca.cert], NOW) == client.cert


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("untrusted root", "does not chain to a trusted CA"),
        ("missing intermediate", "does not chain to a trusted CA"),
        ("expired", "client certificate expired on "),
        ("not yet valid", "client certificate not valid before "),
        ("serverAuth only", "lacks the clientAuth extended key usage"),
        ("anyExtendedKeyUsage", "lacks the clientAuth extended key usage"),
        ("CA as leaf", "basicConstraints"),
        ("expired intermediate", "CA certificate in the chain is expired or not yet valid"),
        ("non-CA intermediate", "basicConstraints"),
    ],
)
def test_verify_chain_refuses(case: str, expected: str, ca: Issued, intermediate: Issued) -> None:
    """Each kind of untrusted or unusable chain is refused with a short, specific reason."""
    other_root = issue("CN=Other Root", ca=True, eku=None)
    chains = {
        "untrusted root": lambda: [issue("CN=Client", other_root).der],
        "missing intermediate": lambda: [issue("CN=Client", intermediate).der],
        "expired": lambda: [
            issue("CN=Client", ca, not_before=NOW - timedelta(days=9), not_after=NOW - timedelta(days=1)).der
        ],
        "not yet valid": lambda: [issue("CN=Client", ca, not_before=NOW + timedelta(days=1)).der],
        "serverAuth only": lambda: [issue("CN=Client", ca, eku=(ExtendedKeyUsageOID.SERVER_AUTH,)).der],
        "anyExtendedKeyUsage": lambda: [
            issue("CN=Client", ca, eku=(ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,)).der
        ],
        "CA as leaf": lambda: [issue("CN=Client", ca, ca=True).der],
        "expired intermediate": lambda: (lambda i: [issue("CN=Client", i).der, i.der])(
            issue("CN=Old CA", ca, ca=True, eku=None, not_after=NOW - timedelta(days=1))
        ),
        "non-CA intermediate": lambda: (lambda i: [issue("CN=Client", i).der, i.der])(
            issue("CN=Not A CA", ca, eku=None)
        ),
    }
    with pytest.raises(CertificateError) as excinfo:
        verify_chain(chains[case](), [ca.cert], NOW)
    assert expected in one_line_error(excinfo)


def _constrained(ca: Issued, *permitted: x509.GeneralName) -> Issued:
    return issue(
        "CN=Constrained CA",
        ca,
        ca=True,
        eku=None,
        constraints=x509.NameConstraints(permitted_subtrees=list(permitted), excluded_subtrees=None),
    )


@pytest.mark.parametrize(
    ("constraint", "email", "ok"),
    [
        ("svc@partner.example", "svc@partner.example", True),  # one mailbox
        ("svc@partner.example", "other@partner.example", False),
        ("partner.example", "svc@PARTNER.example", True),  # one host, ASCII case-insensitive
        ("partner.example", "svc@a.partner.example", False),
        (".partner.example", "svc@a.partner.example", True),  # any host in the domain
        (".partner.example", "svc@partner.example", False),
    ],
)
def test_email_constraints_on_the_subject(ca: Issued, constraint: str, email: str, ok: bool) -> None:
    """rfc822Name subtrees apply to the subject's emailAddress as RFC 5280 §4.2.1.10 defines them."""
    sub = _constrained(ca, x509.RFC822Name(constraint))
    name = x509.Name(
        [x509.NameAttribute(NameOID.EMAIL_ADDRESS, email), x509.NameAttribute(NameOID.COMMON_NAME, "svc")]
    )
    client = issue(name, sub)
    if ok:
        assert verify_chain([client.der, sub.der], [ca.cert], NOW) == client.cert
    else:
        with pytest.raises(CertificateError, match="name constraints"):
            verify_chain([client.der, sub.der], [ca.cert], NOW)


@pytest.mark.parametrize(
    ("email", "string_type"),
    [
        ("admin@\uff56ictim.com".encode().decode("unicode_escape"), _ASN1Type.UTF8String),  # fullwidth v
        ("admin@victim.com ", _ASN1Type.IA5String),
        ("admin@victim.com\x1f", _ASN1Type.IA5String),
        ("admin@victim.com", _ASN1Type.UTF8String),
        ("no-at-sign", _ASN1Type.IA5String),
    ],
    ids=["fullwidth", "trailing-space", "control", "utf8string", "no-at-sign"],
)
def test_subject_email_must_be_a_plain_mailbox(ca: Issued, email: str, string_type: _ASN1Type) -> None:
    """An emailAddress that is not an IA5String mailbox of printable characters is refused
    (RFC 5280 §4.1.2.6), so that a sub-CA excluded from victim.com cannot issue one that the
    constraint check reads as another domain and RFC 4518 matching as victim.com."""
    excluded = x509.NameConstraints(
        permitted_subtrees=None,
        excluded_subtrees=[x509.RFC822Name("victim.com"), x509.RFC822Name(".victim.com")],
    )
    sub = issue("CN=Excluding CA", ca, ca=True, eku=None, constraints=excluded)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "svc"),
            x509.NameAttribute(NameOID.EMAIL_ADDRESS, email, _type=string_type),
        ]
    )
    client = issue(name, sub)
    with pytest.raises(CertificateError, match="not a plain mailbox"):
        verify_chain([client.der, sub.der], [ca.cert], NOW)


@pytest.mark.parametrize(
    "make, where",
    [
        (lambda: pki.rsa_key_with_exponent(2048, 2000), "intermediate certificate 1"),
        (lambda: rsa.generate_private_key(public_exponent=3, key_size=2048), "intermediate certificate 1"),
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024), "client certificate"),
    ],
    ids=["ca-huge-exponent", "ca-e3", "leaf-rsa-1024"],
)
def test_keys_no_client_or_ca_needs_are_refused_before_any_signature_check(
    ca: Issued, make, where: str
) -> None:  # noqa: ANN001
    """A chain whose CA holds an RSA key with a huge public exponent would make every signature
    check of the path builder hundreds of times as costly; the chain is refused from its keys
    alone (the message says which certificate), before the verifier checks any signature."""
    key = make()
    if where == "client certificate":
        client = issue("CN=weak", ca, key=key)
        chain = [client.der]
    else:
        sub = issue("CN=Costly CA", ca, ca=True, eku=None, key=key)
        client = issue("CN=svc", sub)
        chain = [client.der, sub.der]
    with pytest.raises(CertificateError, match=f"{where} refused"):
        verify_chain(chain, [ca.cert], NOW)


def test_an_anchors_non_critical_directory_name_constraint_is_applied() -> None:
    """A directoryName constraint is applied wherever it sits in the path, the anchor included."""
    acme = x509.NameConstraints(
        permitted_subtrees=[x509.DirectoryName(x509.Name.from_rfc4514_string("O=Acme"))],
        excluded_subtrees=None,
    )
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name.from_rfc4514_string("CN=Acme Root,O=Acme")
    root = Issued(issue(name, ca=True, eku=None, key=key).cert, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
    )
    for extension in root.cert.extensions:
        builder = builder.add_extension(extension.value, critical=extension.critical)
    root = Issued(builder.add_extension(acme, critical=False).sign(key, hashes.SHA256()), key)
    inside = issue("CN=svc,O=Acme", root)
    outside = issue("CN=svc,O=Evil", root)
    assert verify_chain([inside.der], [root.cert], NOW) == inside.cert
    with pytest.raises(CertificateError, match="directoryName name constraints"):
        verify_chain([outside.der], [root.cert], NOW)


def test_a_uri_constraint_refuses_a_uri_san_with_a_reason(ca: Issued) -> None:
    """URI constraints cannot be checked; a certificate with a URI SAN under one is refused, saying why."""
    sub = _constrained(ca, x509.UniformResourceIdentifier(".partner.example"))
    client = issue("CN=svc", sub, sans=(x509.UniformResourceIdentifier("https://a.partner.example/x"),))
    with pytest.raises(CertificateError, match="name constraint of a kind that cannot be checked"):
        verify_chain([client.der, sub.der], [ca.cert], NOW)


def test_verify_chain_bounds_work_before_parsing(leaf: Issued, intermediate: Issued, ca: Issued) -> None:
    """Too many intermediates or an oversize certificate are refused by count and size, before any parsing."""
    with pytest.raises(CertificateError, match=f"at most {MAX_INTERMEDIATES} are accepted"):
        verify_chain([leaf.der] + [b"not even DER"] * (MAX_INTERMEDIATES + 1), [ca.cert], NOW)
    with pytest.raises(CertificateError, match=f"at most {MAX_CERTIFICATE_BYTES} are accepted"):
        verify_chain([b"\x30" * (MAX_CERTIFICATE_BYTES + 1)], [ca.cert], NOW)
    huge = issue(
        "CN=Huge",
        ca,
        sans=tuple(x509.DNSName(f"host-{n:05d}.a-rather-long-domain.example.com") for n in range(400)),
    )
    assert len(huge.der) > MAX_CERTIFICATE_BYTES  # a genuine certificate, just too big
    with pytest.raises(CertificateError, match=r"certificate is \d+ bytes"):
        verify_chain([huge.der], [ca.cert], NOW)


def test_verify_chain_refuses_decoy_intermediates(ca: Issued) -> None:
    """Intermediates that all claim the leaf's issuer name but did not sign it are refused cleanly."""
    decoys = [issue("CN=Decoy CA", ca, ca=True, eku=None) for _ in range(MAX_INTERMEDIATES)]
    leaf = issue("CN=Victim", issue("CN=Decoy CA", ca=True, eku=None))
    with pytest.raises(CertificateError) as excinfo:
        verify_chain([leaf.der, *(d.der for d in decoys)], [ca.cert], NOW)
    assert "signature" in one_line_error(excinfo)


def test_verify_chain_refuses_garbage_and_empty_input(leaf: Issued, ca: Issued) -> None:
    """Malformed DER, an empty chain and an empty truststore are refused with CertificateError."""
    with pytest.raises(CertificateError, match=r"malformed ASN\.1"):
        verify_chain([leaf.der[:-10]], [ca.cert], NOW)
    with pytest.raises(CertificateError, match="no client certificate"):
        verify_chain([], [ca.cert], NOW)
    with pytest.raises(CertificateError, match="no trust anchors"):
        verify_chain([leaf.der], [], NOW)


# --- forwarded certificates --------------------------------------------------------------


def forwarded_forms(pem: bytes, der: bytes) -> dict[str, str]:
    text = pem.decode()
    return {
        "rfc9440": ":" + base64.b64encode(der).decode() + ":",
        "nginx": quote(text, safe=""),
        "pem": text,
        "base64-der": base64.b64encode(der).decode(),
    }


@pytest.mark.parametrize("fmt", ["rfc9440", "nginx", "pem", "base64-der"])
def test_parse_forwarded_certificate_each_format(fmt: str) -> None:
    """Each proxy format, named or detected by 'auto', yields the certificate's exact DER."""
    value = forwarded_forms(RFC8705_PEM, RFC8705_DER)[fmt]
    assert parse_forwarded_certificate(value, fmt) == RFC8705_DER
    assert parse_forwarded_certificate(value, "auto") == RFC8705_DER
    assert x5t_s256(parse_forwarded_certificate(value, fmt)) == "A4DtL2JmUMhAsvJj5tKyn64SqzmuXbMrJa0n761y5v0"


def test_parse_forwarded_rfc9440_value() -> None:
    """An RFC 9440 Client-Cert value parses with or without base64 padding and surrounding spaces."""
    encoded = base64.b64encode(RFC8705_DER).decode()
    assert encoded.endswith("=")  # so that the unpadded case below really drops padding
    assert parse_forwarded_certificate(f" :{encoded}: ", "rfc9440") == RFC8705_DER
    assert parse_forwarded_certificate(f":{encoded.rstrip('=')}:", "rfc9440") == RFC8705_DER


def test_parse_forwarded_nginx_keeps_a_literal_plus() -> None:
    """A percent-encoded PEM whose '+' was left unencoded still decodes: '+' is never read as a space."""
    value = quote(RFC8705_PEM.decode(), safe="+/=")
    assert "+" in value and "%0A" in value
    assert parse_forwarded_certificate(value, "nginx") == RFC8705_DER
    assert parse_forwarded_certificate(value, "auto") == RFC8705_DER


@pytest.mark.parametrize(
    "mangle",
    [
        lambda pem: pem.replace("\n", " "),  # Apache-style: newlines became spaces
        lambda pem: pem.replace("\n", "\\n"),  # JSON-style escapes
        lambda pem: pem.replace("\n", "\t"),
    ],
)
def test_parse_forwarded_pem_with_lost_newlines(mangle: Callable[[str], str]) -> None:
    """PEM whose newlines a proxy replaced by spaces, tabs or '\\n' escapes still parses."""
    value = mangle(RFC8705_PEM.decode())
    assert "\n" not in value
    assert parse_forwarded_certificate(value, "pem") == RFC8705_DER
    assert parse_forwarded_certificate(value, "auto") == RFC8705_DER


@pytest.mark.parametrize(
    ("value", "fmt"),
    [
        ("MIIB", "rfc9440"),
        (":MIIB", "rfc9440"),
        (":MII*B:", "rfc9440"),
        ("::", "rfc9440"),
        (":" + base64.b64encode(b"\x30\x03abc").decode() + ":", "rfc9440"),
        ("-----BEGIN%20CERTIFICATE-----%0AMIIB%zz", "nginx"),
        ("hello%20world", "nginx"),
        ("%2D%2D%2D%2D%2DBEGIN%20CERTIFICATE%2D%2D%2D%2D%2D%0A%FF", "nginx"),
        ("-----BEGIN CERTIFICATE----- MIIB", "pem"),
        ("no markers at all", "pem"),
        ("-----BEGIN PRIVATE KEY----- MIIB -----END PRIVATE KEY-----", "pem"),
        ("MII*B", "base64-der"),
        ("AAAA", "base64-der"),
        ("", "base64-der"),
        ("   ", "auto"),
        ("é", "auto"),
        ("A" * (MAX_HEADER_CHARS + 1), "base64-der"),
        (":AAAA:", "json"),
    ],
)
def test_parse_forwarded_certificate_refuses_garbage(value: str, fmt: str) -> None:
    """Malformed, non-certificate, non-ASCII, oversize or unknown-format values raise CertificateError."""
    with pytest.raises(CertificateError):
        parse_forwarded_certificate(value, fmt)


def test_parse_forwarded_pem_refuses_two_certificates(leaf: Issued, intermediate: Issued) -> None:
    """A header carrying two certificates is refused rather than guessing which is the client's."""
    with pytest.raises(CertificateError, match="exactly one"):
        parse_forwarded_certificate((leaf.pem + intermediate.pem).decode(), "pem")


def test_parse_forwarded_raises_only_certificate_error_for_damaged_values() -> None:
    """Deterministic mutations of every header format either parse to DER or raise CertificateError."""
    rng = random.Random(9440)
    parsed = refused = 0
    for fmt, value in forwarded_forms(RFC8705_PEM, RFC8705_DER).items():
        for damaged in mutations(value.encode(), rng, 60):
            try:
                der = parse_forwarded_certificate(damaged.decode("latin-1"), rng.choice([fmt, "auto"]))
            except CertificateError:
                refused += 1
            else:
                assert x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.DER) == der
                parsed += 1
    assert refused > 0 and parsed + refused == 240
