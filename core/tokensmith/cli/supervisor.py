"""Several worker processes on the same sockets: ``tokensmith serve --workers N``.

The supervisor binds every connector's sockets, one per worker (SO_REUSEPORT, so that the
kernel spreads connections over the workers), has the configuration checked, and forks the
workers, which inherit their sockets and each build their own app (SQLite connections and
plugin modules are never shared across a fork). It then only handles signals and children:

- SIGINT/SIGTERM: stop the workers gracefully, then exit; at any time, startup included;
- SIGHUP: have the new identity.xml and dropins/ checked; if they are valid, tell every
  worker to reload, otherwise log why ("reload refused") and leave the workers as they are;
- a worker that dies is replaced, on the same sockets (connections queued on them wait for
  the replacement), after a back-off that doubles with each death; a worker that keeps
  dying makes the supervisor give up and exit 1, as systemd's start limit would.

The supervisor never imports plugin code. Every check of the configuration runs in a
child process with a deadline: whatever a plugin or a file in dropins/ does there (raise
``SystemExit``, hang, fill ``sys.path``), the supervisor only learns "valid" or one line
saying why not. Each worker unpacks its wheels into its own directory under the
supervisor's private temporary directory, removed when the worker is reaped.
"""

from __future__ import annotations

import ctypes
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from tokensmith.config.settings import Config, load_config, load_identity
from tokensmith.metrics import MULTIPROC_ENV, process_exited

__all__ = ["supervise", "RESTART_LIMIT", "RESTART_WINDOW", "CHECK_TIMEOUT"]

log = logging.getLogger("tokensmith.cli.supervisor")

_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD}
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
#: A worker slot whose workers died this many times within RESTART_WINDOW seconds makes the
#: supervisor give up.
RESTART_LIMIT = 5
RESTART_WINDOW = 60.0
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 10.0
#: How long a configuration check may take (it imports every plugin) before it is killed.
CHECK_TIMEOUT = 60.0
_POLL = 0.05


def _die_with_parent(parent: int) -> None:
    """Have the kernel send SIGTERM to this process when the supervisor dies (Linux).

    A worker that outlived a supervisor killed with -9 went on serving with nobody to replace
    it, and once it died too, the kernel still spread new connections to its socket, held
    open by a sibling that never accepted on it. With SIGTERM the worker stops as at a normal
    stop. A supervisor that died before this call is seen as a new parent id.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return  # not Linux
    prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _worker(
    conf_dir: Path,
    sockets: list[socket.socket],
    others: list[socket.socket],
    parent: int,
    ready: Connection,
    unpack: Path,
) -> None:
    # SIGHUP stays blocked until the worker serves and has its handler: one that arrived
    # while the worker was starting would otherwise kill it; it is delivered (a reload of
    # what was just loaded) once the handler is in place.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS - {signal.SIGHUP})
    _die_with_parent(parent)
    for sock in others:
        sock.close()  # the other workers' sockets: only theirs may hold them open
    import asyncio

    from tokensmith.app.factory import create_app, one_line, reload_app
    from tokensmith.app.state import RELOAD_ALL
    from tokensmith.http.server import serve

    try:
        config = load_config(conf_dir)
        app = create_app(config, unpack)
        # The admin API changes identity.xml and then reloads every worker as SIGHUP does:
        # through the supervisor, which checks the configuration first.
        app.extensions[RELOAD_ALL] = lambda: os.kill(parent, signal.SIGHUP)
    except BaseException as exc:  # noqa: B036 - reported by the supervisor, in one line
        ready.send(one_line(exc))
        ready.close()
        return

    def announce(_: list[str]) -> None:
        ready.send(None)
        ready.close()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})

    def reload() -> None:
        # The supervisor's check accepted this configuration; a worker that cannot load it
        # (a plugin that fails in this process only, or files changed since the check) must
        # not go on serving the old one beside workers that serve the new: it stops, and the
        # supervisor starts another, which loads what is on disk.
        if not reload_app(app):
            log.error(
                "worker %d could not load the configuration the supervisor checked;"
                " it stops, and another worker starts in its place",
                os.getpid(),
            )
            os.kill(os.getpid(), signal.SIGTERM)

    asyncio.run(serve(app, config, sockets=sockets, ready=announce, reload=reload))
    # Not through multiprocessing's exit, which waits for every thread: one a plugin started
    # and never ended would keep the stopped worker alive.
    logging.shutdown()
    os._exit(0)


def _check(config: Config, unpack: Path, answer: int, listening: list[socket.socket], parent: int) -> None:
    """In a child: load dropins/ and the new identity.xml as a worker would; answer on the
    pipe *answer* with JSON, ``[true, [listener descriptions]]`` or ``[false, "one line"]``.

    Plugin code runs here, so nothing it could touch is trusted by the supervisor: the answer
    is plain JSON read with a size cap and a deadline (never pickle, whose loading runs code),
    the listening sockets are closed before any plugin is imported, and the check dies with
    the supervisor.
    """
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    _die_with_parent(parent)
    for sock in listening:
        sock.close()
    from tokensmith.app.admin import load_admin_settings
    from tokensmith.app.factory import inspect_listeners, one_line

    try:
        identity = load_identity(config.identity.path)
        load_admin_settings(config.conf_dir)
        listeners = inspect_listeners(config, identity, unpack)
        reply: list[Any] = [True, [item.describe() for item in listeners]]
    except BaseException as exc:  # noqa: B036 - the whole point: any failure is one line
        reply = [False, one_line(exc)]
    finally:
        shutil.rmtree(unpack, ignore_errors=True)
    data = json.dumps(reply).encode()
    with os.fdopen(answer, "wb") as out:
        out.write(data)


#: The most bytes a configuration check may answer (listener descriptions or one line).
MAX_CHECK_ANSWER = 1 << 20


def _parse_check_answer(data: bytes) -> tuple[bool, Any]:
    """The check's answer, if it has the one shape a check gives; a refusal otherwise."""
    try:
        ok, payload = json.loads(data)
    except (ValueError, TypeError):
        return False, "the configuration check gave an answer that is not its own"
    if ok is False and isinstance(payload, str):
        return False, payload
    if (
        ok is True
        and isinstance(payload, list)
        and all(isinstance(item, dict) and all(isinstance(key, str) for key in item) for item in payload)
    ):
        return True, payload
    return False, "the configuration check gave an answer that is not its own"


class _Stop(Exception):
    """Leave the supervisor with this exit status."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


class _Supervisor:
    def __init__(self, config: Config, workers: int, root: Path):
        self.config, self.count, self.root = config, workers, root
        self.context = multiprocessing.get_context("fork")
        self.serial = 0
        self.sockets: list[list[socket.socket]] = []
        self.processes: list[BaseProcess | None] = [None] * workers
        self.unpack: list[Path | None] = [None] * workers
        self.starting: dict[int, Connection] = {}  # slot -> pipe of a worker not yet ready
        self.ready: set[int] = set()
        self.deaths: list[list[float]] = [[] for _ in range(workers)]
        self.restart_at: dict[int, float] = {}
        self.checker: tuple[BaseProcess, int, float, Path, bytearray] | None = None
        self.check_again = False

    def _path(self, kind: str) -> Path:
        self.serial += 1
        return self.root / f"{kind}-{self.serial}"

    # -- signals -----------------------------------------------------------------------

    def wait_signal(self, timeout: float | None) -> int | None:
        if timeout is None:
            return signal.sigwaitinfo(_SIGNALS).si_signo
        info = signal.sigtimedwait(_SIGNALS, max(timeout, 0.0))
        return info.si_signo if info is not None else None

    def stop_requested(self, signo: int | None) -> None:
        if signo in (signal.SIGINT, signal.SIGTERM):
            raise _Stop(0)

    # -- configuration checks in a child ---------------------------------------------------

    def start_check(self) -> None:
        receiver, sender = os.pipe()
        os.set_blocking(receiver, False)
        unpack = self._path("check")
        listening = [sock for sockets in self.sockets for sock in sockets]
        process = self.context.Process(
            target=_check,
            name="tokensmith-check",
            daemon=False,
            args=(self.config, unpack, sender, listening, os.getpid()),
        )
        process.start()
        os.close(sender)
        self.checker = (process, receiver, time.monotonic() + CHECK_TIMEOUT, unpack, bytearray())

    def check_result(self) -> tuple[bool, Any] | None:
        """The running check's answer once it has one, else None. Reads only what is there:
        a check that writes part of an answer and stops cannot hold the supervisor."""
        assert self.checker is not None
        process, receiver, deadline, unpack, received = self.checker
        answer: tuple[bool, Any] | None = None
        while answer is None:
            try:
                chunk = os.read(receiver, 65536)
            except BlockingIOError:
                break
            except OSError as exc:
                answer = (False, f"the configuration check's answer could not be read: {exc}")
                break
            if not chunk:  # the check closed its end: its whole answer is here
                answer = (
                    _parse_check_answer(bytes(received))
                    if received
                    else (
                        False,
                        f"the configuration check exited without an answer (status {process.exitcode})",
                    )
                )
            elif len(received) + len(chunk) > MAX_CHECK_ANSWER:
                answer = (False, "the configuration check's answer is too large")
            else:
                received += chunk
        if answer is None and time.monotonic() > deadline:
            answer = (False, f"the configuration check took more than {CHECK_TIMEOUT:g} s")
        if answer is None:
            return None
        os.close(receiver)
        if process.is_alive():
            process.kill()
        process.join()
        shutil.rmtree(unpack, ignore_errors=True)
        self.checker = None
        return answer

    def run_check(self) -> tuple[bool, Any]:
        """Check now, still obeying SIGINT/SIGTERM (used before any worker exists)."""
        self.start_check()
        while True:
            self.stop_requested(self.wait_signal(_POLL))
            result = self.check_result()
            if result is not None:
                return result

    # -- workers ---------------------------------------------------------------------------

    def start(self, slot: int) -> None:
        # A pipe per worker, not one queue for all: a worker killed while it held a shared
        # queue's lock would leave its replacement blocked forever on that lock. The worker
        # holds the only sending end, so its death reads as EOF here.
        receiver, sender = self.context.Pipe(duplex=False)
        unpack = self._path("worker")
        others = [sock for index, sockets in enumerate(self.sockets) if index != slot for sock in sockets]
        process = self.context.Process(
            target=_worker,
            name="tokensmith-worker",
            daemon=False,
            args=(self.config.conf_dir, self.sockets[slot], others, os.getpid(), sender, unpack),
        )
        process.start()
        sender.close()
        self.processes[slot], self.unpack[slot] = process, unpack
        self.starting[slot] = receiver
        self.ready.discard(slot)

    def poll_starting(self) -> list[tuple[int, str]]:
        """Workers that became ready join ``self.ready``; returns (slot, why) for failures."""
        failed = []
        for slot, receiver in list(self.starting.items()):
            if not receiver.poll():
                continue
            try:
                problem = receiver.recv()
            except (EOFError, OSError):
                problem = "the worker exited before it was ready"
            receiver.close()
            del self.starting[slot]
            if problem is None:
                self.ready.add(slot)
            else:
                failed.append((slot, problem))
        return failed

    def reap(self) -> list[tuple[int, int | None]]:
        """Join dead workers and remove what they unpacked; returns (slot, exit status)."""
        dead = []
        for slot, process in enumerate(self.processes):
            if process is None or process.is_alive():
                continue
            process.join()
            if process.pid is not None:
                process_exited(process.pid)  # its connections are closed: off the live gauge
            dead.append((slot, process.exitcode))
            self.processes[slot] = None
            self.ready.discard(slot)
            receiver = self.starting.pop(slot, None)
            if receiver is not None:
                receiver.close()
            unpack = self.unpack[slot]
            if unpack is not None:
                shutil.rmtree(unpack, ignore_errors=True)
                self.unpack[slot] = None
        return dead

    def schedule_restart(self, slot: int) -> None:
        now = time.monotonic()
        recent = [t for t in self.deaths[slot] if now - t < RESTART_WINDOW] + [now]
        self.deaths[slot] = recent
        if len(recent) >= RESTART_LIMIT:
            print(
                f"tokensmith: error: worker {slot + 1} died {len(recent)} times within"
                f" {RESTART_WINDOW:g} s; giving up",
                file=sys.stderr,
                flush=True,
            )
            raise _Stop(1)
        delay = min(_BACKOFF_FIRST * 2 ** (len(recent) - 1), _BACKOFF_MAX)
        self.restart_at[slot] = now + delay
        log.error("starting another worker %d in %.1f s", slot + 1, delay)

    def shutdown(self) -> None:
        if self.checker is not None:
            process, receiver, _, unpack, _ = self.checker
            if process.is_alive():
                process.kill()
            process.join()
            os.close(receiver)
        for worker in self.processes:
            if worker is not None and worker.is_alive() and worker.pid is not None:
                os.kill(worker.pid, signal.SIGTERM)
        for worker in self.processes:
            if worker is None:
                continue
            worker.join(timeout=15)
            if worker.is_alive():
                worker.kill()
                worker.join()
        for pipe in self.starting.values():
            pipe.close()
        for sockets in self.sockets:
            for sock in sockets:
                sock.close()

    # -- the loop --------------------------------------------------------------------------

    def run(
        self, ready: Callable[[list[str]], None], listeners: Callable[[list[dict[str, Any]]], None] | None
    ) -> int:
        from tokensmith.http.server import bind, urls

        valid, answer = self.run_check()
        if not valid:
            print(f"tokensmith: error: {answer}", file=sys.stderr, flush=True)
            return 1
        if listeners is not None:
            listeners(answer)
        self.sockets = bind(self.config, self.count)
        for slot in range(self.count):
            self.start(slot)

        serving = False
        while True:
            busy = self.starting or self.checker is not None
            timeout: float | None = _POLL if busy else None
            if self.restart_at:
                until = max(min(self.restart_at.values()) - time.monotonic(), 0.0)
                timeout = until if timeout is None else min(timeout, until)
            signo = self.wait_signal(timeout)
            self.stop_requested(signo)
            if signo == signal.SIGHUP:
                if self.checker is None and serving:
                    self.start_check()
                else:
                    self.check_again = True  # after the running check, or once serving

            for slot, problem in self.poll_starting():
                if not serving:
                    print(f"tokensmith: error: {problem}", file=sys.stderr, flush=True)
                    return 1
                log.error("the replacement worker %d could not start: %s", slot + 1, problem)
            for slot, status in self.reap():
                if not serving:
                    print(
                        "tokensmith: error: the worker exited before it was ready",
                        file=sys.stderr,
                        flush=True,
                    )
                    return 1
                log.error("worker %d exited with %s", slot + 1, status)
                self.schedule_restart(slot)
            if not serving and len(self.ready) == self.count:
                serving = True
                ready(urls(self.sockets[0]))

            now = time.monotonic()
            for slot, when in list(self.restart_at.items()):
                if when <= now:
                    del self.restart_at[slot]
                    self.start(slot)

            if self.checker is not None:
                result = self.check_result()
                if result is not None:
                    self.reload(*result)
            if self.check_again and self.checker is None and serving:
                self.check_again = False
                self.start_check()

    def reload(self, valid: bool, answer: Any) -> None:
        if not valid:
            log.error("reload refused, workers keep their configuration: %s", answer)
            return
        for process in self.processes:
            if process is not None and process.pid is not None and process.is_alive():
                # A worker still starting reads the new files anyway; it gets the signal too,
                # held until it serves.
                os.kill(process.pid, signal.SIGHUP)


def supervise(
    config: Config,
    workers: int,
    ready: Callable[[list[str]], None],
    listeners: Callable[[list[dict[str, Any]]], None] | None = None,
) -> int:
    """Run *workers* workers for *config* until told to stop; return the exit status.

    *listeners* is given the listener descriptions of the checked configuration before the
    sockets are bound; *ready* the URLs once every worker serves.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    root = Path(tempfile.mkdtemp(prefix="tokensmith-supervisor-"))
    # Before any worker forks and builds its metrics: each then keeps them in files here,
    # summed when any worker answers /metrics (prometheus_client's multiprocess mode).
    (root / "metrics").mkdir()
    os.environ[MULTIPROC_ENV] = str(root / "metrics")
    supervisor = _Supervisor(config, workers, root)
    try:
        return supervisor.run(ready, listeners)
    except _Stop as stop:
        return stop.status
    finally:
        supervisor.shutdown()
        shutil.rmtree(root, ignore_errors=True)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
