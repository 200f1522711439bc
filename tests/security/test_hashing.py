"""Secret hashing and the memory of verified client secrets."""

from __future__ import annotations

from tokensmith.oauth.clientauth import VerifiedSecrets
from tokensmith.security import hashing as kdf


def test_hash_verifies_only_the_right_secret() -> None:
    """A stored scrypt hash verifies its secret and nothing else; the format is self-describing."""
    stored = kdf.hash_secret("s3cret")
    assert stored.startswith("scrypt$16384$8$1$")
    assert kdf.verify_secret("s3cret", stored) and not kdf.verify_secret("s3cret ", stored)
    assert not kdf.verify_secret("s3cret", "garbage") and not kdf.verify_or_waste("s3cret", None)


def test_verified_secrets_remember_only_what_matched() -> None:
    """A remembered secret is known for its hash only; another secret or hash is not."""
    memory = VerifiedSecrets(ttl=10)
    memory.remember("hash-a", "right", now=0)
    assert memory.known("hash-a", "right", now=5)
    assert not memory.known("hash-a", "wrong", now=5)
    assert not memory.known("hash-b", "right", now=5)


def test_verified_secrets_expire_and_are_bounded() -> None:
    """Entries expire after ttl, and the oldest go when capacity is exceeded."""
    memory = VerifiedSecrets(capacity=2, ttl=10)
    memory.remember("a", "1", now=0)
    assert not memory.known("a", "1", now=10)
    for name in ("x", "y", "z"):
        memory.remember(name, "s", now=20)
    assert not memory.known("x", "s", now=21)
    assert memory.known("y", "s", now=21) and memory.known("z", "s", now=21)


def test_memory_holds_no_secret_in_clear() -> None:
    """What the memory keeps is a keyed MAC, not the secret."""
    memory = VerifiedSecrets()
    memory.remember("h", "plain-secret-value", now=0)
    assert b"plain-secret-value" not in repr(memory._entries).encode()


def test_checks_past_the_limit_are_refused_at_once_and_places_come_back() -> None:
    """With MAX_PENDING checks waiting or running, the next is refused with 503 at once,
    without a KDF run; when they finish (or are cancelled), checks are admitted again."""
    import asyncio

    import pytest
    from tokensmith.errors import TemporarilyUnavailableError

    stored = kdf.hash_secret("right")

    async def scenario() -> None:
        tasks = [asyncio.create_task(kdf.check("wrong", stored)) for _ in range(kdf.MAX_PENDING)]
        await asyncio.sleep(0)  # every task is now admitted and waiting in the pool
        with pytest.raises(TemporarilyUnavailableError) as refused:
            await kdf.check("right", stored)
        assert refused.value.status_code == 503 and refused.value.headers["Retry-After"] == "1"
        for task in tasks[1:]:
            task.cancel()
        assert await tasks[0] is False
        await asyncio.gather(*tasks[1:], return_exceptions=True)
        assert await kdf.check("right", stored) is True

    asyncio.run(scenario())
