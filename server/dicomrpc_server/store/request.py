"""One store request driven instance by instance: what both adapters (gRPC, STOW-RS) run.

An adapter only translates its transport into :meth:`StoreRequest.begin` (a new instance),
:meth:`StoreRequest.write` (its next bytes) and :meth:`StoreRequest.finish` (the request
ended), inside ``async with StoreRequest(...)``; the pipelining, the order of results, the
overall status and the cleanup of a request that ends any other way live here, once.
"""

from __future__ import annotations

import asyncio
import enum
from types import TracebackType

from dicomrpc_server.dicom.uids import UidCheck, check_uid
from dicomrpc_server.errors import Code, ServiceError, invalid_argument
from dicomrpc_server.storage.space import STORAGE_FULL
from dicomrpc_server.store.ingest import (
    Ingest,
    InstanceResult,
    Outcome,
    Reception,
    StoreCore,
    StoreStream,
)

# Instances of one request being checked and committed while the next one streams in.
PIPELINE_DEPTH = 4


class StoreStatus(enum.Enum):
    """The outcome of a whole request."""

    ALL_STORED = "all_stored"
    PARTIALLY_STORED = "partially_stored"
    NONE_STORED = "none_stored"


def overall_status(results: list[InstanceResult]) -> StoreStatus:
    """All stored, some, or none (including a request without instances)."""
    stored = sum(r.outcome is not Outcome.FAILED for r in results)
    if results and stored == len(results):
        return StoreStatus.ALL_STORED
    return StoreStatus.PARTIALLY_STORED if stored else StoreStatus.NONE_STORED


def storage_full_refusal(results: list[InstanceResult]) -> ServiceError | None:
    """The lack of space that refused a request none of whose instances was stored, if any.

    Such a request is answered as refused by the archive as a whole (STOW-RS: 507), so that a
    client retries once space is freed rather than reading a fault in its data.
    """
    if overall_status(results) is not StoreStatus.NONE_STORED:
        return None
    for result in results:
        if result.failure is not None and result.failure.reason == STORAGE_FULL:
            return result.failure
    return None


def check_study_restriction(study_uid: str, field_name: str) -> None:
    """Refuse a study restriction that is not a safe UID (a questionable one is accepted)."""
    if study_uid:
        verdict, why = check_uid(study_uid)
        if verdict is UidCheck.INVALID:
            raise invalid_argument(field_name, f"{study_uid!r} {why}")


class StoreRequest:
    """The instances of one request, pipelined: one receives while earlier ones are stored.

    Use it as ``async with``: leaving the block by any way but a :meth:`finish` that returned
    (an error, a cancellation, a deadline, a client gone) runs :meth:`close`, which removes
    every upload the request still holds.

    Parameters
    ----------
    core
        The store core.
    study_restriction
        The study every instance must belong to (43265 otherwise), or empty.
    """

    def __init__(self, core: StoreCore, study_restriction: str = "") -> None:
        self._core = core
        self._stream = StoreStream(study_restriction)
        self._ingests: list[Ingest] = []
        self._tasks: list[asyncio.Task[InstanceResult]] = []
        # The tasks not yet done: what the pipeline bound counts, without walking every task
        # of the request (a request may carry tens of thousands of instances).
        self._running: set[asyncio.Task[InstanceResult]] = set()
        self._current: Ingest | None = None

    async def __aenter__(self) -> StoreRequest:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def begin(self, client_reference: str = "", declared_size: int = 0) -> None:
        """Start the next instance (the previous one, if any, is complete)."""
        self._close_current()
        await self._bound()
        self._current = self._core.begin(self._stream, client_reference, declared_size)
        self._ingests.append(self._current)

    async def add(self, reception: Reception, client_reference: str = "") -> None:
        """Add an instance whose bytes were received already, off the event loop.

        The request owns ``reception`` from now on, and removes its file however it ends.
        """
        self._close_current()
        try:
            await self._bound()
        except BaseException:
            reception.discard()
            raise
        self._current = self._core.begin(self._stream, client_reference, reception=reception)
        self._ingests.append(self._current)
        self._close_current()

    def write(self, data: bytes | memoryview) -> None:
        """Append bytes to the current instance."""
        if self._current is None:
            raise ServiceError(
                Code.INVALID_ARGUMENT,
                "STREAM_PROTOCOL_VIOLATION",
                "data was sent before any instance header",
            )
        self._current.write(data)

    def drop_current(self) -> None:
        """Forget the instance being received: it is incomplete, and nothing of it is kept."""
        if self._current is not None:
            self._current.abandon()
            self._current = None

    async def finish(self) -> list[InstanceResult]:
        """The request ended: store the last instance, return every result in order."""
        self._close_current()
        return list(await asyncio.gather(*self._tasks))

    async def close(self) -> None:
        """End the request however it went: remove every upload no commit owns.

        After a :meth:`finish` that returned there is nothing left to do. Otherwise the
        instance being received is dropped and those queued behind it are stopped. The files
        are removed before the first await: an instance whose task was cancelled before it
        ever ran never runs its own cleanup (a client that cancels makes the request end, then
        its task be cancelled, just as the last instance was queued), and this coroutine may
        itself be cancelled again while it waits. An instance already being committed
        finishes (its commit is shielded), so the files and the index never disagree.
        """
        self.drop_current()
        for task in self._tasks:
            task.cancel()
        for ingest in self._ingests:
            ingest.abandon()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _close_current(self) -> None:
        if self._current is not None:
            task = asyncio.create_task(self._current.finish())
            self._tasks.append(task)
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            self._current = None

    async def _bound(self) -> None:
        """Wait until fewer than PIPELINE_DEPTH instances of this request are in progress."""
        while len(self._running) >= PIPELINE_DEPTH:
            await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED)
