"""Mutual-TLS client authentication (RFC 8705 §2), WSO2's MutualTLSClientAuthenticator.

It engages when the request carries a client certificate and its ``client_id`` names a
client registered for ``self_signed_tls_client_auth`` or ``tls_client_auth``. The client is
never inferred from the certificate: without a ``client_id`` this authenticator stays out.

- ``self_signed_tls_client_auth`` (§2.2): the SHA-256 of the leaf's DER must equal one of the
  client's registered certificates, which must be within its validity period unless the
  ``AllowExpiredSelfSigned`` property is true.
- ``tls_client_auth`` (§2.1): the chain must validate against the truststore, and the
  client's one registered subject attribute (DN or a SAN) must match the leaf.

Behind a TLS-terminating proxy the certificate may come in a header, but only from an address
listed in ``TrustedProxies``; a certificate from this connection's handshake always wins.

Properties (identity.xml ``<Property name=...>``):

- ``AllowExpiredSelfSigned``: ``true`` to accept expired or not-yet-valid registered
  self-signed certificates (default ``false``);
- ``CertificateHeader``: the header a proxy puts the client certificate in (none by default);
- ``CertificateHeaderFormat``: ``auto`` (default), ``rfc9440``, ``nginx``, ``pem`` or
  ``base64-der``;
- ``TrustedProxies``: addresses or networks, comma-separated, whose header is believed;
- ``SubjectDNMatching``: how a registered ``tls_client_auth`` subject DN is compared with the
  certificate's subject: ``exact`` (default: the same RDNs in the same order, the same
  attribute types, the same number of values, values the same text) or ``rfc4518`` (values
  compared case-insensitively after NFKC and space folding, RFC 4518). ``rfc4518`` is only
  safe with CAs that refuse to issue a subject that differs from another client's only in
  case, compatibility characters or spacing.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from tokensmith import (
    DN_MATCHING,
    FORWARDED_FORMATS,
    AuthenticatedClient,
    CertificateError,
    ClientAuthRequest,
    InvalidClientError,
    Listener,
    dn_matches,
    hookimpl,
    san_matches,
    verify_chain,
    parse_forwarded_certificate,
)

SELF_SIGNED = "self_signed_tls_client_auth"
PKI = "tls_client_auth"
METHODS = (PKI, SELF_SIGNED)

log = logging.getLogger("tokensmith.plugins.mutual_tls")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Settings:
    allow_expired_self_signed: bool = False
    header: str | None = None
    header_format: str = "auto"
    trusted_proxies: tuple[Network, ...] = ()
    dn_matching: str = "exact"


def _bool(name: str, raw: str) -> bool:
    if raw.lower() not in ("true", "false"):
        raise ValueError(f"property {name} must be true or false, not {raw!r}")
    return raw.lower() == "true"


@hookimpl
def listener_default_order() -> int:
    return 158  # the seed's orderId for WSO2's MutualTLSClientAuthenticator


@hookimpl
def client_auth_methods() -> list[str]:
    return list(METHODS)


@hookimpl
def listener_configure(listener: Listener) -> None:
    props = listener.properties
    unknown = set(props) - {"AllowExpiredSelfSigned", "CertificateHeader",
                            "CertificateHeaderFormat", "TrustedProxies", "SubjectDNMatching"}
    if unknown:
        raise ValueError(f"unknown properties: {', '.join(sorted(unknown))}")
    header_format = props.get("CertificateHeaderFormat", "auto")
    if header_format not in FORWARDED_FORMATS:
        raise ValueError(f"CertificateHeaderFormat must be one of {', '.join(FORWARDED_FORMATS)}")
    proxies = []
    for item in filter(None, (p.strip() for p in props.get("TrustedProxies", "").split(","))):
        try:
            proxies.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"TrustedProxies: {item!r} is not an address or network") from None
    dn_matching = props.get("SubjectDNMatching", "exact")
    if dn_matching not in DN_MATCHING:
        raise ValueError(f"SubjectDNMatching must be one of {', '.join(DN_MATCHING)}, not {dn_matching!r}")
    header = props.get("CertificateHeader") or None
    if proxies and header is None:
        raise ValueError("TrustedProxies is set but CertificateHeader is not")
    listener.stash["settings"] = Settings(
        allow_expired_self_signed=_bool("AllowExpiredSelfSigned", props.get("AllowExpiredSelfSigned", "false")),
        header=header,
        header_format=header_format,
        trusted_proxies=tuple(proxies),
        dn_matching=dn_matching,
    )


def _trusted(remote_addr: str | None, proxies: tuple[Network, ...]) -> bool:
    if not remote_addr or not proxies:
        return False
    try:
        address = ipaddress.ip_address(remote_addr)
    except ValueError:
        return False
    return any(address in network for network in proxies)


def certificate_chain(request: ClientAuthRequest, settings: Settings) -> tuple[bytes, ...]:
    """The client's certificates: from the TLS handshake, else from a trusted proxy's header."""
    if request.client_cert_chain:
        return request.client_cert_chain
    if settings.header is None:
        return ()
    value = request.headers.get(settings.header)
    if value is None:
        return ()
    if not _trusted(request.remote_addr, settings.trusted_proxies):
        log.warning("ignored a %s header from %s, which is not a trusted proxy",
                    settings.header, request.remote_addr)
        return ()
    try:
        return (parse_forwarded_certificate(value, settings.header_format),)
    except CertificateError as exc:
        raise InvalidClientError(f"the forwarded client certificate is unusable: {exc}") from None


@hookimpl
async def authenticate_client(request: ClientAuthRequest, listener: Listener) -> AuthenticatedClient | None:
    """Engage for a certificate plus the client_id of a mutual-TLS client (RFC 8705 §2)."""
    client_id = request.form.get("client_id")
    if client_id is None:
        return None
    client = request.get_client(client_id)
    if client is None or client.token_endpoint_auth_method not in METHODS:
        return None
    settings: Settings = listener.stash["settings"]
    chain = certificate_chain(request, settings)
    if not chain:
        return None
    now = time.time()
    if client.token_endpoint_auth_method == SELF_SIGNED:
        digest = hashlib.sha256(chain[0]).hexdigest()
        match = next((c for c in client.certificates if hmac.compare_digest(c.sha256, digest)), None)
        if match is None:
            raise InvalidClientError("the client certificate is not registered for this client")
        if not settings.allow_expired_self_signed and not match.not_before <= now <= match.not_after:
            raise InvalidClientError("the registered client certificate is expired or not yet valid")
        return AuthenticatedClient(client, SELF_SIGNED, certificate=chain[0])

    if client.tls_subject is None:
        raise InvalidClientError("the client has no registered certificate subject")
    try:
        leaf = verify_chain(chain, request.trust_anchors(), datetime.fromtimestamp(now, timezone.utc))
        kind, value = client.tls_subject
        if kind == "tls_client_auth_subject_dn":
            matched = dn_matches(value, leaf, settings.dn_matching)
        else:
            matched = san_matches(kind.removeprefix("tls_client_auth_"), value, leaf)
    except CertificateError as exc:
        raise InvalidClientError(f"the client certificate was refused: {exc}") from None
    if not matched:
        raise InvalidClientError("the client certificate does not match the registered subject")
    return AuthenticatedClient(client, PKI, certificate=chain[0])
