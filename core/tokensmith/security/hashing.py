"""Slow, salted hashing of client secrets and user passwords (RFC 6819 §5.1.4.1.3).

scrypt from the standard library (OpenSSL), stored as a self-describing string so that its
cost can be raised later without breaking stored hashes. Verification is constant-time, and
``verify_or_waste`` spends the same work when there is no stored hash, so an unknown client
costs as much as a known client with a wrong secret (RFC 6749 §10.10 is about guessing;
timing must not tell which client ids exist).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
from concurrent.futures import ThreadPoolExecutor

from tokensmith.errors import TemporarilyUnavailableError
from tokensmith.security.jose import b64url_decode, b64url_encode

_N, _R, _P = 2**14, 8, 1
_SALT_BYTES = 16
_KEY_BYTES = 32


def _derive(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=0, dklen=_KEY_BYTES)


def hash_secret(secret: str) -> str:
    """Return ``scrypt$n$r$p$salt$key`` for *secret*, with a fresh random salt."""
    salt = secrets.token_bytes(_SALT_BYTES)
    key = _derive(secret, salt, _N, _R, _P)
    return f"scrypt${_N}${_R}${_P}${b64url_encode(salt)}${b64url_encode(key)}"


def verify_secret(secret: str, encoded: str) -> bool:
    """Whether *secret* matches the stored *encoded* hash, compared in constant time."""
    try:
        scheme, n, r, p, salt, key = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = b64url_decode(key)
        actual = _derive(secret, b64url_decode(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


# A hash of a random secret that nobody knows, so that checking against it costs the same as a
# real check and always fails.
_DECOY = hash_secret(secrets.token_urlsafe(32))


def verify_or_waste(secret: str, encoded: str | None) -> bool:
    """Like ``verify_secret``, but with *encoded* None it does the same work and returns False."""
    if encoded is None:
        verify_secret(secret, _DECOY)
        return False
    return verify_secret(secret, encoded)


#: The KDF runs in a pool of its own, as many threads as cores: more would only make each
#: run slower. At most MAX_PENDING runs wait or run at once in a process; past that a
#: request is refused at once (503) instead of queueing behind work that nobody may still be
#: waiting for: each wrong secret costs a full KDF run, so an unauthenticated flood (many
#: connections, or HTTP/2 streams reset as soon as sent) could otherwise queue seconds of it
#: ahead of every legitimate client, whose authenticator then timed out with a 500.
MAX_PENDING = 32
_pool: ThreadPoolExecutor | None = None
_pending = 0


class KdfBusy(TemporarilyUnavailableError):
    """Too many secrets are being checked; the client may retry shortly."""

    def __init__(self) -> None:
        super().__init__("too many credential checks in progress; retry shortly")
        self.headers["Retry-After"] = "1"


def admit() -> None:
    """Raise ``KdfBusy`` if a KDF run now would have to wait behind ``MAX_PENDING`` others.

    For callers that must decide before doing anything else (the password grant counts the
    attempt first); ``check`` admits by itself. Runs on the event loop's thread, like ``check``,
    so nothing can slip in between the two.
    """
    if _pending >= MAX_PENDING:
        raise KdfBusy()


async def check(secret: str, encoded: str | None) -> bool:
    """``verify_or_waste`` in the KDF pool, off the event loop; ``KdfBusy`` when it is full.

    A caller that goes away (its task cancelled) gives its place up; a run not yet started
    is dropped with it.
    """
    global _pool, _pending
    admit()
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="tokensmith-kdf")
    _pending += 1
    try:
        return await asyncio.get_running_loop().run_in_executor(_pool, verify_or_waste, secret, encoded)
    finally:
        _pending -= 1
