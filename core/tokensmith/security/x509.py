"""X.509 certificates: PEM and DER input, RFC 4514 names, subject alternative names, chains.

What anything that judges a client certificate needs, whoever obtained it (the mutual-TLS
specifics, RFC 8705 and the proxy headers of RFC 9440, are in ``oauth/mtls.py``; the
``x5t#S256`` thumbprint is in ``security/jose.py``):

- ``load_pem_certificates``: certificates an administrator hands us, refused with one line;
  ``parse_der_certificate``, ``pem_certificate_ders`` and ``decode_base64``, its parts.
- ``normalize_dn``, ``dn_matches`` and ``san_matches``: the checks of a registered subject
  (RFC 8705 §2.1.2 uses them); distinguished names are RFC 4514 text.
- ``validity_problem`` and ``verify_chain``: PKI validation against trust anchors.

Every function refuses bad certificate input with ``CertificateError`` and nothing else, and
bounds its work before parsing (RFC 8705 §7.5 warns about X.509 parsing complexity).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime
from types import MappingProxyType

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

__all__ = [
    "CertificateError",
    "MAX_CERTIFICATE_BYTES",
    "MAX_INTERMEDIATES",
    "SAN_KINDS",
    "DN_MATCHING",
    "load_pem_certificates",
    "parse_der_certificate",
    "pem_certificate_ders",
    "decode_base64",
    "normalize_dn",
    "dn_matches",
    "san_matches",
    "validity_problem",
    "verify_chain",
]

# A client certificate with an RSA-4096 key and a handful of SANs is about 2 KiB. 16 KiB
# leaves eight times that for long SAN lists while capping the DER parsing, hashing and
# name-matching work an unauthenticated client can ask of us per certificate.
MAX_CERTIFICATE_BYTES = 16 * 1024
# Path building tries candidate issuers; capping the chain a client may send (and the depth
# the verifier will build) keeps that search small. Real client PKIs use one or two.
MAX_INTERMEDIATES = 8
# A truststore bundle (even a full public root store) is a few hundred KiB.
MAX_PEM_INPUT_BYTES = 1024 * 1024

SAN_KINDS = ("san_dns", "san_uri", "san_ip", "san_email")


class CertificateError(ValueError):
    """A certificate, chain, distinguished name or forwarded header was refused; one line."""


# --- loading -----------------------------------------------------------------------------


def parse_der_certificate(der: bytes, source: str) -> x509.Certificate:
    """One DER certificate, fully parsed, or CertificateError."""
    if not der:
        raise CertificateError(f"{source}: empty certificate")
    if len(der) > MAX_CERTIFICATE_BYTES:
        raise CertificateError(
            f"{source}: certificate is {len(der)} bytes; at most {MAX_CERTIFICATE_BYTES} are accepted"
        )
    try:
        cert = x509.load_der_x509_certificate(der)
        # cryptography parses names and extensions lazily; read them now so that malformed
        # ones fail here, once, rather than later in a matcher.
        _ = (cert.subject, cert.issuer, cert.extensions, cert.not_valid_before_utc, cert.not_valid_after_utc)
    except Exception as exc:  # noqa: BLE001 - untrusted input: one error class whatever the cause
        raise CertificateError(f"{source}: not a valid X.509 certificate (malformed ASN.1)") from exc
    return cert


def _pem_blocks(text: str, source: str) -> list[tuple[str, str]]:
    """The (label, body) of each PEM block in *text*, scanned in linear time."""
    blocks: list[tuple[str, str]] = []
    pos = 0
    while (start := text.find("-----BEGIN ", pos)) != -1:
        close = text.find("-----", start + 11)
        label = text[start + 11 : close] if close != -1 else ""
        if len(label) > 40 or not re.fullmatch(r"[A-Z0-9]+(?: [A-Z0-9]+){0,5}", label):
            raise CertificateError(f"{source}: malformed PEM '-----BEGIN' line")
        end_line = f"-----END {label}-----"
        end = text.find(end_line, close + 5)
        if end == -1:
            raise CertificateError(f"{source}: '-----BEGIN {label}-----' has no END line")
        blocks.append((label, text[close + 5 : end]))
        pos = end + len(end_line)
    return blocks


def decode_base64(text: str, source: str) -> bytes:
    """Standard base64, '=' padding optional (RFC 8941 §4.2.7 asks parsers to tolerate it)."""
    if not re.fullmatch(r"[A-Za-z0-9+/]*={0,2}", text):
        raise CertificateError(f"{source}: not base64")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise CertificateError(f"{source}: not base64") from None


def pem_certificate_ders(text: str, source: str) -> list[bytes]:
    """The DER of each CERTIFICATE block; a private key anywhere is refused outright."""
    if "PRIVATE KEY-----" in text:
        raise CertificateError(f"{source}: contains a private key, not a certificate: never share it")
    ders = []
    for label, body in _pem_blocks(text, source):
        if label != "CERTIFICATE":
            raise CertificateError(f"{source}: contains a {label}, not a CERTIFICATE")
        # Proxies and copy-paste turn newlines into spaces or into the two characters '\n'.
        ders.append(decode_base64("".join(re.sub(r"\\[nrt]", " ", body).split()), source))
    return ders


def _is_der_private_key(data: bytes) -> bool:
    try:
        serialization.load_der_private_key(data, password=None, unsafe_skip_rsa_key_validation=True)
    except TypeError:  # an encrypted private key: still a key
        return True
    except Exception:  # noqa: BLE001 - anything else simply is not a key
        return False
    return True


def load_pem_certificates(data: bytes, *, source: str) -> list[x509.Certificate]:
    """Every certificate in a PEM file, in order; *source* names the file in errors.

    As a convenience a single DER certificate is accepted too, since ``keytool -export`` and
    many CA portals hand those out. Text around PEM blocks (``openssl x509 -text`` output,
    bag attributes) is ignored. Any private key in the input is refused, with a warning,
    even next to certificates. Raises only ``CertificateError``, whatever the bytes.
    """
    data = bytes(data)
    if len(data) > MAX_PEM_INPUT_BYTES:
        raise CertificateError(f"{source}: {len(data)} bytes is too large for a certificate file")
    if not data.strip():
        raise CertificateError(f"{source}: empty file")
    text = data.decode("latin-1")  # never fails; PEM itself is ASCII
    ders = pem_certificate_ders(text, source)
    if ders:
        many = len(ders) > 1
        return [
            parse_der_certificate(der, f"{source}: certificate {n}" if many else source)
            for n, der in enumerate(ders, 1)
        ]
    if "-----BEGIN" not in text and data[:1] == b"\x30":  # an ASN.1 SEQUENCE: maybe DER
        try:
            return [parse_der_certificate(data, source)]
        except CertificateError:
            if _is_der_private_key(data):
                raise CertificateError(
                    f"{source}: contains a private key, not a certificate: never share it"
                ) from None
            raise
    raise CertificateError(
        f"{source}: not a certificate: expected PEM ('-----BEGIN CERTIFICATE-----') or DER"
    )


# --- distinguished names (RFC 4514) ------------------------------------------------------

# RFC 4514 §3 names these; the rest are the labels OpenSSL, Java and Windows print.
_LABELS = MappingProxyType(
    {
        "CN": NameOID.COMMON_NAME,
        "L": NameOID.LOCALITY_NAME,
        "ST": NameOID.STATE_OR_PROVINCE_NAME,
        "S": NameOID.STATE_OR_PROVINCE_NAME,
        "O": NameOID.ORGANIZATION_NAME,
        "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
        "C": NameOID.COUNTRY_NAME,
        "STREET": NameOID.STREET_ADDRESS,
        "DC": NameOID.DOMAIN_COMPONENT,
        "UID": NameOID.USER_ID,
        "SERIALNUMBER": NameOID.SERIAL_NUMBER,
        "E": NameOID.EMAIL_ADDRESS,
        "EMAILADDRESS": NameOID.EMAIL_ADDRESS,
        "SN": NameOID.SURNAME,
        "SURNAME": NameOID.SURNAME,
        "GN": NameOID.GIVEN_NAME,
        "GIVENNAME": NameOID.GIVEN_NAME,
        "T": NameOID.TITLE,
        "TITLE": NameOID.TITLE,
        "INITIALS": NameOID.INITIALS,
        "PSEUDONYM": NameOID.PSEUDONYM,
        "DNQUALIFIER": NameOID.DN_QUALIFIER,
        "POSTALCODE": NameOID.POSTAL_CODE,
        "BUSINESSCATEGORY": NameOID.BUSINESS_CATEGORY,
        "ORGANIZATIONIDENTIFIER": NameOID.ORGANIZATION_IDENTIFIER,
    }
)
# An attribute type: a numeric OID (optionally 'OID.'-prefixed) or a descriptor (RFC 4512 §1.4).
_TYPE = re.compile(
    r"\s*(?:(?:OID\.)?((?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+)"
    r"|([A-Za-z][A-Za-z0-9-]*))\s*=\s*",
    re.IGNORECASE,
)
_ESCAPABLE = ' "#+,;<=>\\'
_HEX_VALUE = re.compile(r"#((?:[0-9A-Fa-f]{2})+)\s*")
# ASN.1 string types a '#' hex value may carry (RFC 4514 §2.4), and how their octets read.
_STRING_TAGS = MappingProxyType(
    {
        0x0C: "utf-8",
        0x12: "latin-1",
        0x13: "latin-1",
        0x14: "latin-1",
        0x16: "latin-1",
        0x1A: "latin-1",
        0x1C: "utf-32-be",
        0x1E: "utf-16-be",
    }
)

_Value = str | bytes


def _ber_value(octets: bytes) -> _Value:
    """The value of a BER-encoded '#hex' attribute value: text for string types, else octets."""
    if len(octets) < 2:
        raise CertificateError("malformed '#' value in distinguished name")
    tag, length, rest = octets[0], octets[1], octets[2:]
    if length & 0x80:  # long form: the next (length & 0x7f) octets hold the length
        size = length & 0x7F
        if not 1 <= size <= 3 or len(rest) < size:
            raise CertificateError("malformed '#' value in distinguished name")
        length, rest = int.from_bytes(rest[:size], "big"), rest[size:]
    if length != len(rest):
        raise CertificateError("malformed '#' value in distinguished name")
    if tag not in _STRING_TAGS:
        return bytes(rest)
    try:
        return rest.decode(_STRING_TAGS[tag])
    except UnicodeDecodeError:
        raise CertificateError("malformed '#' value in distinguished name") from None


def _read_value(text: str, i: int) -> tuple[_Value, int]:
    """The attribute value starting at *i* (RFC 4514 §3) and the index after it.

    Unescaped spaces before a separator are dropped: RFC 4514 §2.4 requires a value's own
    trailing space to be escaped ('\\ '), so an unescaped one is layout, not value.
    """
    if text.startswith("#", i):
        m = _HEX_VALUE.match(text, i)
        if not m or (m.end() < len(text) and text[m.end()] not in ",;+"):
            raise CertificateError("malformed '#' value in distinguished name")
        return _ber_value(bytes.fromhex(m.group(1))), m.end()
    out = bytearray()
    kept = 0  # octets up to the last escaped one are never trimmed
    while i < len(text) and text[i] not in ",;+":
        c = text[i]
        if c == "\\":
            pair = text[i + 1 : i + 3]
            if pair[:1] and pair[0] in _ESCAPABLE:
                out += pair[0].encode()
                kept = len(out)
                i += 2
                continue
            if re.fullmatch(r"[0-9A-Fa-f]{2}", pair):
                out.append(int(pair, 16))  # escaped UTF-8 octet, e.g. \C3\A9
                kept = len(out)
                i += 3
                continue
            raise CertificateError("bad escape in distinguished name")
        if c in '"<>\x00':
            raise CertificateError(f"distinguished name value has an unescaped {c!r}")
        out += c.encode()
        i += 1
    while len(out) > kept and out[-1:] == b" ":
        del out[-1]
    try:
        return out.decode("utf-8"), i
    except UnicodeDecodeError:
        raise CertificateError("distinguished name escapes are not UTF-8") from None


def _parse_rfc4514(text: str) -> list[list[tuple[str, _Value]]]:
    """RDNs in written (RFC 4514) order; spaces around separators are tolerated."""
    if text.startswith("/"):
        raise CertificateError(
            "looks like OpenSSL's '/C=../CN=..' form; "
            "write the distinguished name as RFC 4514 'CN=..,O=..,C=..'"
        )
    if not text.strip():
        return []
    rdns: list[list[tuple[str, _Value]]] = [[]]
    i = 0
    while True:
        m = _TYPE.match(text, i)
        if not m:
            raise CertificateError(f"bad distinguished name at character {i + 1}")
        if m.group(1):
            oid = m.group(1)
        elif (known := _LABELS.get(m.group(2).upper())) is not None:
            oid = known.dotted_string
        else:
            raise CertificateError(f"unknown attribute type {m.group(2)!r}; write its dotted OID")
        value, i = _read_value(text, m.end())
        rdns[-1].append((oid, value))
        if i == len(text):
            return rdns
        if text[i] in ",;":
            rdns.append([])
        i += 1


#: How attribute values are compared: ``exact`` (the default) or ``rfc4518``.
DN_MATCHING = ("exact", "rfc4518")

# The ASN.1 string types a certificate's attribute value may have (RFC 5280 §4.1.2.4,
# DirectoryString plus the IA5String of emailAddress and domainComponent, PrintableString
# of countryName and serialNumber, NumericString, VisibleString). cryptography also hands
# out OCTET STRING, UTCTime and other non-string values as text; those are refused.
_STRING_TYPES = frozenset(
    {
        _ASN1Type.UTF8String,
        _ASN1Type.PrintableString,
        _ASN1Type.IA5String,
        _ASN1Type.T61String,
        _ASN1Type.BMPString,
        _ASN1Type.UniversalString,
        _ASN1Type.VisibleString,
        _ASN1Type.NumericString,
    }
)
# x500UniqueIdentifier is a BIT STRING by definition (RFC 4519 §2.39); it compares as octets.
_BIT_STRING_OIDS = frozenset({"2.5.4.45"})


def _comparable(value: _Value, matching: str) -> str:
    """The value in a form whose equality is the chosen matching rule.

    ``exact``: the text itself, so two values match only if they are the same characters
    (a PrintableString and a UTF8String of the same text do match: both are decoded first).
    ``rfc4518``: close to RFC 4518 caseIgnoreMatch: case folded, NFKC, insignificant spaces
    collapsed. Non-string values compare as their octets in both.
    """
    if isinstance(value, bytes):
        return "#" + value.hex()
    if matching == "rfc4518":
        value = " ".join(unicodedata.normalize("NFKC", value.casefold()).split())
    escaped = re.sub(r"([\\,+=])", r"\\\1", value)
    return "\\" + escaped if escaped.startswith("#") else escaped


def _certificate_rdns(name: x509.Name) -> list[list[tuple[str, _Value]]]:
    """The RDNs of a certificate name in RFC 4514 order; non-string values are refused."""
    try:
        # Name.rdns is in ASN.1 order, the reverse of RFC 4514 text (RFC 4514 §2.1).
        rdns = [list(rdn) for rdn in reversed(name.rdns)]
    except Exception as exc:  # noqa: BLE001 - a malformed name from an untrusted certificate
        raise CertificateError("malformed distinguished name in certificate") from exc
    out = []
    for rdn in rdns:
        values: list[tuple[str, _Value]] = []
        for attribute in rdn:
            oid = attribute.oid.dotted_string
            kind = getattr(attribute, "_type", None)
            if oid in _BIT_STRING_OIDS and isinstance(attribute.value, bytes):
                values.append((oid, attribute.value))
                continue
            if kind not in _STRING_TYPES or not isinstance(attribute.value, str):
                label = getattr(kind, "name", "unknown type")
                raise CertificateError(
                    f"certificate name attribute {oid} is an ASN.1 {label}, "
                    "not a string; such names are refused"
                )
            values.append((oid, attribute.value))
        out.append(values)
    return out


def normalize_dn(text_or_name: str | x509.Name, matching: str = "exact") -> str:
    """A comparison form of a distinguished name; equal forms mean matching names.

    RFC 4517 §4.2.15 distinguishedNameMatch: the same number of RDNs in the same order
    (RFC 4514 order, most specific first), and each RDN holding the same attribute values,
    counted: a multi-valued RDN is a multiset, so ``CN=a+O=b`` equals ``O=b+CN=a`` but
    ``CN=a+CN=A`` never equals ``CN=a``. Attribute types become dotted OIDs, so ``CN``,
    ``cn`` and ``2.5.4.3`` agree. Values compare by *matching* (see ``_comparable``); a
    certificate attribute that is not an ASN.1 string type is refused. Bad text or an
    unknown *matching* raises ``CertificateError``.
    """
    if matching not in DN_MATCHING:
        raise CertificateError(f"unknown DN matching {matching!r}; expected one of {', '.join(DN_MATCHING)}")
    if isinstance(text_or_name, x509.Name):
        rdns = _certificate_rdns(text_or_name)
    else:
        rdns = _parse_rfc4514(text_or_name)
        for oid, value in (pair for rdn in rdns for pair in rdn):
            if isinstance(value, bytes) and oid not in _BIT_STRING_OIDS:
                # Certificates with such values are refused, so this could never match.
                raise CertificateError(f"the '#' value of {oid} is not an ASN.1 string type")
    return ",".join("+".join(sorted(f"{oid}={_comparable(v, matching)}" for oid, v in rdn)) for rdn in rdns)


def dn_matches(registered: str, cert: x509.Certificate, matching: str = "exact") -> bool:
    """Whether *cert*'s subject is the registered ``tls_client_auth_subject_dn`` (§2.1.2).

    *matching* is ``exact`` (default) or ``rfc4518``; see ``normalize_dn``. An empty
    registration is refused rather than allowed to match an empty subject.
    """
    expected = normalize_dn(registered, matching)
    if not expected:
        raise CertificateError("registered subject DN is empty")
    try:
        subject = cert.subject
    except Exception as exc:  # noqa: BLE001 - a malformed name from an untrusted certificate
        raise CertificateError("malformed subject in certificate") from exc
    return normalize_dn(subject, matching) == expected


# --- subject alternative names -----------------------------------------------------------


def _ascii_lower(text: str) -> str:
    # DNS names and mail domains are case-insensitive in ASCII only (RFC 4343 §2), and
    # bytes.lower() touches only ASCII letters.
    return text.encode("utf-8", "surrogatepass").lower().decode("utf-8", "surrogatepass")


_URI_PARTS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):(?://([^/?#]*))?(.*)", re.S)


def _uri_key(uri: str) -> str:
    """*uri* with its scheme and host lower-cased and nothing else changed.

    RFC 5280 §7.4: "conforming implementations MUST compare the scheme and host without case
    sensitivity, but assume the remainder of the scheme-specific-part is case sensitive".
    No percent-decoding, default ports or dot segments are normalised: a CA is expected to
    issue a URI as the client registered it, and looser rules would only widen the match.
    """
    m = _URI_PARTS.fullmatch(uri)
    if m is None:
        return uri  # not an absolute URI: compared as it is
    scheme, authority, rest = m.group(1), m.group(2), m.group(3)
    if authority is None:
        return f"{_ascii_lower(scheme)}:{rest}"
    userinfo, at, hostport = authority.rpartition("@")
    end = hostport.find("]") + 1 if hostport.startswith("[") else len(hostport.partition(":")[0])
    host, port = hostport[:end], hostport[end:]
    return f"{_ascii_lower(scheme)}://{userinfo}{at}{_ascii_lower(host)}{port}{rest}"


def san_matches(kind: str, value: str, cert: x509.Certificate) -> bool:
    """Whether *cert* has a subjectAltName entry matching a registration (RFC 8705 §2.1.2).

    *kind* is ``san_dns`` (ASCII case-insensitive, exact: ``*.example.com`` matches only
    that literal entry), ``san_uri`` (scheme and host ASCII case-insensitive, the rest
    exact, RFC 5280 §7.4), ``san_ip`` (address equality, so ``::1``
    equals ``0:0::1``) or ``san_email`` (local part exact, domain case-insensitive).
    A malformed registration or certificate raises ``CertificateError``.
    """
    if kind not in SAN_KINDS:
        raise CertificateError(f"unknown SAN kind {kind!r}; expected one of {', '.join(SAN_KINDS)}")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    except Exception as exc:  # noqa: BLE001 - a malformed extension in an untrusted certificate
        raise CertificateError("malformed subjectAltName in certificate") from exc
    if kind == "san_dns":
        return any(
            _ascii_lower(name) == _ascii_lower(value) for name in san.get_values_for_type(x509.DNSName)
        )
    if kind == "san_uri":
        wanted = _uri_key(value)
        return any(_uri_key(uri) == wanted for uri in san.get_values_for_type(x509.UniformResourceIdentifier))
    if kind == "san_ip":
        try:
            # Certificates carry bare octets; a zone index ('%eth0') can never match.
            address = ipaddress.ip_address(value) if "%" not in value else None
        except ValueError:
            address = None
        if address is None:
            raise CertificateError(f"registered san_ip {value!r} is not an IP address")
        return address in san.get_values_for_type(x509.IPAddress)
    local, at, domain = value.rpartition("@")
    if not (local and at and domain):
        raise CertificateError(f"registered san_email {value!r} is not an email address")
    for mailbox in san.get_values_for_type(x509.RFC822Name):
        cert_local, cert_at, cert_domain = mailbox.rpartition("@")
        if cert_at and cert_local == local and _ascii_lower(cert_domain) == _ascii_lower(domain):
            return True
    return False


# --- validity and chain validation -------------------------------------------------------


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def validity_problem(cert: x509.Certificate, now: datetime) -> str | None:
    """``"expired on ..."``, ``"not valid before ..."``, or None inside the validity period.

    Both bounds are inclusive (RFC 5280 §4.1.2.5). *now* must be timezone-aware.
    """
    now = _utc(now)
    if now > cert.not_valid_after_utc:
        return f"expired on {_stamp(cert.not_valid_after_utc)}"
    if now < cert.not_valid_before_utc:
        return f"not valid before {_stamp(cert.not_valid_before_utc)}"
    return None


def _client_policy() -> ExtensionPolicy:
    """cryptography's WebPKI end-entity profile, minus two CA/Browser Forum requirements.

    A subjectAltName is optional because ``tls_client_auth`` clients are often registered
    by subject DN alone, with certificates that carry no SAN. An authorityKeyIdentifier is
    optional because RFC 5280 path validation (§6) never needs it, and private CAs omit it.
    """
    return (
        ExtensionPolicy.webpki_defaults_ee()
        .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
        .may_be_present(x509.AuthorityKeyIdentifier, Criticality.NON_CRITICAL, None)
    )


def _reason(message: str) -> str:
    core = re.sub(r"\s*\(encountered processing .*\)\s*$", "", message, flags=re.S)
    core = re.sub(r"^(?:validation failed: )?(?:candidates exhausted: )*", "", core)
    if "required EKU not found" in core:
        return "client certificate lacks the clientAuth extended key usage"
    if "unsupported directoryName constraint" in core:
        return (
            "a CA in the chain has a critical directoryName name constraint, which cannot be "
            "checked here; the chain is refused"
        )
    if "unsupported name constraint" in core:
        return (
            "a CA in the chain has a name constraint of a kind that cannot be checked against "
            "this certificate's subjectAltName (such as a URI constraint); the chain is refused"
        )
    if "all candidates exhausted with no interior errors" in core:
        return "client certificate does not chain to a trusted CA"
    if "not valid at validation time" in core:
        return "a CA certificate in the chain is expired or not yet valid"
    # The verifier's wording, up to any dump of the certificate's structures (key parameters
    # and the like), in RFC 6749 §5.2 characters.
    core = core.split("{", 1)[0]
    return "client certificate chain refused: " + _printable(" ".join(core.split()))


def _printable(text: str) -> str:
    return re.sub(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]", "?", text)[:200]


#: The keys a client certificate or one of its CAs may hold. The chain's signatures are
#: checked with the CAs' keys, and an RSA key with a huge public exponent makes each check
#: hundreds of times as costly: a client could send a chain of such CAs to stall the server,
#: even one that does not chain to a trusted CA (the path builder tries them all).
_CURVES = ("secp256r1", "secp384r1", "secp521r1")


def key_problem(key: object) -> str | None:
    """Why a certificate's public key is refused, or None: RSA of 2048 to 4096 bits with the
    public exponent 65537, ECDSA on P-256, P-384 or P-521, Ed25519 and Ed448 are accepted (the
    TLS layer holds the leaf to the same rule, tls_accept.acceptable_key)."""
    if isinstance(key, rsa.RSAPublicKey):
        if not 2048 <= key.key_size <= 4096 or key.public_numbers().e != 65537:
            return "an RSA key must have 2048 to 4096 bits and the public exponent 65537"
        return None
    if isinstance(key, ec.EllipticCurvePublicKey):
        return None if key.curve.name in _CURVES else "an EC key must be on P-256, P-384 or P-521"
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return None
    return "the key type is not one a client certificate may have"


def verify_chain(
    chain_der: Sequence[bytes], anchors: Sequence[x509.Certificate], now: datetime
) -> x509.Certificate:
    """Validate a ``tls_client_auth`` chain (RFC 8705 §2.1) and return its leaf.

    *chain_der* is the client's chain, leaf first, as the TLS layer or a trusted proxy gave
    it; *anchors* are the truststore's CA certificates. cryptography's client verifier
    checks signatures, validity dates of every certificate (anchors included), basic
    constraints, key usage, the clientAuth extended key usage when an EKU is present,
    critical extensions and name constraints on subjectAltName entries; ``_check_subject``
    then applies what that verifier leaves out (RFC 5280 §4.2.1.10): rfc822Name constraints
    to the subject's emailAddress and directoryName constraints to the subject. A chain whose
    constraints cannot be checked (a critical directoryName constraint, a URI constraint
    with a URI SAN) is refused. Refusals raise ``CertificateError`` with a short reason
    that is safe to put in an OAuth ``error_description``.
    """
    now = _utc(now)
    if not chain_der:
        raise CertificateError("no client certificate")
    if len(chain_der) - 1 > MAX_INTERMEDIATES:
        raise CertificateError(
            f"client sent {len(chain_der) - 1} intermediate certificates; "
            f"at most {MAX_INTERMEDIATES} are accepted"
        )
    leaf = parse_der_certificate(chain_der[0], "client certificate")
    intermediates = [
        parse_der_certificate(der, f"intermediate certificate {n}") for n, der in enumerate(chain_der[1:], 1)
    ]
    for n, cert in enumerate((leaf, *intermediates)):
        try:
            problem = key_problem(cert.public_key())
        except (ValueError, TypeError, NotImplementedError):
            problem = "its key cannot be read"
        if problem is not None:
            where = "client certificate" if n == 0 else f"intermediate certificate {n}"
            raise CertificateError(f"{where} refused: {problem}")
    if not anchors:
        raise CertificateError("no trust anchors are configured for tls_client_auth")
    # Checked first so the common refusal gets a precise message with the date.
    if (problem := validity_problem(leaf, now)) is not None:
        raise CertificateError(f"client certificate {problem}")
    verifier = (
        PolicyBuilder()
        .store(Store(list(anchors)))
        .time(now)
        .max_chain_depth(MAX_INTERMEDIATES)
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_client_policy())
        .build_client_verifier()
    )
    try:
        verified = verifier.verify(leaf, intermediates)
    except (VerificationError, ValueError) as exc:
        raise CertificateError(_reason(str(exc))) from None
    _check_subject(leaf, verified.chain[1:])
    return leaf


def _email_within(address: str, constraint: str) -> bool | None:
    """Whether a mailbox is inside an rfc822Name subtree (RFC 5280 §4.2.1.10); None: malformed."""
    local, at, domain = address.rpartition("@")
    if not (local and at and domain):
        return None
    if "@" in constraint:  # one particular mailbox
        c_local, _, c_domain = constraint.rpartition("@")
        return local == c_local and _ascii_lower(domain) == _ascii_lower(c_domain)
    if constraint.startswith("."):  # any host in that domain, not the domain itself
        return _ascii_lower(domain).endswith(_ascii_lower(constraint))
    return _ascii_lower(domain) == _ascii_lower(constraint)  # all mailboxes on that host


def _rdn_keys(name: x509.Name) -> list[str]:
    """Each RDN of *name*, in ASN.1 order, in RFC 4518 comparison form (RFC 5280 §7.1)."""
    return [normalize_dn(x509.Name([rdn]), "rfc4518") for rdn in name.rdns]


def _dn_within(name: x509.Name, base: x509.Name) -> bool:
    """Whether *name* is inside the directoryName subtree *base*: *base*'s RDNs lead it."""
    keys, base_keys = _rdn_keys(name), _rdn_keys(base)
    return keys[: len(base_keys)] == base_keys


_MAILBOX = re.compile(r"[\x21-\x3f\x41-\x7e]+@[\x21-\x3f\x41-\x7e]+")


def _check_subject(leaf: x509.Certificate, cas: Sequence[x509.Certificate]) -> None:
    """Apply the CAs' name constraints to what cryptography's verifier does not check.

    RFC 5280 §4.2.1.10: rfc822Name constraints apply to the subject's emailAddress when there
    is no subjectAltName; they are applied here whether or not there is one, because the
    subject is what a registered subject DN is matched against. directoryName constraints
    apply to a non-empty subject and to directoryName SANs; they reach this point only when
    the extension is not critical (the verifier refuses critical ones) and would otherwise
    be ignored. Anchors' constraints count too, as the verifier counts them.
    """
    emails = []
    for attribute in leaf.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS):
        # PKCS #9 and RFC 5280 §4.1.2.6: an IA5String mailbox. Anything else (a UTF8String
        # with fullwidth letters, spaces, control characters) could be read as one mailbox by
        # the constraints check and as another by RFC 4518 matching.
        value = attribute.value
        if (
            attribute._type != _ASN1Type.IA5String
            or not isinstance(value, str)
            or not _MAILBOX.fullmatch(value)
        ):
            raise CertificateError("client certificate subject emailAddress is not a plain mailbox")
        emails.append(value)
    names = [leaf.subject] if len(leaf.subject) else []
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += san.get_values_for_type(x509.DirectoryName)
    except x509.ExtensionNotFound:
        pass
    for ca in cas:
        try:
            constraints = ca.extensions.get_extension_for_class(x509.NameConstraints).value
        except x509.ExtensionNotFound:
            continue
        permitted = constraints.permitted_subtrees or []
        excluded = constraints.excluded_subtrees or []
        allowed = [g.value for g in permitted if isinstance(g, x509.RFC822Name)]
        denied = [g.value for g in excluded if isinstance(g, x509.RFC822Name)]
        for email in emails:
            inside = [_email_within(email, c) for c in allowed]
            outside = [_email_within(email, c) for c in denied]
            if None in inside or None in outside or (allowed and not any(inside)) or any(outside):
                raise CertificateError(
                    "client certificate subject emailAddress is outside the "
                    "name constraints of the CA that issued it"
                )
        allowed_dn = [g.value for g in permitted if isinstance(g, x509.DirectoryName)]
        denied_dn = [g.value for g in excluded if isinstance(g, x509.DirectoryName)]
        for name in names:
            if (allowed_dn and not any(_dn_within(name, b) for b in allowed_dn)) or any(
                _dn_within(name, b) for b in denied_dn
            ):
                raise CertificateError(
                    "client certificate subject is outside the directoryName "
                    "name constraints of the CA that issued it"
                )
