"""What OAuthEventInterceptor listeners are told (see ``hookspecs``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from tokensmith.models import Client
from tokensmith.oauth.claims import REGISTERED_CLAIMS  # what interceptors may not set

__all__ = [
    "TokenIssueEvent",
    "TokenRevokeEvent",
    "ClientAuthEvent",
    "AuthorizationCodeEvent",
    "REGISTERED_CLAIMS",
]


@dataclass(frozen=True)
class TokenIssueEvent:
    """A token about to be, or just, issued."""

    grant_type: str
    client: Client
    scopes: tuple[str, ...]
    token_kind: str  # "access_token" or "refresh_token"
    username: str | None = None
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class TokenRevokeEvent:
    """A token about to be, or just, revoked by its client."""

    client: Client
    token_kind: str  # "access_token" or "refresh_token"
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class ClientAuthEvent:
    """The outcome of client authentication at an endpoint."""

    endpoint: str  # "token", "introspect" or "revoke"
    client_id: str | None
    method: str | None = None
    error: str | None = None
    remote_addr: str | None = None
    #: RFC 8705 §3.1 ``x5t#S256`` of the request's client certificate, and where it came
    #: from (``"tls"`` or ``"proxy"``): the same certificate the authenticators and the
    #: token binding saw. None without one.
    x5t_s256: str | None = None
    certificate_source: str | None = None


@dataclass(frozen=True)
class AuthorizationCodeEvent:
    """An authorization code just issued to a browser, or just redeemed at the token endpoint
    (RFC 6749 §4.1). The code itself is never passed."""

    client: Client
    username: str
    scopes: tuple[str, ...]
    redirect_uri: str
    #: Redeemed: whether the tokens are bound to a certificate (RFC 8705 §3.1), its ``x5t#S256``.
    x5t_s256: str | None = None
