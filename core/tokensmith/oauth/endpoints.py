"""The OAuth endpoints: token (RFC 6749 §3.2), introspection (RFC 7662), revocation (RFC 7009),
authorization server metadata (RFC 8414) and the signing keys (RFC 7517).

Each is a coroutine from a ``Runtime`` and an ``HttpRequest`` to an ``Answer``, with no web
framework in sight: ``app/routes.py`` puts them on the Quart app's URL map, and the fast lane
(``app/front.py``) calls the same functions for the three POST endpoints on the hot path.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote_plus

from tokensmith.config.settings import PublicUrls
from tokensmith.errors import (
    InvalidClientError,
    InvalidRequestError,
    OAuth2Error,
    ServerError,
    UnauthorizedClientError,
)
from tokensmith.models import LoginPolicy, TokenRecord
from tokensmith.oauth import clientauth, pkce
from tokensmith.oauth.clientauth import (
    AuthenticatedClient,
    ClientAuthRequest,
    RequestContext,
    authenticate_client,
    challenge,
    claimed_client_id,
    client_certificates,
)
from tokensmith.oauth.events import ClientAuthEvent, TokenRevokeEvent
from tokensmith.oauth.grants import (
    GRANT_TYPES,
    PUBLIC,
    Grant,
    binding,
    check_grant_type,
    grant,
    login_source,
    token_claims,
    token_hash,
)
from tokensmith.oauth.messages import Answer, HttpRequest
from tokensmith.oauth.runtime import Runtime
from tokensmith.scope import RECORD
from tokensmith.security.jose import b64url_decode, x5t_s256
from tokensmith.security.signing import SigningKeys

__all__ = [
    "token",
    "introspect",
    "revoke",
    "metadata",
    "jwks",
    "POST_ENDPOINTS",
    "PUBLIC_CLIENTS_ALLOWED",
    "ENDPOINT_PATHS",
    "METADATA_PATH",
    "JWKS_PATH",
    "parse_form",
    "check_content_type",
    "note",
]

#: Whether each endpoint serves a public client (RFC 6749 §2.1: token_endpoint_auth_method
#: "none", no credentials). The token endpoint does, for the grants that allow it
#: (``grants.PUBLIC_CLIENT_GRANTS``); introspection "MUST also require some form of
#: authorization" (RFC 7662 §2.1), which a public client cannot give; revocation takes a
#: public client's own tokens (RFC 7009 §2.1 validates credentials only "in case of a
#: confidential client").
PUBLIC_CLIENTS_ALLOWED = {"token": True, "introspect": False, "revoke": True}
#: The login policy of a grant that signs no user in (it is never consulted).
_NO_LOGIN = LoginPolicy()


# -- Reading OAuth request bodies (RFC 6749 §3.2 and Appendix B) ------------------------------
# Reading OAuth request bodies (RFC 6749 §3.2 and Appendix B).
#
# "The client MUST use the HTTP POST method when making access token requests"; parameters
# travel form-encoded in the body, "parameters sent without a value MUST be treated as if they
# were omitted", and "request and response parameters MUST NOT be included more than once".

_FORM = "application/x-www-form-urlencoded"
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PARAM_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def check_content_type(content_type: str | None) -> None:
    """Refuse any body that is not ``application/x-www-form-urlencoded`` in UTF-8."""
    mimetype, _, params = (content_type or "").partition(";")
    if mimetype.strip().lower() != _FORM:
        raise InvalidRequestError(f"the request body must be {_FORM}")
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise InvalidRequestError("the request body must be UTF-8")


def parse_form(body: bytes) -> Mapping[str, str]:
    """Parse a form body; raise ``InvalidRequestError`` for bad encoding or a repeated name."""
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidRequestError("the request body is not form-encoded ASCII") from None
    if _BAD_PERCENT.search(text):
        raise InvalidRequestError("the request body has an invalid percent-encoding")
    form: dict[str, str] = {}
    seen: set[str] = set()
    for pair in text.split("&"):
        if not pair:
            continue
        raw_name, _, raw_value = pair.partition("=")
        try:
            name = unquote_plus(raw_name, errors="strict")
            value = unquote_plus(raw_value, errors="strict")
        except UnicodeDecodeError:
            raise InvalidRequestError("a request parameter is not valid UTF-8") from None
        if name in seen:
            shown = f" {name}" if _PARAM_NAME.match(name) else ""
            raise InvalidRequestError(f"parameter{shown} is repeated")
        seen.add(name)
        if value:
            form[name] = value
    return form


def read_form(request: HttpRequest) -> Mapping[str, str]:
    """The request's form parameters, checked as RFC 6749 §3.2 and Appendix B require."""
    if request.query_string:
        # §2.3.1: client credentials "MUST NOT be included in the request URI"; we take no
        # parameter from the URI at all, so that none can be smuggled past the body checks.
        raise InvalidRequestError("parameters must be sent in the request body")
    check_content_type(request.headers.get("content-type"))
    return parse_form(request.body)


def note(scope: Mapping[str, Any], **fields: Any) -> None:
    """Add *fields* to the request's access-log record (``scope.RECORD``; none without an
    access log). Identifiers only: never a secret, token, assertion, password or code."""
    record = scope.get(RECORD)
    if record is not None:
        record.update(fields)


def _certificate_fields(chain: tuple[bytes, ...], source: str | None) -> dict[str, str | None]:
    """What the events say about the request's certificate: its thumbprint and source."""
    return {
        "x5t_s256": x5t_s256(chain[0]) if chain else None,
        "certificate_source": source if chain else None,
    }


def request_context(rt: Runtime, endpoint: str) -> RequestContext:
    """The issuer and the public URLs of *endpoint*, as the server metadata gives them."""
    assert rt.urls is not None
    urls = rt.urls()
    names = {
        "token": "token_endpoint",
        "introspect": "introspection_endpoint",
        "revoke": "revocation_endpoint",
    }

    def under(name: str) -> tuple[str, ...]:
        path = ENDPOINT_PATHS[name]
        return (f"{urls.issuer}{path}",) + ((f"{urls.mtls}{path}",) if urls.mtls else ())

    own = under(names[endpoint])
    return RequestContext(urls.issuer, endpoint, own[0], own, under("token_endpoint"))


async def authenticate(
    rt: Runtime, request: HttpRequest, form: Mapping[str, str], endpoint: str
) -> AuthenticatedClient:
    """Authenticate the calling client and tell the interceptors how it went.

    The client's certificate is decided here, once, before any listener runs: every
    authenticator and the token binding see the same one (see ``client_certificates``).
    """
    authorization = request.headers.get("authorization")
    chain: tuple[bytes, ...] = ()
    source: str | None = None
    try:
        chain, source = client_certificates(
            request.scope, request.remote_addr, rt.identity.forwarded_certificates
        )
        auth_request = ClientAuthRequest(
            rt.storage,
            form,
            authorization,
            chain,
            request.remote_addr,
            request.headers,
            rt.truststore,
            rt.verified_secrets,
            client_cert_source=source,
            context=lambda: request_context(rt, endpoint),
        )
        auth = await authenticate_client(rt.listeners, auth_request)
        if auth.method == PUBLIC and not PUBLIC_CLIENTS_ALLOWED[endpoint]:
            raise InvalidClientError(f"{endpoint} requires client authentication; a public client has none")
    except OAuth2Error as error:
        note(request.scope, claimed_client_id=claimed_client_id(form, authorization))
        if not isinstance(error, ServerError):
            await rt.listeners.notify(
                "client_auth_failure",
                event=ClientAuthEvent(
                    endpoint,
                    (isinstance(error, InvalidClientError) and error.client_id)
                    or claimed_client_id(form, authorization),
                    error=error.error,
                    remote_addr=request.remote_addr,
                    **_certificate_fields(chain, source),
                ),
            )
        if isinstance(error, InvalidClientError):
            error.headers.update(challenge(authorization, rt.identity.realm))
        raise
    note(request.scope, client_id=auth.client.client_id, auth_method=auth.method)
    if rt.listeners.any_implements("client_auth_success"):  # the event only for a listener
        await rt.listeners.notify(
            "client_auth_success",
            event=ClientAuthEvent(
                endpoint,
                auth.client.client_id,
                method=auth.method,
                remote_addr=request.remote_addr,
                **_certificate_fields(chain, source),
            ),
        )
    if auth.certificate is None and (auth.client.bind_tokens or auth.method == "none") and chain:
        # RFC 8705 §3 and §4: a secret client registered for bound tokens, or a public client,
        # gets tokens bound to the certificate of this request (its handshake's, or the one a
        # trusted proxy forwarded); presenting it is not a second authentication.
        auth = replace(auth, certificate=chain[0])
    return auth


async def token(rt: Runtime, request: HttpRequest) -> Answer:
    """The token endpoint (RFC 6749 §3.2)."""
    form = read_form(request)
    grant_type = check_grant_type(form)
    note(request.scope, grant_type=grant_type)
    auth = await authenticate(rt, request, form, "token")
    # Only the password grant signs a user in, so only it needs the lockout's policy and the
    # request's source; the other grants are not made to work them out.
    policy, source = (
        (rt.identity.login_policy, login_source(request.client_address))
        if grant_type == "password"
        else (_NO_LOGIN, "")
    )
    issued = await grant(Grant(rt.issuer, rt.storage, auth, form, policy, source))
    return Answer(200, issued.response())


def _kid(value: str) -> str | None:
    """The ``kid`` in the header of a JWT *value*, or None if it is not one."""
    header = value.split(".", 1)[0] if value.count(".") == 2 else None
    if not header:
        return None
    try:
        kid = json.loads(b64url_decode(header)).get("kid")
    except (ValueError, AttributeError):
        return None
    return kid if isinstance(kid, str) else None


def _active(record: TokenRecord | None, value: str, signing: SigningKeys) -> bool:
    """Whether the stored *record* of *value* is a token still in force.

    Not when revoked (by itself, its grant, its user or its client), expired, exchanged (a
    used refresh token can never be used again: RFC 7662 §2.2), or a JWT whose signing key
    was retired (it verifies nowhere any more: RFC 9068 §4).
    """
    if record is None or record.revoked or record.used or record.expires_at <= int(time.time()):
        return False
    if record.kind == "access" and "." in value:
        kid = _kid(value)
        if kid is not None and kid not in {key.kid for key in signing.all()}:
            return False
    return True


async def introspect(rt: Runtime, request: HttpRequest) -> Answer:
    """Token introspection (RFC 7662 §2), for callers authorised for the token (§4).

    A client may introspect the tokens issued to it; a client registered as a resource
    server (``sp add --resource-server``) may also introspect other clients' access tokens,
    never their refresh tokens. "If the introspection call is properly authorized but the
    token is not active, does not exist on this server, or the protected resource is not
    allowed to introspect this particular token, then the authorization server MUST return
    an introspection response with the "active" field set to "false"" and nothing else
    (§2.2).
    """
    form = read_form(request)
    value = form.get("token")
    caller = await authenticate(rt, request, form, "introspect")
    if value is None:
        raise InvalidRequestError("token is missing")
    record = await rt.storage.call(rt.storage.get_token, token_hash(value))
    if not _active(record, value, rt.signing):
        return Answer(200, {"active": False})
    assert record is not None
    if record.client_id != caller.client.client_id and (
        record.kind != "access" or not caller.client.resource_server
    ):
        return Answer(200, {"active": False})
    claims = token_claims(record)
    if not claims.get("scope"):
        # §2.2: "scope" is OPTIONAL; a token granted no scope has no value to report, and ""
        # is not one (RFC 6749 §3.3 needs at least one scope token). Plugins still see it.
        claims.pop("scope", None)
    return Answer(200, {"active": True, **claims})


async def revoke(rt: Runtime, request: HttpRequest) -> Answer:
    """Token revocation (RFC 7009 §2).

    The client may revoke only tokens issued to it (§2.1); an unknown or invalid token gets
    200 all the same (§2.2). Revoking a refresh token revokes the access tokens of its grant.
    """
    form = read_form(request)
    value = form.get("token")
    auth = await authenticate(rt, request, form, "revoke")
    if value is None:
        raise InvalidRequestError("token is missing")
    record = await rt.storage.call(rt.storage.get_token, token_hash(value))
    if record is None or record.revoked:
        return Answer(200, None)
    if record.client_id != auth.client.client_id:
        raise UnauthorizedClientError("the token was not issued to this client")
    if auth.method == PUBLIC and record.cnf_x5t_s256 is not None and binding(auth) != record.cnf_x5t_s256:
        # A public client proves nothing but its client_id; a token bound to a certificate
        # (RFC 8705 §4) is revoked only by whoever holds that certificate, or anyone who found
        # the token could end the client's session with it.
        raise UnauthorizedClientError("the token is bound to another certificate")
    kind = "refresh_token" if record.kind == "refresh" else "access_token"
    event = TokenRevokeEvent(auth.client, kind, MappingProxyType(token_claims(record)))
    await rt.listeners.intercept("pre_token_revoke", event=event)
    await rt.storage.call(rt.storage.revoke_token, record.token_hash)
    if record.kind == "refresh" and record.grant_id:
        await rt.storage.call(rt.storage.revoke_grant, record.grant_id)
    await rt.listeners.notify("post_token_revoke", event=event)
    return Answer(200, None)


#: The POST endpoints by path: the fast lane (``app/front.py``) serves them ahead of Quart,
#: since they are the hot path and a form-in, JSON-out exchange needs none of a framework's
#: request machinery.
POST_ENDPOINTS = {
    "/oauth2/token": token,
    "/oauth2/introspect": introspect,
    "/oauth2/revoke": revoke,
}


#: The authorization endpoint (RFC 6749 §3.1), served by app/signin.py.
AUTHORIZE_PATH = "/oauth2/authorize"
#: Where the metadata (RFC 8414 §3) and the signing keys are served.
METADATA_PATH = "/.well-known/oauth-authorization-server"
JWKS_PATH = "/oauth2/jwks"
#: Dynamic client registration (RFC 7591 §3), served by app/registration.py.
REGISTRATION_PATH = "/oauth2/register"

#: The metadata names of the endpoints (RFC 8414 §2) and their paths under the issuer.
ENDPOINT_PATHS = {
    "token_endpoint": "/oauth2/token",
    "introspection_endpoint": "/oauth2/introspect",
    "revocation_endpoint": "/oauth2/revoke",
}


def auth_methods_supported(rt: Runtime, endpoint: str) -> list[str]:
    """The client authentication methods *endpoint* accepts: those of the enabled
    authenticators, and ``none`` where ``PUBLIC_CLIENTS_ALLOWED`` lets public clients in. The
    metadata lists exactly this, so that it says what the endpoint enforces."""
    methods = clientauth.auth_methods_supported(rt.listeners)
    return [*methods, PUBLIC] if PUBLIC_CLIENTS_ALLOWED[endpoint] else methods


async def metadata(rt: Runtime, urls: PublicUrls) -> Answer:
    """Authorization server metadata (RFC 8414 §2, RFC 8705 §3.3 and §5).

    The issuer is the public base URL and every endpoint URL is under it (``config.public_urls``
    says how it is chosen). ``mtls_endpoint_aliases`` names the same endpoints under the mTLS
    base URL, when there is one.
    """
    body: dict[str, object] = {"issuer": urls.issuer}
    body.update({name: f"{urls.issuer}{path}" for name, path in ENDPOINT_PATHS.items()})
    body.update(
        {
            "jwks_uri": f"{urls.issuer}{JWKS_PATH}",
            "grant_types_supported": list(GRANT_TYPES),
            # RFC 6749 §4.1 with PKCE (RFC 7636 §6.2: S256 only) and RFC 9207's iss.
            "authorization_endpoint": f"{urls.issuer}{AUTHORIZE_PATH}",
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "code_challenge_methods_supported": list(pkce.METHODS),
            "authorization_response_iss_parameter_supported": True,
            "scopes_supported": await rt.storage.call(rt.storage.scopes_in_use),
            "token_endpoint_auth_methods_supported": auth_methods_supported(rt, "token"),
            "introspection_endpoint_auth_methods_supported": auth_methods_supported(rt, "introspect"),
            "revocation_endpoint_auth_methods_supported": auth_methods_supported(rt, "revoke"),
            "tls_client_certificate_bound_access_tokens": True,
        }
    )
    if rt.admin.registration_mode != "disabled":
        # RFC 8414 §2 / RFC 7591 §3: where clients register themselves.
        body["registration_endpoint"] = f"{urls.issuer}{REGISTRATION_PATH}"
    for name, value in rt.server_metadata.items():
        body.setdefault(name, value)  # what an authenticator adds (RFC 8414 §2), never ours
    if urls.mtls is not None:
        body["mtls_endpoint_aliases"] = {name: f"{urls.mtls}{path}" for name, path in ENDPOINT_PATHS.items()}
    return Answer(200, body, no_store=False)


async def jwks(rt: Runtime) -> Answer:
    """The public keys that sign JWT access tokens (RFC 7517 §5), active and previous."""
    return Answer(200, rt.signing.jwks(), content_type="application/jwk-set+json", no_store=False)
