"""The names tokensmith's servers and its app share in an ASGI scope and in the app object.

The HTTP layer (``http/``) writes them and the application reads them; both import them from
here, at the bottom, so that neither imports the other.
"""

from __future__ import annotations

__all__ = ["DER_KEY", "TIMEOUT_KEY", "BOUND_URLS", "CLIENT_ADDRESS", "RECORD"]

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
#: In an HTTP scope: the request's access-log record (a dict), put there by the access log
#: before the app runs; the endpoints add what only they know (the authenticated client and
#: method, the grant type). Nothing secret is ever noted: no secret, token, assertion,
#: password or code, only identifiers.
RECORD = "tokensmith.record"
