"""The storage interface: service providers (clients) and tokens.

Everything the server persists goes through ``Storage``, so that a networked database can
replace the embedded SQLite store (``sqlite_store.py``) without touching the endpoints.
Secrets and tokens reach storage only as hashes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Client", "RegisteredCertificate", "TokenRecord", "Storage", "StorageError", "TLS_SUBJECT_KINDS"]

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


class Storage(Protocol):
    """What the server needs from a store. Implementations raise ``StorageError`` on failure."""

    def add_client(self, client: Client) -> None: ...

    def get_client(self, client_id: str) -> Client | None: ...

    def list_clients(self) -> list[Client]: ...

    def remove_client(self, client_id: str) -> bool: ...

    def update_client(self, client: Client) -> bool: ...

    def add_token(self, token: TokenRecord) -> None: ...

    def get_token(self, token_hash: str) -> TokenRecord | None: ...

    def revoke_token(self, token_hash: str) -> bool: ...

    def revoke_grant(self, grant_id: str) -> int: ...

    def close(self) -> None: ...
