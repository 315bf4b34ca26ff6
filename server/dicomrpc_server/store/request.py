"""One store request driven instance by instance: what both adapters (gRPC, STOW-RS) run.

An adapter only translates its transport into :meth:`StoreRequest.begin` (a new instance),
:meth:`StoreRequest.write` (its next bytes) and :meth:`StoreRequest.finish` (the request
ended); the pipelining, the order of results and the overall status live here, once.
"""

from __future__ import annotations

import asyncio
import enum

from dicomrpc_server.dicom.uids import UidCheck, check_uid
from dicomrpc_server.errors import Code, ServiceError, invalid_argument
from dicomrpc_server.store.ingest import Ingest, InstanceResult, Outcome, StoreCore, StoreStream

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


def check_study_restriction(study_uid: str, field_name: str) -> None:
    """Refuse a study restriction that is not a safe UID (a questionable one is accepted)."""
    if study_uid:
        verdict, why = check_uid(study_uid)
        if verdict is UidCheck.INVALID:
            raise invalid_argument(field_name, f"{study_uid!r} {why}")


class StoreRequest:
    """The instances of one request, pipelined: one receives while earlier ones are stored.

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
        self._tasks: list[asyncio.Task[InstanceResult]] = []
        # The tasks not yet done: what the pipeline bound counts, without walking every task
        # of the request (a request may carry tens of thousands of instances).
        self._running: set[asyncio.Task[InstanceResult]] = set()
        self._current: Ingest | None = None

    async def begin(self, client_reference: str = "", declared_size: int = 0) -> None:
        """Start the next instance (the previous one, if any, is complete)."""
        self._close_current()
        await self._bound()
        self._current = self._core.begin(self._stream, client_reference, declared_size)

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

    async def cancel(self) -> None:
        """The request failed or was cancelled: drop the partial instance, stop the others.

        An instance already being committed finishes (its commit is shielded), so the files
        and the index never disagree.
        """
        self.drop_current()
        for task in self._tasks:
            task.cancel()
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
