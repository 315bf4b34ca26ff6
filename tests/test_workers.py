"""A worker that dies fails only its own request; the pool is replaced and serves the next."""

from __future__ import annotations

import asyncio
import os

import pytest

from dicomrpc_server.errors import Code, ServiceError
from dicomrpc_server.workers import WorkerPool


def _square(x: int) -> int:
    return x * x


def _die() -> None:
    os._exit(3)  # what a codec crashing on bad data does to its process


def test_a_dead_worker_is_replaced() -> None:
    pool = WorkerPool(1)

    async def run() -> None:
        assert await pool.run(_square, 7) == 49
        with pytest.raises(ServiceError) as caught:
            await pool.run(_die)
        assert caught.value.code is Code.INTERNAL
        assert caught.value.dicom_status == 272
        assert await pool.run(_square, 8) == 64

    try:
        asyncio.run(run())
    finally:
        pool.shutdown()
