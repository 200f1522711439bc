"""Issuing tokens: the one place where access and refresh tokens are made and stored.

Opaque tokens carry 256 random bits (RFC 6749 §10.10 asks for at most 2^-128 odds of a guess;
RFC 6819 §5.1.4.2.2) and are stored only as their SHA-256. OAuthEventInterceptor listeners
are called before (may refuse or add claims) and after (told) every issue.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from tokensmith.listeners.registry import ListenerSet
from tokensmith.models import Client, Storage, TokenRecord
from tokensmith.oauth.events import REGISTERED_CLAIMS, TokenIssueEvent
from tokensmith.oauth.jwt import access_token_claims, encode_access_token
from tokensmith.security.signing import SigningKeys
from tokensmith.storage.groupcommit import GroupCommit

__all__ = ["TokenIssuer", "IssuedToken", "JWTSettings", "RotationRefused", "token_claims", "token_hash"]


def token_hash(token: str) -> str:
    """SHA-256 of an issued token, hex: tokens carry >= 128 random bits, so no KDF is needed."""
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


class RotationRefused(Exception):
    """The refresh token being exchanged was no longer live when its successors were to be
    stored (another request exchanged it first, or it was revoked): nothing was stored."""


@dataclass(frozen=True)
class IssuedToken:
    """A token response (RFC 6749 §5.1) and the records stored for it."""

    access_token: str
    expires_in: int
    scope: str
    record: TokenRecord
    refresh_token: str | None = None

    def response(self) -> dict[str, object]:
        body: dict[str, object] = {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        }
        if self.refresh_token is not None:
            body["refresh_token"] = self.refresh_token
        if self.scope:
            body["scope"] = self.scope
        return body


def token_claims(record: TokenRecord) -> dict[str, Any]:
    """The claims a stored token carries: ours, then those interceptors added.

    ``token_type`` is an access token's type (RFC 7662 §2.2 refers to RFC 6749 §5.1); a
    refresh token has none, so it carries no ``token_type``.
    """
    claims: dict[str, Any] = {
        "client_id": record.client_id,
        "scope": record.scope,
        "iat": record.issued_at,
        "exp": record.expires_at,
    }
    if record.kind == "access":
        claims["token_type"] = "Bearer"
    if record.username is not None:
        claims["username"] = record.username
    if record.cnf_x5t_s256 is not None:
        claims["cnf"] = {"x5t#S256": record.cnf_x5t_s256}
    return {**record.claims, **claims}


@dataclass(frozen=True)
class JWTSettings:
    """How JWT access tokens (RFC 9068) are made: by whom, for whom, signed with what."""

    keys: SigningKeys
    issuer: Callable[[], str]
    default: bool = False  # JWT for clients that do not choose; opaque otherwise
    audience: str | None = None  # None: the issuer


class TokenIssuer:
    """Makes tokens, runs the interceptors around them and writes them to storage."""

    def __init__(
        self,
        storage: Storage,
        listeners: ListenerSet,
        access_token_lifetime: int,
        refresh_token_lifetime: int = 14 * 24 * 3600,
        jwt: JWTSettings | None = None,
        refresh_token_max_lifetime: int = 90 * 24 * 3600,
    ):
        self.storage = storage
        # A networked store commits off the event loop's thread (see storage/groupcommit.py).
        self.commits = GroupCommit(storage.try_issue, threaded=getattr(storage, "commits_in_thread", False))
        self.refresh_token_max_lifetime = refresh_token_max_lifetime
        self.listeners = listeners
        self.access_token_lifetime = access_token_lifetime
        self.refresh_token_lifetime = refresh_token_lifetime
        self.jwt = jwt

    def _wants_jwt(self, client: Client) -> bool:
        if self.jwt is None:
            return False
        return self.jwt.default if client.jwt_access_tokens is None else client.jwt_access_tokens

    def _as_jwt(self, record: TokenRecord) -> tuple[str, TokenRecord]:
        """Sign *record* as an RFC 9068 JWT; the stored hash is then the JWT's own hash.

        Storing it lets introspection and revocation treat JWTs like opaque tokens, while
        resource servers may verify them offline against the JWKS.
        """
        assert self.jwt is not None
        issuer = self.jwt.issuer()
        claims = access_token_claims(
            issuer=issuer,
            client_id=record.client_id,
            scope=record.scope,
            iat=record.issued_at,
            exp=record.expires_at,
            subject=record.username,
            audience=self.jwt.audience or issuer,
            cnf_x5t_s256=record.cnf_x5t_s256,
            extra={k: v for k, v in record.claims.items() if k not in REGISTERED_CLAIMS},
        )
        value = encode_access_token(claims, self.jwt.keys.ensure())
        return value, replace(record, token_hash=token_hash(value))

    def _record(
        self, kind: str, client: Client, scope: str, lifetime: int, **fields: Any
    ) -> tuple[str, TokenRecord]:
        value = secrets.token_urlsafe(32)
        now = int(time.time())
        return value, TokenRecord(
            token_hash=token_hash(value),
            kind=kind,
            client_id=client.client_id,
            scope=scope,
            issued_at=now,
            expires_at=now + lifetime,
            **fields,
        )

    async def _extra_claims(self, event: TokenIssueEvent) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        for listener, result in await self.listeners.intercept("pre_token_issue", event=event):
            if result is None:
                continue
            if not isinstance(result, Mapping) or not all(isinstance(k, str) for k in result):
                self.listeners.fail(listener, "pre_token_issue", "must return None or a dict")
            taken = sorted(set(result) & REGISTERED_CLAIMS)
            if taken:
                self.listeners.fail(listener, "pre_token_issue", f"tried to set registered claims {taken}")
            try:
                json.dumps(dict(result))
            except (TypeError, ValueError):
                self.listeners.fail(listener, "pre_token_issue", "returned claims that are not JSON")
            extra.update(result)
        return extra

    async def issue(
        self,
        client: Client,
        scope: str,
        *,
        grant_type: str,
        username: str | None = None,
        user_id: str | None = None,
        cnf_x5t_s256: str | None = None,
        refresh: bool = False,
        grant_id: str | None = None,
        refresh_scope: str | None = None,
        refresh_cnf_x5t_s256: str | None = None,
        rotates: TokenRecord | None = None,
    ) -> IssuedToken:
        """Create, store and return an access token for *client*, and a refresh token if asked.

        All tokens of one grant share *grant_id* (a new one when None and *refresh*): revoking
        a refresh token, or replaying a rotated one, revokes the whole family (RFC 9700
        §4.14.2).
        *refresh_cnf_x5t_s256* binds the refresh token itself (RFC 8705 §4, public clients).
        *rotates* is the refresh token exchanged for these: it is marked used in the same
        transaction that stores them (``RotationRefused`` if it is no longer live), and the
        new refresh token keeps its grant's absolute end (RFC 9700 §4.14.2).
        """
        if grant_id is None and refresh:
            # Only a grant with a refresh token is a family to revoke; an access token alone
            # keeps no grant id (its index entry then lands beside the others, not at random).
            grant_id = secrets.token_urlsafe(16)
        access_lifetime = client.access_token_lifetime or self.access_token_lifetime
        origin = rotates.grant_type if rotates is not None else grant_type
        value, record = self._record(
            "access",
            client,
            scope,
            access_lifetime,
            username=username,
            user_id=user_id,
            cnf_x5t_s256=cnf_x5t_s256,
            grant_id=grant_id,
            grant_type=origin,
        )
        # Events are made only when an interceptor will see them: this is the hot path.
        listening = self.listeners.any_implements("pre_token_issue", "post_token_issue")
        event = (
            TokenIssueEvent(
                grant_type=grant_type,
                client=client,
                scopes=tuple(scope.split()),
                token_kind="access_token",
                username=username,
                claims=MappingProxyType(token_claims(record)),
            )
            if listening
            else None
        )
        if event is not None and self.listeners.any_implements("pre_token_issue"):
            record = replace(record, claims=await self._extra_claims(event))
        if self._wants_jwt(client):
            value, record = self._as_jwt(record)
        refresh_value = refresh_record = None
        if refresh:
            refresh_value, refresh_record = self._record(
                "refresh",
                client,
                scope if refresh_scope is None else refresh_scope,
                client.refresh_token_lifetime or self.refresh_token_lifetime,
                username=username,
                user_id=user_id,
                cnf_x5t_s256=refresh_cnf_x5t_s256,
                grant_id=grant_id,
                grant_type=origin,
            )
            # The idle lifetime restarts at each rotation; the grant's end does not.
            end = rotates.grant_expires_at if rotates is not None else None
            if end is None:
                end = refresh_record.issued_at + (
                    client.refresh_token_max_lifetime or self.refresh_token_max_lifetime
                )
            refresh_record = replace(
                refresh_record, grant_expires_at=end, expires_at=min(refresh_record.expires_at, end)
            )
        stored = await self.commits.add(
            [record] if refresh_record is None else [record, refresh_record],
            rotates=rotates.token_hash if rotates is not None else None,
        )
        if not stored:
            raise RotationRefused(rotates.grant_id if rotates is not None else None)
        if event is None:
            return IssuedToken(value, access_lifetime, scope, record, refresh_value)
        await self.listeners.notify(
            "post_token_issue", event=replace(event, claims=MappingProxyType(token_claims(record)))
        )
        if refresh_record is not None:
            await self.listeners.notify(
                "post_token_issue",
                event=replace(
                    event, token_kind="refresh_token", claims=MappingProxyType(token_claims(refresh_record))
                ),
            )
        return IssuedToken(value, access_lifetime, scope, record, refresh_value)
