"""Grant types the token endpoint serves (RFC 6749 §4 and §6), and the tokens they mint.

Every access and refresh token is made and stored here, by ``TokenIssuer``: opaque tokens
carry 256 random bits (RFC 6749 §10.10 asks for at most 2^-128 odds of a guess; RFC 6819
§5.1.4.2.2) and are stored only as their SHA-256 (``token_hash``).
OAuthEventInterceptor listeners are called before (may refuse or add claims) and after
(told) every issue.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from tokensmith.errors import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    UnauthorizedClientError,
    UnsupportedGrantTypeError,
)
from tokensmith.listeners.registry import ListenerSet
from tokensmith.models import Client, LoginPolicy, Storage, StorageError, TokenRecord, User
from tokensmith.oauth import pkce
from tokensmith.oauth.clientauth import AuthenticatedClient
from tokensmith.oauth.events import REGISTERED_CLAIMS, AuthorizationCodeEvent, TokenIssueEvent
from tokensmith.oauth.jwt import access_token_claims, encode_access_token
from tokensmith.security import hashing as kdf
from tokensmith.security.jose import x5t_s256
from tokensmith.security.signing import SigningKeys
from tokensmith.storage.groupcommit import GroupCommit

__all__ = [
    "GRANT_TYPES",
    "PUBLIC_CLIENT_GRANTS",
    "Grant",
    "check_grant_type",
    "grant",
    "resolve_scope",
    "binding",
    "SCOPE_TOKEN",
    "login_source",
    "check_password",
    "TokenIssuer",
    "IssuedToken",
    "JWTSettings",
    "RotationRefused",
    "token_claims",
    "token_hash",
]

log = logging.getLogger("tokensmith.oauth.grants")

GRANT_TYPES = ("authorization_code", "client_credentials", "password", "refresh_token")

#: The token_endpoint_auth_method of a public client (RFC 6749 §2.1): it has no credentials.
PUBLIC = "none"
#: The grants a public client may use. The client credentials grant "MUST only be used by
#: confidential clients" (RFC 6749 §4.4); the password grant (§4.3) and refresh (§6) allow
#: public clients, whose refresh tokens rotate and, when the client presents a certificate,
#: are bound to it (RFC 8705 §4, RFC 9700 §4.14.2); so does the authorization code grant
#: (§4.1), where PKCE (RFC 7636) stands in for the credentials a public client lacks.
PUBLIC_CLIENT_GRANTS = ("authorization_code", "password", "refresh_token")


@dataclass(frozen=True)
class Grant:
    """One token request after client authentication."""

    issuer: TokenIssuer
    storage: Storage
    auth: AuthenticatedClient
    form: Mapping[str, str]
    policy: LoginPolicy = LoginPolicy()
    #: Where the request came from (``login_source``), for the password lockout.
    source: str = ""


#: RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def login_source(remote_addr: str | None) -> str:
    """The source address the password lockout counts failures for: an IPv4 address, or the
    /64 network of an IPv6 address (one host usually holds a whole /64)."""
    if not remote_addr:
        return ""
    try:
        address = ipaddress.ip_address(remote_addr)
    except ValueError:
        return remote_addr
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def resolve_scope(requested: str | None, allowed: tuple[str, ...] | list[str]) -> str:
    """The scope to grant (RFC 6749 §3.3): what was asked, if the client may have all of it.

    With no ``scope`` parameter the client gets everything *allowed*. Each scope token must
    match §3.3's grammar: printable ASCII but space, ``"`` and ``\\``.
    """
    if requested is None:
        return " ".join(allowed)
    asked = requested.split(" ")
    if not all(SCOPE_TOKEN.fullmatch(s) for s in asked):
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


async def grant(request: Grant) -> IssuedToken:
    """Dispatch on ``grant_type`` and issue the token.

    The client type is checked on every request, not only at registration, so that a client
    stored before the rule existed (or written to the store by other means) is refused too.
    """
    grant_type = check_grant_type(request.form)
    if grant_type not in request.auth.client.grant_types:
        raise UnauthorizedClientError(
            "the client is not registered for this grant_type",
            reason="grant_not_allowed",
            detail=f"grant {grant_type} not allowed for client {request.auth.client.client_id}",
        )
    if request.auth.method == PUBLIC and grant_type not in PUBLIC_CLIENT_GRANTS:
        raise UnauthorizedClientError(
            f"{grant_type} is for confidential clients only; a public client cannot use it"
        )
    return await _HANDLERS[grant_type](request)


async def client_credentials(request: Grant) -> IssuedToken:
    """RFC 6749 §4.4: the client asks for a token on its own behalf; no refresh token (§4.4.3)."""
    auth = request.auth
    scope = resolve_scope(request.form.get("scope"), auth.client.scopes)
    return await request.issuer.issue(
        auth.client, scope, grant_type="client_credentials", cnf_x5t_s256=binding(auth)
    )


async def password(request: Grant) -> IssuedToken:
    """RFC 6749 §4.3: the resource owner's username and password, for a trusted client.

    Guessing is limited as ``LoginPolicy`` says (RFC 6749 §10.10 and RFC 6819 §4.4.3.6: "the
    authorization server ... MUST protect the endpoint against brute force attacks"): the
    attempt is counted in the store before the password is checked, atomically, so that
    concurrent requests and several workers together never get more guesses checked than
    the policy allows. An unknown user, a wrong password and a locked-out user all get the
    same answer at the same cost (one KDF run), so that the answer tells nobody whether the
    name exists. The password is never logged.
    """
    form, storage, auth = request.form, request.storage, request.auth
    username, secret = form.get("username"), form.get("password")
    if username is None or secret is None:
        raise InvalidRequestError("username and password are required")
    scope = resolve_scope(form.get("scope"), auth.client.scopes)
    user = await check_password(
        storage,
        username,
        secret,
        request.source,
        request.policy,
        "password grant",
        f"client {auth.client.client_id}",
    )
    if user is None:
        raise InvalidGrantError("the resource owner credentials are invalid", reason="bad_user_credentials")
    return await request.issuer.issue(
        auth.client,
        scope,
        grant_type="password",
        username=user.username,
        user_id=user.user_id,
        cnf_x5t_s256=binding(auth),
        refresh="refresh_token" in auth.client.grant_types,
        refresh_cnf_x5t_s256=binding(auth) if auth.method == "none" else None,
    )


async def check_password(
    storage: Storage, username: str, secret: str, source: str, policy: LoginPolicy, what: str, context: str
) -> User | None:
    """The user *username* if *secret* is their password and neither they nor *source* is
    locked out; None otherwise. The password grant and the login page both sign in here.

    Guessing is limited as ``LoginPolicy`` says (RFC 6749 §10.10 and RFC 6819 §4.4.3.6: "the
    authorization server ... MUST protect the endpoint against brute force attacks"): the
    attempt is counted in the store before the password is checked, atomically, so that
    concurrent requests and several workers together never get more guesses checked than
    the policy allows. An unknown user, a wrong password and a locked-out user all get the
    same answer at the same cost (one KDF run), so that the answer tells nobody whether the
    name exists. The password is never logged.
    """
    user = await storage.call(storage.get_user, username)
    kdf.admit()  # before the attempt is counted: a busy server must not cost the user a guess
    taken = user is not None and await storage.call(
        storage.take_login_attempt, user.username, source, int(time.time()), policy
    )
    stored = user.password_hash if user is not None and taken else None
    correct = await kdf.check(secret, stored)
    if user is not None and taken:
        await storage.call(storage.end_login_attempt, user.username, source, correct)
    if user is None or not taken or not correct:
        if user is not None and not taken:
            log.warning(
                "%s refused: user %r is locked out for %s after failed attempts (%s)",
                what,
                username,
                source or "this source",
                context,
            )
        else:
            log.warning("%s failed for user %r (%s)", what, username, context)
        return None
    return user


async def authorization_code(request: Grant) -> IssuedToken:
    """RFC 6749 §4.1.3: exchange an authorization code, with its PKCE verifier (RFC 7636 §4.5).

    The code must have been issued to this client, for the redirect URI the request repeats
    (exactly, when the authorization request named one), and the verifier must hash to the
    challenge it was issued with (RFC 7636 §4.6); it is single use. These are checked against
    the stored code before anything is changed: a presentation failing them (another
    client's, a wrong redirect URI, a wrong verifier) is refused and leaves the code alone,
    so that someone holding a leaked code can neither spend it nor, once it is redeemed,
    revoke the real client's tokens. A presentation passing them is the client's own: the
    code is then marked used atomically (of concurrent ones exactly one gets tokens), and
    one that finds it already used revokes the tokens issued for it (RFC 6749 §4.1.2: "the
    authorization server MUST deny the request and SHOULD revoke (when possible) all tokens
    previously issued based on that authorization code"). Every refusal of the code itself
    is ``invalid_grant`` (§5.2), saying no more than that.

    Tokens: as for the password grant, the access token is bound to the request's
    certificate (RFC 8705 §3), and a public client's refresh token to it as well (§4).
    ``scope`` may narrow what the code grants, never widen it (§3.3).
    """
    form, storage, auth = request.form, request.storage, request.auth
    value, verifier = form.get("code"), form.get("code_verifier")
    if value is None:
        raise InvalidRequestError("code is missing")
    if verifier is None:
        raise InvalidRequestError("code_verifier is missing (PKCE, RFC 7636 §4.5)")
    code = await storage.call(storage.get_authorization_code, token_hash(value))
    if code is None or code.client_id != auth.client.client_id:
        if code is not None:
            log.warning(
                "client %s presented an authorization code issued to client %s",
                auth.client.client_id,
                code.client_id,
            )
        raise InvalidGrantError("the authorization code is invalid")
    given = form.get("redirect_uri")
    if (code.redirect_uri_given or given is not None) and given != code.redirect_uri:
        raise InvalidGrantError("redirect_uri does not match the authorization request")
    if not pkce.verifier_matches(verifier, code.code_challenge):
        raise InvalidGrantError("code_verifier does not match the code_challenge")
    # Only now is this the presentation of the client that asked for the code: a replay
    # revokes, and a first presentation spends it.
    if code.used:
        await _revoke_family(storage, code.grant_id, auth.client.client_id, "authorization code")
        raise InvalidGrantError("the authorization code was already used")
    if code.expires_at <= int(time.time()):
        raise InvalidGrantError("the authorization code has expired")
    owner = await storage.call(storage.get_user, code.username)
    if owner is None or owner.user_id != code.user_id:
        raise InvalidGrantError("the authorization code is invalid")
    if not await storage.call(storage.use_authorization_code, code.code_hash):
        # Spent by a concurrent request since we read it: a replay like any other.
        await _revoke_family(storage, code.grant_id, auth.client.client_id, "authorization code")
        raise InvalidGrantError("the authorization code was already used")
    scope = resolve_scope(form.get("scope"), code.scope.split()) if "scope" in form else code.scope
    issued = await request.issuer.issue(
        auth.client,
        scope,
        grant_type="authorization_code",
        username=owner.username,
        user_id=owner.user_id,
        cnf_x5t_s256=binding(auth),
        refresh="refresh_token" in auth.client.grant_types,
        grant_id=code.grant_id,
        refresh_cnf_x5t_s256=binding(auth) if auth.method == PUBLIC else None,
    )
    await request.issuer.listeners.notify(
        "authorization_code_redeemed",
        event=AuthorizationCodeEvent(
            auth.client.without_secret,
            owner.username,
            tuple(scope.split()),
            code.redirect_uri,
            x5t_s256=binding(auth),
        ),
    )
    return issued


async def refresh_token(request: Grant) -> IssuedToken:
    """RFC 6749 §6, with rotation and replay detection (RFC 9700 §4.14.2).

    The refresh token is bound to its client; for a public client it is also bound to the
    client's certificate (RFC 8705 §4). The new access token is bound to this request's
    certificate (RFC 8705 §3). The scope may narrow, never widen. Presenting a refresh token
    that was already exchanged revokes every token of its grant.

    The grant ends with its user (removed, or another user now under that name), when its
    client is no longer registered for the grant type that started it, and at its absolute
    end however often it was refreshed. The old token is marked used in the transaction that
    stores the new ones (``TokenIssuer.issue``), so a failure in between leaves it usable.
    """
    form, storage, auth = request.form, request.storage, request.auth
    value = form.get("refresh_token")
    if value is None:
        raise InvalidRequestError("refresh_token is missing")
    now = int(time.time())
    record = await storage.call(storage.get_token, token_hash(value))
    if record is None or record.kind != "refresh" or record.client_id != auth.client.client_id:
        raise InvalidGrantError("the refresh token is invalid")
    if record.used and not record.revoked:
        await _revoke_family(storage, record.grant_id, auth.client.client_id, "refresh token")
        raise InvalidGrantError("the refresh token was already used")
    if record.revoked or record.expires_at <= now:
        raise InvalidGrantError("the refresh token is invalid")
    if record.grant_type is not None and record.grant_type not in auth.client.grant_types:
        raise InvalidGrantError("the client is no longer registered for the grant of this token")
    if record.username is not None:
        owner = await storage.call(storage.get_user, record.username)
        if owner is None or owner.user_id != record.user_id:
            raise InvalidGrantError("the refresh token is invalid")
    if record.cnf_x5t_s256 is not None and binding(auth) != record.cnf_x5t_s256:
        raise InvalidGrantError("the refresh token is bound to another certificate")
    scope = resolve_scope(form.get("scope"), record.scope.split())
    try:
        return await request.issuer.issue(
            auth.client,
            scope,
            grant_type="refresh_token",
            username=record.username,
            user_id=record.user_id,
            cnf_x5t_s256=binding(auth),
            refresh=True,
            grant_id=record.grant_id,
            refresh_scope=record.scope,
            refresh_cnf_x5t_s256=record.cnf_x5t_s256,
            rotates=record,
        )
    except RotationRefused:
        # Exchanged by someone else since we read it, or revoked meanwhile: a replay
        # (RFC 9700 §4.14.2) unless it was revoked, and revoking its grant again is harmless.
        await _revoke_family(storage, record.grant_id, auth.client.client_id, "refresh token")
        raise InvalidGrantError("the refresh token was already used") from None


async def _revoke_family(storage: Storage, grant_id: str | None, client_id: str, what: str) -> None:
    """Revoke the grant of a replayed refresh token (RFC 9700 §4.14.2), failing closed: if the
    store cannot take the revocation now, it is retried in the background until it can, and
    the replay is refused all the same."""
    if grant_id is None:
        return
    try:
        count = await storage.call(storage.revoke_grant, grant_id)
    except StorageError as exc:
        log.error(
            "%s replay by client %s: the store is unavailable (%s); its grant"
            " is revoked as soon as it can be",
            what,
            client_id,
            exc,
        )
        task = asyncio.get_running_loop().create_task(_revoke_later(storage, grant_id, client_id, what))
        _RETRYING.add(task)
        task.add_done_callback(_RETRYING.discard)
        return
    log.warning("%s replay by client %s: revoked its grant (%d tokens)", what, client_id, count)


_RETRYING: set[asyncio.Task] = set()
#: How long a replay's revocation is retried before the error is left to the operator.
_RETRY_FOR = 600.0


async def _revoke_later(storage: Storage, grant_id: str, client_id: str, what: str) -> None:
    delay, waited = 0.1, 0.0
    while waited < _RETRY_FOR:
        await asyncio.sleep(delay)
        waited += delay
        try:
            count = await storage.call(storage.revoke_grant, grant_id)
        except StorageError:
            delay = min(delay * 2, 5.0)
            continue
        log.warning("%s replay by client %s: revoked its grant (%d tokens), late", what, client_id, count)
        return
    log.error(
        "%s replay by client %s: could not revoke its grant %s: the store has been unavailable for %.0f s",
        what,
        client_id,
        grant_id,
        _RETRY_FOR,
    )


_HANDLERS = {
    "authorization_code": authorization_code,
    "client_credentials": client_credentials,
    "password": password,
    "refresh_token": refresh_token,
}


# -- Minting tokens --------------------------------------------------------------------------


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
