"""Both HTTP/1.1 lanes of server.py around one echo app, for the differential tests.

``python tests/lanes.py CONF_DIR`` serves the connectors of CONF_DIR/server.xml (the tests write
one per lane) through ``tokensmith.http.server.serve``, the code ``tokensmith serve`` runs, with an
ASGI app that answers every request with a JSON account of what reached it: the scope's
method, paths, version, headers and the whole body. It prints one ``lane URL`` line per
connector once all accept, and stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from tokensmith.config.settings import load_config
from tokensmith.http.server import serve


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    if scope["path"] == "/slow":
        # A large answer for the slow-reader cases: it fills any socket buffer.
        chunk = b"x" * 65536
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/octet-stream")],
            }
        )
        for _ in range(256):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    seen = {
        "method": scope["method"],
        "path": scope["path"],
        "raw_path": scope["raw_path"].decode("latin-1"),
        "query_string": scope["query_string"].decode("latin-1"),
        "http_version": scope["http_version"],
        "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]],
        "body": body.decode("latin-1"),
        "tls": "tls" in scope.get("extensions", {}),
    }
    answer = json.dumps(seen).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(answer)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": answer})


def main() -> None:
    config = load_config(sys.argv[1])

    def ready(urls: list[str]) -> None:
        for connector, url in zip(config.server.connectors, urls):
            print(connector.http1, url, flush=True)

    asyncio.run(serve(echo, config, ready=ready))


if __name__ == "__main__":
    main()
