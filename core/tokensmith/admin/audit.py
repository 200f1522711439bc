"""The audit log: who changed what, when, from where; never a secret."""

from __future__ import annotations

import getpass
import time
from dataclasses import dataclass
from typing import Any

from tokensmith.models import AuditEntry, Storage

__all__ = ["Actor", "record", "local_actor", "OperationError"]

#: Detail names that could carry a credential; ``record`` refuses them, so that no caller can
#: put a secret into the log by mistake.
_SECRET_WORDS = ("secret", "password", "token", "private")


class OperationError(ValueError):
    """An operation refused: *status* is the HTTP status the API answers with, *error* the
    error code (RFC 6749 §5.2 / RFC 7591 §3.2.2 style); the message is one line."""

    def __init__(self, message: str, status: int = 400, error: str = "invalid_request"):
        super().__init__(message)
        self.status, self.error = status, error


def not_found(message: str) -> OperationError:
    return OperationError(message, 404, "not_found")


@dataclass(frozen=True)
class Actor:
    """Who makes a change: a user name, how they were authenticated, and from where."""

    name: str
    via: str
    source: str | None = None
    #: What identifies the credential beyond the name, recorded with each entry: for a client
    #: certificate (the admin API's MutualSSL), its subject DN and SHA-256 fingerprint. Never
    #: a secret.
    credential: tuple[tuple[str, str], ...] = ()


def local_actor() -> Actor:
    """The CLI's actor: the login of whoever runs it, on this machine."""
    try:
        login = getpass.getuser()
    except (KeyError, OSError):
        login = "?"
    return Actor(f"cli:{login}", "cli", "local")


def record(store: Storage, actor: Actor, action: str, target: str | None, **details: Any) -> None:
    """Write one audit entry for a change that has been made."""
    for name in details:
        if any(word in name.lower() for word in _SECRET_WORDS):
            raise ValueError(f"audit detail {name!r} could hold a secret")
    if actor.credential:
        details = {**details, "certificate": dict(actor.credential)}
    store.add_audit(
        AuditEntry(int(time.time()), actor.name, actor.via, actor.source, action, target, details)
    )
