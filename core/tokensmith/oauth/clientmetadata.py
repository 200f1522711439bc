"""A client's RFC 7591 metadata document, and how it maps onto ``Client``.

A client is stored as typed fields (``client_name`` is ``Client.name``, ``scope`` is
``Client.scopes``, the RFC 8705 §2.1.2 subject is ``Client.tls_subject``, certificates are
``Client.certificates``) plus ``Client.metadata``, every other member under its RFC name.
``client_metadata`` puts the document back together; ``apply_metadata`` takes one apart.

Certificates: RFC 8705 §2.2 registers a self-signed certificate as a JWK with ``x5c`` in the
client's ``jwks``. A JWK with ``x5c`` given at registration becomes a
``RegisteredCertificate`` (its first certificate; the key members are taken from it), and
every registered certificate appears in ``jwks`` as such a JWK, whatever the client's method.

Every refusal is ``InvalidClientMetadataError`` (RFC 7591 §3.2.2), one line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from tokensmith.errors import InvalidClientMetadataError
from tokensmith.models import TLS_SUBJECT_KINDS, Client, RegisteredCertificate
from tokensmith.oauth.grants import SCOPE_TOKEN
from tokensmith.oauth.registration import RegistrationError, registered_certificate, tls_subject

__all__ = [
    "STANDARD_MEMBERS",
    "client_metadata",
    "apply_metadata",
    "certificate_jwk",
    "check_document",
    "check_redirect_uri",
    "is_namespaced",
]

#: RFC 7591 §2 (and RFC 8705 §2.1.2) members this server keeps, and the JSON type of each.
STANDARD_MEMBERS: Mapping[str, type] = MappingProxyType(
    {
        "client_name": str,
        "token_endpoint_auth_method": str,
        "grant_types": list,
        "scope": str,
        "token_endpoint_auth_signing_alg": str,
        "jwks": dict,
        "jwks_uri": str,
        "redirect_uris": list,
        "response_types": list,
        "contacts": list,
        "software_id": str,
        "software_version": str,
        "client_uri": str,
        "logo_uri": str,
        "tos_uri": str,
        "policy_uri": str,
        **{kind: str for kind in TLS_SUBJECT_KINDS},
    }
)
#: Members kept in Client's typed fields, not in Client.metadata.
_TYPED = frozenset({"client_name", "token_endpoint_auth_method", "grant_types", "scope", *TLS_SUBJECT_KINDS})
#: A plugin's own member: "<plugin name>.<member>", e.g. "header_key.key_id".
#: RFC 3986 §2.1-2.3: unreserved, reserved and "%" (of a percent-encoding).
_URI_CHARACTERS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")
_NAMESPACED = re.compile(r"[A-Za-z0-9_-]{1,64}\.[A-Za-z0-9_.-]{1,64}")
_URI_MEMBERS = ("jwks_uri", "client_uri", "logo_uri", "tos_uri", "policy_uri")
_STRING_LISTS = ("grant_types", "redirect_uris", "response_types", "contacts")
#: The most keys a client's jwks holds (rotation needs two or three).
MAX_KEYS = 20


def is_namespaced(name: str) -> bool:
    """Whether *name* is a plugin's own member (``<plugin>.<member>``)."""
    return bool(_NAMESPACED.fullmatch(name))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(value: int) -> str:
    return _b64url(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def certificate_jwk(cert: RegisteredCertificate) -> dict[str, Any]:
    """The JWK of a registered certificate: its public key, ``x5c`` (RFC 7517 §4.7) and
    ``x5t#S256`` (§4.9), which is also its ``kid``."""
    public_key = x509.load_der_x509_certificate(cert.der).public_key()
    jwk: dict[str, Any]
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        size = (public_key.curve.key_size + 7) // 8
        numbers = public_key.public_numbers()
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(public_key.curve.name)
        jwk = {"kty": "EC", "crv": crv or public_key.curve.name}
        jwk["x"] = _b64url(numbers.x.to_bytes(size, "big"))
        jwk["y"] = _b64url(numbers.y.to_bytes(size, "big"))
    elif isinstance(public_key, rsa.RSAPublicKey):
        rsa_numbers = public_key.public_numbers()
        jwk = {"kty": "RSA", "n": _uint(rsa_numbers.n), "e": _uint(rsa_numbers.e)}
    elif isinstance(public_key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        crv = "Ed25519" if isinstance(public_key, ed25519.Ed25519PublicKey) else "Ed448"
        jwk = {
            "kty": "OKP",
            "crv": crv,
            "x": _b64url(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)),
        }
    else:
        jwk = {"kty": "unknown"}
    thumbprint = _b64url(bytes.fromhex(cert.sha256))
    jwk.update({"kid": thumbprint, "x5c": [base64.b64encode(cert.der).decode()], "x5t#S256": thumbprint})
    return jwk


def client_metadata(client: Client) -> dict[str, Any]:
    """*client*'s whole RFC 7591 metadata document (a new dict; never a secret).

    ``jwks`` holds the registered keys and, as JWKs with ``x5c``, the registered
    certificates (RFC 8705 §2.2); it is absent when there are neither.
    """
    document: dict[str, Any] = {
        "client_id": client.client_id,
        "client_name": client.name,
        "token_endpoint_auth_method": client.token_endpoint_auth_method,
        "grant_types": list(client.grant_types),
    }
    if client.scopes:
        document["scope"] = " ".join(client.scopes)
    if client.tls_subject is not None:
        document[client.tls_subject[0]] = client.tls_subject[1]
    for name, value in client.metadata.items():
        if name != "jwks":
            document[name] = value
    keys = [*client.metadata.get("jwks", {}).get("keys", ()), *map(certificate_jwk, client.certificates)]
    if keys:
        document["jwks"] = {"keys": keys}
    return document


def _fail(text: str) -> InvalidClientMetadataError:
    return InvalidClientMetadataError(text)


def _check_https(name: str, value: str) -> None:
    try:
        parts = urlsplit(value)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        parts, port_ok = None, False
    if (
        parts is None
        or not port_ok
        or parts.scheme != "https"
        or not parts.hostname
        or parts.fragment
        or any(c.isspace() or not c.isprintable() for c in value)
    ):
        raise _fail(f"{name} must be an https URL without a fragment, not {value!r:.80}")
    if parts.username is not None or parts.password is not None:
        # Credentials in a URL end up in logs and in every view of the client; a URL with
        # them is refused, and not repeated in the message.
        raise _fail(f"{name} must not hold credentials (user:password@)")


#: Redirect URIs a client may register at most: each is compared on every authorization.
MAX_REDIRECT_URIS = 32


#: The hosts of the ``http`` redirect URIs a native app may register (RFC 8252 §7.3), as
#: urlsplit gives them: the two loopback literals the RFC names. Not the rest of 127.0.0.0/8
#: nor other spellings of ::1 (IPv4-mapped, zero-padded): which of those reach the app's own
#: listener depends on the machine, and the any-port rule is for the app's listener alone.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1"})


def check_redirect_uri(value: str) -> str:
    """Refuse a redirect URI this server will not redirect a browser to; return it as is.

    Absolute, no fragment (RFC 6749 §3.1.2), at most 2000 characters, no spaces; ``https``,
    or ``http`` to the loopback IP literal ``127.0.0.1`` or ``[::1]`` only, as RFC 8252 §7.3
    allows native apps (§8.3: ``localhost`` is NOT RECOMMENDED, since it may resolve
    elsewhere); no IPv6 zone identifier (RFC 6874). Compared character
    for character on every request (RFC 9700 §4.1.3), so it is stored exactly as given.

    ASCII only: a URI is (RFC 3986 §2), and any other character would go into the Location
    header as raw UTF-8, which browsers read differently; the client percent-encodes it
    (§2.1). No userinfo (RFC 3986 §3.2.1): ``https://trusted.example@evil.example/cb``
    goes to evil.example while it reads as trusted.example, and RFC 3986 §7.6 warns of
    exactly that; the value is not repeated in the message, as it may hold a password.
    """
    if len(value) > 2000 or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise _fail(f"redirect_uris: {value!r:.80} is not a URI")
    if not value.isascii():
        raise _fail(
            f"redirect_uris: {value!r:.80} holds characters that are not ASCII; a URI percent-encodes"
            " them (RFC 3986 §2.1), e.g. /caf%C3%A9 for /café"
        )
    if not _URI_CHARACTERS.fullmatch(value):
        # RFC 3986 §2: only these characters appear in a URI. A backslash in particular is
        # read by urlsplit as part of the userinfo but by browsers as "/" (WHATWG URL), so
        # http://evil.example\@127.0.0.1/ would pass for loopback and send the code elsewhere.
        raise _fail(f"redirect_uris: {value!r:.80} has a character a URI cannot hold (RFC 3986 §2)")
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise _fail(f"redirect_uris: {value!r:.80} is not a URI") from None
    if "@" in parts.netloc:
        raise _fail(
            "redirect_uris: a redirect URI must not hold userinfo (user@ before the host,"
            " RFC 3986 §3.2.1): it names the host alone"
        )
    if parts.fragment or "#" in value:
        raise _fail(f"redirect_uris: {value!r:.80} has a fragment (RFC 6749 §3.1.2)")
    if host and "%" in host and parts.netloc.startswith("["):
        # An IPv6 zone identifier (RFC 6874) names an interface of the machine the browser
        # runs on: whose interface it is depends on that machine, not on the client.
        raise _fail(
            f"redirect_uris: {value!r:.80} has an IPv6 zone identifier (RFC 6874), which names no host"
        )
    if parts.scheme == "https" and host:
        return value
    if parts.scheme == "http" and host in LOOPBACK_HOSTS:
        return value
    raise _fail(
        f"redirect_uris: {value!r:.80} must be an https URL, or http to the loopback address"
        " 127.0.0.1 or [::1], as http://127.0.0.1:PORT/ (RFC 8252 §7.3)"
    )


def _check_jwk(index: int, key: Any) -> None:
    if not isinstance(key, dict) or not isinstance(key.get("kty"), str):
        raise _fail(f"jwks.keys[{index}] is not a JWK (an object with kty)")
    if any(name in key for name in ("d", "p", "q", "dp", "dq", "qi", "k")):
        # RFC 7517 §4: a client's registered keys are public; a private or symmetric key
        # here would put the client's secret into the server's database and every view of it.
        raise _fail(f"jwks.keys[{index}] holds private or symmetric key material; register public keys only")
    for name, value in key.items():
        if name != "x5c" and name != "key_ops" and not isinstance(value, str):
            raise _fail(f"jwks.keys[{index}].{name} must be a string")


#: Limits on a client's metadata: RFC 7591 sets none, but the document is stored with the
#: client and shown by ``sp list``; these are far above any real client's.
MAX_DOCUMENT_BYTES = 64 * 1024
MAX_STRING_CHARS = 2000
MAX_LIST_ITEMS = 100


def _check_sizes(value: Any, where: str) -> None:
    """Every string encodable as UTF-8 (a lone surrogate, which JSON can spell, cannot be
    stored) and of at most ``MAX_STRING_CHARS``; every list of at most ``MAX_LIST_ITEMS``."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _fail(f"{where} is not valid Unicode (a lone surrogate)") from None
        if len(value) > MAX_STRING_CHARS:
            raise _fail(f"{where} is longer than {MAX_STRING_CHARS} characters")
    elif isinstance(value, list):
        if len(value) > MAX_LIST_ITEMS:
            raise _fail(f"{where} has more than {MAX_LIST_ITEMS} items")
        for index, item in enumerate(value):
            _check_sizes(item, f"{where}[{index}]")
    elif isinstance(value, dict):
        for name, item in value.items():
            _check_sizes(name, f"{where} member name")
            _check_sizes(item, f"{where}.{name}" if where else str(name))


def check_document(document: Mapping[str, Any]) -> None:
    """Refuse members of unknown names (other than a plugin's namespaced ones) and standard
    members of the wrong type or form (RFC 7591 §2), and documents beyond the size limits."""
    try:
        _check_sizes(dict(document), "")
        size = len(json.dumps(dict(document), separators=(",", ":")).encode())
    except RecursionError:
        raise _fail("the client metadata is nested too deeply") from None
    except (TypeError, ValueError):
        raise _fail("the client metadata is not a JSON document") from None
    if size > MAX_DOCUMENT_BYTES:
        raise _fail(f"the client metadata is larger than {MAX_DOCUMENT_BYTES} bytes as JSON")
    for name, value in document.items():
        if name == "client_id":
            continue
        expected = STANDARD_MEMBERS.get(name)
        if expected is None:
            if not is_namespaced(name):
                raise _fail(
                    f"unknown client metadata {name!r}: use the RFC 7591 names"
                    " or a plugin's namespaced member (<plugin>.<name>)"
                )
            continue
        if not isinstance(value, expected):
            raise _fail(f"{name} must be a JSON {'string' if expected is str else expected.__name__}")
    for name in _STRING_LISTS:
        if name in document and not all(isinstance(v, str) for v in document[name]):
            raise _fail(f"{name} must be a list of strings")
    for name in _URI_MEMBERS:
        if name in document:
            _check_https(name, document[name])
    redirect_uris = document.get("redirect_uris", [])
    if len(redirect_uris) > MAX_REDIRECT_URIS:
        raise _fail(f"redirect_uris holds {len(redirect_uris)} URIs; at most {MAX_REDIRECT_URIS}")
    for uri in redirect_uris:
        check_redirect_uri(uri)
    if "authorization_code" in document.get("grant_types", ()) and not redirect_uris:
        # RFC 6749 §3.1.2.2: clients of the code grant MUST register their redirect URIs.
        raise _fail("a client of the authorization_code grant needs redirect_uris (--redirect-uri URI)")
    if "jwks" in document and "jwks_uri" in document:
        # RFC 7591 §2: "The "jwks_uri" and "jwks" parameters MUST NOT both be present".
        raise _fail("jwks and jwks_uri must not both be present (RFC 7591 §2)")
    if "jwks" in document:
        keys = document["jwks"].get("keys")
        if not isinstance(keys, list) or set(document["jwks"]) - {"keys"}:
            raise _fail('jwks must be a JWK Set: {"keys": [...]}')
        if len(keys) > MAX_KEYS:
            raise _fail(f"jwks holds {len(keys)} keys; at most {MAX_KEYS}")
        for index, key in enumerate(keys):
            _check_jwk(index, key)
        kids = [key["kid"] for key in keys if "kid" in key and "x5c" not in key]
        if len(kids) != len(set(kids)):
            raise _fail("jwks: two keys have the same kid")
    subjects = [kind for kind in TLS_SUBJECT_KINDS if kind in document]
    if len(subjects) > 1:
        raise _fail(f"give one tls_client_auth subject (RFC 8705 §2.1.2), not {', '.join(subjects)}")
    if "tls_client_auth_san_ip" in document:
        try:
            ipaddress.ip_address(document["tls_client_auth_san_ip"])
        except ValueError:
            raise _fail("tls_client_auth_san_ip is not an IP address") from None


def _certificate_from_jwk(index: int, key: Mapping[str, Any]) -> RegisteredCertificate:
    chain = key.get("x5c")
    if not isinstance(chain, list) or not chain or not isinstance(chain[0], str):
        raise _fail(f"jwks.keys[{index}].x5c must be a list of base64 DER certificates")
    try:
        # RFC 7517 §4.7: base64 (not base64url) DER, the key's own certificate first.
        cert = x509.load_der_x509_certificate(base64.b64decode(chain[0], validate=True))
    except (binascii.Error, ValueError):
        raise _fail(f"jwks.keys[{index}].x5c[0] is not a base64 DER certificate") from None
    registered = registered_certificate(cert)
    thumbprint = key.get("x5t#S256")
    if thumbprint is not None and thumbprint != _b64url(hashlib.sha256(registered.der).digest()):
        raise _fail(f"jwks.keys[{index}]: x5t#S256 does not match x5c[0]")
    return registered


def apply_metadata(client: Client, document: Mapping[str, Any], *, merge: bool = False) -> Client:
    """*client* with the RFC 7591 *document* applied, checked by ``check_document``.

    Without *merge* the document is the client's whole metadata (``sp add``): its typed
    members replace the client's (``scope`` absent: no scopes), and ``Client.metadata`` is
    what else it holds. With *merge* (``sp update``) only the members given change; a member
    given as ``null`` is removed, and giving ``jwks`` drops ``jwks_uri`` and the other way
    round, as giving one tls_client_auth subject drops another. JWKs with ``x5c`` become the
    client's certificates: with *merge*, a given ``jwks`` replaces keys and certificates.
    """
    if merge:
        current = client_metadata(client)
        if document.get("jwks") is not None:
            current.pop("jwks_uri", None)
        if document.get("jwks_uri") is not None:
            current.pop("jwks", None)
        if any(kind in document for kind in TLS_SUBJECT_KINDS):
            for kind in TLS_SUBJECT_KINDS:
                current.pop(kind, None)
        current.update(document)
        document = {name: value for name, value in current.items() if value is not None}
    check_document(document)
    if "client_id" in document and document["client_id"] != client.client_id:
        raise _fail("client_id is assigned by the server; leave it out of the metadata")
    for name in ("token_endpoint_auth_method", "grant_types"):
        if name not in document:
            raise _fail(f"{name} is missing")
    certificates: list[RegisteredCertificate] = []
    keys: list[Any] = []
    for index, key in enumerate(document.get("jwks", {}).get("keys", [])):
        if "x5c" not in key:
            keys.append(key)
            continue
        certificate = _certificate_from_jwk(index, key)
        if any(c.sha256 == certificate.sha256 for c in certificates):
            raise _fail(f"certificate {certificate.sha256} ({certificate.subject}) is given twice")
        certificates.append(certificate)
    subject = next(((kind, document[kind]) for kind in TLS_SUBJECT_KINDS if kind in document), None)
    if subject is not None:
        try:
            subject = tls_subject(*subject)
        except RegistrationError as exc:
            raise _fail(str(exc)) from None
    for scope in document.get("scope", "").split():
        if not SCOPE_TOKEN.fullmatch(scope):
            raise _fail(f"scope {scope!r:.80} is not a scope token (RFC 6749 §3.3)")
    rest = {name: value for name, value in document.items() if name not in _TYPED and name != "client_id"}
    rest.pop("jwks", None)
    if keys:
        rest["jwks"] = {"keys": keys}
    return replace(
        client,
        name=document.get("client_name", client.name),
        token_endpoint_auth_method=document["token_endpoint_auth_method"],
        grant_types=tuple(dict.fromkeys(document["grant_types"])),
        scopes=tuple(dict.fromkeys(document.get("scope", "").split())),
        tls_subject=subject,
        certificates=tuple(certificates),
        metadata=MappingProxyType(rest),
    )
