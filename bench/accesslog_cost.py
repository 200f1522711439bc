"""The access log's own cost per request, in process: the app's front (``app/front.py``,
with no fast-lane routes) around an app that answers at once, with the log off and with it
on (JSON and common format, to a file).

    .venv/bin/python bench/accesslog_cost.py [--requests N]

It measures only what the front adds (request id, metrics, the log line and its
write), not a token request; docs/benchmarks.md sets the figure against the token path.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from tokensmith.app.front import Front
from tokensmith.config.settings import AccessLogSettings

SCOPE = {
    "type": "http",
    "http_version": "1.1",
    "method": "POST",
    "path": "/oauth2/token",
    "raw_path": b"/oauth2/token",
    "query_string": b"",
    "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/x-www-form-urlencoded")],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 9443),
    "extensions": {"tls": {"tls_version": 0x0304, "tokensmith.client_cert_der": (b"x" * 600,)}},
}
BODY = b'{"access_token":"' + b"a" * 43 + b'","token_type":"Bearer","expires_in":3600}'


async def app(scope: dict, receive: object, send) -> None:  # noqa: ANN001
    scope["tokensmith.record"].update(client_id="c1", auth_method="self_signed_tls_client_auth")
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": BODY})


async def nothing(message: dict) -> None:
    return None


async def per_request(middleware: Front, requests: int) -> float:
    for _ in range(1000):  # warm up
        await middleware(dict(SCOPE), None, nothing)
    started = time.perf_counter()
    for _ in range(requests):
        await middleware(dict(SCOPE), None, nothing)
    return (time.perf_counter() - started) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cases = {
            "bare app": None,
            "log off": AccessLogSettings(enabled=False),
            "log on, json, file": AccessLogSettings(True, "json", Path(tmp) / "a.log"),
            "log on, common, file": AccessLogSettings(True, "common", Path(tmp) / "b.log"),
        }
        for label, settings in cases.items():
            if settings is None:

                async def bare(requests: int) -> float:
                    started = time.perf_counter()
                    for _ in range(requests):
                        scope = dict(SCOPE)
                        scope["tokensmith.record"] = {}
                        await app(scope, None, nothing)
                    return (time.perf_counter() - started) / requests

                seconds = asyncio.run(bare(args.requests))
            else:
                middleware = Front(app, settings, ())
                seconds = asyncio.run(per_request(middleware, args.requests))
                middleware.close()
            print(f"{label:24} {seconds * 1e6:6.1f} µs per request")


if __name__ == "__main__":
    main()
