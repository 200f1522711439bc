"""Client authentication at the token endpoint (RFC 6749 §2.3).

The host asks every enabled ``ClientAuthenticator`` listener, in order, and keeps the answer
of the one that engaged. Listeners answer in three ways: ``None`` (no credential of mine),
``AuthenticatedClient`` (this client, by this method) or ``InvalidClientError`` (my kind of
credential, but wrong).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote_plus

from cryptography import x509

from tokensmith.config.settings import ForwardedCertificates
from tokensmith.config.xml import ConfigError
from tokensmith.errors import (
    InvalidClientError,
    InvalidClientMetadataError,
    InvalidRequestError,
    OAuth2Error,
    ServerError,
)
from tokensmith.listeners.registry import Listener, ListenerSet
from tokensmith.models import Client, Storage, StorageError
from tokensmith.oauth.hookspecs import AUTHENTICATOR
from tokensmith.oauth.messages import Headers
from tokensmith.oauth.mtls import parse_forwarded_certificate, parse_forwarded_chain
from tokensmith.scope import DER_KEY
from tokensmith.security import hashing as kdf
from tokensmith.security.truststore import Truststore
from tokensmith.security.x509 import CertificateError

__all__ = [
    "ClientAuthRequest",
    "AuthenticatedClient",
    "RequestContext",
    "VerifiedSecrets",
    "authenticate_client",
    "handshake_chain",
    "client_certificates",
]

log = logging.getLogger("tokensmith.oauth.clientauth")
_proxy_log = logging.getLogger("tokensmith")

PUBLIC = "none"
_SCHEME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


class VerifiedSecrets:
    """A short memory of client secrets that passed the slow KDF, so that a client's every
    request does not pay scrypt again.

    Only secrets that were verified are remembered, as an HMAC under a key that lives in this
    process alone, and keyed by the stored hash: a new secret (a new hash) misses, and a wrong
    secret, an unknown client or an expired entry always takes the full KDF. Client secrets
    are 256 random bits, so the HMAC gives an attacker who reads this memory nothing to
    search. User passwords, which people choose, are never kept here.
    """

    def __init__(self, capacity: int = 10_000, ttl: float = 300.0):
        self._key = secrets.token_bytes(32)
        self._capacity = capacity
        self._ttl = ttl
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    def _mac(self, secret: str) -> bytes:
        return hmac.new(self._key, secret.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()

    def known(self, stored_hash: str, secret: str, now: float) -> bool:
        """Whether *secret* was verified against *stored_hash* within the last ``ttl`` seconds."""
        entry = self._entries.get(stored_hash)
        if entry is None:
            return False
        mac, expires = entry
        if expires <= now:
            del self._entries[stored_hash]
            return False
        if not hmac.compare_digest(mac, self._mac(secret)):
            return False
        self._entries.move_to_end(stored_hash)
        return True

    def remember(self, stored_hash: str, secret: str, now: float) -> None:
        """Note that *secret* matched *stored_hash* just now."""
        self._entries[stored_hash] = (self._mac(secret), now + self._ttl)
        self._entries.move_to_end(stored_hash)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)


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


#: A client id not read ahead (``ClientAuthRequest.prefetch``).
_UNREAD: Any = object()


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
        verified: VerifiedSecrets | None = None,
        client_cert_source: str | None = None,
        context: RequestContext | Callable[[], RequestContext] | None = None,
    ):
        self._storage = storage
        #: Clients read ahead of the authenticators, off the event loop (``prefetch``).
        self._clients: dict[str, Client | None | StorageError] = {}
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
        self._headers = headers

    @functools.cached_property
    def headers(self) -> Mapping[str, str]:
        """The request headers, looked up case-insensitively (made when a plugin asks)."""
        return Headers(self._headers or {})

    @functools.cached_property
    def context(self) -> RequestContext:
        """The issuer, the endpoint being served and its public URLs (``RequestContext``)."""
        context = self._context() if callable(self._context) else self._context
        if context is None:
            raise RuntimeError("this request has no context")
        return context

    def basic_credentials(self) -> tuple[str, str] | None:
        """The client id and secret of ``Authorization: Basic`` (RFC 6749 §2.3.1), decoded.

        None when the request has no Authorization header or another scheme ("not mine");
        ``ValueError`` when it is Basic but malformed (not base64 of UTF-8 ``id:secret``, an
        empty id, or a bad form-urlencoding).
        """
        return basic_credentials(self.authorization)

    def get_client(self, client_id: str) -> Client | None:
        """The registered client *client_id* (without its secret hash), or None if there is
        none. Not a coroutine: the server read the request's ``client_id`` ahead
        (``prefetch``), and the store caches clients, refreshed whenever they change.

        An id no client can have (not a str, or not encodable as UTF-8, such as a lone
        surrogate from a JSON ``"\\ud800"``) is None, without asking the store."""
        if not storable_id(client_id):
            return None
        client = self._clients.get(client_id, _UNREAD)
        if client is _UNREAD:
            client = self._storage.get_client(client_id)
        if isinstance(client, StorageError):
            raise StorageError(str(client))
        return None if client is None else client.without_secret

    async def prefetch(self, client_id: str | None) -> None:
        """Read client *client_id* now, through ``Storage.call``, for the authenticators'
        ``get_client`` and ``check_secret`` to find: they are synchronous and some run on
        the event loop, which must never wait for a networked store. A store that cannot
        answer is remembered, and answers them with its StorageError (503)."""
        if client_id is None or not storable_id(client_id) or client_id in self._clients:
            return
        cached = self._storage.cached_client(client_id)
        if cached is not None:
            self._clients[client_id] = cached
            return
        try:
            self._clients[client_id] = await self._storage.call(self._storage.get_client, client_id)
        except StorageError as exc:
            self._clients[client_id] = exc

    def trust_anchors(self) -> list[x509.Certificate]:
        """The truststore's CA certificates, for ``tls_client_auth`` (current, no restart)."""
        return self._truststore.anchors() if self._truststore is not None else []

    async def check_secret(self, client_id: str, secret: str) -> Client:
        """Return client *client_id* if *secret* is its secret; raise ``InvalidClientError``.

        An unknown client, a client without a secret and a wrong secret take the same time
        and give the same error, so that responses do not tell which client ids exist. The
        slow KDF runs in a thread, off the event loop.
        """
        await self.prefetch(client_id)
        client = self._clients.get(client_id) if storable_id(client_id) else None
        if isinstance(client, StorageError):
            raise StorageError(str(client))
        stored = client.secret_hash if client is not None else None
        now = time.monotonic()
        if stored is not None and self._verified is not None and self._verified.known(stored, secret, now):
            return client.without_secret  # type: ignore[union-attr]
        if await kdf.check(secret, stored) and client is not None:
            if stored is not None and self._verified is not None:
                self._verified.remember(stored, secret, now)
            return client.without_secret
        # Same answer to the caller in all three cases; the operator's log tells them apart.
        if client is None:
            reason, detail = "unknown_client", f"unknown client {client_id}"
        elif stored is None:
            reason, detail = "no_secret", f"client {client_id} has no secret (it authenticates otherwise)"
        else:
            reason, detail = "secret_mismatch", f"secret mismatch for client {client_id}"
        raise InvalidClientError("client authentication failed", reason=reason, detail=detail)


def storable_id(client_id: object) -> bool:
    """Whether *client_id* could be a registered client's id: a str the store can take.

    Callers choose ids (a form parameter, a Basic user name, a JWT claim); one with a lone
    surrogate cannot be encoded for the database, and must be "no such client", not a 500.
    """
    if not isinstance(client_id, str):
        return False
    try:
        client_id.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def auth_methods(listeners: ListenerSet, listener: Listener) -> tuple[str, ...]:
    """The RFC 7591 method names an enabled authenticator declared (``client_auth_methods``)."""
    return listeners.declared(listener, "client_auth_methods") or ()


def auth_methods_supported(listeners: ListenerSet) -> list[str]:
    """Every method of every enabled authenticator, in calling order, without repeats."""
    return list(
        dict.fromkeys(m for item in listeners.enabled(AUTHENTICATOR) for m in auth_methods(listeners, item))
    )


def authenticator_for(listeners: ListenerSet, method: str) -> Listener | None:
    """The first enabled authenticator, in calling order, that declared *method*."""
    return next(
        (item for item in listeners.enabled(AUTHENTICATOR) if method in auth_methods(listeners, item)), None
    )


#: Metadata namespaces the server itself owns (the console keeps a client's description under
#: ``console.description``); a plugin of the same name cannot claim them.
CORE_NAMESPACES = frozenset({"console"})


def check_client_metadata(listeners: ListenerSet, metadata: Mapping[str, Any]) -> None:
    """Let the authenticator of ``metadata["token_endpoint_auth_method"]`` check a client's
    RFC 7591 metadata; it raises ``InvalidClientMetadataError`` (RFC 7591 §3.2.2). Every way
    of registering a client calls this. Anything else the plugin raises is its own fault:
    logged, and ``ServerError``."""
    loaded = {item.name for item in listeners}
    for name in metadata:
        plugin = name.split(".", 1)[0] if "." in name else None
        if plugin is not None and plugin not in loaded and plugin not in CORE_NAMESPACES:
            raise InvalidClientMetadataError(
                f"client metadata {name!r} belongs to plugin {plugin!r}, which is not loaded"
            )
    listener = authenticator_for(listeners, str(metadata.get("token_endpoint_auth_method")))
    if listener is None or not listeners.implements(listener, "check_client_metadata"):
        return
    try:
        listeners.call_sync(
            listener, "check_client_metadata", metadata=MappingProxyType(dict(metadata)), listener=listener
        )
    except OAuth2Error:
        raise
    except BaseException:  # noqa: B036 - a plugin's SystemExit must not stop the caller
        log.exception("listener %s/%s raised in check_client_metadata", listener.type, listener.name)
        raise ServerError("an internal error occurred") from None


def collect_server_metadata(listeners: ListenerSet) -> dict[str, Any]:
    """The RFC 8414 members the enabled authenticators add (``server_metadata``), the first
    one's value winning; called once per load, after ``listener_configure``. A plugin that
    fails, or answers with something other than a dict, stops the load (``ConfigError``)."""
    merged: dict[str, Any] = {}
    for item in listeners.enabled(AUTHENTICATOR):
        try:
            extra = listeners.call_sync(item, "server_metadata", listener=item)
        except ConfigError:
            raise
        except BaseException as exc:  # noqa: B036
            raise ConfigError(
                f"{item.source.wheel}: plugin {item.name!r}: server_metadata raised {type(exc).__name__}: {exc}"
            ) from None
        if extra is None:
            continue
        if not isinstance(extra, Mapping) or not all(isinstance(k, str) for k in extra):
            raise ConfigError(
                f"{item.source.wheel}: plugin {item.name!r}: server_metadata must return a dict"
            )
        for name, value in extra.items():
            merged.setdefault(name, value)
    return merged


async def authenticate_client(listeners: ListenerSet, request: ClientAuthRequest) -> AuthenticatedClient:
    """Run the enabled authenticators over *request* and return the one client they agree on."""
    engaged: list[tuple[str, AuthenticatedClient | OAuth2Error]] = []
    await request.prefetch(request.form.get("client_id"))
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
        if result.method not in auth_methods(listeners, listener):
            listeners.fail(
                listener, "authenticate_client", f"answered for undeclared method {result.method!r}"
            )
        engaged.append((listener.name, result))

    if len(engaged) > 1:
        raise InvalidRequestError(
            reason="several_auth_methods",
            description=f"more than one client authentication method was used ({', '.join(name for name, _ in engaged)})",
        )
    if not engaged:
        return _public_client(request)
    _, outcome = engaged[0]
    if isinstance(outcome, OAuth2Error):
        raise outcome
    if outcome.client.token_endpoint_auth_method != outcome.method:
        raise InvalidClientError(
            "the client is not registered for this authentication method",
            client_id=outcome.client.client_id,
            reason="auth_method_not_registered",
            detail=f"client {outcome.client.client_id} authenticated by {outcome.method} but is registered"
            f" for {outcome.client.token_endpoint_auth_method}",
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
    reason, detail = _why_unauthenticated(request, client_id, client)
    raise InvalidClientError("client authentication failed", reason=reason, detail=detail)


_CERTIFICATE_METHODS = ("tls_client_auth", "self_signed_tls_client_auth")


#: Schemes of the HTTP Authentication Scheme Registry (RFC 9110 §16.4) worth naming in a log
#: line; any other first word may be the start of a credential sent without a scheme.
_KNOWN_SCHEMES = {"basic", "bearer", "digest", "dpop", "hoba", "mutual", "negotiate", "ntlm", "scram-sha-256"}
_SCHEME_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _authorization_shape(value: str) -> str:
    """An Authorization field for the operator, without any of its text: a registered scheme
    is named, anything else only described (a credential sent without a scheme would
    otherwise leave its start in the log)."""
    first, space, _ = value.partition(" ")
    if first.lower() in _KNOWN_SCHEMES and space:
        return f"Authorization scheme {first.capitalize()} not accepted ({len(value)} characters)"
    shape = (
        "an unknown scheme token and credentials" if space and _SCHEME_TOKEN.fullmatch(first) else "no scheme"
    )
    return f"Authorization field not accepted: {shape}, {len(value)} characters"


def _why_unauthenticated(
    request: ClientAuthRequest, client_id: str | None, client: Client | None
) -> tuple[str, str]:
    """Why no authenticator took a request, for the operator's refusal line: code, words."""
    if client_id is None:
        if request.authorization is not None:
            return "unsupported_auth_scheme", _authorization_shape(request.authorization)
        return "no_client_id", "no client_id and no client credentials"
    if client is None:
        return "unknown_client", f"unknown client {client_id}"
    method = client.token_endpoint_auth_method
    if method in _CERTIFICATE_METHODS and not request.client_cert_chain:
        return "no_client_certificate", f"no client certificate presented (client {client_id} uses {method})"
    if method == PUBLIC:
        return "public_client_with_credentials", f"public client {client_id} sent an Authorization header"
    return (
        "no_credentials",
        f"no credentials for client {client_id}, registered for {method} (is its authenticator enabled?)",
    )


def basic_credentials(authorization: str | None, *, strict: bool = True) -> tuple[str, str] | None:
    """The (client_id, client_secret) of an ``Authorization: Basic`` header, or None.

    RFC 6749 §2.3.1: the credentials are base64 of ``id:secret`` (RFC 7617), each part
    encoded with application/x-www-form-urlencoded. None without a header or for another
    scheme. A Basic header that is not that raises ``ValueError``; with *strict* False (to
    name who a request claims to be, in logs and events) a missing ':' or a bad
    percent-encoding is let through as best it can be read.
    """
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    # binascii.Error, non-ASCII input and UnicodeDecodeError are all ValueError
    decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    client_id, colon, secret = decoded.partition(":")
    errors = "strict" if strict else "replace"
    client_id, secret = unquote_plus(client_id, errors=errors), unquote_plus(secret, errors=errors)
    if strict and (not colon or not client_id):
        raise ValueError("malformed Basic credentials")
    return client_id, secret


def claimed_client_id(form: Mapping[str, str], authorization: str | None) -> str | None:
    """The client id a request claims (body or Basic user name), for logs and events only."""
    if "client_id" in form:
        return form["client_id"]
    try:
        credentials = basic_credentials(authorization, strict=False)
    except ValueError:
        return None
    return (credentials[0] or None) if credentials else None


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


# -- Which client certificate a request presents ------------------------------------------
# Decided once, here, before any listener runs.
#
# A client proves it holds a certificate in this connection's TLS handshake, or, behind a
# TLS-terminating proxy, the proxy does and forwards the certificate in a header (RFC 9440,
# RFC 8705 §6.5). Every authenticator, the token binding (RFC 8705 §3) and the events see the
# one answer ``client_certificates`` gives, so a certificate can never authenticate a client through one
# path and then be missing from its tokens.
#
# The header is believed only from a proxy listed in identity.xml's
# ``<ClientCertificateHeader trustedProxies=...>``, and only when the handshake carried no
# certificate: a certificate the client proved itself always wins.


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
        _proxy_log.warning("ignored a %s header from %s, which is not a trusted proxy", names, remote_addr)
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
