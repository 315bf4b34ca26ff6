"""The workitem role: what the workitem core needs of the storage that keeps workitems.

The core (:mod:`.service`) decides; a :class:`WorkitemRecords` keeps the data sets, their index
terms and the event log, and applies one decision atomically (:meth:`WorkitemRecords.mutate`):
read the workitem, decide, write the new data set with its terms and its event, commit, all
with no other change of that workitem in between. That is what makes a claim race have exactly
one winner, whatever the storage: LMDB (:mod:`.store`) serializes write transactions;
PostgreSQL (:mod:`.postgres_store`) locks the workitem's row, across the nodes sharing it.

The role also keeps the DIMSE UPS subscriptions (PS3.4 CC.2.3) of the archive, so that they
outlive the process that took them and every process and node sees them: one record per
subscription, and one per Receiving AE saying up to which event it was delivered and which
server process delivers to it (a lease, see :mod:`dicomrpc_server.dimse.watch`). A change of one
AE's records is again one decision applied atomically (:meth:`WorkitemRecords.change_subscriber`),
so that two processes claiming the same lease have one winner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from dicomrpc.v1 import dataset_pb2
from dicomrpc.v1 import workitem_service_pb2 as pb
from dicomrpc_server.query.engine import MatchTerm
from dicomrpc_server.storage.records_pb2 import (
    UpsInitialReport,
    UpsSubscriberRecord,
    UpsSubscriptionRecord,
    WorkitemEventKind,
    WorkitemEventRecord,
    WorkitemStepState,
)
from dicomrpc_server.ups.index import TermSet, match_terms, workitem_terms
from dicomrpc_server.ups.values import text

T = TypeVar("T")
SOP_INSTANCE = "00080018"  # SOPInstanceUID
# What a subscription's initial report of a workitem holds, made of its stored data set.
InitialReport = Callable[[dataset_pb2.Dataset], dataset_pb2.Dataset]
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
    if event.HasField("event_time"):
        record.time.CopyFrom(event.event_time)
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
        event.event_time.CopyFrom(record.time)
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

    # -- DIMSE UPS subscriptions (PS3.4 CC.2.3) ------------------------------------------------

    def subscribers(self) -> list[UpsSubscriberRecord]:
        """Every Receiving AE with a subscription: where its delivery stands, who delivers."""

    def subscriptions(self, ae_title: str) -> list[UpsSubscriptionRecord]:
        """The subscriptions of one Receiving AE, by workitem UID (the global one first)."""

    async def subscribe(
        self, subscription: UpsSubscriptionRecord, initial: InitialReport | None
    ) -> UpsSubscriptionRecord:
        """Keep a subscription, taken now (see :func:`take_subscription`); return it as kept."""

    async def change_subscriber(self, ae_title: str, change: Callable[[SubscriberState], T]) -> T:
        """Apply ``change`` to one AE's records atomically; return what it returned.

        No other change of that AE's records comes in between, on any process or node. What
        ``change`` raises fails the change, and nothing of it is written.
        """


@dataclass
class SubscriberState:
    """One Receiving AE's DIMSE subscriptions and delivery, as a change sees and edits them.

    Attributes
    ----------
    ae_title
        The Receiving AE.
    now_ms
        The index's clock, in milliseconds since the epoch: every process and node judges a
        lease by the same clock (on PostgreSQL the database's, not each node's own).
    subscriber
        Where delivery stands and who holds the lease; ``None`` when the AE has no
        subscription.
    subscriptions
        The AE's subscriptions, by workitem UID ("" for the global one).

    What the change leaves is written; an AE left without subscriptions has its records
    removed, the subscriber record with them.
    """

    ae_title: str
    now_ms: int
    subscriber: UpsSubscriberRecord | None
    subscriptions: dict[str, UpsSubscriptionRecord] = field(default_factory=dict)


@dataclass(frozen=True)
class SubscriberWrites:
    """What a change of one AE's records writes back.

    ``subscriber`` is the subscriber record's new value (``None``: remove it, with every
    subscription of the AE), written only when ``subscriber_changed``; ``put`` the subscriptions
    to write and ``removed`` those to remove, by workitem UID.
    """

    subscriber: bytes | None
    subscriber_changed: bool
    put: dict[str, bytes]
    removed: list[str]

    @property
    def subscriptions_changed(self) -> bool:
        """Whether any subscription was taken, changed or ended (not only the delivery)."""
        return bool(self.put or self.removed) or (
            self.subscriber is None and self.subscriber_changed
        )


def subscriber_state(
    ae_title: str, now_ms: int, subscriber: bytes | None, subscriptions: dict[str, bytes]
) -> SubscriberState:
    """The state a change is given, made of the stored bytes of the AE's records."""
    return SubscriberState(
        ae_title,
        now_ms,
        None if subscriber is None else UpsSubscriberRecord.FromString(subscriber),
        {uid: UpsSubscriptionRecord.FromString(raw) for uid, raw in subscriptions.items()},
    )


def subscriber_writes(
    state: SubscriberState, subscriber: bytes | None, subscriptions: dict[str, bytes]
) -> SubscriberWrites:
    """What a change wrote into ``state``, compared with the stored bytes it was made of.

    Only what changed is written; an AE left without subscriptions has its records removed.
    """
    if not state.subscriptions:
        return SubscriberWrites(None, subscriber is not None, {}, sorted(subscriptions))
    record = state.subscriber or UpsSubscriberRecord()
    record.ae_title = state.ae_title
    raw = record.SerializeToString(deterministic=True)
    put = {}
    for uid, subscription in state.subscriptions.items():
        subscription.ae_title, subscription.workitem_uid = state.ae_title, uid
        value = subscription.SerializeToString(deterministic=True)
        if subscriptions.get(uid) != value:
            put[uid] = value
    removed = sorted(uid for uid in subscriptions if uid not in state.subscriptions)
    return SubscriberWrites(raw, raw != subscriber, put, removed)


def take_subscription(
    state: SubscriberState,
    subscription: UpsSubscriptionRecord,
    last_sequence: int,
    workitems: Callable[[], Iterable[dataset_pb2.Dataset]],
    initial: InitialReport | None,
) -> UpsSubscriptionRecord:
    """Put ``subscription`` into ``state`` as taken now, replacing the AE's of its workitem.

    Inside the transaction that writes it: it reports the events after ``last_sequence`` (the
    newest one now), and, with ``initial``, starts with a report of its workitem, or of each
    workitem a global subscription (its filter) covers, read in that same transaction, so that
    no change falls between the reports and the first event (PS3.4 CC.2.3, CC.2.4.3).
    ``workitems`` reads the workitems as the transaction sees them: the named one, or all.
    """
    taken = UpsSubscriptionRecord()
    taken.CopyFrom(subscription)
    taken.since = last_sequence
    del taken.initial[:]
    if initial is not None:
        terms: list[MatchTerm] = match_terms(dict(taken.match))
        for dataset in workitems():
            uid = text(dataset, SOP_INSTANCE)
            if taken.workitem_uid and uid != taken.workitem_uid:
                continue
            if terms and not TermSet(uid.encode("ascii"), workitem_terms(dataset)).matches(
                terms, False
            ):
                continue
            taken.initial.append(
                UpsInitialReport(workitem_uid=uid, information=initial(dataset).SerializeToString())
            )
    state.subscriptions[taken.workitem_uid] = taken
    if state.subscriber is None:
        # A new subscriber starts delivery where its first subscription starts.
        state.subscriber = UpsSubscriberRecord(ae_title=state.ae_title, delivered=last_sequence)
    return taken
