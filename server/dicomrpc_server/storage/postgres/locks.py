"""Named locks shared by every node of a PostgreSQL-indexed archive: session advisory locks.

The background re-indexing of extended query tags is walked by one holder of a lock named by
its operation (:mod:`dicomrpc_server.query.reindexing`). On the embedded index the holders are
the processes of one data folder, and :class:`~dicomrpc_server.storage.key_locks.KeyLocks`
(``fcntl`` record locks) exclude them. Nodes sharing a PostgreSQL index have no file in
common, so the lock must live in PostgreSQL: ``pg_try_advisory_lock`` on a connection of its
own. A session lock lasts as long as its connection, which PostgreSQL closes when the node's
process ends, however it ends: a walk whose node died is taken over by another node's next
look for unfinished work, as a walk whose process died is on one machine.

The connection is not a pooled one: asyncpg resets a connection it takes back into the pool
(``pg_advisory_unlock_all()``), which would drop the locks between two calls.
"""

from __future__ import annotations

import hashlib
import logging
import threading

import asyncpg

from dicomrpc_server.storage.postgres.backend import PostgresBackend

log = logging.getLogger(__name__)

# A second key space beside the migrations' lock: the names' keys are hashed into the signed
# 64-bit keys pg_advisory_lock takes, prefixed so that no name meets the migrations' key.
_PREFIX = b"dicomrpc lock "


def lock_key(name: str) -> int:
    """The advisory lock key of ``name``: a 64-bit hash (two names meeting is far-fetched)."""
    digest = hashlib.blake2b(_PREFIX + name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class AdvisoryLocks:
    """Exclusive, non-blocking locks on names, across the nodes of one PostgreSQL database.

    The same interface as :class:`~dicomrpc_server.storage.key_locks.KeyLocks` (within one
    process a name can be taken again, each take needing its release), so the re-indexer uses
    either. Its calls are blocking, from any thread but the backend's own.
    """

    def __init__(self, backend: PostgresBackend) -> None:
        self.backend = backend
        self._connection: asyncpg.Connection | None = None
        self._held: dict[str, int] = {}
        self._mutex = threading.Lock()
        self._closed = False

    async def _session(self) -> asyncpg.Connection:
        """The connection holding the locks; a new one when it was lost.

        A lost connection took its locks with it: the names this process believed it held are
        forgotten, and their walks may be taken over (a walk run twice at once only repeats
        work: each batch is one transaction recomputed from what it reads).
        """
        if self._connection is not None and not self._connection.is_closed():
            return self._connection
        if self._connection is not None and self._held:
            log.warning(
                "the PostgreSQL lock connection was lost, and with it %d locks", len(self._held)
            )
            self._held.clear()
        self._connection = await asyncpg.connect(
            self.backend.dsn, timeout=self.backend.acquire_timeout_s
        )
        return self._connection

    def acquire(self, name: str) -> bool:
        """Lock ``name`` unless another node (or process) holds it; whether this one holds it."""
        with self._mutex:
            if self._closed:
                raise RuntimeError("the locks are closed")
            if name in self._held:
                self._held[name] += 1
                return True

            async def take() -> bool:
                connection = await self._session()
                return bool(
                    await connection.fetchval("SELECT pg_try_advisory_lock($1)", lock_key(name))
                )

            if not self.backend.run(take()):
                return False
            self._held[name] = 1
            return True

    def release(self, name: str) -> None:
        """Give back one take of ``name`` (the lock goes with the last)."""
        with self._mutex:
            count = self._held.get(name, 0)
            if count > 1:
                self._held[name] = count - 1
                return
            if count != 1:
                return
            del self._held[name]

            async def give_back() -> None:
                connection = self._connection
                if connection is not None and not connection.is_closed():
                    await connection.execute("SELECT pg_advisory_unlock($1)", lock_key(name))

            try:
                self.backend.run(give_back())
            except Exception:  # the connection is gone, and its locks with it
                log.warning("could not release PostgreSQL lock %r", name, exc_info=True)

    def held(self, name: str) -> bool:
        """Whether this process holds ``name``."""
        with self._mutex:
            return name in self._held

    def close(self) -> None:
        """Close the connection, which drops every lock it holds (idempotent).

        Call it before the backend is closed.
        """
        with self._mutex:
            self._closed = True
            self._held.clear()
            connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():

            async def disconnect() -> None:
                await connection.close(timeout=5)

            try:
                self.backend.run(disconnect())
            except Exception:
                log.warning("closing the PostgreSQL lock connection failed", exc_info=True)
