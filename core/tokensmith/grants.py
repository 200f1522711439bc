"""Grant types the token endpoint serves (RFC 6749 §4)."""

from __future__ import annotations

from collections.abc import Mapping

from .clientauth import AuthenticatedClient
from .errors import InvalidRequestError, InvalidScopeError, UnauthorizedClientError, UnsupportedGrantTypeError
from .rfc8705 import x5t_s256
from .tokens import IssuedToken, TokenIssuer

__all__ = ["GRANT_TYPES", "check_grant_type", "grant", "resolve_scope"]

GRANT_TYPES = ("client_credentials",)


def resolve_scope(requested: str | None, allowed: tuple[str, ...]) -> str:
    """The scope to grant (RFC 6749 §3.3): what was asked, if the client may have all of it.

    With no ``scope`` parameter the client gets its registered scopes.
    """
    if requested is None:
        return " ".join(allowed)
    asked = requested.split(" ")
    if any(not s or any(c in s for c in '"\\') or not s.isprintable() for s in asked):
        raise InvalidScopeError("the scope parameter is malformed")
    if not set(asked) <= set(allowed):
        raise InvalidScopeError("the requested scope exceeds what the client may have")
    return " ".join(dict.fromkeys(asked))


def check_grant_type(form: Mapping[str, str]) -> str:
    """The request's ``grant_type``, checked before the client is authenticated (§5.2)."""
    grant_type = form.get("grant_type")
    if grant_type is None:
        raise InvalidRequestError("grant_type is missing")
    if grant_type not in GRANT_TYPES:
        raise UnsupportedGrantTypeError("this grant_type is not supported")
    return grant_type


async def grant(issuer: TokenIssuer, auth: AuthenticatedClient, form: Mapping[str, str]) -> IssuedToken:
    """Dispatch on ``grant_type`` and issue the token."""
    grant_type = check_grant_type(form)
    if grant_type not in auth.client.grant_types:
        raise UnauthorizedClientError("the client is not registered for this grant_type")
    return await client_credentials(issuer, auth, form)


async def client_credentials(issuer: TokenIssuer, auth: AuthenticatedClient, form: Mapping[str, str]) -> IssuedToken:
    """RFC 6749 §4.4: the client asks for a token on its own behalf; no refresh token (§4.4.3)."""
    scope = resolve_scope(form.get("scope"), auth.client.scopes)
    return await issuer.issue_access_token(auth.client, scope, grant_type="client_credentials",
                                           cnf_x5t_s256=binding(auth))


def binding(auth: AuthenticatedClient) -> str | None:
    """The ``x5t#S256`` a token for *auth* is bound to (RFC 8705 §3.1), or None."""
    return x5t_s256(auth.certificate) if auth.certificate is not None else None
