"""Worker processes for the CPU-heavy work: parsing, transcoding, rendering.

pydicom is pure Python, so under one GIL parsing would serialize with receiving and sending.
Worker processes run it in parallel. They are spawned, not forked, so no child inherits the
open LMDB environment.

Codecs are native code fed with data from outside, so every job is fenced in:

* each job runs in one known worker process, so a job past its time limit is ended by killing
  that process alone; the jobs queued behind it, or running in the other workers, go on (a
  replacement worker takes over the queue);
* a worker that dies (a codec crashing on its input) fails only the job it was running;
* a worker may get a data size limit (``RLIMIT_DATA``), so a codec that allocates whatever
  its input declares fails with ``MemoryError`` rather than exhausting the machine;
* whatever a job raises reaches the caller as a :class:`ServiceError` whose message says
  which job failed and how, a codec's panic included.

A server killed outright (SIGKILL, the out-of-memory killer) cannot stop its workers, so each
worker ends itself when its server is gone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import importlib
import logging
import multiprocessing
import os
import queue
import resource
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from dicomrpc_server.errors import Code, ServiceError

T = TypeVar("T")
log = logging.getLogger(__name__)

# How often a worker checks that its server is still there.
PARENT_POLL_S = 0.5
# How long a new worker may take to start and import what it needs.
START_TIMEOUT_S = 120.0
# What each kind of pool imports as its workers start, so a first job does not pay for it.
PARSE_MODULES = ("dicomrpc_server.store.prepare",)
CODEC_MODULES = (
    "dicomrpc_server.retrieve.render",
    "dicomrpc_server.retrieve.transcode",
    "dicomrpc_server.retrieve.bulkdata",
)


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


@dataclass(frozen=True)
class JobFailure:
    """What a job raised, carried back from a worker as plain text.

    Codec exceptions need not survive pickling (a Rust panic, for one, is not an ``Exception``
    and its class lives in no importable module), so a worker sends their type and message.
    """

    type_name: str
    message: str
    details: str
    out_of_memory: bool = False


def _worker_main(
    conn: Connection, parent: int, memory_limit: int | None, modules: tuple[str, ...]
) -> None:
    """The loop of a worker process: run each job received on ``conn``, send back its outcome."""
    exit_with(parent)
    # The server's terminal sends SIGINT to the whole process group: the server stops its
    # workers itself, after their last jobs.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory_limit is not None:
        resource.setrlimit(resource.RLIMIT_DATA, (memory_limit, memory_limit))
    for name in modules:
        importlib.import_module(name)
    conn.send(("ready", None))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        try:
            outcome: tuple[str, object] = ("ok", job())
        except ServiceError as exc:
            outcome = ("error", exc)
        except BaseException as exc:  # a codec's panic is a BaseException
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            outcome = ("failure", _failure(exc))
        del job
        try:
            conn.send(outcome)
        except Exception as exc:  # a result or error that cannot be pickled
            conn.send(("failure", _failure(exc)))


def _failure(exc: BaseException) -> JobFailure:
    message = str(exc) or repr(exc)
    return JobFailure(
        type(exc).__name__,
        message,
        "".join(traceback.format_exception(exc)),
        out_of_memory=isinstance(exc, MemoryError),
    )


class _Job:
    """A job waiting for a worker: the call, what it is (for messages), and its future."""

    def __init__(self, call: Callable[[], Any], what: str) -> None:
        self.call = call
        self.what = what
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()


class _Worker:
    """One worker process and the thread that feeds it jobs from the pool's queue."""

    def __init__(self, pool: WorkerPool, number: int) -> None:
        self.pool = pool
        self.number = number
        self.process: multiprocessing.process.BaseProcess | None = None
        self.conn: Connection | None = None
        self.thread = threading.Thread(
            target=self._serve, name=f"{pool.name}-{number}", daemon=True
        )
        self.ready = False
        # Set by the pool's shutdown for a worker still starting with no job taken: its
        # process is killed rather than waited for, and no other is started.
        self.abandoned = False
        self.took_job = False

    def start(self) -> None:
        """Start the process, then the thread that waits for it and feeds it jobs."""
        self._spawn()
        self.thread.start()

    def _spawn(self) -> None:
        pool = self.pool
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(
            target=_worker_main,
            args=(theirs, os.getpid(), pool.memory_limit, pool.modules),
            name=f"dicomrpc-{pool.name}-{self.number}",
            daemon=True,
        )
        process.start()
        theirs.close()
        self.process, self.conn = process, ours

    def _wait_ready(self) -> bool:
        """Wait for the current process to have started; whether it did."""
        conn = self.conn
        assert conn is not None
        try:
            if conn.poll(START_TIMEOUT_S):
                conn.recv()
                self.ready = True
                return True
        except (EOFError, OSError):
            pass
        if self.abandoned:
            return False
        process = self.process
        code = process.exitcode if process is not None else None
        log.error(
            "%s worker %d did not start (%s)", self.pool.name, self.number, _exit_description(code)
        )
        return False

    def _replace(self) -> None:
        """Kill the process (whatever it is doing) and start a new one."""
        self.ready = False
        process, conn = self.process, self.conn
        if process is not None:
            process.kill()
            process.join()
        if conn is not None:
            conn.close()
        self._spawn()

    def _ensure_ready(self) -> bool:
        """Have a started process (replacing one that died idle); whether there is one."""
        process = self.process
        if process is None or not process.is_alive():
            self._replace()
        if self.ready or self._wait_ready():
            return True
        if not self.abandoned:
            self._replace()  # for the next job
        return False

    def abandon(self) -> None:
        """Stop a worker that is still starting and has taken no job: kill its process.

        A server that stops soon after it started (a short-lived command, a test) need not
        wait for a worker to finish importing the codecs before it can stop it.
        """
        self.abandoned = True
        process = self.process
        if process is not None:
            process.kill()

    def _serve(self) -> None:
        pool = self.pool
        self._ensure_ready()
        while True:
            job = pool.jobs.get()
            if job is None:
                self._stop()
                return
            if not job.future.set_running_or_notify_cancel():
                continue  # its caller has gone
            self.took_job = True
            if self.abandoned:
                job.future.set_exception(
                    ServiceError(
                        Code.UNAVAILABLE, "SERVER_UNAVAILABLE", "the server is shutting down"
                    )
                )
                continue
            if not self._ensure_ready():
                job.future.set_exception(
                    pool.died(job.what, "no worker process could be started; see the log")
                )
                continue
            self._run(job)

    def _run(self, job: _Job) -> None:
        """Run one job in the (started) process; kill and replace it past the time limit."""
        pool = self.pool
        conn = self.conn
        assert conn is not None
        try:
            conn.send(job.call)
        except (EOFError, OSError) as exc:
            job.future.set_exception(pool.died(job.what, f"it could not be reached ({exc})"))
            self._replace()
            return
        except Exception as exc:  # the job itself cannot be pickled
            job.future.set_exception(pool.failed(job.what, _failure(exc)))
            return
        if not conn.poll(pool.timeout_s):
            log.error(
                "%s took more than %g s: stopping %s worker %d",
                job.what,
                pool.timeout_s,
                pool.name,
                self.number,
            )
            job.future.set_exception(pool.timed_out(job.what))
            self._replace()
            return
        try:
            kind, value = conn.recv()
        except (EOFError, OSError):
            process = self.process
            assert process is not None
            process.join(10)
            job.future.set_exception(pool.died(job.what, _exit_description(process.exitcode)))
            self._replace()
            return
        if kind == "ok":
            job.future.set_result(value)
        elif kind == "error":
            job.future.set_exception(value)
        else:
            job.future.set_exception(pool.failed(job.what, value))

    def _stop(self) -> None:
        conn, process = self.conn, self.process
        if conn is not None:
            with contextlib.suppress(EOFError, OSError):
                conn.send(None)
            conn.close()
        if process is not None:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()


def _exit_description(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"it was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"it was killed by signal {-code}"
    return f"it exited with code {code}"


class WorkerPool:
    """Worker processes that each run one job at a time, with limits on every job.

    Parameters
    ----------
    count
        The number of worker processes (at least one).
    name
        What the pool is for (``parse``, ``codec``), in logs and process names.
    timeout_s
        The longest a job may run; past it its worker is killed and replaced. ``None``: no
        limit.
    memory_limit
        The data size limit of each worker (``RLIMIT_DATA``) in bytes; ``None``: no limit.
    modules
        Modules each worker imports as it starts.
    lazy
        Start the workers on the first job rather than now: a pool many servers never use
        (decoding, when every retrieve sends the stored bytes) then costs nothing.
    """

    def __init__(
        self,
        count: int,
        *,
        name: str = "worker",
        timeout_s: float | None = None,
        memory_limit: int | None = None,
        modules: tuple[str, ...] = PARSE_MODULES + CODEC_MODULES,
        lazy: bool = False,
    ) -> None:
        self.count = max(1, count)
        self.name = name
        self.timeout_s = timeout_s
        self.memory_limit = memory_limit
        self.modules = modules
        self.closing = False
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._workers = [_Worker(self, number) for number in range(self.count)]
        self._lock = threading.Lock()
        self._started = False
        if not lazy:
            self._start()

    def _start(self) -> None:
        with self._lock:
            if not self._started:
                for worker in self._workers:
                    worker.start()
                self._started = True

    def pids(self) -> list[int]:
        """The process ids of the workers (for tests and diagnostics)."""
        return [w.process.pid for w in self._workers if w.process and w.process.pid]

    async def run(self, fn: Callable[..., T], /, *args: Any, what: str = "", **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` in a worker process, without blocking the event loop.

        Parameters
        ----------
        fn, args, kwargs
            The job: ``fn`` must be importable by name, its arguments picklable.
        what
            What the job does (``"rendering frame 2 of instance 1.2.3"``), for the messages
            of its errors.

        Raises
        ------
        ServiceError
            What the job raised; or, naming ``what``: RESOURCE_EXHAUSTED (``LIMIT_EXCEEDED``)
            when it ran out of time or memory, INTERNAL (DICOM status 272) when its worker
            died or it raised anything else.
        """
        if self.closing:
            raise ServiceError(
                Code.UNAVAILABLE, "SERVER_UNAVAILABLE", "the server is shutting down"
            )
        if not self._started:
            self._start()
        job = _Job(functools.partial(fn, *args, **kwargs), what or getattr(fn, "__name__", "a job"))
        self.jobs.put(job)
        result: T = await asyncio.wrap_future(job.future)
        return result

    def timed_out(self, what: str) -> ServiceError:
        """The error of a job that ran past the time limit."""
        assert self.timeout_s is not None
        return ServiceError(
            Code.RESOURCE_EXHAUSTED,
            "LIMIT_EXCEEDED",
            f"{what} took longer than this server's limit of {self.timeout_s:g} s per codec "
            "job; it was stopped",
            metadata={"limit": "codec_timeout_s", "value": f"{self.timeout_s:g}"},
        )

    def died(self, what: str, how: str) -> ServiceError:
        """The error of a job whose worker died under it (a codec crash)."""
        log.error("%s: the %s worker died (%s); starting another", what, self.name, how)
        return ServiceError(
            Code.INTERNAL,
            "INTERNAL_FAILURE",
            f"{what} failed: the worker process handling it died ({how}); a codec may have "
            "crashed on this data. The worker was replaced",
            dicom_status=272,
        )

    def failed(self, what: str, failure: JobFailure) -> ServiceError:
        """The error of a job that raised something other than a :class:`ServiceError`."""
        if failure.out_of_memory and self.memory_limit is not None:
            return ServiceError(
                Code.RESOURCE_EXHAUSTED,
                "LIMIT_EXCEEDED",
                f"{what} needed more memory than this server's limit of {self.memory_limit} "
                f"bytes per codec worker ({failure.message})",
                metadata={"limit": "codec_memory_bytes", "value": str(self.memory_limit)},
            )
        log.error("%s failed in a %s worker:\n%s", what, self.name, failure.details)
        return ServiceError(
            Code.INTERNAL,
            "INTERNAL_FAILURE",
            f"{what} failed: {failure.type_name}: {failure.message}",
            dicom_status=272,
        )

    def shutdown(self) -> None:
        """Let queued and running jobs finish, then stop the workers."""
        self.closing = True
        if not self._started:
            return
        for _ in self._workers:
            self.jobs.put(None)
        if self.jobs.qsize() == len(self._workers):
            # Nothing is queued: a worker still starting has no job to finish (a job goes to
            # a worker only once it is ready, and none comes now that the pool is closing).
            for worker in self._workers:
                if not worker.ready and not worker.took_job:
                    worker.abandon()
        for worker in self._workers:
            worker.thread.join()
