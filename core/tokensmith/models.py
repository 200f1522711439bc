"""The storage interface: service providers (clients) and tokens.

Everything the server persists goes through ``Storage``, so that a networked database can
replace the embedded SQLite store (``storage/sqlite.py``) without touching the endpoints.
Secrets and tokens reach storage only as hashes.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, ParamSpec, Protocol, TypeVar

__all__ = [
    "AuditEntry",
    "AuthorizationCode",
    "Consent",
    "SignInSession",
    "Client",
    "Issue",
    "LoginPolicy",
    "RegisteredCertificate",
    "TokenRecord",
    "User",
    "Storage",
    "StorageError",
    "TLS_SUBJECT_KINDS",
]

P = ParamSpec("P")
T = TypeVar("T")

#: RFC 8705 §2.1.2 client metadata: the one subject attribute a tls_client_auth client
#: registers, and the certificate field it is matched against.
TLS_SUBJECT_KINDS = (
    "tls_client_auth_subject_dn",
    "tls_client_auth_san_dns",
    "tls_client_auth_san_uri",
    "tls_client_auth_san_ip",
    "tls_client_auth_san_email",
)


class StorageError(Exception):
    """Storage could not answer (unavailable, locked, full); requests fail closed with 503."""


@dataclass(frozen=True)
class RegisteredCertificate:
    """A certificate registered for a self_signed_tls_client_auth client (RFC 8705 §2.2)."""

    sha256: str  # hex SHA-256 of the DER
    subject: str  # RFC 4514, for people
    not_before: int  # Unix time
    not_after: int
    der: bytes = field(default=b"", repr=False)

    def view(self) -> dict[str, object]:
        return {
            "sha256": self.sha256,
            "subject": self.subject,
            "not_before": self.not_before,
            "not_after": self.not_after,
        }


@dataclass(frozen=True)
class Client:
    """A registered service provider (RFC 7591 client metadata names where they exist)."""

    client_id: str
    name: str
    token_endpoint_auth_method: str
    grant_types: tuple[str, ...]
    scopes: tuple[str, ...] = ()
    secret_hash: str | None = field(default=None, repr=False)
    bind_tokens: bool = False
    created_at: int = 0
    #: self_signed_tls_client_auth: the registered certificates (several, for rotation).
    certificates: tuple[RegisteredCertificate, ...] = ()
    #: tls_client_auth: (one of TLS_SUBJECT_KINDS, value), e.g. the subject DN.
    tls_subject: tuple[str, str] | None = None
    #: Per-client overrides of identity.xml's defaults; None means the server default.
    access_token_lifetime: int | None = None
    refresh_token_lifetime: int | None = None
    jwt_access_tokens: bool | None = None
    #: May introspect access tokens issued to other clients (RFC 7662 §4: a protected
    #: resource the administrator registered as such).
    resource_server: bool = False
    #: Absolute lifetime of a grant's refresh tokens, counted from the grant (RFC 9700 §4.14.2).
    refresh_token_max_lifetime: int | None = None
    #: The rest of the client's RFC 7591 metadata, under the RFC's names (``jwks``,
    #: ``jwks_uri``, ``token_endpoint_auth_signing_alg``, ``contacts``, ``software_id``,
    #: namespaced members of plugins, ...). The members kept in the fields above
    #: (``client_name``, ``grant_types``, ``scope``, ``token_endpoint_auth_method``, the
    #: ``tls_client_auth_*`` subject) are never in it; ``registration.client_metadata``
    #: gives the whole document.
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    @functools.cached_property
    def without_secret(self) -> Client:
        """This client as plugins see it: ``secret_hash`` is always None.

        A copy made once per client object and kept on it (an attribute, not a call, after
        the first time): the store caches its clients, and each of a client's requests asks
        for this view. Always a copy, so that a client never refers to itself."""
        return replace(self, secret_hash=None)

    def public_view(self) -> dict[str, object]:
        """What ``sp list`` shows: everything but the secret hash."""
        view: dict[str, object] = {
            "client_id": self.client_id,
            "name": self.name,
            "token_endpoint_auth_method": self.token_endpoint_auth_method,
            "grant_types": list(self.grant_types),
            "scopes": list(self.scopes),
            "bind_tokens": self.bind_tokens,
            "created_at": self.created_at,
        }
        if self.certificates:
            view["certificates"] = [c.view() for c in self.certificates]
        if self.tls_subject is not None:
            view[self.tls_subject[0]] = self.tls_subject[1]
        for name in (
            "access_token_lifetime",
            "refresh_token_lifetime",
            "refresh_token_max_lifetime",
            "jwt_access_tokens",
        ):
            if getattr(self, name) is not None:
                view[name] = getattr(self, name)
        if self.resource_server:
            view["resource_server"] = True
        if self.metadata:
            view["metadata"] = dict(self.metadata)
        return view


@dataclass(frozen=True)
class TokenRecord:
    """An issued token, found by the SHA-256 of its value."""

    token_hash: str
    kind: str  # "access" or "refresh"
    client_id: str
    scope: str
    issued_at: int
    expires_at: int
    username: str | None = None
    cnf_x5t_s256: str | None = None
    grant_id: str | None = None
    revoked: bool = False
    claims: dict[str, object] = field(default_factory=dict)
    #: A refresh token that was exchanged (rotated); presenting it again is a replay.
    used: bool = False
    #: The resource owner's ``User.user_id`` (never reused, unlike a username).
    user_id: str | None = None
    #: The grant type that started the grant (kept across refreshes).
    grant_type: str | None = None
    #: Refresh tokens: the grant's absolute end; no refresh token of it outlives this.
    grant_expires_at: int | None = None


@dataclass(frozen=True)
class Issue:
    """One token response to store: all of its records or none.

    *rotates* is the hash of the refresh token exchanged for them (RFC 6749 §6): it is marked
    used in the same transaction that stores them, and only if it is still live, so that a
    crash or a refused store never leaves it used without a successor.
    """

    tokens: tuple[TokenRecord, ...]
    rotates: str | None = None


@dataclass(frozen=True)
class LoginPolicy:
    """How the password grant is protected against guessing (docs/reliability.md).

    Failures are counted per user and source address, and per user over all sources. An
    attempt is counted when it is taken, before the password is checked; a success clears
    both counters. Reaching *max_failures* from one source locks that source out of that
    user for *lockout_seconds*; reaching *max_failures_per_user* from all sources together
    locks the user everywhere for as long. A counter starts afresh when its lock ends or
    after *lockout_seconds* without a failure.
    """

    max_failures: int = 5
    max_failures_per_user: int = 100
    lockout_seconds: int = 300


@dataclass(frozen=True)
class User:
    """A resource owner of the password grant (RFC 6749 §4.3)."""

    username: str
    password_hash: str = field(repr=False)
    created_at: int = 0
    #: Failures over all sources, counted as LoginPolicy says, and the lock they caused.
    failed_attempts: int = 0
    locked_until: int = 0
    #: Random and never reused: grants refer to it, so that a user removed and another
    #: added under the same name do not share tokens.
    user_id: str = field(default_factory=lambda: secrets.token_hex(16))
    last_failure: int = 0
    #: For the admin API: ``admin`` (everything), ``reader`` (read only) or None (none).
    role: str | None = None

    def public_view(self) -> dict[str, object]:
        return {
            "username": self.username,
            "role": self.role,
            "user_id": self.user_id,
            "created_at": self.created_at,
            "failed_attempts": self.failed_attempts,
            "locked_until": self.locked_until,
        }


@dataclass(frozen=True)
class AuditEntry:
    """One change made to the server's configuration or registrations, never with a secret.

    *actor* is who made it (an admin user, ``cli:LOGIN``, a client registering itself),
    *via* how they were authenticated (``basic``, ``mutual_tls``, ``cli``,
    ``registration``), *source* the remote address, when there is one.
    """

    at: int
    actor: str
    via: str
    source: str | None
    action: str
    target: str | None
    details: Mapping[str, Any] = field(default_factory=dict)
    id: int | None = None

    def view(self) -> dict[str, object]:
        return {
            "id": self.id,
            "at": self.at,
            "actor": self.actor,
            "via": self.via,
            "source": self.source,
            "action": self.action,
            "target": self.target,
            "details": dict(self.details),
        }


@dataclass(frozen=True)
class AuthorizationCode:
    """An authorization code (RFC 6749 §4.1.2), stored by the SHA-256 of its value.

    Bound to the client, the redirect URI and the PKCE challenge (RFC 7636 §4.4) it was
    issued with; *redirect_uri_given* says whether the request named the redirect URI, in
    which case the token request must repeat it (RFC 6749 §4.1.3). *grant_id* is the grant
    the tokens issued for it belong to, so that a second use revokes them (§4.1.2).
    """

    code_hash: str
    client_id: str
    redirect_uri: str
    redirect_uri_given: bool
    scope: str
    code_challenge: str
    user_id: str
    username: str
    grant_id: str
    issued_at: int
    expires_at: int
    used: bool = False


@dataclass(frozen=True)
class Consent:
    """The scopes a user consented to give a client; asked again only for more."""

    user_id: str
    client_id: str
    scopes: tuple[str, ...]
    granted_at: int


@dataclass(frozen=True)
class SignInSession:
    """A user signed in to the login page, found by the SHA-256 of the session cookie."""

    session_hash: str
    user_id: str
    username: str
    created_at: int
    expires_at: int


class Storage(Protocol):
    """What the server needs from a store. Implementations raise ``StorageError`` on failure."""

    async def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)``, *fn* being a method of this store (or a function of it),
        for a request handler on the event loop. Each store chooses how, once: the embedded
        store calls it directly (a local read is faster than a thread hop), a networked one
        in a thread of its own, so that a slow database never holds the event loop."""
        ...

    def add_client(self, client: Client) -> None: ...

    def get_client(self, client_id: str) -> Client | None: ...

    def cached_client(self, client_id: str) -> Client | None:
        """Client *client_id* when the store holds it in memory, kept current as
        ``get_client``'s would be, without any I/O; None when only ``get_client`` can tell.
        Request handlers ask this first, on the event loop, so that a known client costs a
        networked store no trip to its threads."""
        ...

    def list_clients(self) -> list[Client]: ...

    def search_clients(self, query: str = "", limit: int = 50, offset: int = 0) -> tuple[int, list[Client]]:
        """How many clients match *query* (a substring of the name or client_id, any case;
        empty: all), and the page of them from *offset*, newest first."""
        ...

    def remove_client(self, client_id: str) -> bool:
        """Remove the client; every token issued to it is revoked with it (RFC 7592 §2.3)."""
        ...

    def update_client(self, client: Client, expected: Client | None = None) -> bool:
        """Write *client* over the stored one; False when there is none. With *expected*
        (the client as read before the change) it is a compare-and-swap: False, writing
        nothing, unless the stored secret hash and certificates are still *expected*'s, so
        that a change made from a stale read never brings back a replaced secret or a
        removed certificate."""
        ...

    def scopes_in_use(self) -> list[str]:
        """Every scope some client is registered for, sorted (for ``scopes_supported``)."""
        ...

    def add_token(self, token: TokenRecord) -> None: ...

    def add_tokens(self, tokens: list[TokenRecord]) -> None:
        """Store several tokens in one transaction: all or none."""
        ...

    def try_add_tokens(self, tokens: list[TokenRecord]) -> bool:
        """``add_tokens`` without waiting: False, storing nothing, if the store is busy now."""
        ...

    def try_issue(self, issues: list[Issue], now: int) -> list[bool] | None:
        """Store several token responses in one transaction, without waiting.

        None, storing nothing, if the store is busy now. Otherwise one answer per issue:
        True, stored; False, its ``rotates`` refresh token was no longer live (used, revoked,
        expired, or of a revoked grant) and nothing of that issue was stored.
        """
        ...

    def get_token(self, token_hash: str) -> TokenRecord | None: ...

    def revoke_token(self, token_hash: str) -> bool: ...

    def revoke_grant(self, grant_id: str) -> int: ...

    def use_refresh_token(self, token_hash: str, now: int) -> bool:
        """Mark a live refresh token used, atomically: True for exactly one caller."""
        ...

    def revoke_user_tokens(self, user_id: str) -> int:
        """Revoke every token and grant of the user *user_id*; return how many tokens."""
        ...

    def revoke_bound_tokens(self, client_id: str, x5t_s256: str) -> int:
        """Revoke the tokens of *client_id* bound to the certificate *x5t_s256*, and their
        grants; return how many tokens."""
        ...

    def purge_expired(self, before: int, limit: int | None = None) -> int | None:
        """Delete tokens that expired before *before*, at most *limit* of them; return how
        many, or None without waiting if the store is busy now. Called from a worker thread.
        Expired plugin state rows (``put_if_absent``, ``set_state``) go too, at most *limit*
        of them; they are not counted."""
        ...

    def add_user(self, user: User) -> None: ...

    def set_user_role(self, username: str, role: str | None) -> bool: ...

    def set_user_password(self, username: str, password_hash: str) -> bool:
        """Replace the user's password hash and end the user's sign-in sessions on the login
        page (``signin_sessions``) in the same transaction; False when there is no such user."""
        ...

    def revoke_client_tokens(self, client_id: str) -> int:
        """Revoke every token and grant of *client_id*, keeping the client; how many tokens."""
        ...

    def add_audit(self, entry: AuditEntry) -> None: ...

    def list_audit(self, limit: int = 100, before: int | None = None) -> list[AuditEntry]:
        """The newest *limit* entries with an id below *before*, newest first."""
        ...

    def add_registration_token(
        self, token_hash: str, kind: str, client_id: str | None, expires_at: int | None
    ) -> None:
        """Store the hash of an ``initial`` (RFC 7591 §3) or ``registration`` (RFC 7592 §3)
        access token; a client's new registration token replaces its old one."""
        ...

    def find_registration_token(self, token_hash: str, kind: str) -> tuple[str | None, int | None] | None:
        """``(client_id, expires_at)`` of a live token of *kind*, or None."""
        ...

    def delete_registration_tokens(
        self, *, token_hash: str | None = None, client_id: str | None = None
    ) -> int: ...

    def get_user(self, username: str) -> User | None: ...

    def list_users(self) -> list[User]: ...

    def remove_user(self, username: str) -> bool:
        """Remove the user and revoke every token and grant of theirs, in one transaction."""
        ...

    def take_login_attempt(self, username: str, source: str, now: int, policy: LoginPolicy) -> bool:
        """Count one password attempt for *username* from *source*, atomically, before the
        password is checked; False, counting nothing, while either is locked out."""
        ...

    def end_login_attempt(self, username: str, source: str, succeeded: bool) -> None:
        """The attempt taken was right (both counters start afresh) or wrong (it stays counted)."""
        ...

    def unlock_user(self, username: str) -> bool:
        """Forget every failure and lock of *username*; False if there is no such user."""
        ...

    # -- plugin state: shared by every worker and instance on this store, kept across
    # restarts. *namespace* is the plugin's name; *key* any text (up to 512 characters, the
    # callers check). A row whose *expires_at* (Unix time) is not after now counts as absent
    # for every method here, and ``purge_expired`` deletes it like an expired token.

    def put_if_absent(self, namespace: str, key: str, expires_at: int) -> bool:
        """Store *key*, with no value, unless it is present; atomically.

        True for exactly one of any number of concurrent callers (threads, workers, hosts)
        while the key is absent or expired; False, changing nothing, while it is present.
        What replay checks of single-use values need (RFC 7523 §3 item 7: ``jti``).
        """
        ...

    def get_state(self, namespace: str, key: str) -> str | None:
        """The value stored under *key*, or None when absent or expired (or stored by
        ``put_if_absent``, which stores none)."""
        ...

    def set_state(self, namespace: str, key: str, value: str, expires_at: int | None = None) -> None:
        """Store *value* (text, up to 64 KiB, the callers check) under *key*, replacing what is
        there; kept until *expires_at*, or until deleted when None."""
        ...

    def delete_state(self, namespace: str, key: str) -> bool:
        """Delete *key*; True if it was present (and not expired)."""
        ...

    def replace_state(self, namespace: str, key: str, value: str, expires_at: int | None = None) -> bool:
        """Store *value* under *key* only if *key* is present (and not expired), atomically;
        False, storing nothing, when it is not: what was deleted stays deleted, whatever a
        caller that read it earlier writes back."""
        ...

    def serving(self) -> None:
        """The store is about to serve requests: defer housekeeping to ``checkpoint``."""
        ...

    def checkpoint(self) -> None:
        """Housekeeping off the request path; the server calls it from a worker thread
        once a second while it serves. May do nothing."""
        ...

    # -- authorization code grant (RFC 6749 §4.1): codes, consents, sign-in sessions -----

    def add_authorization_code(self, code: AuthorizationCode, session_hash: str | None = None) -> bool:
        """Store *code*. With *session_hash*, only if, in the same statement, that sign-in
        session of the code's user is live and the user's consent to the code's client is
        there: a revocation of the user or a withdrawal of the consent that commits while the
        code is being issued then either sees the code (and revokes it) or leaves none
        stored. True if stored."""
        ...

    def get_authorization_code(self, code_hash: str) -> AuthorizationCode | None:
        """The code stored under *code_hash*, used or not, expired or not (until purged)."""
        ...

    def use_authorization_code(self, code_hash: str) -> bool:
        """Mark the code used, atomically: True for exactly one caller, ever."""
        ...

    def get_consent(self, user_id: str, client_id: str) -> Consent | None: ...

    def add_consent(self, consent: Consent) -> None:
        """Remember *consent*, adding its scopes to those already consented to."""
        ...

    def list_consents(self, user_id: str) -> list[Consent]: ...

    def revoke_consent(self, user_id: str, client_id: str) -> bool:
        """Forget the consent and, in the same transaction, revoke what the client holds for
        the user: its tokens and their grants (also tokens of them stored later), and its
        codes not yet redeemed. True if there was a consent."""
        ...

    def add_session(self, session: SignInSession) -> None: ...

    def get_session(self, session_hash: str) -> SignInSession | None:
        """The live session (not expired, its user still the same user), or None."""
        ...

    def delete_session(self, session_hash: str) -> bool: ...

    def close(self) -> None: ...
