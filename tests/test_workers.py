"""Worker pools: a job that dies, panics, runs too long or allocates too much fails alone."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import numpy as np
import pytest

from dicomrpc_server.errors import Code, ServiceError
from dicomrpc_server.workers import WorkerPool

MIB = 1024 * 1024


def _square(x: int) -> int:
    return x * x


def _die() -> None:
    os._exit(3)  # what a codec crashing on bad data does to its process


def _sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


class _Panic(BaseException):
    """Like a Rust codec's panic (pyo3's PanicException): not an Exception, not picklable."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.unpicklable = lambda: None


def _panic() -> None:
    raise _Panic("index out of bounds: the len is 3 but the index is 7")


def _allocate(size: int) -> int:
    return int(np.ones(size, dtype=np.uint8).sum())


def test_a_dead_worker_is_replaced_and_the_error_names_the_job() -> None:
    pool = WorkerPool(1, modules=())

    async def run() -> None:
        assert await pool.run(_square, 7) == 49
        with pytest.raises(ServiceError) as caught:
            await pool.run(_die, what="decoding frame 4 of instance 1.2.3")
        assert caught.value.code is Code.INTERNAL
        assert caught.value.dicom_status == 272
        assert "decoding frame 4 of instance 1.2.3" in caught.value.message
        assert "exited with code 3" in caught.value.message
        assert await pool.run(_square, 8) == 64

    try:
        asyncio.run(run())
    finally:
        pool.shutdown()


def test_a_codec_panic_is_an_error_with_a_message() -> None:
    pool = WorkerPool(1, modules=())

    async def run() -> None:
        with pytest.raises(ServiceError) as caught:
            await pool.run(_panic, what="decoding frame 1 of instance 1.2.3 (RLE Lossless)")
        error = caught.value
        assert error.code is Code.INTERNAL and error.reason == "INTERNAL_FAILURE"
        assert error.message.startswith("decoding frame 1 of instance 1.2.3 (RLE Lossless) failed")
        assert "_Panic: index out of bounds" in error.message
        assert await pool.run(_square, 3) == 9  # the worker lives on

    try:
        asyncio.run(run())
    finally:
        pool.shutdown()


@pytest.mark.slow
def test_a_job_past_the_time_limit_is_killed_and_the_queue_behind_it_still_runs() -> None:
    pool = WorkerPool(1, timeout_s=1.0, modules=())

    async def run() -> None:
        slow = asyncio.ensure_future(pool.run(_sleep, 60, what="rendering frame 1 of 1.2.3"))
        await asyncio.sleep(0.2)  # queued behind it, on the same single worker
        quick = asyncio.ensure_future(pool.run(_square, 5))
        results = await asyncio.gather(slow, quick, return_exceptions=True)
        error = results[0]
        assert isinstance(error, ServiceError)
        assert error.code is Code.RESOURCE_EXHAUSTED and error.reason == "LIMIT_EXCEEDED"
        assert error.metadata == {"limit": "codec_timeout_s", "value": "1"}
        assert "rendering frame 1 of 1.2.3 took longer than" in error.message
        assert results[1] == 25

    started = time.monotonic()
    try:
        asyncio.run(run())
    finally:
        pool.shutdown()
    assert time.monotonic() - started < 50  # the sleeping worker was not waited for


def test_a_job_over_the_memory_limit_fails_with_memory_named() -> None:
    pool = WorkerPool(1, memory_limit=768 * MIB, modules=())

    async def run() -> None:
        assert await pool.run(_allocate, 16 * MIB) == 16 * MIB
        with pytest.raises(ServiceError) as caught:
            await pool.run(_allocate, 2048 * MIB, what="decoding frame 1 of instance 1.2.3")
        error = caught.value
        assert error.code is Code.RESOURCE_EXHAUSTED and error.reason == "LIMIT_EXCEEDED"
        assert error.metadata == {"limit": "codec_memory_bytes", "value": str(768 * MIB)}
        assert error.message.startswith("decoding frame 1 of instance 1.2.3 needed more memory")
        assert await pool.run(_allocate, 16 * MIB) == 16 * MIB

    try:
        asyncio.run(run())
    finally:
        pool.shutdown()


@pytest.mark.slow
def test_separate_pools_run_side_by_side() -> None:
    """A job filling one pool does not delay a job of the other (stores vs codecs)."""
    parse = WorkerPool(1, name="parse", modules=())
    codec = WorkerPool(1, name="codec", modules=(), lazy=True)

    async def run() -> None:
        slow = asyncio.ensure_future(codec.run(_sleep, 5))
        await asyncio.sleep(0.2)
        assert await parse.run(_square, 6) == 36
        assert not slow.done()
        assert await slow == "slept"

    try:
        asyncio.run(run())
    finally:
        parse.shutdown()
        codec.shutdown()


def test_a_pool_stopped_while_its_workers_start_kills_them_and_starts_no_other(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A short-lived server does not wait for its workers' imports to stop them."""
    pool = WorkerPool(2, name="starting", modules=("dicomrpc_server.retrieve.transcode",))
    pids = pool.pids()
    assert len(pids) == 2
    pool.shutdown()
    assert pool.pids() == pids  # none replaced
    # Killed while importing, not stopped after its imports and a stop message (exit code 0).
    exits = [worker.process.exitcode for worker in pool._workers if worker.process]
    assert exits == [-signal.SIGKILL, -signal.SIGKILL]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # ended and reaped
    assert "did not start" not in caplog.text


def test_jobs_queued_before_a_stop_still_run() -> None:
    pool = WorkerPool(1, name="queued")

    async def queue_then_stop() -> list[int]:
        jobs = [asyncio.ensure_future(pool.run(_square, n)) for n in range(5)]
        await asyncio.sleep(0)  # the jobs are queued
        await asyncio.get_running_loop().run_in_executor(None, pool.shutdown)
        return list(await asyncio.gather(*jobs))

    assert asyncio.run(queue_then_stop()) == [0, 1, 4, 9, 16]
