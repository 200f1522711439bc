"""The TLS policy of every connector.

TLS 1.2 is the minimum and OpenSSL negotiates 1.3 whenever the client offers it. TLS 1.2
suites are ECDHE with AES-GCM or ChaCha20-Poly1305 only (forward secrecy, AEAD);
client-initiated renegotiation is off. ALPN offers h2 and http/1.1 (RFC 7540 §9.2 requires
TLS 1.2+ and no compression for h2, which this policy gives).

Client certificates: ``want`` requests one and lets the handshake finish without it, ``need``
fails a handshake without one, ``false`` never asks. Whatever the client sends is accepted at
this layer once it proves the private key; trust is decided by the authenticators (see
``tls_accept``), which keeps handshakes independent of the number of registered clients.

Session tickets are off. A resumed TLS 1.3 session re-proves nothing about the client's key
and keeps only the leaf of its chain, and issuing the two default tickets cost more than the
rest of the handshake: OpenSSL 3.0 copies the session for each by encoding and decoding it,
client certificate included (docs/benchmarks.md has the profile).
"""

from __future__ import annotations

import ssl
from typing import Any

from tokensmith.config.settings import Connector, ServerSettings
from tokensmith.http.tls_accept import accept_any_client_certificate
from tokensmith.security.keystore import load_into

__all__ = ["server_context", "TLS12_CIPHERS", "DerPeerCertObject"]

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!SHA1:!SHA256:!SHA384"


class DerPeerCertObject(ssl.SSLObject):
    """An ``SSLObject`` that never decodes the peer's certificate into text.

    asyncio asks every connection for ``getpeercert()`` after its handshake (the transport's
    ``peercert``), which nothing here reads: the authenticators parse the DER themselves and
    refuse a malformed certificate with 401. CPython's decoding raised on a dNSName that is
    not UTF-8, and left an error on OpenSSL's queue for a truncated authorityInfoAccess that
    failed the connection's first read: either way the client got a dropped connection
    instead of an answer. The text form is now ``{}`` when there is a certificate (as for
    any certificate the context did not verify) and ``None`` when there is none.
    """

    def getpeercert(self, binary_form: bool = False) -> Any:
        der = super().getpeercert(True)
        if binary_form or der is None:
            return der
        return {}


def server_context(settings: ServerSettings, connector: Connector) -> ssl.SSLContext:
    """A server ``SSLContext`` for *connector* with the keystore of *settings* (PEM or PKCS#12).

    An unusable keystore raises ``ConfigError`` naming server.xml's line and the file.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.sslobject_class = DerPeerCertObject
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(["h2", "http/1.1"])
    # No TLS 1.3 session tickets (nor TLS 1.2 ones): see the module's docstring.
    context.num_tickets = 0
    context.options |= ssl.OP_NO_TICKET
    load_into(context, settings.keystore)
    if connector.client_auth != "false":
        accept_any_client_certificate(context, required=connector.client_auth == "need")
    return context
