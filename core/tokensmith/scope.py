"""The names tokensmith's servers and its app share in an ASGI scope and in the app object.

The HTTP layer (``http/``) writes them and the application reads them; both import them from
here, at the bottom, so that neither imports the other.
"""

from __future__ import annotations

__all__ = ["DER_KEY", "TIMEOUT_KEY", "BOUND_URLS", "CLIENT_ADDRESS"]

#: In scope["extensions"]["tls"]: the DER of the client's certificates, next to the ASGI TLS
#: extension's PEM, so that no request converts them again.
DER_KEY = "tokensmith.client_cert_der"
#: In scope["extensions"]: the connector's connectionTimeout (seconds), the deadline for a body.
TIMEOUT_KEY = "tokensmith.timeout"
#: In the Quart app's ``extensions``: the https URLs of the listening sockets, set by
#: ``http.server.serve`` once they listen, for the issuer when identity.xml names none.
BOUND_URLS = "tokensmith.urls"
#: In an HTTP scope: the client's own address, set by the access log: the one a trusted proxy
#: forwarded, else the peer's.
CLIENT_ADDRESS = "tokensmith.client_address"
