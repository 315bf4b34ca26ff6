"""Bounded read-ahead of retrieve streams: order, bound, errors and early stops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from dicomrpc_server.errors import ServiceError, invalid_argument
from dicomrpc_server.retrieve.service import read_ahead


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
