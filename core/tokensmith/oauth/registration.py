"""What an administrator registers for a mutual-TLS client (RFC 8705 §2), checked.

- ``certificates_from_file``: the ``self_signed_tls_client_auth`` certificates in a file
  (§2.2), every certificate of a PEM bundle, as ``RegisteredCertificate``.
- ``tls_subject``: the one ``tls_client_auth`` subject attribute (§2.1.2), validated.
- ``parse_fingerprint``: a SHA-256 fingerprint as people copy it, e.g. from
  ``openssl x509 -noout -fingerprint -sha256``.
- ``change_certificates``: a client with certificates added and removed, for rotation.
- ``check_text``, ``check_scope``, ``check_grant_types``: the values every client registers.
- ``printable``: stored text made safe to print on a terminal.

Every refusal is a ``RegistrationError`` with a one-line message.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tokensmith.models import Client, RegisteredCertificate
from tokensmith.oauth.grants import GRANT_TYPES, PUBLIC, PUBLIC_CLIENT_GRANTS, SCOPE_TOKEN
from tokensmith.security.x509 import CertificateError, load_pem_certificates, normalize_dn, validity_problem

__all__ = [
    "RegistrationError",
    "check_registration",
    "registered_certificate",
    "certificates_from_file",
    "tls_subject",
    "parse_fingerprint",
    "change_certificates",
    "validity_warnings",
    "check_text",
    "check_scope",
    "check_grant_types",
    "printable",
]

_DNS_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
# A literal '*.' first label is allowed: a certificate may carry a wildcard dNSName, and
# rfc8705.san_matches compares it literally.
_DNS_NAME = re.compile(rf"(?:\*\.)?{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
# RFC 3986 §3.1: an absolute URI starts with a scheme; RFC 5280 §4.2.1.6 requires one.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[\x21-\x7e]+")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class RegistrationError(ValueError):
    """A registration input was refused; the message is one line."""


def _unprintable(text: str) -> bool:
    # Control characters (C0, DEL, C1), and format characters such as the bidirectional
    # overrides, which reorder what a terminal shows.
    return any(not c.isprintable() and c != " " for c in text)


def check_text(value: str, what: str) -> str:
    """*value*, refused if it holds a control character: a stored name is printed later by
    ``sp list``, and an escape sequence or newline in it would forge what an administrator's
    terminal shows."""
    if _unprintable(value):
        raise RegistrationError(f"{what} {printable(value)} contains control characters")
    return value


def printable(text: str) -> str:
    """*text* with every character that is not printable escaped as Python writes it."""
    if not _unprintable(text):
        return text
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def check_scope(value: str) -> str:
    """One scope token as RFC 6749 §3.3 defines it: printable ASCII but space, '"' and '\\'.
    'read write' is two scopes (two --scope options), not one."""
    if not SCOPE_TOKEN.fullmatch(value):
        raise RegistrationError(
            f"--scope {printable(repr(value))} is not a scope token (RFC 6749"
            ' §3.3: ASCII letters, digits and punctuation except " and \\;'
            " no spaces: give each scope its own --scope)"
        )
    return value


def check_registration(method: str, grant_types: Sequence[str]) -> None:
    """Refuse, in one line, grant types this server does not serve and grants that the
    client type may not use (RFC 6749 §2.1, §4.4); ``sp add`` calls it before storing."""
    for grant_type in grant_types:
        if grant_type not in GRANT_TYPES:
            raise RegistrationError(
                f"--grant-type {grant_type!r} is not served here; use one or more of {', '.join(GRANT_TYPES)}"
            )
        if method == PUBLIC and grant_type not in PUBLIC_CLIENT_GRANTS:
            raise RegistrationError(
                f"--grant-type {grant_type} is for confidential clients only"
                " (RFC 6749 §4.4): a public client (--auth-method none) may use"
                f" {', '.join(PUBLIC_CLIENT_GRANTS)}"
            )


def check_grant_types(grant_types: Sequence[str], auth_method: str, force: bool) -> list[str]:
    """Refuse grant-type sets that cannot work or must not be used; the warnings to show.

    - ``refresh_token`` alone: nothing could ever issue the client a refresh token.
    - ``password`` for a public client (``none``): RFC 9700 §2.4 says the resource owner
      password credentials grant MUST NOT be used; a client with no credentials of its own
      would let anyone guess passwords through it. Refused unless *force*, then a warning.
    """
    warnings = []
    if set(grant_types) == {"refresh_token"}:
        raise RegistrationError(
            "a client with only the refresh_token grant can never get a"
            " refresh token; add the grant that issues one (password)"
        )
    if "password" in grant_types and auth_method == "none":
        message = (
            "the password grant for a public client (--auth-method none) lets anyone"
            " guess passwords through it, and RFC 9700 §2.4 says the grant must not be"
            " used"
        )
        if not force:
            raise RegistrationError(message + "; give --force to register it all the same")
        warnings.append(message)
    return warnings


def registered_certificate(cert: x509.Certificate) -> RegisteredCertificate:
    """The storage form of *cert*: hex SHA-256 of the DER, RFC 4514 subject, validity as Unix time."""
    der = cert.public_bytes(serialization.Encoding.DER)
    return RegisteredCertificate(
        sha256=hashlib.sha256(der).hexdigest(),
        subject=cert.subject.rfc4514_string(),
        not_before=int(cert.not_valid_before_utc.timestamp()),
        not_after=int(cert.not_valid_after_utc.timestamp()),
        der=der,
    )


def certificates_from_file(path: Path) -> list[RegisteredCertificate]:
    """Every certificate in *path* (PEM, one or many, or a single DER), in file order.

    A file with several certificates registers each of them: a client rotating its key
    can hand over its current and its next certificate in one file.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RegistrationError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return [registered_certificate(c) for c in load_pem_certificates(data, source=str(path))]
    except CertificateError as exc:
        raise RegistrationError(str(exc)) from None


def validity_warnings(certificates: Sequence[RegisteredCertificate]) -> list[str]:
    """One line per certificate outside its validity period now (registered all the same)."""
    now = datetime.now(UTC)
    warnings = []
    for cert in certificates:
        problem = validity_problem(x509.load_der_x509_certificate(cert.der), now)
        if problem is not None:
            warnings.append(
                f"certificate {cert.sha256} ({printable(cert.subject)}) {problem};"
                " the mutual_tls authenticator refuses it until it is valid"
            )
    return warnings


def _dns_name(value: str) -> str:
    if len(value) > 253 or not _DNS_NAME.fullmatch(value):
        raise RegistrationError(
            f"--san-dns {value!r} is not a DNS name (ASCII letters, digits"
            " and hyphens in dot-separated labels; use the xn-- form for IDNs)"
        )
    return value


def _uri(value: str) -> str:
    if not _URI.fullmatch(value):
        raise RegistrationError(f"--san-uri {value!r} is not an absolute URI (scheme:..., ASCII, no spaces)")
    return value


def _ip(value: str) -> str:
    try:
        if "%" in value:  # a zone index never appears in a certificate's iPAddress
            raise ValueError
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise RegistrationError(f"--san-ip {value!r} is not an IPv4 or IPv6 address") from None


def _email(value: str) -> str:
    local, at, domain = value.rpartition("@")
    if not (
        at
        and local
        and value.isascii()
        and not re.search(r"[\s<>]", value)
        and _DNS_NAME.fullmatch(domain)
        and not domain.startswith("*")
    ):
        raise RegistrationError(f"--san-email {value!r} is not an email address (local@domain, ASCII)")
    return value


def _subject_dn(value: str) -> str:
    try:
        normalized = normalize_dn(value)
    except CertificateError as exc:
        raise RegistrationError(f"--subject-dn {value!r}: {exc}") from None
    if not normalized:
        raise RegistrationError(
            "--subject-dn is empty; give the certificate's subject, e.g. 'CN=client,O=Example'"
        )
    return value.strip()


_CHECKS = {
    "tls_client_auth_subject_dn": _subject_dn,
    "tls_client_auth_san_dns": _dns_name,
    "tls_client_auth_san_uri": _uri,
    "tls_client_auth_san_ip": _ip,
    "tls_client_auth_san_email": _email,
}


def tls_subject(kind: str, value: str) -> tuple[str, str]:
    """``(kind, value)`` for ``Client.tls_subject``, the value checked for its kind.

    *kind* is one of ``storage.TLS_SUBJECT_KINDS``. A DN is kept as written (the matcher
    normalizes it); an IP address is stored in its canonical form.
    """
    if kind not in _CHECKS:
        raise RegistrationError(f"unknown subject kind {kind!r}; expected one of {', '.join(_CHECKS)}")
    return kind, _CHECKS[kind](value)


def parse_fingerprint(text: str) -> str:
    """Lowercase hex SHA-256 from *text*: colons, spaces and case are ignored, and so is a
    leading ``sha256 Fingerprint=`` as ``openssl x509 -noout -fingerprint -sha256`` prints."""
    digest = text.rpartition("=")[2] if "fingerprint" in text.lower() else text
    digest = re.sub(r"[:\s]", "", digest).lower()
    if not _SHA256_HEX.fullmatch(digest):
        raise RegistrationError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits, colons allowed)")
    return digest


def change_certificates(
    client: Client, add: Sequence[RegisteredCertificate], remove: Sequence[str]
) -> Client:
    """*client* with the certificates *add* appended and those with SHA-256 *remove* dropped.

    Refused: a hash the client does not have, a certificate it already has, and a change
    that leaves a ``self_signed_tls_client_auth`` client with no certificate at all.
    """
    registered = {c.sha256: c for c in client.certificates}
    for digest in remove:
        if digest not in registered:
            raise RegistrationError(
                f"client {client.client_id} has no certificate with sha256"
                f" {digest} (sp list --json shows them)"
            )
    kept = [c for c in client.certificates if c.sha256 not in set(remove)]
    for cert in add:
        if any(c.sha256 == cert.sha256 for c in kept):
            raise RegistrationError(
                f"certificate {cert.sha256} ({cert.subject}) is already"
                f" registered for client {client.client_id}"
            )
        kept.append(cert)
    if not kept and client.token_endpoint_auth_method == "self_signed_tls_client_auth":
        raise RegistrationError(
            f"refusing to remove the last certificate of client"
            f" {client.client_id}: it could never authenticate again;"
            " add its new certificate first (--add-cert)"
        )
    return replace(client, certificates=tuple(kept))
