"""Commit wake-ups between the nodes sharing one PostgreSQL database.

Followers of the change feed and workitem subscribers wait for commits: after each commit on
any node, every node must call its commit listeners, which re-read what changed from the
database (a wake-up carries nothing, so one wake-up for many commits loses nothing).

- A local commit wakes this node's listeners at once, and marks a NOTIFY as due.
- One sender task per node sends the due NOTIFY on a connection of its own, at most once per
  ``interval_s``: a burst of commits costs one NOTIFY. A NOTIFY inside each write transaction
  would instead take PostgreSQL's notification-queue lock at every commit, which serializes
  the commits of all nodes; here the write transactions never touch it.
- One connection per node LISTENs; a notification from another node wakes the listeners (a
  node's own notifications are recognized by their payload, the node's id, and ignored).
- A safety poll reads the *probes* every ``poll_s`` (a role's cheap "what is the newest"
  query, such as the last event sequence) and wakes the listeners when one changed: a
  notification lost to a dropped connection is late by at most that long, never lost. The
  poll also reconnects a LISTEN connection that closed.

Listeners are called on a thread of their own, never on the backend's event loop: they read
through the backend with blocking calls, which would deadlock on its loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable

import asyncpg

log = logging.getLogger(__name__)

CHANNEL = "dicomrpc_commits"


class CommitSignals:
    """A node's commit listeners, its NOTIFY sender, its LISTEN connection and safety poll.

    Parameters
    ----------
    connect
        Opens a new connection (for LISTEN and for sending NOTIFY, outside the pool: a pooled
        connection is reset when released, which would end a LISTEN).
    pool
        The backend's pool, which the probes run on.
    poll_s
        How often the probes are read.
    interval_s
        The least time between two NOTIFYs this node sends.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        pool: asyncpg.Pool,
        *,
        poll_s: float = 1.0,
        interval_s: float = 0.01,
    ) -> None:
        self.node = uuid.uuid4().hex
        self._connect = connect
        self._pool = pool
        self._poll_s = poll_s
        self._interval_s = interval_s
        self._listeners: list[Callable[[], None]] = []
        self._probes: list[str] = []
        self._due = asyncio.Event()
        self._wake = threading.Event()
        self._closed = False
        self._listen_connection: asyncpg.Connection | None = None
        self._send_connection: asyncpg.Connection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._dispatcher = threading.Thread(
            target=self._dispatch, name="postgres-commits", daemon=True
        )

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every commit, this node's or another's (see module)."""
        self._listeners.append(listener)

    def add_probe(self, query: str) -> None:
        """Read ``query`` (one value) at each safety poll; a change wakes the listeners."""
        self._probes.append(query)

    async def start(self) -> None:
        """LISTEN, and start the sender, the poll and the listeners' thread (on the loop)."""
        await self._listen()
        self._dispatcher.start()
        self._tasks = [
            asyncio.create_task(self._send(), name="postgres-notify"),
            asyncio.create_task(self._poll(), name="postgres-poll"),
        ]

    def committed(self) -> None:
        """After a commit of this node (on the backend's loop): wake here, NOTIFY the others."""
        self._wake.set()
        self._due.set()

    def stop_listeners(self) -> None:
        """Stop calling listeners; wait for a call under way (never from a listener itself)."""
        self._closed = True
        self._wake.set()
        if self._dispatcher.is_alive() and threading.current_thread() is not self._dispatcher:
            self._dispatcher.join(30)

    async def close(self) -> None:
        """Stop the tasks and close the connections (on the loop, after stop_listeners)."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for connection in (self._listen_connection, self._send_connection):
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.close(timeout=5)

    # -- the listeners' thread ---------------------------------------------------------------

    def _dispatch(self) -> None:
        while True:
            self._wake.wait()
            if self._closed:
                return
            # Cleared before the calls: a commit during them wakes the listeners once more.
            self._wake.clear()
            for listener in list(self._listeners):
                try:
                    listener()
                except Exception:  # one failing listener must not starve the others
                    log.exception("a commit listener failed")

    # -- on the loop -------------------------------------------------------------------------

    def _heard(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        if payload != self.node:
            self._wake.set()

    async def _listen(self) -> None:
        connection = await self._connect()
        await connection.add_listener(CHANNEL, self._heard)
        self._listen_connection = connection

    async def _send(self) -> None:
        while True:
            await self._due.wait()
            self._due.clear()
            try:
                if self._send_connection is None or self._send_connection.is_closed():
                    self._send_connection = await self._connect()
                await self._send_connection.execute("SELECT pg_notify($1, $2)", CHANNEL, self.node)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # The other nodes' safety polls will notice the commit; try again next time.
                log.warning("could not notify the other nodes of a commit: %s", exc)
                self._send_connection = None
            await asyncio.sleep(self._interval_s)

    async def _poll(self) -> None:
        seen: list[object] | None = None
        while True:
            try:
                if self._listen_connection is None or self._listen_connection.is_closed():
                    await self._listen()
                    self._wake.set()  # notifications may have been missed meanwhile
                now = await self._read_probes()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("the commit poll could not reach PostgreSQL: %s", exc)
            else:
                if seen is not None and now != seen:
                    self._wake.set()
                seen = now
            await asyncio.sleep(self._poll_s)

    async def _read_probes(self) -> list[object]:
        if not self._probes:
            return []
        async with self._pool.acquire() as connection:
            return [await connection.fetchval(query) for query in self._probes]
