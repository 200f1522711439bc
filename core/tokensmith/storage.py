"""The storage interface: service providers (clients) and tokens.

Everything the server persists goes through ``Storage``, so that a networked database can
replace the embedded SQLite store (``sqlite_store.py``) without touching the endpoints.
Secrets and tokens reach storage only as hashes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "Client",
    "RegisteredCertificate",
    "TokenRecord",
    "User",
    "Storage",
    "StorageError",
    "TLS_SUBJECT_KINDS",
]

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
        return {"sha256": self.sha256, "subject": self.subject,
                "not_before": self.not_before, "not_after": self.not_after}


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
        for name in ("access_token_lifetime", "refresh_token_lifetime", "jwt_access_tokens"):
            if getattr(self, name) is not None:
                view[name] = getattr(self, name)
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


@dataclass(frozen=True)
class User:
    """A resource owner of the password grant (RFC 6749 §4.3)."""

    username: str
    password_hash: str = field(repr=False)
    created_at: int = 0
    failed_attempts: int = 0
    locked_until: int = 0

    def public_view(self) -> dict[str, object]:
        return {"username": self.username, "created_at": self.created_at,
                "failed_attempts": self.failed_attempts, "locked_until": self.locked_until}


class Storage(Protocol):
    """What the server needs from a store. Implementations raise ``StorageError`` on failure."""

    def add_client(self, client: Client) -> None: ...

    def get_client(self, client_id: str) -> Client | None: ...

    def list_clients(self) -> list[Client]: ...

    def remove_client(self, client_id: str) -> bool: ...

    def update_client(self, client: Client) -> bool: ...

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

    def get_token(self, token_hash: str) -> TokenRecord | None: ...

    def revoke_token(self, token_hash: str) -> bool: ...

    def revoke_grant(self, grant_id: str) -> int: ...

    def use_refresh_token(self, token_hash: str, now: int) -> bool:
        """Mark a live refresh token used, atomically: True for exactly one caller."""
        ...

    def purge_expired(self, before: int) -> int:
        """Delete tokens that expired before *before*; return how many."""
        ...

    def add_user(self, user: User) -> None: ...

    def get_user(self, username: str) -> User | None: ...

    def list_users(self) -> list[User]: ...

    def remove_user(self, username: str) -> bool: ...

    def record_login_failure(self, username: str, now: int, limit: int, lockout: int) -> None:
        """Count a wrong password; at *limit* failures lock the user for *lockout* seconds."""
        ...

    def clear_login_failures(self, username: str) -> None: ...

    def serving(self) -> None:
        """The store is about to serve requests: defer housekeeping to ``checkpoint``."""
        ...

    def checkpoint(self) -> None:
        """Housekeeping off the request path; the server calls it from a worker thread
        once a second while it serves. May do nothing."""
        ...

    def close(self) -> None: ...
