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
from pathlib import Path

from .config import Config, load_config, load_identity
from .xmlconf import ConfigError

__all__ = ["supervise", "check_reload"]

log = logging.getLogger("tokensmith.supervisor")

_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD}


def _worker(conf_dir: Path, sockets: list[socket.socket], ready: multiprocessing.queues.SimpleQueue) -> None:  # type: ignore[name-defined]
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    import asyncio

    from .app import create_app, reload_app
    from .server import serve

    try:
        config = load_config(conf_dir)
        app = create_app(config)
    except Exception as exc:  # reported by the supervisor, in one line
        ready.put(f"{type(exc).__name__}: {exc}" if not isinstance(exc, ConfigError) else str(exc))
        return
    asyncio.run(serve(app, config, sockets=sockets, ready=lambda _: ready.put(None),
                      reload=lambda: reload_app(app)))


def supervise(config: Config, workers: int, check: Callable[[Config], None],
              ready: Callable[[list[str]], None]) -> int:
    """Run *workers* workers for *config* until told to stop; return the exit status.

    *check* validates a configuration (raising ``ConfigError``) without serving it.
    """
    from .server import bind, urls

    worker_sockets = bind(config, workers)
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    context = multiprocessing.get_context("fork")
    started = context.SimpleQueue()
    processes: list[multiprocessing.process.BaseProcess] = []

    def start(index: int) -> multiprocessing.process.BaseProcess:
        process = context.Process(target=_worker, args=(config.conf_dir, worker_sockets[index], started),
                                  name="tokensmith-worker", daemon=False)
        process.start()
        return process

    try:
        for index in range(workers):
            processes.append(start(index))
        for _ in range(workers):
            problem = started.get()
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
                    processes[index] = start(index)
                    if started.get() is not None:
                        log.error("the replacement worker could not start")
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
