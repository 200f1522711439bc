"""Shared, persistent state for plugins: ``listener.state``.

Every worker of a server, every restart and, with a networked store, every instance sees the
same state, because it lives in the server's own database (``Storage.put_if_absent`` and
``get_state``/``set_state``/``delete_state``). Each plugin has a namespace of its own, its
name, so that two plugins cannot read or overwrite each other's keys.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from tokensmith.models import Storage

__all__ = ["PluginState", "StateUnavailableError", "MAX_KEY_CHARS", "MAX_VALUE_BYTES"]

#: The longest key; longer ones are a plugin error (hash them first, e.g. with SHA-256).
MAX_KEY_CHARS = 512
#: The largest value, as JSON: the store is for small state, not for documents.
MAX_VALUE_BYTES = 64 * 1024


class StateUnavailableError(RuntimeError):
    """State was used where there is no store (``tokensmith plugins list`` loads plugins
    without opening the database)."""


class PluginState:
    """One plugin's slice of the server's store.

    The methods are synchronous and short (one statement on the server's database); they
    may be called from ``async def`` hooks and from plain ``def`` hooks alike. A store that
    cannot answer raises the server's storage error, which refuses the request with
    ``temporarily_unavailable`` (fail closed).

    *expires_at* is Unix time in seconds; a key whose time has come is absent for every
    method, and the server deletes it later.
    """

    __slots__ = ("__storage", "__namespace")

    def __init__(self, storage: Storage | None, namespace: str):
        # Name-mangled and read-only from outside: a plugin keeps to its own namespace by
        # API, not by accident. Plugins run in the server's process, so this is hygiene,
        # not isolation (see docs/plugins.md).
        self.__storage = storage
        self.__namespace = namespace

    @property
    def namespace(self) -> str:
        """The plugin's name: the namespace of its keys."""
        return self.__namespace

    def _store(self, key: str) -> Storage:
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_CHARS:
            raise ValueError(f"a state key is a str of 1 to {MAX_KEY_CHARS} characters, not {key!r:.40}")
        if self.__storage is None:
            raise StateUnavailableError(f"plugin {self.namespace!r}: no store here (not serving)")
        return self.__storage

    def put_if_absent(self, key: str, expires_at: float) -> bool:
        """Remember *key* until *expires_at* unless it is remembered already; atomically.

        True for exactly one caller, across every thread, worker and instance, until the key
        expires; False, changing nothing, for all others. What a replay check of a single-use
        value needs (RFC 7523 §3 item 7, ``jti``): remember it until the assertion expires.
        """
        store = self._store(key)
        # Rounded up: the key must be remembered for all of its last second.
        return store.put_if_absent(self.namespace, key, math.ceil(expires_at))

    def get(self, key: str, default: Any = None) -> Any:
        """The value stored under *key* (as JSON gave it back), or *default*."""
        text = self._store(key).get_state(self.namespace, key)
        return default if text is None else json.loads(text)

    def set(self, key: str, value: Any, *, expires_at: float | None = None, ttl: float | None = None) -> None:
        """Store *value*, anything ``json.dumps`` takes (at most 64 KiB of JSON), under *key*.

        Kept until *expires_at* (Unix time), or *ttl* seconds from now, or until deleted when
        neither is given. Replaces what is there; the last writer wins.
        """
        store = self._store(key)
        text = json.dumps(value, separators=(",", ":"))
        if len(text.encode()) > MAX_VALUE_BYTES:
            raise ValueError(f"a state value is at most {MAX_VALUE_BYTES} bytes of JSON")
        if ttl is not None:
            expires_at = time.time() + ttl
        store.set_state(self.namespace, key, text, None if expires_at is None else math.ceil(expires_at))

    def delete(self, key: str) -> bool:
        """Forget *key*; True if it was there."""
        return self._store(key).delete_state(self.namespace, key)

    def __repr__(self) -> str:
        return f"PluginState({self.namespace!r})"
