"""The OAuth endpoints: token (RFC 6749 §3.2), introspection (RFC 7662), revocation (RFC 7009)."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Mapping
from dataclasses import replace

from quart import Blueprint, Response, current_app

from .app import Runtime, issuer_url, runtime
from .asgi import DER_KEY, Answer, HttpRequest
from .clientauth import AuthenticatedClient, ClientAuthRequest, authenticate_client, challenge, claimed_client_id
from .errors import InvalidClientError, InvalidRequestError, OAuth2Error, ServerError, UnauthorizedClientError
from .events import ClientAuthEvent, TokenRevokeEvent
from .forms import check_content_type, parse_form
from .grants import GRANT_TYPES, Grant, check_grant_type, grant, login_source
from .kdf import token_hash
from .signing import SigningKeys, b64url_decode
from .storage import TokenRecord
from .tokens import token_claims

__all__ = ["oauth", "client_cert_chain", "POST_ENDPOINTS"]

oauth = Blueprint("oauth", __name__)


def client_cert_chain(scope: Mapping) -> tuple[bytes, ...]:
    """DER of the TLS client certificates in *scope* (the ASGI TLS extension), leaf first."""
    tls = scope.get("extensions", {}).get("tls") or {}
    der = tls.get(DER_KEY)
    if der is not None:
        return der
    return tuple(ssl.PEM_cert_to_DER_cert(pem) for pem in tls.get("client_cert_chain") or ())


def read_form(request: HttpRequest) -> Mapping[str, str]:
    """The request's form parameters, checked as RFC 6749 §3.2 and Appendix B require."""
    if request.query_string:
        # §2.3.1: client credentials "MUST NOT be included in the request URI"; we take no
        # parameter from the URI at all, so that none can be smuggled past the body checks.
        raise InvalidRequestError("parameters must be sent in the request body")
    check_content_type(request.headers.get("content-type"))
    return parse_form(request.body)


async def authenticate(rt: Runtime, request: HttpRequest, form: Mapping[str, str], endpoint: str) -> AuthenticatedClient:
    """Authenticate the calling client and tell the interceptors how it went."""
    authorization = request.headers.get("authorization")
    chain = client_cert_chain(request.scope)
    auth_request = ClientAuthRequest(
        rt.storage, form, authorization, chain, request.remote_addr, request.headers, rt.truststore,
        rt.verified_secrets,
    )
    try:
        auth = await authenticate_client(rt.listeners, auth_request)
    except OAuth2Error as error:
        if not isinstance(error, ServerError):
            await rt.listeners.notify("client_auth_failure", event=ClientAuthEvent(
                endpoint, claimed_client_id(form, authorization), error=error.error,
                remote_addr=request.remote_addr))
        if isinstance(error, InvalidClientError):
            error.headers.update(challenge(authorization, rt.identity.realm))
        raise
    await rt.listeners.notify("client_auth_success", event=ClientAuthEvent(
        endpoint, auth.client.client_id, method=auth.method, remote_addr=request.remote_addr))
    if auth.certificate is None and (auth.client.bind_tokens or auth.method == "none") and chain:
        # RFC 8705 §3 and §4: a secret client registered for bound tokens, or a public client,
        # gets tokens bound to the certificate of this connection; presenting it is not a
        # second authentication.
        auth = replace(auth, certificate=chain[0])
    return auth


async def token(rt: Runtime, request: HttpRequest) -> Answer:
    """The token endpoint (RFC 6749 §3.2)."""
    form = read_form(request)
    check_grant_type(form)
    auth = await authenticate(rt, request, form, "token")
    issued = await grant(Grant(rt.issuer, rt.storage, auth, form, rt.identity.login_policy,
                               login_source(request.remote_addr)))
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
    if caller.method == "none":
        # §2.1: the endpoint "MUST also require some form of authorization"; a public client
        # has none to offer.
        raise InvalidClientError("introspection requires client authentication")
    if value is None:
        raise InvalidRequestError("token is missing")
    record = rt.storage.get_token(token_hash(value))
    if not _active(record, value, rt.signing):
        return Answer(200, {"active": False})
    assert record is not None
    if record.client_id != caller.client.client_id and (
            record.kind != "access" or not caller.client.resource_server):
        return Answer(200, {"active": False})
    return Answer(200, {"active": True, **token_claims(record)})


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
    record = rt.storage.get_token(token_hash(value))
    if record is None or record.revoked:
        return Answer(200, None)
    if record.client_id != auth.client.client_id:
        raise UnauthorizedClientError("the token was not issued to this client")
    kind = "refresh_token" if record.kind == "refresh" else "access_token"
    event = TokenRevokeEvent(auth.client, kind, token_claims(record))
    await rt.listeners.intercept("pre_token_revoke", event=event)
    rt.storage.revoke_token(record.token_hash)
    if record.kind == "refresh" and record.grant_id:
        rt.storage.revoke_grant(record.grant_id)
    await rt.listeners.notify("post_token_revoke", event=event)
    return Answer(200, None)


#: The endpoints served by ``asgi.OAuthEndpoints`` rather than by Quart: they are the hot
#: path, and a form-in, JSON-out exchange needs none of a framework's request machinery.
POST_ENDPOINTS = {
    "/oauth2/token": token,
    "/oauth2/introspect": introspect,
    "/oauth2/revoke": revoke,
}


@oauth.get("/.well-known/oauth-authorization-server")
async def metadata() -> Response:
    """Authorization server metadata (RFC 8414 §2, RFC 8705 §3.3 and §5).

    The issuer is the URL of the first connector. ``mtls_endpoint_aliases`` names the
    endpoints on the first connector that requires client certificates (``need``), when the
    first connector does not.
    """
    rt = runtime(current_app)
    bound: list[str] = current_app.extensions.get("tokensmith.urls") or []
    connectors = rt.config.server.connectors
    issuer = issuer_url(current_app)
    base = bound[0] if bound else issuer
    methods = [*rt.listeners.auth_methods_supported(), "none"]
    body: dict[str, object] = {
        "issuer": issuer,
        "token_endpoint": f"{base}/oauth2/token",
        "introspection_endpoint": f"{base}/oauth2/introspect",
        "revocation_endpoint": f"{base}/oauth2/revoke",
        "jwks_uri": f"{base}/oauth2/jwks",
        "grant_types_supported": list(GRANT_TYPES),
        "response_types_supported": [],
        "scopes_supported": rt.storage.scopes_in_use(),
        "token_endpoint_auth_methods_supported": methods,
        "introspection_endpoint_auth_methods_supported": methods,
        "revocation_endpoint_auth_methods_supported": methods,
        "tls_client_certificate_bound_access_tokens": True,
    }
    need = [url for url, c in zip(bound, connectors) if c.client_auth == "need"]
    if need and connectors[0].client_auth != "need":
        body["mtls_endpoint_aliases"] = {
            "token_endpoint": f"{need[0]}/oauth2/token",
            "introspection_endpoint": f"{need[0]}/oauth2/introspect",
            "revocation_endpoint": f"{need[0]}/oauth2/revoke",
        }
    return Response(json.dumps(body, separators=(",", ":")), content_type="application/json")


@oauth.get("/oauth2/jwks")
async def jwks() -> Response:
    """The public keys that sign JWT access tokens (RFC 7517 §5), active and previous."""
    keys = runtime(current_app).signing.jwks()
    return Response(json.dumps(keys, separators=(",", ":")), content_type="application/jwk-set+json")
