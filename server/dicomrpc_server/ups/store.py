"""The LMDB records of workitems: the data set, its index terms, and the event log.

=================  ============  ===============================================================
sub-database       key           value
=================  ============  ===============================================================
``workitems``      workitem UID  ``dicomrpc.v1.Dataset``: the UPS, with its state and its
                                 Transaction UID (the lock) as attributes
``terms``          level 4/...   secondary-index entries of the matching keys (:mod:`.index`)
``wi_events``      sequence      ``WorkitemEventRecord`` and terms (:func:`encode_event`)
=================  ============  ===============================================================

Reads run in short read transactions on the caller's thread. A change is one
:meth:`WorkitemStore.mutate`: the index writer reads the workitem, the caller's decision turns
it into the new data set and its event, and the data set, its index terms and the event commit
together or not at all. LMDB runs one write transaction at a time, across processes too, so
every change of a workitem sees the one before it (a claim sees the state the previous claim
left).

This is the LMDB implementation of the workitem role
(:class:`~dicomrpc_server.ups.records.WorkitemRecords`), which is all the workitem core sees.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TypeVar

import lmdb

from dicomrpc.v1 import dataset_pb2
from dicomrpc.v1 import workitem_service_pb2 as pb
from dicomrpc_server.dicom.attributes import Level
from dicomrpc_server.query.engine import MatchTerm, TermMatcher
from dicomrpc_server.storage import keys
from dicomrpc_server.storage.lmdb_index import LmdbIndex
from dicomrpc_server.storage.records_pb2 import WorkitemEventRecord
from dicomrpc_server.ups.index import INDEXED_TAGS, decode_terms, encode_terms, workitem_terms
from dicomrpc_server.ups.records import Event, Mutation, event_message, event_record

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

    # -- writes ------------------------------------------------------------------------------

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
