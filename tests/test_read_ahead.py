"""Bounded read-ahead of retrieve streams: order, bound, errors and early stops."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dicomrpc_server.errors import ServiceError, invalid_argument
from dicomrpc_server.retrieve.service import read_ahead
from dicomrpc_server.storage import file_reader as service


class Source:
    """Numbered items; records how far it was read and whether it was closed."""

    def __init__(self, count: int, fail_at: int | None = None) -> None:
        self.count = count
        self.fail_at = fail_at
        self.produced = 0
        self.closed = False

    async def items(self) -> AsyncIterator[int]:
        try:
            for i in range(self.count):
                if i == self.fail_at:
                    raise invalid_argument("item", f"{i} is broken")
                self.produced += 1
                yield i
        finally:
            self.closed = True


def test_items_arrive_in_order_and_reading_stays_a_few_ahead() -> None:
    source = Source(100)

    async def consume() -> list[int]:
        seen = []
        async for item in read_ahead(source.items(), depth=4):
            await asyncio.sleep(0)  # a slow transport: the reader may run ahead now
            await asyncio.sleep(0)
            assert source.produced - len(seen) <= 4 + 2  # queued, and one in each hand
            seen.append(item)
        return seen

    assert asyncio.run(consume()) == list(range(100))
    assert source.closed


def test_an_error_arrives_after_the_items_before_it() -> None:
    source = Source(10, fail_at=6)

    seen: list[int] = []

    async def consume() -> None:
        async for item in read_ahead(source.items()):
            seen.append(item)  # noqa: PERF401 (the items before the error are asserted)

    with pytest.raises(ServiceError, match="6 is broken"):
        asyncio.run(consume())
    assert seen == list(range(6)) and source.produced == 6


def test_a_consumer_that_stops_closes_the_source() -> None:
    source = Source(1000)

    async def consume() -> None:
        stream = read_ahead(source.items(), depth=2)
        async for item in stream:
            if item == 3:
                break
        await stream.aclose()  # type: ignore[attr-defined]
        await asyncio.sleep(0)

    asyncio.run(consume())
    assert source.closed and source.produced < 10


@pytest.mark.parametrize("nowait", [True, False])
def test_read_at_reads_cached_and_uncached_bytes_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nowait: bool
) -> None:
    """Reads served from the page cache at once and reads sent to a thread give equal bytes."""
    if not nowait:
        monkeypatch.setattr(service._nowait, "flag", 0)
    data = os.urandom(3 * 1024 * 1024 + 5)
    path = tmp_path / "blob"
    path.write_bytes(data)
    with open(path, "rb") as fp:
        os.fsync(fp.fileno())
        if hasattr(os, "posix_fadvise"):  # out of the page cache: a non-waiting read fails
            os.posix_fadvise(fp.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        buffer = bytearray(1024 * 1024)

        async def read_all(offset: int, end: int) -> bytes:
            parts = []
            while offset < end:
                part = await service.read_at(
                    fp.fileno(), buffer, min(len(buffer), end - offset), offset
                )
                if not part:
                    break
                parts.append(part)
                offset += len(part)
            return b"".join(parts)

        assert asyncio.run(read_all(0, len(data))) == data
        assert asyncio.run(read_all(1000, 2_500_000)) == data[1000:2_500_000]
        assert asyncio.run(read_all(len(data) - 3, len(data) + 100)) == data[-3:]


def test_read_at_falls_back_to_threads_where_nowait_reads_are_unsupported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel or file system that refuses RWF_NOWAIT turns it off; reads go on in threads."""
    monkeypatch.setattr(service._nowait, "flag", getattr(os, "RWF_NOWAIT", 8))
    refused: list[int] = []

    def preadv(fd: int, buffers: list[memoryview], offset: int, flags: int = 0) -> int:
        refused.append(flags)
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(service.os, "preadv", preadv)
    path = tmp_path / "blob"
    path.write_bytes(b"0123456789" * 1000)
    with open(path, "rb") as fp:
        buffer = bytearray(4096)
        first = asyncio.run(service.read_at(fp.fileno(), buffer, 4096, 0))
        second = asyncio.run(service.read_at(fp.fileno(), buffer, 4096, 4096))
    assert first + second == (b"0123456789" * 1000)[:8192]
    assert len(refused) == 1 and service._nowait.flag == 0
