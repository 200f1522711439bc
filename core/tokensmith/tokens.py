"""Issuing tokens: the one place where access tokens are made and stored.

Opaque tokens carry 256 random bits (RFC 6749 §10.10 asks for at most 2^-128 odds of a guess;
RFC 6819 §5.1.4.2.2) and are stored only as their SHA-256.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from .kdf import token_hash
from .storage import Client, Storage, TokenRecord

__all__ = ["TokenIssuer", "IssuedToken"]


@dataclass(frozen=True)
class IssuedToken:
    """A token response (RFC 6749 §5.1) and the record stored for it."""

    access_token: str
    expires_in: int
    scope: str
    record: TokenRecord

    def response(self) -> dict[str, object]:
        body: dict[str, object] = {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        }
        if self.scope:
            body["scope"] = self.scope
        return body


class TokenIssuer:
    """Makes access tokens and writes them to storage."""

    def __init__(self, storage: Storage, access_token_lifetime: int):
        self.storage = storage
        self.access_token_lifetime = access_token_lifetime

    def issue_access_token(
        self,
        client: Client,
        scope: str,
        *,
        username: str | None = None,
        cnf_x5t_s256: str | None = None,
        grant_id: str | None = None,
    ) -> IssuedToken:
        """Create, store and return an access token for *client*."""
        value = secrets.token_urlsafe(32)
        now = int(time.time())
        record = TokenRecord(
            token_hash=token_hash(value),
            kind="access",
            client_id=client.client_id,
            scope=scope,
            issued_at=now,
            expires_at=now + self.access_token_lifetime,
            username=username,
            cnf_x5t_s256=cnf_x5t_s256,
            grant_id=grant_id,
        )
        self.storage.add_token(record)
        return IssuedToken(value, self.access_token_lifetime, scope, record)
