"""Servers as child processes: started, awaited, measured and always stopped.

A server prints one line when it accepts connections ("tokensmith serving URL", "ready URL");
``Proc.wait_ready`` waits for it with a deadline and records how long that took. stdout is
read by a thread (so the pipe never fills up); stderr goes to a log file in the work dir.
``Procs`` owns every process it started and stops them all on exit, also after an error.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

__all__ = ["Proc", "Procs", "StartupError", "tree_rss_mb", "tree_fds", "tree_cpu_s"]


class StartupError(RuntimeError):
    """A server exited or stayed silent before its ready line; the message holds its log."""


def _children(pid: int) -> list[int]:
    """Direct children of *pid*, from /proc (no psutil here)."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: fields start after the last ')'
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo and len(pids) < 256:  # bounded: a server has a handful of processes
        p = todo.pop()
        pids.append(p)
        todo.extend(_children(p))
    return pids


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mb(pid: int) -> float:
    """Resident memory of *pid* and all its descendants, MiB (VmRSS summed)."""
    return sum(_status_kb(p, "VmRSS") for p in _tree(pid)) / 1024


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by *pid* and its live descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / ticks


def tree_fds(pid: int) -> int:
    """Open file descriptors of *pid* and its descendants."""
    total = 0
    for p in _tree(pid):
        try:
            total += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return total


class Proc:
    """One started server process."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        log: Path,
        env: dict[str, str] | None = None,
        cpus: str | None = None,
        cwd: Path | None = None,
    ):
        self.name = name
        self.log = log
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        full = ["taskset", "-c", cpus, *argv] if cpus else argv  # taskset execs: same pid
        self.started = time.monotonic()
        with open(log, "w") as err:
            self.popen = subprocess.Popen(
                full,
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                cwd=cwd,
            )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._new_line:
                self.lines.append(line.rstrip("\n"))
                self._new_line.notify_all()
        with self._new_line:
            self._new_line.notify_all()

    def wait_ready(self, pattern: str, timeout: float) -> tuple[re.Match[str], float]:
        """The first stdout line matching *pattern*, and seconds from start to that line."""
        regex = re.compile(pattern)
        deadline = self.started + timeout
        seen = 0
        with self._new_line:
            while True:
                for line in self.lines[seen:]:
                    match = regex.search(line)
                    if match:
                        return match, time.monotonic() - self.started
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not self._reader.is_alive()):
                    break
                self._new_line.wait(min(left, 0.2))
        self.stop()
        raise StartupError(
            f"{self.name} did not print a ready line within {timeout:.0f} s"
            f" (exit status {self.popen.returncode}); stdout: {self.lines[-5:]};"
            f" log {self.log}:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def rss_mb(self) -> float:
        return tree_rss_mb(self.pid)

    def fds(self) -> int:
        return tree_fds(self.pid)

    def cpu_s(self) -> float:
        return tree_cpu_s(self.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM (the servers stop gracefully on it), then SIGKILL after *timeout*."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._reader.join(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        return self.popen.returncode


class Procs:
    """Starts processes and stops every one of them when the ``with`` block ends."""

    def __init__(self) -> None:
        self._procs: list[Proc] = []

    def start(self, name: str, argv: list[str], **kwargs: object) -> Proc:
        proc = Proc(name, argv, **kwargs)  # type: ignore[arg-type]
        self._procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> int | None:
        code = proc.stop()
        if proc in self._procs:
            self._procs.remove(proc)
        return code

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self._procs):
            proc.stop()
        self._procs.clear()
