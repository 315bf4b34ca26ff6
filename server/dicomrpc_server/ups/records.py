"""The workitem role: what the workitem core needs of the storage that keeps workitems.

The core (:mod:`.service`) decides; a :class:`WorkitemRecords` keeps the data sets, their index
terms and the event log, and applies one decision atomically (:meth:`WorkitemRecords.mutate`):
read the workitem, decide, write the new data set with its terms and its event, commit, all
with no other change of that workitem in between. That is what makes a claim race have exactly
one winner, whatever the storage: LMDB (:mod:`.store`) serializes write transactions;
PostgreSQL (:mod:`.postgres_store`) locks the workitem's row, across the nodes sharing it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from dicomrpc.v1 import dataset_pb2
from dicomrpc.v1 import workitem_service_pb2 as pb
from dicomrpc_server.query.engine import MatchTerm
from dicomrpc_server.storage.records_pb2 import (
    WorkitemEventKind,
    WorkitemEventRecord,
    WorkitemStepState,
)

T = TypeVar("T")
# An event, with the index terms its workitem had after the change (what a subscription's
# filter is matched against).
Event = tuple[pb.SubscribeWorkitemsResponse, list[tuple[int, bytes]]]


# The stored event kinds and states and the API's, one to one. Spelled out, so that the numbers
# stored in the event log and those the API sends can each change without the other.
_KINDS = {
    pb.WORKITEM_EVENT_TYPE_STATE_REPORT: WorkitemEventKind.WORKITEM_EVENT_KIND_STATE_REPORT,
    pb.WORKITEM_EVENT_TYPE_CANCEL_REQUESTED: (
        WorkitemEventKind.WORKITEM_EVENT_KIND_CANCEL_REQUESTED
    ),
    pb.WORKITEM_EVENT_TYPE_ASSIGNED: WorkitemEventKind.WORKITEM_EVENT_KIND_ASSIGNED,
    pb.WORKITEM_EVENT_TYPE_UPDATED: WorkitemEventKind.WORKITEM_EVENT_KIND_UPDATED,
}
_STATES = {
    pb.WORKITEM_STATE_SCHEDULED: WorkitemStepState.WORKITEM_STEP_STATE_SCHEDULED,
    pb.WORKITEM_STATE_IN_PROGRESS: WorkitemStepState.WORKITEM_STEP_STATE_IN_PROGRESS,
    pb.WORKITEM_STATE_COMPLETED: WorkitemStepState.WORKITEM_STEP_STATE_COMPLETED,
    pb.WORKITEM_STATE_CANCELED: WorkitemStepState.WORKITEM_STEP_STATE_CANCELED,
}
_API_KINDS = {stored: api for api, stored in _KINDS.items()}
_API_STATES = {stored: api for api, stored in _STATES.items()}


def event_record(event: pb.SubscribeWorkitemsResponse) -> WorkitemEventRecord:
    """The record the event log keeps of ``event``."""
    record = WorkitemEventRecord(
        sequence=event.sequence,
        kind=_KINDS.get(event.type, WorkitemEventKind.WORKITEM_EVENT_KIND_UNSPECIFIED),
        workitem_uid=event.workitem_uid,
        state=_STATES.get(event.state, WorkitemStepState.WORKITEM_STEP_STATE_UNSPECIFIED),
    )
    record.attributes.CopyFrom(event.event)
    if event.HasField("time"):
        record.time.CopyFrom(event.time)
    return record


def event_message(record: WorkitemEventRecord) -> pb.SubscribeWorkitemsResponse:
    """The API's event for a record of the event log."""
    event = pb.SubscribeWorkitemsResponse(
        sequence=record.sequence,
        type=_API_KINDS.get(record.kind, pb.WORKITEM_EVENT_TYPE_UNSPECIFIED),
        workitem_uid=record.workitem_uid,
        state=_API_STATES.get(record.state, pb.WORKITEM_STATE_UNSPECIFIED),
    )
    event.event.CopyFrom(record.attributes)
    if record.HasField("time"):
        event.time.CopyFrom(record.time)
    return event


@dataclass(frozen=True)
class Mutation(Generic[T]):
    """What a decision about one workitem changes.

    Attributes
    ----------
    result
        What :meth:`WorkitemRecords.mutate` returns to the caller.
    workitem
        The new data set, or ``None`` to write nothing (the workitem is as asked already).
    events
        The events the change makes, in order (each given its sequence when it is written).
    """

    result: T
    workitem: dataset_pb2.Dataset | None = None
    events: tuple[pb.SubscribeWorkitemsResponse, ...] = ()


class WorkitemRecords(Protocol):
    """Workitems, their search entries and their event log."""

    def get(self, uid: str) -> dataset_pb2.Dataset | None:
        """A workitem as stored (with its lock), or ``None``."""

    def search(
        self, terms: list[MatchTerm], fuzzy: bool, offset: int, limit: int
    ) -> list[dataset_pb2.Dataset]:
        """The workitems matching every term (all without terms), in UID order, one page."""

    def last_sequence(self) -> int:
        """The sequence of the newest committed event (0 when there is none)."""

    def events_after(self, after: int, limit: int) -> list[Event]:
        """Up to ``limit`` events with a sequence above ``after``, in order."""

    async def mutate(
        self, uid: str, decide: Callable[[dataset_pb2.Dataset | None], Mutation[T]]
    ) -> T:
        """Apply ``decide`` to one workitem atomically (see :class:`Mutation`)."""

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every commit, this process's or another's."""
