"""The change feed: an ordered, persistent log of created and deleted instances.

Entries are written in the same transaction as the change they record, so the feed and the
archive never disagree. Followers read the log itself from LMDB, from where they are, woken by
every commit, this process's or another's (see :mod:`~dicomrpc_server.storage.wakeups`): a slow
follower costs no server memory (there is no queue to overflow), and one that reconnects with
``since`` resumes exactly where it stopped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from dicomrpc_server.errors import invalid_argument
from dicomrpc_server.storage.protocols import Change, ChangeLog

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
# Followers re-read the log this often even without a wake-up (a safety net, not the path).
POLL_S = 5.0


class ChangeFeed:
    """Reads and follows the change log."""

    def __init__(self, index: ChangeLog) -> None:
        self.index = index
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()
        index.on_commit(self._committed)

    def _committed(self) -> None:
        """Wake every follower (after each commit, on the writer or the wake-up thread)."""
        for loop, future in list(self._waiters):
            loop.call_soon_threadsafe(_resolve, future)

    def read(self, offset: int, limit: int) -> list[Change]:
        """Entries with a sequence above ``offset``, at most ``limit`` (0 means 100)."""
        if offset < 0:
            raise invalid_argument("offset", f"{offset} is negative")
        if limit < 0 or limit > MAX_LIMIT:
            raise invalid_argument("limit", f"{limit} is outside 0..{MAX_LIMIT}")
        return self.index.changes(offset, limit or DEFAULT_LIMIT)

    def latest(self) -> Change | None:
        """The newest entry, or ``None`` for an empty feed."""
        return self.index.latest_change()

    async def follow(self, since: int) -> AsyncIterator[Change]:
        """Every entry after ``since``, in order, then each new one as it is committed."""
        if since < 0:
            raise invalid_argument("since", f"{since} is negative")
        loop = asyncio.get_running_loop()
        cursor = since
        while True:
            # Register before reading, so a commit between the read and the wait still wakes us.
            waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] = (
                loop,
                loop.create_future(),
            )
            self._waiters.add(waiter)
            try:
                batch = self.index.changes(cursor, DEFAULT_LIMIT)
                if not batch:
                    await asyncio.wait([waiter[1]], timeout=POLL_S)
                    continue
            finally:
                self._waiters.discard(waiter)
            for entry in batch:
                cursor = entry.sequence
                yield entry


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
