"""Client authentication at the token endpoint (RFC 6749 §2.3).

The host asks every enabled ``ClientAuthenticator`` listener, in order, and keeps the answer
of the one that engaged. Listeners answer in three ways: ``None`` (no credential of mine),
``AuthenticatedClient`` (this client, by this method) or ``InvalidClientError`` (my kind of
credential, but wrong).
"""

from __future__ import annotations

import base64
import functools
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote_plus

from cryptography import x509

from tokensmith.errors import InvalidClientError, InvalidRequestError, OAuth2Error
from tokensmith.listeners.registry import ListenerSet
from tokensmith.models import Client, Storage
from tokensmith.security import hashing as kdf
from tokensmith.security.truststore import Truststore

__all__ = ["ClientAuthRequest", "AuthenticatedClient", "RequestContext", "authenticate_client"]

AUTHENTICATOR = "ClientAuthenticator"
PUBLIC = "none"
_SCHEME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


@dataclass(frozen=True)
class AuthenticatedClient:
    """An authenticator's positive answer: *client*, authenticated by *method* (RFC 7591 name).

    ``certificate`` is the DER of the TLS client certificate the client proved it holds, when
    the method is certificate-based; tokens issued to it are bound to it (RFC 8705 §3).
    """

    client: Client
    method: str
    certificate: bytes | None = None


@dataclass(frozen=True)
class RequestContext:
    """Where a request arrived: what RFC 7523 §3 and RFC 7521 §5.1 call the audience.

    ``issuer`` is the server's issuer identifier (RFC 8414 §2, identity.xml ``<Issuer>`` or
    the first connector's URL); ``endpoint`` is ``"token"``, ``"introspect"`` or
    ``"revoke"``; ``endpoint_url`` its URL under the issuer, as the server metadata
    publishes it; ``endpoint_urls`` that URL and, when there are ``mtls_endpoint_aliases``
    (RFC 8705 §5), the alias; ``token_endpoint_urls`` the same for the token endpoint.
    """

    issuer: str
    endpoint: str
    endpoint_url: str
    endpoint_urls: tuple[str, ...]
    token_endpoint_urls: tuple[str, ...]


class ClientAuthRequest:
    """What an authenticator sees of one request."""

    def __init__(
        self,
        storage: Storage,
        form: Mapping[str, str],
        authorization: str | None,
        client_cert_chain: tuple[bytes, ...] = (),
        remote_addr: str | None = None,
        headers: Mapping[str, str] | None = None,
        truststore: Truststore | None = None,
        verified: kdf.VerifiedSecrets | None = None,
        client_cert_source: str | None = None,
        context: RequestContext | Callable[[], RequestContext] | None = None,
    ):
        self._storage = storage
        self._context = context
        self._truststore = truststore
        self._verified = verified
        #: The body parameters (RFC 6749 §3.2), each present at most once, none empty.
        self.form = form
        #: The ``Authorization`` header, or None.
        self.authorization = authorization
        #: DER of the client's certificates, leaf first; empty when it presented none. They
        #: come from this connection's TLS handshake or, behind a trusted proxy, from the
        #: proxy's header; the server decides which before any authenticator runs.
        self.client_cert_chain = client_cert_chain
        #: Where ``client_cert_chain`` came from: ``"tls"``, ``"proxy"`` or None.
        self.client_cert_source = client_cert_source if client_cert_chain else None
        self.remote_addr = remote_addr
        self.headers: Mapping[str, str] = headers or {}

    @functools.cached_property
    def context(self) -> RequestContext:
        """The issuer, the endpoint being served and its public URLs (``RequestContext``)."""
        context = self._context() if callable(self._context) else self._context
        if context is None:
            raise RuntimeError("this request has no context")
        return context

    def get_client(self, client_id: str) -> Client | None:
        """The registered client *client_id* (without its secret hash), or None if there is
        none. Not a coroutine: it reads the store's cache, refreshed whenever clients change."""
        client = self._storage.get_client(client_id)
        return None if client is None else client.without_secret()

    def trust_anchors(self) -> list[x509.Certificate]:
        """The truststore's CA certificates, for ``tls_client_auth`` (current, no restart)."""
        return self._truststore.anchors() if self._truststore is not None else []

    async def check_secret(self, client_id: str, secret: str) -> Client:
        """Return client *client_id* if *secret* is its secret; raise ``InvalidClientError``.

        An unknown client, a client without a secret and a wrong secret take the same time
        and give the same error, so that responses do not tell which client ids exist. The
        slow KDF runs in a thread, off the event loop.
        """
        client = self._storage.get_client(client_id)
        stored = client.secret_hash if client is not None else None
        now = time.monotonic()
        if stored is not None and self._verified is not None and self._verified.known(stored, secret, now):
            return client.without_secret()  # type: ignore[union-attr]
        if await kdf.check(secret, stored) and client is not None:
            if stored is not None and self._verified is not None:
                self._verified.remember(stored, secret, now)
            return client.without_secret()
        raise InvalidClientError("client authentication failed")


async def authenticate_client(listeners: ListenerSet, request: ClientAuthRequest) -> AuthenticatedClient:
    """Run the enabled authenticators over *request* and return the one client they agree on."""
    engaged: list[tuple[str, AuthenticatedClient | OAuth2Error]] = []
    for listener in listeners.enabled(AUTHENTICATOR):
        try:
            result = await listeners.call(listener, "authenticate_client", request=request, listener=listener)
        except InvalidClientError as exc:
            engaged.append((listener.name, exc))
            continue
        if result is None:
            continue
        if not isinstance(result, AuthenticatedClient):
            listeners.fail(listener, "authenticate_client", f"returned {type(result).__name__}")
        if result.method not in listeners.methods(listener):
            listeners.fail(
                listener, "authenticate_client", f"answered for undeclared method {result.method!r}"
            )
        engaged.append((listener.name, result))

    if len(engaged) > 1:
        raise InvalidRequestError(
            f"more than one client authentication method was used ({', '.join(name for name, _ in engaged)})"
        )
    if not engaged:
        return _public_client(request)
    _, outcome = engaged[0]
    if isinstance(outcome, OAuth2Error):
        raise outcome
    if outcome.client.token_endpoint_auth_method != outcome.method:
        raise InvalidClientError(
            "the client is not registered for this authentication method", client_id=outcome.client.client_id
        )
    return outcome


def _public_client(request: ClientAuthRequest) -> AuthenticatedClient:
    """A request no authenticator claimed: a public client (RFC 6749 §2.1), or no client.

    Only a client registered with ``token_endpoint_auth_method`` ``none`` may go without
    authentication; it is identified by ``client_id`` alone (RFC 6749 §3.2.1).
    """
    client_id = request.form.get("client_id")
    client = request.get_client(client_id) if client_id is not None else None
    if client is not None and client.token_endpoint_auth_method == PUBLIC and request.authorization is None:
        return AuthenticatedClient(client, PUBLIC)
    raise InvalidClientError("client authentication failed")


def claimed_client_id(form: Mapping[str, str], authorization: str | None) -> str | None:
    """The client id a request claims (body or Basic user name), for logs and events only."""
    if "client_id" in form:
        return form["client_id"]
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() == "basic":
        try:
            user = base64.b64decode(credentials.strip(), validate=True).decode("utf-8").partition(":")[0]
            return unquote_plus(user) or None
        except ValueError:  # binascii.Error, non-ASCII input, UnicodeDecodeError
            return None
    return None


def challenge(authorization: str | None, realm: str) -> dict[str, str]:
    """The WWW-Authenticate header for a 401 (RFC 6749 §5.2), matching the client's scheme.

    Without an Authorization header it is Basic, the scheme this server accepts: a 401
    always carries a challenge (RFC 9110 §15.5.2 "MUST send a WWW-Authenticate header").
    """
    if authorization is None:
        return {"WWW-Authenticate": f'Basic realm="{realm}"'}
    scheme = authorization.split(" ", 1)[0]
    if not _SCHEME.match(scheme):
        scheme = "Basic"
    return {"WWW-Authenticate": f'{scheme} realm="{realm}"'}
