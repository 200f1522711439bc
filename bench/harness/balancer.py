"""A TCP load balancer for the benchmark: round robin, one connection to one backend.

    python bench/harness/balancer.py 127.0.0.1:PORT_A 127.0.0.1:PORT_B

TLS passes through (as with a load balancer in TLS passthrough mode, docs/deployment.md), so
the instances terminate TLS and see the client certificate. It listens on 127.0.0.1 on a port
the kernel picks and prints ``balancing https://127.0.0.1:PORT`` when ready; SIGTERM stops it.
Every benchmark of instances behind it, one or two, goes through it, so that its cost is the
same on both sides of a comparison.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import sys

BUFFER = 65536


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(BUFFER):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def main(backends: list[tuple[str, int]]) -> None:
    turn = itertools.cycle(backends)

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = next(turn)
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        except (OSError, TimeoutError):
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(accepted, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"balancing https://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    targets = []
    for arg in sys.argv[1:]:
        host, _, port = arg.rpartition(":")
        targets.append((host, int(port)))
    if not targets:
        sys.exit("usage: balancer.py HOST:PORT [HOST:PORT ...]")
    asyncio.run(main(targets))
