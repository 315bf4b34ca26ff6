"""Worker processes for the CPU-heavy work: parsing, transcoding, rendering.

pydicom is pure Python, so under one GIL parsing would serialize with receiving and sending.
Worker processes run it in parallel. They are spawned, not forked, so no child inherits the
open LMDB environment. Codecs are native code fed with data from outside: if one crashes a
worker, the pool is replaced and only the request that crashed it fails. A server killed outright
(SIGKILL, the out-of-memory killer) cannot stop its workers, so each worker ends itself when its
server is gone.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from dicomrpc_server.errors import Code, ServiceError

T = TypeVar("T")
log = logging.getLogger(__name__)

# How often a worker checks that its server is still there.
PARENT_POLL_S = 0.5


def exit_with(parent: int) -> None:
    """Run in each worker as it starts: end the worker once ``parent`` (the server) is gone.

    An idle worker waits for work on a pipe the worker itself also holds open, so it would never
    see the server die: without this watch, every killed server left its workers behind.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-server", daemon=True).start()


def warm_up() -> None:
    """Import, in a worker process, what parsing, transcoding and rendering use."""
    import dicomrpc_server.retrieve.render
    import dicomrpc_server.retrieve.transcode
    import dicomrpc_server.store.prepare  # noqa: F401


class WorkerPool:
    """A process pool that replaces itself when a worker dies.

    Parameters
    ----------
    count
        The number of worker processes (at least one).
    """

    def __init__(self, count: int) -> None:
        self.count = max(1, count)
        self._lock = threading.Lock()
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(
            max_workers=self.count,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=exit_with,
            initargs=(os.getpid(),),
        )
        # Start the workers now and let them import the codecs, so the first request does not
        # wait for a process to start.
        for _ in range(self.count):
            pool.submit(warm_up)
        return pool

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in a worker process, without blocking the event loop.

        Raises
        ------
        ServiceError
            INTERNAL (DICOM status 272) when the worker died on this request; the pool is
            replaced so that the next requests are served.
        """
        pool = self._pool
        job = functools.partial(fn, *args, **kwargs)
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, job)
        except BrokenProcessPool as exc:
            with self._lock:
                if self._pool is pool:
                    log.error("a worker process died; starting new workers")
                    self._pool = self._start()
                    pool.shutdown(wait=False)
            raise ServiceError(
                Code.INTERNAL,
                "INTERNAL_FAILURE",
                "a worker process died while handling this data (a codec may have crashed on "
                "it); the workers were restarted",
                dicom_status=272,
            ) from exc

    def shutdown(self) -> None:
        """Let running jobs finish, then stop the workers."""
        self._pool.shutdown(wait=True)
