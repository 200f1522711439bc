"""Grant types the token endpoint serves (RFC 6749 §4 and §6)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from . import kdf
from .clientauth import AuthenticatedClient
from .errors import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    UnauthorizedClientError,
    UnsupportedGrantTypeError,
)
from .registration import RegistrationError
from .rfc8705 import x5t_s256
from .storage import Storage
from .tokens import IssuedToken, TokenIssuer

__all__ = ["GRANT_TYPES", "PUBLIC_CLIENT_GRANTS", "Grant", "check_grant_type", "check_registration", "grant",
           "resolve_scope", "binding"]

log = logging.getLogger("tokensmith.grants")

GRANT_TYPES = ("client_credentials", "password", "refresh_token")

#: The token_endpoint_auth_method of a public client (RFC 6749 §2.1): it has no credentials.
PUBLIC = "none"
#: The grants a public client may use. The client credentials grant "MUST only be used by
#: confidential clients" (RFC 6749 §4.4); the password grant (§4.3) and refresh (§6) allow
#: public clients, whose refresh tokens rotate and, when the client presents a certificate,
#: are bound to it (RFC 8705 §4, RFC 9700 §4.14.2).
PUBLIC_CLIENT_GRANTS = ("password", "refresh_token")


@dataclass(frozen=True)
class Grant:
    """One token request after client authentication."""

    issuer: TokenIssuer
    storage: Storage
    auth: AuthenticatedClient
    form: Mapping[str, str]
    max_failed_logins: int = 5
    lockout_seconds: int = 300


def resolve_scope(requested: str | None, allowed: tuple[str, ...] | list[str]) -> str:
    """The scope to grant (RFC 6749 §3.3): what was asked, if the client may have all of it.

    With no ``scope`` parameter the client gets everything *allowed*.
    """
    if requested is None:
        return " ".join(allowed)
    asked = requested.split(" ")
    if any(not s or any(c in s for c in '"\\') or not s.isprintable() for s in asked):
        raise InvalidScopeError("the scope parameter is malformed")
    if not set(asked) <= set(allowed):
        raise InvalidScopeError("the requested scope exceeds what may be granted")
    return " ".join(dict.fromkeys(asked))


def binding(auth: AuthenticatedClient) -> str | None:
    """The ``x5t#S256`` a token for *auth* is bound to (RFC 8705 §3.1), or None."""
    return x5t_s256(auth.certificate) if auth.certificate is not None else None


def check_grant_type(form: Mapping[str, str]) -> str:
    """The request's ``grant_type``, checked before the client is authenticated (§5.2)."""
    grant_type = form.get("grant_type")
    if grant_type is None:
        raise InvalidRequestError("grant_type is missing")
    if grant_type not in GRANT_TYPES:
        raise UnsupportedGrantTypeError("this grant_type is not supported")
    return grant_type


def check_registration(method: str, grant_types: Sequence[str]) -> None:
    """Refuse, in one line, grant types this server does not serve and grants that the
    client type may not use (RFC 6749 §2.1, §4.4); ``sp add`` calls it before storing."""
    for grant_type in grant_types:
        if grant_type not in GRANT_TYPES:
            raise RegistrationError(f"--grant-type {grant_type!r} is not served here; use one or"
                                    f" more of {', '.join(GRANT_TYPES)}")
        if method == PUBLIC and grant_type not in PUBLIC_CLIENT_GRANTS:
            raise RegistrationError(f"--grant-type {grant_type} is for confidential clients only"
                                    " (RFC 6749 §4.4): a public client (--auth-method none) may use"
                                    f" {' and '.join(PUBLIC_CLIENT_GRANTS)}")


async def grant(request: Grant) -> IssuedToken:
    """Dispatch on ``grant_type`` and issue the token.

    The client type is checked on every request, not only at registration, so that a client
    stored before the rule existed (or written to the store by other means) is refused too.
    """
    grant_type = check_grant_type(request.form)
    if grant_type not in request.auth.client.grant_types:
        raise UnauthorizedClientError("the client is not registered for this grant_type")
    if request.auth.method == PUBLIC and grant_type not in PUBLIC_CLIENT_GRANTS:
        raise UnauthorizedClientError(f"{grant_type} is for confidential clients only; a public"
                                      " client cannot use it")
    return await _HANDLERS[grant_type](request)


async def client_credentials(request: Grant) -> IssuedToken:
    """RFC 6749 §4.4: the client asks for a token on its own behalf; no refresh token (§4.4.3)."""
    auth = request.auth
    scope = resolve_scope(request.form.get("scope"), auth.client.scopes)
    return await request.issuer.issue(auth.client, scope, grant_type="client_credentials",
                                      cnf_x5t_s256=binding(auth))


async def password(request: Grant) -> IssuedToken:
    """RFC 6749 §4.3: the resource owner's username and password, for a trusted client.

    Repeated wrong passwords lock that user for a while (RFC 6749 §10.10 and RFC 6819
    §4.4.3.6: "the authorization server ... MUST protect the endpoint against brute force
    attacks"); other users are unaffected. An unknown user costs a KDF run too, and gets the
    same answer as a wrong password. The password is never logged.
    """
    form, storage, auth = request.form, request.storage, request.auth
    username, secret = form.get("username"), form.get("password")
    if username is None or secret is None:
        raise InvalidRequestError("username and password are required")
    scope = resolve_scope(form.get("scope"), auth.client.scopes)
    now = int(time.time())
    user = storage.get_user(username)
    if user is not None and user.locked_until > now:
        log.warning("password grant refused: user %r is locked after failed attempts (client %s)",
                    username, auth.client.client_id)
        raise InvalidGrantError("too many failed attempts; try again later")
    stored = user.password_hash if user is not None else None
    if not await asyncio.to_thread(kdf.verify_or_waste, secret, stored) or user is None:
        if user is not None:
            storage.record_login_failure(username, now, request.max_failed_logins, request.lockout_seconds)
        log.warning("password grant failed for user %r (client %s)", username, auth.client.client_id)
        raise InvalidGrantError("the resource owner credentials are invalid")
    if user.failed_attempts:
        storage.clear_login_failures(username)
    return await request.issuer.issue(
        auth.client, scope, grant_type="password", username=user.username,
        cnf_x5t_s256=binding(auth),
        refresh="refresh_token" in auth.client.grant_types,
        refresh_cnf_x5t_s256=binding(auth) if auth.method == "none" else None,
    )


async def refresh_token(request: Grant) -> IssuedToken:
    """RFC 6749 §6, with rotation and replay detection (RFC 9700 §4.14.2).

    The refresh token is bound to its client; for a public client it is also bound to the
    client's certificate (RFC 8705 §4). The new access token is bound to this request's
    certificate (RFC 8705 §3). The scope may narrow, never widen. Presenting a refresh token
    that was already exchanged revokes every token of its grant.
    """
    form, storage, auth = request.form, request.storage, request.auth
    value = form.get("refresh_token")
    if value is None:
        raise InvalidRequestError("refresh_token is missing")
    now = int(time.time())
    record = storage.get_token(kdf.token_hash(value))
    if record is None or record.kind != "refresh" or record.client_id != auth.client.client_id:
        raise InvalidGrantError("the refresh token is invalid")
    if record.used and not record.revoked:
        _revoke_family(storage, record.grant_id, auth.client.client_id)
        raise InvalidGrantError("the refresh token was already used")
    if record.revoked or record.expires_at <= now:
        raise InvalidGrantError("the refresh token is invalid")
    if record.cnf_x5t_s256 is not None and binding(auth) != record.cnf_x5t_s256:
        raise InvalidGrantError("the refresh token is bound to another certificate")
    scope = resolve_scope(form.get("scope"), record.scope.split())
    if not storage.use_refresh_token(record.token_hash, now):
        # Someone exchanged it between our read and now: a replay (RFC 9700 §4.14.2).
        _revoke_family(storage, record.grant_id, auth.client.client_id)
        raise InvalidGrantError("the refresh token was already used")
    return await request.issuer.issue(
        auth.client, scope, grant_type="refresh_token", username=record.username,
        cnf_x5t_s256=binding(auth), refresh=True, grant_id=record.grant_id,
        refresh_scope=record.scope, refresh_cnf_x5t_s256=record.cnf_x5t_s256,
    )


def _revoke_family(storage: Storage, grant_id: str | None, client_id: str) -> None:
    if grant_id is not None:
        count = storage.revoke_grant(grant_id)
        log.warning("refresh token replay by client %s: revoked its grant (%d tokens)", client_id, count)


_HANDLERS = {
    "client_credentials": client_credentials,
    "password": password,
    "refresh_token": refresh_token,
}
