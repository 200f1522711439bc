"""Which client certificate a request presents: decided once, here, before any listener runs.

A client proves it holds a certificate in this connection's TLS handshake, or, behind a
TLS-terminating proxy, the proxy does and forwards the certificate in a header (RFC 9440,
RFC 8705 §6.5). Every authenticator, the token binding (RFC 8705 §3) and the events see the
one answer this module gives, so a certificate can never authenticate a client through one
path and then be missing from its tokens.

The header is believed only from a proxy listed in identity.xml's
``<ClientCertificateHeader trustedProxies=...>``, and only when the handshake carried no
certificate: a certificate the client proved itself always wins.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from collections.abc import Mapping
from typing import Any

from tokensmith.config.settings import ForwardedCertificates
from tokensmith.errors import InvalidClientError, InvalidRequestError
from tokensmith.oauth.mtls import parse_forwarded_certificate, parse_forwarded_chain
from tokensmith.scope import DER_KEY
from tokensmith.security.x509 import CertificateError

__all__ = ["handshake_chain", "client_certificates"]

log = logging.getLogger("tokensmith")


def handshake_chain(scope: Mapping[str, Any]) -> tuple[bytes, ...]:
    """DER of the TLS client certificates in *scope* (the ASGI TLS extension), leaf first."""
    tls = scope.get("extensions", {}).get("tls") or {}
    der = tls.get(DER_KEY)
    if der is not None:
        return tuple(der)
    return tuple(ssl.PEM_cert_to_DER_cert(pem) for pem in tls.get("client_cert_chain") or ())


def _fields(scope: Mapping[str, Any], name: str) -> list[str]:
    """Every field line named *name*, in order; repeated lines are not merged here."""
    wanted = name.lower().encode("latin-1")
    return [value.decode("latin-1") for key, value in scope.get("headers") or () if key.lower() == wanted]


def _trusted(remote_addr: str | None, settings: ForwardedCertificates) -> bool:
    if not remote_addr:
        return False
    try:
        address = ipaddress.ip_address(remote_addr)
    except ValueError:
        return False
    return any(address in network for network in settings.trusted_proxies)


def client_certificates(
    scope: Mapping[str, Any], remote_addr: str | None, settings: ForwardedCertificates | None
) -> tuple[tuple[bytes, ...], str | None]:
    """The request's client certificate chain, leaf first, and where it came from.

    The source is ``"tls"`` (this connection's handshake), ``"proxy"`` (a trusted proxy's
    header) or None (no certificate). Raises ``InvalidRequestError`` when the certificate
    field appears more than once (RFC 9440 §2.2 defines one value: with two, which one the
    proxy meant is unknowable) and ``InvalidClientError`` when a trusted proxy forwarded a
    certificate or chain that cannot be used.
    """
    chain = handshake_chain(scope)
    if chain:
        return chain, "tls"
    if settings is None:
        return (), None
    leaf_fields = _fields(scope, settings.header)
    chain_fields = _fields(scope, settings.chain_header) if settings.chain_header else []
    if not leaf_fields and not chain_fields:
        return (), None
    if not _trusted(remote_addr, settings):
        names = settings.header if leaf_fields else settings.chain_header
        log.warning("ignored a %s header from %s, which is not a trusted proxy", names, remote_addr)
        return (), None
    if len(leaf_fields) > 1:
        raise InvalidRequestError(
            f"the {settings.header} header appears {len(leaf_fields)} times;"
            " a request carries one client certificate"
        )
    if not leaf_fields:
        raise InvalidRequestError(f"{settings.chain_header} was sent without {settings.header}")
    try:
        leaf = parse_forwarded_certificate(leaf_fields[0], settings.format)
        # RFC 9110 §5.3: a list field may be split over several lines; joined, it is one list.
        intermediates = parse_forwarded_chain(", ".join(chain_fields)) if chain_fields else []
    except CertificateError as exc:
        # The client learns only that the certificate was refused; which check failed is the
        # operator's to read in the refusal line (a prober could map the parser otherwise).
        raise InvalidClientError(
            "the forwarded client certificate is unusable",
            reason="forwarded_certificate_unusable",
            detail=str(exc),
        ) from None
    return (leaf, *intermediates), "proxy"
