"""The LMDB records of workitems: the data set, its index terms, and the event log.

=================  ============  ===============================================================
sub-database       key           value
=================  ============  ===============================================================
``workitems``      workitem UID  ``dicomrpc.v1.Dataset``: the UPS, with its state and its
                                 Transaction UID (the lock) as attributes
``terms``          level 4/...   secondary-index entries of the matching keys (:mod:`.index`)
``wi_events``      sequence      ``WorkitemEventRecord`` and terms (:func:`encode_event`)
``ups_subscribers``  AE title    ``UpsSubscriberRecord``: a DIMSE subscriber's delivery and lease
``ups_subscriptions``  AE, NUL,  ``UpsSubscriptionRecord``: one DIMSE subscription (PS3.4
                   workitem UID  CC.2.3); the global one has the empty UID
=================  ============  ===============================================================

Reads run in short read transactions on the caller's thread. A change is one
:meth:`WorkitemStore.mutate`: the index writer reads the workitem, the caller's decision turns
it into the new data set and its event, and the data set, its index terms and the event commit
together or not at all. LMDB runs one write transaction at a time, across processes too, so
every change of a workitem sees the one before it (a claim sees the state the previous claim
left). A change of a DIMSE subscriber's records is a write transaction too, so two processes
claiming one subscriber's lease (see :mod:`dicomrpc_server.dimse.watch`) have one winner.

This is the LMDB implementation of the workitem role
(:class:`~dicomrpc_server.ups.records.WorkitemRecords`), which is all the workitem core sees.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import lmdb

from dicomrpc.v1 import dataset_pb2
from dicomrpc.v1 import workitem_service_pb2 as pb
from dicomrpc_server.dicom.attributes import Level
from dicomrpc_server.query.engine import MatchTerm, TermMatcher
from dicomrpc_server.storage import keys
from dicomrpc_server.storage.lmdb_index import LmdbIndex
from dicomrpc_server.storage.records_pb2 import (
    UpsSubscriberRecord,
    UpsSubscriptionRecord,
    WorkitemEventRecord,
)
from dicomrpc_server.ups.index import INDEXED_TAGS, decode_terms, encode_terms, workitem_terms
from dicomrpc_server.ups.records import (
    Event,
    InitialReport,
    Mutation,
    SubscriberState,
    event_message,
    event_record,
    subscriber_state,
    subscriber_writes,
    take_subscription,
)

T = TypeVar("T")
Terms = set[tuple[int, bytes]]


def encode_event(event: pb.SubscribeWorkitemsResponse, terms: Terms) -> bytes:
    """An event's value: its record's length, the record, then the workitem's terms after it."""
    body = event_record(event).SerializeToString()
    return struct.pack(">I", len(body)) + body + encode_terms(terms)


def decode_event(data: bytes) -> tuple[pb.SubscribeWorkitemsResponse, list[tuple[int, bytes]]]:
    """The event and terms :func:`encode_event` wrote."""
    (length,) = struct.unpack_from(">I", data)
    record = WorkitemEventRecord.FromString(data[4 : 4 + length])
    return event_message(record), decode_terms(data[4 + length :])


class WorkitemStore:
    """Reads and writes the workitem records of an :class:`LmdbIndex`."""

    def __init__(self, index: LmdbIndex) -> None:
        self.index = index
        self._items = index.database("workitems")
        self._events = index.database("wi_events")
        self._terms = index.database("terms")
        self._subscribers = index.database("ups_subscribers")
        self._subscriptions = index.database("ups_subscriptions")
        self._matcher = TermMatcher(index.scan_terms)

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every commit (see :meth:`LmdbIndex.on_commit`)."""
        self.index.on_commit(listener)

    # -- reads -------------------------------------------------------------------------------

    def get(self, uid: str) -> dataset_pb2.Dataset | None:
        """A workitem as stored (with its lock), or ``None``."""
        with self.index.read() as txn:
            raw = txn.get(uid.encode("ascii"), db=self._items)
            return None if raw is None else dataset_pb2.Dataset.FromString(bytes(raw))

    def get_many(self, uids: list[bytes]) -> list[dataset_pb2.Dataset]:
        """Several workitems, read in one transaction (missing ones skipped)."""
        out = []
        with self.index.read() as txn:
            for uid in uids:
                raw = txn.get(uid, db=self._items)
                if raw is not None:
                    out.append(dataset_pb2.Dataset.FromString(bytes(raw)))
        return out

    def uids(self) -> list[bytes]:
        """Every workitem UID, in order."""
        with self.index.read() as txn:
            return [bytes(k) for k in txn.cursor(db=self._items).iternext(values=False)]

    def last_sequence(self) -> int:
        """The sequence of the newest committed event (0 when there is none)."""
        with self.index.read() as txn:
            cursor = txn.cursor(db=self._events)
            return struct.unpack(">Q", bytes(cursor.key()))[0] if cursor.last() else 0

    def search(
        self, terms: list[MatchTerm], fuzzy: bool, offset: int, limit: int
    ) -> list[dataset_pb2.Dataset]:
        """The workitems matching every term, in UID order, ``limit`` from ``offset``."""
        if terms:
            found = sorted((self._matcher.match(term, fuzzy) for term in terms), key=len)
            uids = sorted(set.intersection(*found))
        else:
            uids = self.uids()
        return self.get_many(uids[offset : offset + limit])

    def events_after(self, after: int, limit: int) -> list[Event]:
        """Up to ``limit`` events with a sequence above ``after``, in order, with their terms."""
        out = []
        with self.index.read() as txn:
            cursor = txn.cursor(db=self._events)
            if cursor.set_range(keys.sequence_key(after + 1)):
                for _, value in cursor:
                    out.append(decode_event(bytes(value)))
                    if len(out) >= limit:
                        break
        return out

    def subscribers(self) -> list[UpsSubscriberRecord]:
        """Every Receiving AE with a DIMSE subscription, by AE title."""
        with self.index.read() as txn:
            return [
                UpsSubscriberRecord.FromString(bytes(value))
                for _, value in txn.cursor(db=self._subscribers)
            ]

    def subscriptions(self, ae_title: str) -> list[UpsSubscriptionRecord]:
        """The DIMSE subscriptions of one Receiving AE, by workitem UID."""
        with self.index.read() as txn:
            return [
                UpsSubscriptionRecord.FromString(raw)
                for raw in self._subscription_entries(txn, ae_title).values()
            ]

    def _subscription_entries(self, txn: lmdb.Transaction, ae_title: str) -> dict[str, bytes]:
        prefix = ae_title.encode() + b"\x00"
        out: dict[str, bytes] = {}
        cursor = txn.cursor(db=self._subscriptions)
        if cursor.set_range(prefix):
            for key, value in cursor:
                if not bytes(key).startswith(prefix):
                    break
                out[bytes(key)[len(prefix) :].decode("ascii")] = bytes(value)
        return out

    # -- writes ------------------------------------------------------------------------------

    async def subscribe(
        self, subscription: UpsSubscriptionRecord, initial: InitialReport | None
    ) -> UpsSubscriptionRecord:
        """Keep a DIMSE subscription, taken in one write transaction; return it as kept.

        See :func:`~dicomrpc_server.ups.records.take_subscription`.
        """

        def write(txn: lmdb.Transaction) -> UpsSubscriptionRecord:
            def workitems() -> Iterable[dataset_pb2.Dataset]:
                if subscription.workitem_uid:
                    found = self._load(txn, subscription.workitem_uid)
                    return [] if found is None else [found]
                return (
                    dataset_pb2.Dataset.FromString(bytes(value))
                    for _, value in txn.cursor(db=self._items)
                )

            def take(state: SubscriberState) -> UpsSubscriptionRecord:
                cursor = txn.cursor(db=self._events)
                last = struct.unpack(">Q", bytes(cursor.key()))[0] if cursor.last() else 0
                return take_subscription(state, subscription, last, workitems, initial)

            return self._change_subscriber(txn, subscription.ae_title, take)

        return await self.index.writer.run(write)

    async def change_subscriber(self, ae_title: str, change: Callable[[SubscriberState], T]) -> T:
        """Apply ``change`` to one AE's DIMSE subscription records in one write transaction."""
        return await self.index.writer.run(
            lambda txn: self._change_subscriber(txn, ae_title, change)
        )

    def _change_subscriber(
        self, txn: lmdb.Transaction, ae_title: str, change: Callable[[SubscriberState], T]
    ) -> T:
        """Read the AE's records, apply ``change``, write back what it changed."""
        key = ae_title.encode()
        raw = txn.get(key, db=self._subscribers)
        subscriber = None if raw is None else bytes(raw)
        entries = self._subscription_entries(txn, ae_title)
        state = subscriber_state(ae_title, int(time.time() * 1000), subscriber, entries)
        result = change(state)
        writes = subscriber_writes(state, subscriber, entries)
        if writes.subscriber is None:
            txn.delete(key, db=self._subscribers)
        elif writes.subscriber_changed:
            txn.put(key, writes.subscriber, db=self._subscribers)
        for uid in writes.removed:
            txn.delete(key + b"\x00" + uid.encode("ascii"), db=self._subscriptions)
        for uid, value in writes.put.items():
            txn.put(key + b"\x00" + uid.encode("ascii"), value, db=self._subscriptions)
        return result

    async def mutate(
        self, uid: str, decide: Callable[[dataset_pb2.Dataset | None], Mutation[T]]
    ) -> T:
        """Change one workitem atomically; return what ``decide`` returned as the result.

        ``decide`` is given the workitem as stored (``None`` when there is none) on the index
        writer's thread, inside the write transaction; it returns the new data set and its
        event, or no data set to write nothing. What it raises fails the change, and nothing of
        it is written.
        """

        def write(txn: lmdb.Transaction) -> T:
            stored = self._load(txn, uid)
            mutation = decide(stored)
            if mutation.workitem is not None:
                terms = self._save(txn, uid, stored, mutation.workitem)
                for event in mutation.events:
                    self._append_event(txn, event, terms)
            return mutation.result

        return await self.index.writer.run(write)

    def _load(self, txn: lmdb.Transaction, uid: str) -> dataset_pb2.Dataset | None:
        """A workitem as the transaction sees it, or ``None`` (an empty UID names none)."""
        if not uid:
            return None
        raw = txn.get(uid.encode("ascii"), db=self._items)
        return None if raw is None else dataset_pb2.Dataset.FromString(bytes(raw))

    def _save(
        self,
        txn: lmdb.Transaction,
        uid: str,
        old: dataset_pb2.Dataset | None,
        new: dataset_pb2.Dataset,
    ) -> Terms:
        """Write a workitem and move its index terms from ``old``'s to ``new``'s; return them.

        Only the indexed attributes the change touched have their entries moved: a state
        change rewrites the entries of ProcedureStepState, not those of every key.
        """
        pk = uid.encode("ascii")
        new_terms = workitem_terms(new)
        if old is None:
            old_part, new_part = set(), new_terms
        else:
            before, after = old.attributes, new.attributes
            changed = {t for t in INDEXED_TAGS if before.get(t) != after.get(t)}
            old_part, new_part = workitem_terms(old, changed), workitem_terms(new, changed)
        for tag, term in old_part - new_part:
            txn.delete(keys.term_key(Level.WORKITEM, tag, term, pk), db=self._terms)
        for tag, term in new_part - old_part:
            txn.put(keys.term_key(Level.WORKITEM, tag, term, pk), b"", db=self._terms)
        txn.put(pk, new.SerializeToString(), db=self._items)
        return new_terms

    def _append_event(
        self, txn: lmdb.Transaction, event: pb.SubscribeWorkitemsResponse, terms: Terms
    ) -> int:
        """Give ``event`` the next sequence number and write it; return the sequence."""
        cursor = txn.cursor(db=self._events)
        last = struct.unpack(">Q", bytes(cursor.key()))[0] if cursor.last() else 0
        event.sequence = last + 1
        txn.put(keys.sequence_key(event.sequence), encode_event(event, terms), db=self._events)
        return event.sequence
