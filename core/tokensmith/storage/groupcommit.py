"""Group commit: the tokens of concurrent requests stored in one transaction.

Every token response is stored before it is sent, and storing one opaque token was one
SQLite transaction: its commit writes each B-tree page the insert touched (the table, the
primary-key index, the expiry and grant indexes) to the WAL, four pages of 4 KiB for a
row of a few hundred bytes: the commit, not the request, was the server's main cost
(docs/benchmarks.md).
Requests that reach the store in the same turn of the event loop now share one transaction
and so share the pages they touch in common; each still waits for the commit before its
response goes out, so a 200 still means the token is stored, and a failed commit fails
every request of the batch with the same ``StorageError`` (503, fail closed).

While another writer holds the store (another worker, a checkpoint), the batch tries again
on the next turns of the event loop for up to 2 ms, then on a timer, instead of waiting in
SQLite's busy handler, which would sleep on the event loop's thread; requests arriving
meanwhile join it. After ``BUSY_TIMEOUT`` seconds it fails with 503, as
SQLite's own busy timeout did.

A networked store (PostgreSQL) commits in a thread instead (*threaded*): its commit is a
round trip and an fsync on another machine, during which the event loop goes on reading
requests; they form the next batch, which starts when this one is committed. One batch is
in flight at a time, so that batches grow with the load instead of the round trips.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable

from tokensmith.metrics import Metrics, metrics
from tokensmith.models import Issue, StorageError, TokenRecord

__all__ = ["GroupCommit", "BUSY_TIMEOUT"]

#: How long a batch waits for a busy store before its requests get 503.
BUSY_TIMEOUT = 5.0
_SPIN = 0.002
_FIRST_RETRY = 0.001
_MAX_RETRY = 0.01
_COMMIT_THREAD: concurrent.futures.ThreadPoolExecutor | None = None
_COMMIT_THREAD_LOCK = threading.Lock()


def _commit_thread() -> concurrent.futures.ThreadPoolExecutor:
    """The one thread that threaded group commits run in (shared across reloads)."""
    global _COMMIT_THREAD
    with _COMMIT_THREAD_LOCK:
        if _COMMIT_THREAD is None:
            _COMMIT_THREAD = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tokensmith-commit")
        return _COMMIT_THREAD


class GroupCommit:
    """Batches calls to *write* (``Storage.try_issue``) made in the same event-loop turn.

    *write* stores a list of ``Issue`` in one transaction and returns one bool per issue
    (False: the refresh token it rotates was no longer live, nothing of it stored), returns
    None when the store is busy (nothing stored), or raises ``StorageError``.
    """

    def __init__(self, write: Callable[[list[Issue], int], list[bool] | None], threaded: bool = False):
        self._write = write
        self._threaded = threaded
        self._in_flight = False
        self._pending: list[tuple[Issue, asyncio.Future[bool]]] = []
        self._busy_since: float | None = None
        self._retry = _FIRST_RETRY
        self._metrics: Metrics | None = None

    async def add(self, records: list[TokenRecord], rotates: str | None = None) -> bool:
        """Store *records* (one token response: all or none), marking the refresh token
        *rotates* used with them; return once committed. False: *rotates* was not live, and
        nothing was stored."""
        loop = asyncio.get_running_loop()
        committed: asyncio.Future[bool] = loop.create_future()
        if not self._pending and not self._in_flight:
            # Runs after the callbacks already queued for this turn, which are the other
            # requests whose data arrived together with this one's.
            loop.call_soon(self._flush)
        self._pending.append((Issue(tuple(records), rotates), committed))
        return await committed

    def _flush(self) -> None:
        if self._threaded:
            self._flush_in_thread()
            return
        batch = self._pending
        started = time.perf_counter()
        try:
            stored = self._write([issue for issue, _ in batch], int(time.time()))
        except Exception as exc:  # noqa: BLE001 - every waiter gets the store's error
            self._settle(exc)
            return
        if stored is not None:
            m = self._metrics
            if m is None:  # built on first use, as metrics() is: after the supervisor forked
                m = self._metrics = metrics()
            m.commit.observe(time.perf_counter() - started)
            m.batch.observe(len(batch))
            self._settle(None, stored)
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._busy_since is None:
            self._busy_since = now
        elif now - self._busy_since > BUSY_TIMEOUT:
            self._settle(StorageError("the store stayed locked by another writer"))
            return
        if now - self._busy_since < _SPIN:
            # Another worker's commit holds the lock for a fraction of a millisecond, less
            # than the loop's shortest timer (epoll counts in ms): try again on the next
            # turn of the loop, after the I/O that is ready, which costs a few microseconds.
            loop.call_soon(self._flush)
            return
        loop.call_later(self._retry, self._flush)  # later arrivals join this batch
        self._retry = min(self._retry * 2, _MAX_RETRY)

    def _flush_in_thread(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        self._in_flight = True
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(
            _commit_thread(), self._write, [issue for issue, _ in batch], int(time.time())
        )

        def committed(future: asyncio.Future[list[bool] | None]) -> None:
            self._in_flight = False
            error = future.exception()
            stored = None if error is not None else future.result()
            if error is None and stored is None:
                error = StorageError("the store was busy")  # a threaded store never is
            _answer(batch, error, stored)
            if self._pending:
                loop.call_soon(self._flush)

        done.add_done_callback(committed)

    def _settle(self, error: BaseException | None, stored: list[bool] | None = None) -> None:
        batch, self._pending = self._pending, []
        self._busy_since, self._retry = None, _FIRST_RETRY
        _answer(batch, error, stored)


def _answer(
    batch: list[tuple[Issue, asyncio.Future[bool]]], error: BaseException | None, stored: list[bool] | None
) -> None:
    for index, (_, committed) in enumerate(batch):
        if committed.done():
            continue  # its request was cancelled
        if error is None:
            committed.set_result(stored[index] if stored is not None else True)
        else:
            committed.set_exception(error)
