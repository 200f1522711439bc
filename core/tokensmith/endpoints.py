"""The OAuth endpoints: token (RFC 6749 §3.2), introspection (RFC 7662), revocation (RFC 7009)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import replace

from quart import Blueprint, Response, current_app

from .app import Runtime, issuer_url, runtime
from .asgi import Answer, HttpRequest
from .clientcert import client_certificates
from .clientcert import handshake_chain as client_cert_chain
from .clientauth import AuthenticatedClient, ClientAuthRequest, authenticate_client, challenge, claimed_client_id
from .errors import InvalidClientError, InvalidRequestError, OAuth2Error, ServerError, UnauthorizedClientError
from .events import ClientAuthEvent, TokenRevokeEvent
from .forms import check_content_type, parse_form
from .grants import GRANT_TYPES, Grant, check_grant_type, grant
from .kdf import token_hash
from .rfc8705 import x5t_s256
from .tokens import token_claims

__all__ = ["oauth", "client_cert_chain", "POST_ENDPOINTS"]

oauth = Blueprint("oauth", __name__)


def read_form(request: HttpRequest) -> Mapping[str, str]:
    """The request's form parameters, checked as RFC 6749 §3.2 and Appendix B require."""
    if request.query_string:
        # §2.3.1: client credentials "MUST NOT be included in the request URI"; we take no
        # parameter from the URI at all, so that none can be smuggled past the body checks.
        raise InvalidRequestError("parameters must be sent in the request body")
    check_content_type(request.headers.get("content-type"))
    return parse_form(request.body)


def _certificate_fields(chain: tuple[bytes, ...], source: str | None) -> dict[str, str | None]:
    """What the events say about the request's certificate: its thumbprint and source."""
    return {"x5t_s256": x5t_s256(chain[0]) if chain else None,
            "certificate_source": source if chain else None}


async def authenticate(rt: Runtime, request: HttpRequest, form: Mapping[str, str], endpoint: str) -> AuthenticatedClient:
    """Authenticate the calling client and tell the interceptors how it went.

    The client's certificate is decided here, once, before any listener runs: every
    authenticator and the token binding see the same one (see ``clientcert``).
    """
    authorization = request.headers.get("authorization")
    chain: tuple[bytes, ...] = ()
    source: str | None = None
    try:
        chain, source = client_certificates(request.scope, request.remote_addr,
                                            rt.identity.forwarded_certificates)
        auth_request = ClientAuthRequest(
            rt.storage, form, authorization, chain, request.remote_addr, request.headers, rt.truststore,
            rt.verified_secrets, client_cert_source=source,
        )
        auth = await authenticate_client(rt.listeners, auth_request)
    except OAuth2Error as error:
        if not isinstance(error, ServerError):
            await rt.listeners.notify("client_auth_failure", event=ClientAuthEvent(
                endpoint, claimed_client_id(form, authorization), error=error.error,
                remote_addr=request.remote_addr, **_certificate_fields(chain, source)))
        if isinstance(error, InvalidClientError):
            error.headers.update(challenge(authorization, rt.identity.realm))
        raise
    await rt.listeners.notify("client_auth_success", event=ClientAuthEvent(
        endpoint, auth.client.client_id, method=auth.method, remote_addr=request.remote_addr,
        **_certificate_fields(chain, source)))
    if auth.certificate is None and (auth.client.bind_tokens or auth.method == "none") and chain:
        # RFC 8705 §3 and §4: a secret client registered for bound tokens, or a public client,
        # gets tokens bound to the certificate of this request (its handshake's, or the one a
        # trusted proxy forwarded); presenting it is not a second authentication.
        auth = replace(auth, certificate=chain[0])
    return auth


async def token(rt: Runtime, request: HttpRequest) -> Answer:
    """The token endpoint (RFC 6749 §3.2)."""
    form = read_form(request)
    check_grant_type(form)
    auth = await authenticate(rt, request, form, "token")
    issued = await grant(Grant(rt.issuer, rt.storage, auth, form, rt.identity.max_failed_logins,
                               rt.identity.lockout_seconds))
    return Answer(200, issued.response())


async def introspect(rt: Runtime, request: HttpRequest) -> Answer:
    """Token introspection (RFC 7662 §2): any authenticated client may ask.

    "If the introspection call is properly authorized but the token is not active, does not
    exist on this server, or the protected resource is not allowed to introspect this
    particular token, then the authorization server MUST return an introspection response
    with the "active" field set to "false"" and nothing else (§2.2).
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
    if record is None or record.revoked or record.expires_at <= int(time.time()):
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
