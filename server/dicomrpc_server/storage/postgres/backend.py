"""The connection layer of the PostgreSQL index: a pool on an event loop of its own.

The roles' read methods (``get``, ``search``, ``events_after`` ...) are synchronous, as the
LMDB implementations' are: the services call them from the archive's event loop, from worker
threads, and from commit listeners. asyncpg is asynchronous and its connections belong to one
event loop. So the backend owns a thread running a loop of its own, and the pool lives there:

- a synchronous method submits its coroutine to that loop and blocks until it is done
  (:meth:`PostgresBackend.run`), from any thread but the backend's own;
- an asynchronous method (``mutate``) awaits it from the caller's loop
  (:meth:`PostgresBackend.arun`), which keeps serving while PostgreSQL answers.

Every write runs in :meth:`PostgresBackend.transact`: one transaction on one pooled
connection, run again from the start when PostgreSQL aborts it for a serialization failure or
a deadlock (SQLSTATE 40001, 40P01: another transaction won, and the same work may now
succeed), at most ``retries`` times; then, and whenever PostgreSQL cannot be reached, the
caller gets a ``ServiceError`` UNAVAILABLE (``SERVER_UNAVAILABLE``), which the adapters map to
gRPC UNAVAILABLE, HTTP 503 and the DIMSE refusals: retrying later may succeed.

At start the backend applies the schema steps the database lacks (:mod:`.migrations`) and
starts the commit wake-ups between nodes (:mod:`.notify`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import asyncpg

from dicomrpc_server.errors import Code, ServiceError, StartupError
from dicomrpc_server.storage.postgres.migrations import MIGRATIONS, Migration, migrate
from dicomrpc_server.storage.postgres.notify import CommitSignals

log = logging.getLogger(__name__)

T = TypeVar("T")
# The SQLSTATEs after which the same transaction, run again, may succeed.
RETRY_SQLSTATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected
# Failures that say PostgreSQL cannot be reached or cannot serve now (not that a statement is
# wrong): connection errors (class 08), too many connections and other resource limits (53),
# an administrator's shutdown or a server starting (57P01 ...), a connection already closed.
UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, timed out (TimeoutError is one)
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
)


def unavailable(message: str) -> ServiceError:
    """The error of a request the PostgreSQL index cannot serve now (retrying may succeed)."""
    return ServiceError(Code.UNAVAILABLE, "SERVER_UNAVAILABLE", message)


async def _keep_session(connection: asyncpg.Connection) -> None:
    """What a connection given back to the pool needs besides the rollback asyncpg always does.

    Nothing: asyncpg's default reset (``pg_advisory_unlock_all()``, ``CLOSE ALL``, ``UNLISTEN
    *``, ``RESET ALL``) costs a round trip per use of the pool, several per stored instance, to
    undo session state that pooled connections never take: session locks, LISTEN and settings
    live on connections of their own (:mod:`.locks`, :mod:`.notify`, the migrations).
    """


class PostgresBackend:
    """A pool of connections to one PostgreSQL database, on an event loop of its own.

    Parameters
    ----------
    dsn
        The database, as a libpq connection URI or keyword string.
    pool_size
        The most connections the pool opens (the LISTEN and NOTIFY connections come on top).
    retries
        How many times a transaction aborted by a serialization failure or deadlock is run
        again before the caller gets UNAVAILABLE.
    acquire_timeout_s
        How long a request waits for a free pooled connection before UNAVAILABLE.
    poll_s
        The commit safety poll's period (see :mod:`.notify`).
    migrations
        The schema steps to apply at start (the archive's; tests pass their own).

    Raises :class:`StartupError` ``INDEX_UNAVAILABLE`` when the database cannot be reached.
    """

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 10,
        retries: int = 8,
        acquire_timeout_s: float = 30.0,
        poll_s: float = 1.0,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, not {pool_size}")
        self.dsn = dsn
        self.pool_size = pool_size
        self.retries = retries
        self.acquire_timeout_s = acquire_timeout_s
        self._poll_s = poll_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="postgres", daemon=True)
        self._thread.start()
        self._pool: asyncpg.Pool | None = None
        self._signals: CommitSignals | None = None
        self.applied: list[int] = []
        try:
            self.applied = self.run(self._start(migrations))
        except BaseException:
            self._stop_loop()
            raise

    async def _start(self, migrations: Sequence[Migration]) -> list[int]:
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.pool_size,
                timeout=self.acquire_timeout_s,
                reset=_keep_session,
            )
            try:
                # On a connection of its own: the migrations hold a session lock, and the pool
                # does not reset a session's state (see _keep_session).
                connection = await self._connect()
                try:
                    applied = await migrate(connection, migrations)
                finally:
                    await connection.close(timeout=5)
                self._signals = CommitSignals(self._connect, self._pool, poll_s=self._poll_s)
                await self._signals.start()
            except BaseException:
                if self._signals is not None:
                    self._signals.stop_listeners()
                    await self._signals.close()
                self._pool.terminate()
                raise
        except UNREACHABLE as exc:
            raise StartupError(
                "INDEX_UNAVAILABLE", f"the PostgreSQL index cannot be reached: {exc}"
            ) from exc
        return applied

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn, timeout=self.acquire_timeout_s)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the pool lives on: coroutines using the pool must run there."""
        return self._loop

    @property
    def pool(self) -> asyncpg.Pool:
        """The pool (use it only from coroutines running on :attr:`loop`)."""
        assert self._pool is not None, "the backend is closed"
        return self._pool

    # -- calling into the loop ---------------------------------------------------------------

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the backend's loop and wait for its result (blocking).

        Call it from any thread but the backend's own, where it would wait for itself.
        """
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("a blocking PostgreSQL call on the backend's own loop")
        return self._submit(coroutine).result()

    async def arun(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the backend's loop, awaited from another loop."""
        return await asyncio.wrap_future(self._submit(coroutine))

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coroutine`` on the backend's loop; its future, for whoever wants to wait.

        For writes nobody needs to wait for (a removal record cleared), from any thread.
        """
        return self._submit(coroutine)

    def _submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        try:
            return asyncio.run_coroutine_threadsafe(self._guard(coroutine), self._loop)
        except RuntimeError:  # the loop is closed
            coroutine.close()
            raise unavailable("the PostgreSQL index is closed") from None

    async def _guard(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Report PostgreSQL being out of reach as UNAVAILABLE, whatever the role."""
        try:
            return await coroutine
        except UNREACHABLE as exc:
            raise unavailable(f"the PostgreSQL index cannot be reached: {exc}") from exc

    # -- on the loop -------------------------------------------------------------------------

    async def transact(
        self,
        work: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        isolation: str = "read_committed",
        readonly: bool = False,
    ) -> T:
        """Run ``work(connection)`` in one transaction, again on a serialization failure.

        ``work`` may run several times: it must do nothing outside the transaction that a
        second run would repeat wrongly (its decisions are recomputed from what it reads).
        After ``retries`` failed runs the caller gets UNAVAILABLE. ``isolation`` is asyncpg's
        name of the level (``read_committed``, ``repeatable_read``, ``serializable``).
        """
        attempt = 0
        while True:
            try:
                async with (
                    self.pool.acquire(timeout=self.acquire_timeout_s) as connection,
                    connection.transaction(isolation=isolation, readonly=readonly),
                ):
                    return await work(connection)
            except asyncpg.PostgresError as exc:
                if exc.sqlstate not in RETRY_SQLSTATES:
                    raise
                if attempt >= self.retries:
                    raise unavailable(
                        f"a PostgreSQL transaction kept conflicting with others "
                        f"({attempt + 1} attempts, last: {exc.sqlstate} {exc})"
                    ) from exc
                log.debug("transaction run again after %s: %s", exc.sqlstate, exc)
            attempt += 1
            # A random pause, growing with the attempts, keeps the same rivals from meeting
            # again in lock step.
            await asyncio.sleep(random.uniform(0, min(0.2, 0.002 * 2**attempt)))

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        """The rows of one statement, outside any explicit transaction."""
        async with self.pool.acquire(timeout=self.acquire_timeout_s) as connection:
            rows: list[asyncpg.Record] = await connection.fetch(query, *args)
            return rows

    async def fetchval(self, query: str, *args: object) -> Any:
        """The first column of the first row of one statement (``None`` without rows)."""
        async with self.pool.acquire(timeout=self.acquire_timeout_s) as connection:
            return await connection.fetchval(query, *args)

    # -- commits -----------------------------------------------------------------------------

    def committed(self) -> None:
        """Tell every node's commit listeners of a commit (on the loop, right after it)."""
        assert self._signals is not None
        self._signals.committed()

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every commit, this node's or another's.

        It runs on the backend's listener thread (never its loop) and may read through the
        backend; one call may stand for several commits.
        """
        assert self._signals is not None
        self._signals.add_listener(listener)

    def add_probe(self, query: str) -> None:
        """Have the commit safety poll watch the value ``query`` reads (see :mod:`.notify`)."""
        assert self._signals is not None
        self._signals.add_probe(query)

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the wake-ups, close the pool and the loop (idempotent)."""
        if self._loop.is_closed():
            return
        try:
            if self._signals is not None:
                self._signals.stop_listeners()
            self.run(self._close())
        finally:
            self._stop_loop()

    async def _close(self) -> None:
        if self._signals is not None:
            await self._signals.close()
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), 10)
            except TimeoutError:
                self._pool.terminate()
            self._pool = None

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()
