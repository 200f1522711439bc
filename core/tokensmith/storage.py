"""The storage interface: service providers (clients) and tokens.

Everything the server persists goes through ``Storage``, so that a networked database can
replace the embedded SQLite store (``sqlite_store.py``) without touching the endpoints.
Secrets and tokens reach storage only as hashes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Client", "TokenRecord", "Storage", "StorageError"]


class StorageError(Exception):
    """Storage could not answer (unavailable, locked, full); requests fail closed with 503."""


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

    def public_view(self) -> dict[str, object]:
        """What ``sp list`` shows: everything but the secret hash."""
        return {
            "client_id": self.client_id,
            "name": self.name,
            "token_endpoint_auth_method": self.token_endpoint_auth_method,
            "grant_types": list(self.grant_types),
            "scopes": list(self.scopes),
            "bind_tokens": self.bind_tokens,
            "created_at": self.created_at,
        }


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


class Storage(Protocol):
    """What the server needs from a store. Implementations raise ``StorageError`` on failure."""

    def add_client(self, client: Client) -> None: ...

    def get_client(self, client_id: str) -> Client | None: ...

    def list_clients(self) -> list[Client]: ...

    def remove_client(self, client_id: str) -> bool: ...

    def add_token(self, token: TokenRecord) -> None: ...

    def get_token(self, token_hash: str) -> TokenRecord | None: ...

    def revoke_token(self, token_hash: str) -> bool: ...

    def revoke_grant(self, grant_id: str) -> int: ...

    def close(self) -> None: ...
