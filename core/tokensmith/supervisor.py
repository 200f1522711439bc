"""Several worker processes on the same sockets: ``tokensmith serve --workers N``.

The supervisor binds every connector's sockets, one per worker (SO_REUSEPORT, so that the
kernel spreads connections over the workers), checks the configuration, and forks the
workers, which inherit their sockets and each build their own app (SQLite connections and
plugin modules are never shared across a fork). It then only handles signals:

- SIGINT/SIGTERM: stop the workers gracefully, then exit;
- SIGHUP: check the new identity.xml and dropins/ first; if they are valid, tell every worker
  to reload, otherwise log why and leave the workers as they are;
- a worker that dies is replaced, on the same sockets (connections queued on them wait for
  the replacement).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

from .config import Config, load_config, load_identity
from .xmlconf import ConfigError

__all__ = ["supervise", "check_reload"]

log = logging.getLogger("tokensmith.supervisor")

_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD}


def _worker(conf_dir: Path, sockets: list[socket.socket], ready: Connection) -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    import asyncio

    from .app import create_app, reload_app
    from .server import serve

    try:
        config = load_config(conf_dir)
        app = create_app(config)
    except Exception as exc:  # reported by the supervisor, in one line
        ready.send(f"{type(exc).__name__}: {exc}" if not isinstance(exc, ConfigError) else str(exc))
        ready.close()
        return

    def announce(_: list[str]) -> None:
        ready.send(None)
        ready.close()

    asyncio.run(serve(app, config, sockets=sockets, ready=announce, reload=lambda: reload_app(app)))


def _wait_ready(receiver: Connection) -> str | None:
    """None once the worker serves, or why it will not."""
    try:
        return receiver.recv()  # type: ignore[no-any-return]
    except EOFError:
        return "the worker exited before it was ready"
    finally:
        receiver.close()


def supervise(config: Config, workers: int, check: Callable[[Config], None],
              ready: Callable[[list[str]], None]) -> int:
    """Run *workers* workers for *config* until told to stop; return the exit status.

    *check* validates a configuration (raising ``ConfigError``) without serving it.
    """
    from .server import bind, urls

    worker_sockets = bind(config, workers)
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    context = multiprocessing.get_context("fork")
    processes: list[multiprocessing.process.BaseProcess] = []

    def start(index: int) -> Connection:
        # A pipe per worker, not one queue for all: a worker killed while it held a shared
        # queue's lock would leave its replacement blocked forever on that lock. The worker
        # holds the only sending end, so its death reads as EOF here.
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(target=_worker, args=(config.conf_dir, worker_sockets[index], sender),
                                  name="tokensmith-worker", daemon=False)
        process.start()
        sender.close()
        if index < len(processes):
            processes[index] = process
        else:
            processes.append(process)
        return receiver

    try:
        starting = [start(index) for index in range(workers)]
        for receiver in starting:
            problem = _wait_ready(receiver)
            if problem is not None:
                print(f"tokensmith: error: {problem}", file=sys.stderr)
                return 1
        ready(urls(worker_sockets[0]))
        while True:
            info = signal.sigwaitinfo(_SIGNALS)
            if info.si_signo in (signal.SIGINT, signal.SIGTERM):
                return 0
            if info.si_signo == signal.SIGHUP:
                try:
                    check(config)
                except ConfigError as exc:
                    log.error("reload refused, workers keep their configuration: %s", exc)
                    continue
                for process in processes:
                    if process.pid is not None and process.is_alive():
                        os.kill(process.pid, signal.SIGHUP)
                continue
            for index, process in enumerate(processes):  # SIGCHLD
                if not process.is_alive():
                    process.join()
                    log.error("worker %d exited with %s; starting another", process.pid, process.exitcode)
                    problem = _wait_ready(start(index))
                    if problem is not None:
                        log.error("the replacement worker could not start: %s", problem)
    finally:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.join(timeout=15)
            if process.is_alive():
                process.kill()
                process.join()
        for sockets in worker_sockets:
            for sock in sockets:
                sock.close()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)


def check_reload(config: Config) -> None:
    """Validate identity.xml and dropins/ as a reload would (raises ``ConfigError``)."""
    from .app import inspect_listeners

    inspect_listeners(config, load_identity(config.identity.path))
