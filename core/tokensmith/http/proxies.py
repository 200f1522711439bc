"""What a trusted proxy tells the server: the client's address and protocol it forwarded.

The HTTP server (``http/server.py``) refuses plain-HTTP requests with ``plain_http_refused``
and the app's front (``app/front.py``) takes the client's address and request id from a
trusted proxy's headers; both believe only the peers in server.xml's ``<TrustedProxies>``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokensmith.config.settings import Network

__all__ = [
    "PLAIN_HTTP_PATHS",
    "UNKNOWN",
    "trusted_peer",
    "forwarded_for",
    "client_address",
    "plain_http_refused",
]


def trusted_peer(scope: Mapping[str, Any], trusted: tuple[Network, ...]) -> bool:
    """Whether the request's peer is one of the *trusted* proxies."""
    client = scope.get("client")
    if not trusted or not client:
        return False
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        # A listener on "::" sees an IPv4 proxy as ::ffff:a.b.c.d; the allow list names a.b.c.d.
        address = address.ipv4_mapped
    return any(address in network for network in trusted)


def _address(text: str) -> str | None:
    """An address from X-Forwarded-For or Forwarded's for= (RFC 7239 §6), or None."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # IPv4 with a port
    # An IPv6 zone id (RFC 4007 §11) is any text at all; it says nothing about the client.
    text = text.partition("%")[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


#: The paths a plain-HTTP request that did not reach a trusted proxy over TLS may still ask
#: for: the probes (which say nothing) and /metrics (which has its own access control).
PLAIN_HTTP_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def _values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[str]:
    """The comma-separated values of every *name* field, in order (RFC 9110 §5.3)."""
    values: list[str] = []
    for key, value in headers:
        if key == name:
            values += [item.strip() for item in value.decode("latin-1").split(",")]
    return values


def forwarded_for(
    headers: list[tuple[bytes, bytes]], mode: str = "x-forwarded"
) -> tuple[str | None, str | None]:
    """The client address and protocol a trusted proxy forwarded, from its headers.

    *mode* names the one header family the proxy is believed for: ``x-forwarded``
    (X-Forwarded-For and X-Forwarded-Proto) or ``forwarded`` (RFC 7239). The other family is
    ignored, since a proxy that sets one usually passes the client's copy of the other through.
    The last entry is the one the proxy next to us added (RFC 7239 §5.2, and X-Forwarded-For
    as proxies append to it); anything before it came from further away, unverified.
    """
    if mode == "forwarded":
        elements = _values(headers, b"forwarded")
        address = proto = None
        if elements:
            for pair in elements[-1].split(";"):
                key, _, text = pair.strip().partition("=")
                key = key.lower()
                if key == "for":
                    address = _address(text)
                elif key == "proto":
                    proto = text.strip().strip('"').lower()
        return address, proto
    addresses = _values(headers, b"x-forwarded-for")
    protos = _values(headers, b"x-forwarded-proto")
    return (_address(addresses[-1]) if addresses else None), (protos[-1].lower() if protos else None)


#: The client's address when a trusted proxy forwarded one that is not an address: RFC 7239
#: §6.2's "unknown", an obfuscated identifier (§6.3), or anything else. Not an address, so no
#: allow list takes it, and not the proxy's own, which would make every such client the proxy.
UNKNOWN = "unknown"


def client_address(headers: list[tuple[bytes, bytes]], mode: str = "x-forwarded") -> str | None:
    """The client address a trusted proxy forwarded (``forwarded_for``); ``UNKNOWN`` when its
    header of *mode*'s family (X-Forwarded-For, or Forwarded) is there but gives no address;
    None when there is no such header (a request of the proxy's own, a health check)."""
    address = forwarded_for(headers, mode)[0]
    if address is not None:
        return address
    sent = any(name == (b"forwarded" if mode == "forwarded" else b"x-forwarded-for") for name, _ in headers)
    return UNKNOWN if sent else None


def plain_http_refused(scope: Mapping[str, Any], trusted: tuple[Network, ...], mode: str) -> bool:
    """Whether a request that came without TLS must be refused: it did, unless a trusted proxy
    says the client reached it over https, or the path is one of ``PLAIN_HTTP_PATHS`` (RFC 6749
    §3.1 and §3.2 require TLS at the endpoints; RFC 7662 §4 and RFC 7009 §5 likewise). The path
    must match exactly: a variant (``//oauth2/token``) is refused too."""
    if scope.get("scheme") == "https":
        return False
    if trusted_peer(scope, trusted) and forwarded_for(scope["headers"], mode)[1] == "https":
        return False
    return scope.get("path") not in PLAIN_HTTP_PATHS
