"""The index writer: every LMDB write on one thread, many operations per commit.

LMDB allows one write transaction at a time, bound to the thread that began it. Funnelling all
writes through one thread makes that rule structural, and lets the writer group whatever
operations are queued into one transaction: one commit (one fsync) acknowledges them all, so
durability costs little under concurrent load (group commit). Each operation runs in a nested
transaction, so one that fails is rolled back alone and the others still commit. A commit that
finds no space is rolled back whole, as LMDB leaves it, and each of its operations fails with
``STORAGE_FULL`` (see :mod:`.space`), the answer every write that finds no space gets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from dicomrpc_server.storage.space import cut_short_by_space, space_errno, storage_full

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass
class _Op:
    """A queued write, and where its outcome goes: a thread's future or a loop's waiter."""

    fn: Callable[[lmdb.Transaction], Any]
    future: concurrent.futures.Future[Any] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    waiter: asyncio.Future[Any] | None = None


class IndexWriter:
    """Runs write operations on a dedicated thread, grouped into commits.

    Parameters
    ----------
    env
        The LMDB environment.
    before_commit
        Called in each transaction just before it commits (the blob store's directory fsync,
        which makes the files the transaction indexes durable first).
    grow
        Called with no transaction open when the map is full; it must enlarge the map.
    adopt
        Called with no transaction open when another process has enlarged the map; it must
        take the new size.
    hold
        Held around each write transaction: what keeps the map from being resized meanwhile
        by another thread of this process.
    max_batch
        The most operations grouped into one commit.
    """

    def __init__(
        self,
        env: lmdb.Environment,
        *,
        before_commit: Callable[[], None],
        grow: Callable[[], None],
        adopt: Callable[[], None],
        hold: Callable[[], AbstractContextManager[None]],
        max_batch: int,
    ) -> None:
        self._env = env
        self._before_commit = before_commit
        self._grow = grow
        self._adopt = adopt
        self._hold = hold
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="index-writer", daemon=True)
        self._closed = False
        self._listeners: list[Callable[[], None]] = []
        self.commits = 0
        self._thread.start()

    @property
    def pending(self) -> int:
        """How many writes wait for a commit (approximately: the queue is read concurrently)."""
        return self._queue.qsize()

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` on the writer thread after every commit (it must not block)."""
        self._listeners.append(listener)

    def submit(self, fn: Callable[[lmdb.Transaction], T]) -> concurrent.futures.Future[T]:
        """Queue ``fn(txn)``; the future resolves once its transaction has committed."""
        if self._closed:
            raise RuntimeError("the index writer is closed")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put(_Op(fn, future=future))
        return future

    async def run(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Queue ``fn(txn)`` and wait, without blocking the event loop, for its commit.

        A caller that is cancelled stops waiting; the write itself still commits (a store
        whose file is already persisted is indexed rather than left as an orphan).
        """
        if self._closed:
            raise RuntimeError("the index writer is closed")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Op(fn, loop=loop, waiter=waiter))
        return await waiter

    def close(self) -> None:
        """Commit what is queued, then stop the thread."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()

    def _loop(self) -> None:
        while True:
            op = self._queue.get()
            if op is None:
                return
            batch = [op]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Op]) -> None:
        while True:
            outcomes: list[tuple[bool, Any]] = []
            try:
                with self._hold(), self._env.begin(write=True) as txn:
                    for op in batch:
                        try:
                            with self._env.begin(write=True, parent=txn) as child:
                                outcomes.append((True, op.fn(child)))
                        except lmdb.MapFullError:
                            raise
                        except Exception as exc:  # the operation's own failure
                            outcomes.append((False, exc))
                    self._before_commit()
            except lmdb.MapFullError:
                self._grow()
                continue
            except lmdb.MapResizedError:  # another process enlarged the map
                self._adopt()
                continue
            except Exception as exc:
                failure: Exception = exc
                volume = Path(self._env.path())
                if space_errno(exc) is not None or cut_short_by_space(
                    exc, volume, self._env.stat()["psize"]
                ):
                    log.warning("index commit failed: %s", exc)
                    failure = storage_full(exc, volume, "writing the index")
                else:
                    log.exception("index commit failed")
                _settle(batch, [(False, failure)] * len(batch))
                return
            break
        self.commits += 1
        # The listeners first: what they hand to the event loop (a workitem event for its
        # subscribers) is then queued ahead of the batch's callers, instead of behind every
        # answer the batch lets go (bench/RESULTS.md, "Workitems": event latency under load).
        for listener in self._listeners:
            try:
                listener()
            except Exception:  # a listener's failure must not keep the callers waiting
                log.exception("index commit listener failed")
        _settle(batch, outcomes)


def _settle(batch: list[_Op], outcomes: list[tuple[bool, Any]]) -> None:
    """Hand each operation its outcome: one event-loop callback per loop for the whole batch.

    A waiter or future whose caller was cancelled meanwhile is left as it is: the writer
    never fails because nobody waits any more.
    """
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
    for op, (ok, value) in zip(batch, outcomes, strict=True):
        if op.future is not None:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                if ok:
                    op.future.set_result(value)
                else:
                    op.future.set_exception(value)
        elif op.loop is not None and op.waiter is not None:
            by_loop.setdefault(op.loop, []).append((op.waiter, ok, value))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to tell
            loop.call_soon_threadsafe(_resolve, settled)


def _resolve(settled: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """Set the waiters of a batch, on their event loop's thread."""
    for waiter, ok, value in settled:
        if waiter.done():  # cancelled
            continue
        if ok:
            waiter.set_result(value)
        else:
            waiter.set_exception(value)
