"""``GET /healthz`` and ``GET /readyz``, as Kubernetes probes expect them.

``/healthz`` (liveness) answers 200 whenever the process serves requests at all. ``/readyz``
(readiness) answers 200 only when the configuration is loaded, the storage answers a read
within ``STORAGE_DEADLINE`` seconds and the server's certificate is within its validity; else
503. Both bodies are short JSON objects; neither says anything a caller could use against
the server beyond which check failed.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

from quart import Blueprint, Response, current_app

from tokensmith.app.state import runtime
from tokensmith.config.xml import ConfigError
from tokensmith.security.keystore import load_keystore

__all__ = ["health", "STORAGE_DEADLINE"]

health = Blueprint("health", __name__)

#: Seconds the storage has to answer a readiness probe's read.
STORAGE_DEADLINE = 2.0
_KEYSTORE_EXPIRY = "tokensmith.keystore_not_after"
_PROBING = "tokensmith.storage_probe"


def _answer(body: dict[str, object], ok: bool) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")),
        status=200 if ok else 503,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


@health.get("/healthz")
async def healthz() -> Response:
    """Liveness: the process serves."""
    return _answer({"status": "ok"}, True)


def _not_after() -> float | None:
    """The server certificate's notAfter (seconds), read once: the TLS contexts were built
    from it at start and a new keystore takes a restart."""
    extensions = current_app.extensions
    if _KEYSTORE_EXPIRY not in extensions:
        try:
            leaf = load_keystore(runtime(current_app).config.server.keystore).chain[0]
            extensions[_KEYSTORE_EXPIRY] = leaf.not_valid_after_utc.timestamp()
        except (ConfigError, OSError):
            extensions[_KEYSTORE_EXPIRY] = None
    return extensions[_KEYSTORE_EXPIRY]


async def _storage_answers() -> str:
    """ "ok", or why not. One probe at a time: a store that hangs must not collect a thread
    per probe."""
    extensions = current_app.extensions
    probe = extensions.get(_PROBING)
    if probe is None or probe.done():
        storage = runtime(current_app).storage
        probe = extensions[_PROBING] = asyncio.ensure_future(asyncio.to_thread(storage.get_client, ""))
    try:
        await asyncio.wait_for(asyncio.shield(probe), STORAGE_DEADLINE)
    except TimeoutError:
        return f"no answer within {STORAGE_DEADLINE:g} s"
    except Exception as exc:  # noqa: BLE001 - any failure of the store is "not ready"
        return f"{type(exc).__name__}"
    return "ok"


@health.get("/readyz")
async def readyz() -> Response:
    """Readiness: configuration loaded, storage answering, server certificate valid."""
    checks: dict[str, str] = {}
    try:
        rt = runtime(current_app)
        checks["configuration"] = "ok" if rt is not None else "not loaded"
    except KeyError:
        checks["configuration"] = "not loaded"
        return _answer({"status": "unavailable", "checks": checks}, False)
    checks["storage"] = await _storage_answers()
    not_after = _not_after()
    if not_after is None:
        checks["keystore"] = "unreadable"
    elif not_after <= time.time():
        expired = datetime.fromtimestamp(not_after, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        checks["keystore"] = f"expired {expired}"
    else:
        checks["keystore"] = "ok"
    ok = all(value == "ok" for value in checks.values())
    return _answer({"status": "ok" if ok else "unavailable", "checks": checks}, ok)
