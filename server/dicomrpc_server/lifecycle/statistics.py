"""What the archive holds and how fast it grows: the numbers of the console's dashboard.

Counts come from the index's own counters (cheap, exact). The bytes stored are the sum of the
stored files' sizes, which no counter keeps: the index is walked for them, off the event loop,
at most once per :data:`BYTES_TTL_S`, and the dashboard shows when they were counted. The
ingest rate is read from the tail of the change log (instances created in the last minute),
so it is the same in every process of a group and needs no state of its own.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

from dicomrpc_server import __version__
from dicomrpc_server.storage.protocols import ChangeAction, ChangeLog, IndexCounts

BYTES_TTL_S = 60.0
RATE_WINDOW_S = 60
# Changes read back from the newest to count the last minute's stores: a busier minute is
# reported as at least this many.
RATE_TAIL = 1000


class CountedIndex(ChangeLog, Protocol):
    """What the statistics read: the counters, the stored sizes and the change log."""

    def counts(self) -> IndexCounts:
        """The number of studies, series and instances."""
        ...

    def stored_bytes(self) -> int:
        """The sum of the sizes of every stored instance's file (a walk of the index)."""
        ...


@dataclass(frozen=True)
class Statistics:
    """One reading of the dashboard's numbers."""

    version: str
    uptime_s: float
    studies: int
    series: int
    instances: int
    bytes_stored: int
    bytes_counted_at_us: int
    stored_last_minute: int
    latest_change: int


class StatisticsCore:
    """Reads the archive's statistics; the walk for the bytes stored is shared and cached."""

    def __init__(self, index: CountedIndex) -> None:
        self.index = index
        self.started = time.monotonic()
        self._bytes: tuple[float, int, int] | None = None  # (monotonic, wall µs, bytes)
        self._counting: asyncio.Task[int] | None = None

    async def read(self) -> Statistics:
        """The statistics now (the bytes stored as counted at most a minute ago)."""
        bytes_stored, counted_at_us = await self._stored_bytes()
        counts = self.index.counts()
        latest = self.index.latest_change()
        return Statistics(
            version=__version__,
            uptime_s=time.monotonic() - self.started,
            studies=counts.studies,
            series=counts.series,
            instances=counts.instances,
            bytes_stored=bytes_stored,
            bytes_counted_at_us=counted_at_us,
            stored_last_minute=self._stored_last_minute(latest.sequence if latest else 0),
            latest_change=latest.sequence if latest else 0,
        )

    async def _stored_bytes(self) -> tuple[int, int]:
        cached = self._bytes
        if cached is not None and time.monotonic() - cached[0] < BYTES_TTL_S:
            return cached[2], cached[1]
        # One walk at a time, whoever asks while it runs waits for the same one.
        if self._counting is None or self._counting.done():
            self._counting = asyncio.get_running_loop().create_task(
                asyncio.to_thread(self.index.stored_bytes)
            )
        total = await asyncio.shield(self._counting)
        self._bytes = (time.monotonic(), time.time_ns() // 1000, total)
        return total, self._bytes[1]

    def _stored_last_minute(self, latest: int) -> int:
        since_us = (time.time_ns() // 1000) - RATE_WINDOW_S * 1_000_000
        tail = self.index.changes(max(0, latest - RATE_TAIL), RATE_TAIL)
        return sum(1 for c in tail if c.action is ChangeAction.CREATED and c.time_us >= since_us)
