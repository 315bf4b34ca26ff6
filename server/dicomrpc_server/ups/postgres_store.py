"""The PostgreSQL records of workitems: the data set, its index terms, and the event log.

==========================  ====================================================================
table                       rows
==========================  ====================================================================
``workitems``               uid, ``dicomrpc.v1.Dataset`` bytes: the UPS as :mod:`.store` keeps it
``workitem_terms``          (tag, term, uid): the secondary-index entries of :mod:`.index`
``workitem_events``         sequence, the event, the workitem's terms after it (:mod:`.index`)
``workitem_event_counter``  one row: the sequence of the newest event
``ups_subscribers``         AE title, ``UpsSubscriberRecord``: a DIMSE subscriber's delivery
``ups_subscriptions``       AE title, workitem UID, ``UpsSubscriptionRecord`` (PS3.4 CC.2.3)
==========================  ====================================================================

(The tables are created by :mod:`dicomrpc_server.storage.postgres.migrations`.)

This is the PostgreSQL implementation of the workitem role
(:class:`~dicomrpc_server.ups.records.WorkitemRecords`); several nodes may run it on one
database at once.

One change, one transaction
    :meth:`PostgresWorkitemStore.mutate` locks the workitem's row (``SELECT ... FOR UPDATE``)
    before calling the decision, and writes the data set, its terms and its events in the
    same transaction. A second change of the same workitem, on any node, waits at the lock
    and then reads what the first committed: a claim race has one winner. A workitem not yet
    stored has no row to lock, so the change first inserts a placeholder row with no data set
    (``INSERT ... ON CONFLICT DO NOTHING``: a concurrent creator waits for the first to commit
    or roll back) and locks that; a change that writes nothing removes its placeholder again.

Event sequences follow commit order, with no gap
    Subscribers read the log from a sequence number and move past what they read, so a reader
    must never see sequence *n* while a smaller one may still commit. A PostgreSQL sequence
    (``bigserial``) hands numbers out at insert time, in a different order than commits, and
    leaves gaps on rollback. Instead every event-writing transaction advances the single row
    of ``workitem_event_counter`` and numbers its events from it. The row stays locked until
    the transaction ends, so the next writer gets its numbers only after this one committed (or
    rolled back, giving the numbers back): numbers are consecutive and in commit order, and a
    reader that sees an event sees every event before it. The alternative, serving only rows
    older than the snapshot's xmin (an ``xid8`` column), keeps writers concurrent but gives
    numbers with gaps and makes a reader wait behind the oldest transaction running anywhere
    in the database. The counter serializes writers only from its update to their commit: it
    is the last statement of the change, written together with the data set and the terms.
    All changes lock the workitem's row first and the counter last, so they cannot deadlock
    on the two.

Search
    The match terms are answered by the same :class:`~dicomrpc_server.query.engine.TermMatcher`
    the LMDB store uses, over the same terms: :meth:`PostgresWorkitemStore.scan_terms` is the
    ordered range scan it needs, an index range scan of ``workitem_terms``' primary key. Exact,
    wildcard, fuzzy and range matching therefore mean the same on both stores.

DIMSE subscriptions, one AE at a time
    :meth:`PostgresWorkitemStore.change_subscriber` locks the AE's ``ups_subscribers`` row
    (inserting a placeholder first, as a first change of a workitem does) and reads the
    database's clock in the same transaction, so that every node judges a lease by one clock
    and two nodes claiming it have one winner. Taking a subscription also share-locks the
    event counter while it reads the newest sequence and the workitems its first reports are
    made of: no event commits in between, so the reports and the events after them follow on
    exactly.

Reads are single statements on the pool, each seeing the database as committed when it started.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from dicomrpc.v1 import dataset_pb2
from dicomrpc_server.dicom.attributes import Level
from dicomrpc_server.query.engine import MatchTerm, TermMatcher
from dicomrpc_server.storage.postgres.backend import PostgresBackend
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

# The data set, the terms that changed, and the events, in one statement (one round trip): each
# data-modifying part runs whether the final INSERT uses it or not. The counter row is locked
# from this statement, the change's last, to its commit. $7 is the number of events (the
# counter moves by it; without events it is not touched, and nothing is inserted).
_WRITE = """
WITH item AS (
    UPDATE workitems SET dataset = $2 WHERE uid = $1
), removed AS (
    DELETE FROM workitem_terms
    WHERE uid = $1 AND (tag, term) IN (SELECT * FROM unnest($3::bigint[], $4::bytea[]))
), added AS (
    INSERT INTO workitem_terms (tag, term, uid)
    SELECT tag, term, $1 FROM unnest($5::bigint[], $6::bytea[]) AS t (tag, term)
), counter AS (
    UPDATE workitem_event_counter SET last = last + $7 WHERE $7 > 0 RETURNING last
)
INSERT INTO workitem_events (sequence, event, terms)
SELECT counter.last - $7 + e.n, e.event, $9
FROM counter, unnest($8::bytea[]) WITH ORDINALITY AS e (event, n)
RETURNING sequence
"""


def _successor(prefix: bytes) -> bytes | None:
    """The least byte string above every string starting with ``prefix`` (None: no bound)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def _columns(terms: set[tuple[int, bytes]]) -> tuple[list[int], list[bytes]]:
    ordered = sorted(terms)
    return [tag for tag, _ in ordered], [term for _, term in ordered]


class PostgresWorkitemStore:
    """Reads and writes the workitem records in a PostgreSQL database (see module)."""

    def __init__(self, backend: PostgresBackend) -> None:
        self.backend = backend
        self._matcher = TermMatcher(self.scan_terms)
        backend.add_probe("SELECT last FROM workitem_event_counter")

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every commit, this node's or another's (see .notify)."""
        self.backend.on_commit(listener)

    # -- reads -------------------------------------------------------------------------------

    def get(self, uid: str) -> dataset_pb2.Dataset | None:
        """A workitem as stored (with its lock), or ``None``."""
        raw = self.backend.run(
            self.backend.fetchval(
                "SELECT dataset FROM workitems WHERE uid = $1 AND dataset IS NOT NULL", uid
            )
        )
        return None if raw is None else dataset_pb2.Dataset.FromString(raw)

    def last_sequence(self) -> int:
        """The sequence of the newest committed event (0 when there is none)."""
        return int(
            self.backend.run(self.backend.fetchval("SELECT last FROM workitem_event_counter"))
        )

    def search(
        self, terms: list[MatchTerm], fuzzy: bool, offset: int, limit: int
    ) -> list[dataset_pb2.Dataset]:
        """The workitems matching every term, in UID order, ``limit`` from ``offset``."""
        if not terms:
            rows = self.backend.run(
                self.backend.fetch(
                    "SELECT dataset FROM workitems WHERE dataset IS NOT NULL "
                    "ORDER BY uid OFFSET $1 LIMIT $2",
                    offset,
                    limit,
                )
            )
            return [dataset_pb2.Dataset.FromString(row["dataset"]) for row in rows]
        found = sorted((self._matcher.match(term, fuzzy) for term in terms), key=len)
        uids = [uid.decode("ascii") for uid in sorted(set.intersection(*found))]
        page = uids[offset : offset + limit]
        if not page:
            return []
        rows = self.backend.run(
            self.backend.fetch(
                "SELECT dataset FROM workitems WHERE uid = ANY($1::text[]) "
                "AND dataset IS NOT NULL ORDER BY uid",
                page,
            )
        )
        return [dataset_pb2.Dataset.FromString(row["dataset"]) for row in rows]

    def scan_terms(
        self,
        level: Level,
        tag: int,
        start: bytes,
        stop: bytes | None = None,
        prefix: bytes = b"",
        limit: int | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """(term, workitem UID) pairs of one attribute, in term order, from ``start``.

        The same scan as :meth:`LmdbIndex.scan_terms` over the workitem terms (``level`` is
        always :attr:`Level.WORKITEM` here): it ends before the first term that is ``>= stop``
        or does not start with ``prefix``, or after ``limit`` pairs. The database is asked for
        the byte range those bounds allow; the same checks as LMDB's then cut the ordered rows,
        so both stores return exactly the same pairs.
        """
        del level  # the table holds workitem terms only
        upper = _successor(prefix) if prefix else None
        if stop is not None and (upper is None or stop < upper):
            upper = stop
        rows = self.backend.run(
            self.backend.fetch(
                "SELECT term, uid FROM workitem_terms "
                "WHERE tag = $1 AND term >= $2 AND ($3::bytea IS NULL OR term < $3) "
                "ORDER BY term, uid LIMIT $4",
                tag,
                start,
                upper,
                limit,
            )
        )
        out = []
        for row in rows:
            term = bytes(row["term"])
            if not term.startswith(prefix):
                break
            out.append((term, row["uid"].encode("ascii")))
        return out

    def events_after(self, after: int, limit: int) -> list[Event]:
        """Up to ``limit`` events with a sequence above ``after``, in order, with their terms."""
        rows = self.backend.run(
            self.backend.fetch(
                "SELECT sequence, event, terms FROM workitem_events "
                "WHERE sequence > $1 ORDER BY sequence LIMIT $2",
                after,
                limit,
            )
        )
        out: list[Event] = []
        for row in rows:
            event = event_message(WorkitemEventRecord.FromString(row["event"]))
            event.sequence = row["sequence"]
            out.append((event, decode_terms(row["terms"])))
        return out

    def subscribers(self) -> list[UpsSubscriberRecord]:
        """Every Receiving AE with a DIMSE subscription, by AE title."""
        rows = self.backend.run(
            self.backend.fetch(
                "SELECT record FROM ups_subscribers WHERE record IS NOT NULL ORDER BY ae_title"
            )
        )
        return [UpsSubscriberRecord.FromString(row["record"]) for row in rows]

    def subscriptions(self, ae_title: str) -> list[UpsSubscriptionRecord]:
        """The DIMSE subscriptions of one Receiving AE, by workitem UID."""
        rows = self.backend.run(
            self.backend.fetch(
                "SELECT record FROM ups_subscriptions WHERE ae_title = $1 ORDER BY workitem_uid",
                ae_title,
            )
        )
        return [UpsSubscriptionRecord.FromString(row["record"]) for row in rows]

    # -- writes ------------------------------------------------------------------------------

    async def mutate(
        self, uid: str, decide: Callable[[dataset_pb2.Dataset | None], Mutation[T]]
    ) -> T:
        """Change one workitem atomically; return what ``decide`` returned as the result.

        ``decide`` is given the workitem as stored (``None`` when there is none) on the
        backend's loop, with the workitem's row locked; it returns the new data set and its
        events, or no data set to write nothing. What it raises fails the change, and nothing
        of it is written. It may be called again when PostgreSQL aborts the transaction for a
        conflict (see :meth:`PostgresBackend.transact`).
        """

        async def change() -> T:
            result, wrote = await self.backend.transact(
                lambda connection: self._write(connection, uid, decide)
            )
            if wrote:
                self.backend.committed()
            return result

        return await self.backend.arun(change())

    async def _write(
        self,
        connection: asyncpg.Connection,
        uid: str,
        decide: Callable[[dataset_pb2.Dataset | None], Mutation[T]],
    ) -> tuple[T, bool]:
        """Lock, decide, write (inside the transaction); return the result and if it wrote."""
        stored = None
        placeholder = False
        if uid:  # an empty UID names no workitem: nothing to lock
            placeholder = (
                await connection.fetchval(
                    "INSERT INTO workitems (uid) VALUES ($1) ON CONFLICT DO NOTHING RETURNING true",
                    uid,
                )
                is not None
            )
            raw = await connection.fetchval(
                "SELECT dataset FROM workitems WHERE uid = $1 FOR UPDATE", uid
            )
            stored = None if raw is None else dataset_pb2.Dataset.FromString(raw)
        mutation = decide(stored)
        new = mutation.workitem
        if new is None:
            if placeholder:
                await connection.execute("DELETE FROM workitems WHERE uid = $1", uid)
            return mutation.result, False
        if not uid:
            raise ValueError("a workitem is written under its UID, and none was given")
        # As in the LMDB store, only the entries of the indexed attributes the change touched
        # move: a state change rewrites ProcedureStepState's, not those of every key.
        new_terms = workitem_terms(new)
        if stored is None:
            old_part, new_part = set(), new_terms
        else:
            before, after = stored.attributes, new.attributes
            changed = {t for t in INDEXED_TAGS if before.get(t) != after.get(t)}
            old_part, new_part = workitem_terms(stored, changed), workitem_terms(new, changed)
        events = mutation.events
        for event in events:  # the sequence is the row's: each event is stored without it
            event.sequence = 0
        rows = await connection.fetch(
            _WRITE,
            uid,
            new.SerializeToString(),
            *_columns(old_part - new_part),
            *_columns(new_part - old_part),
            len(events),
            [event_record(event).SerializeToString() for event in events],
            encode_terms(new_terms),
        )
        if events:
            first = min(row["sequence"] for row in rows)
            for n, event in enumerate(events):
                event.sequence = first + n
        return mutation.result, True

    async def subscribe(
        self, subscription: UpsSubscriptionRecord, initial: InitialReport | None
    ) -> UpsSubscriptionRecord:
        """Keep a DIMSE subscription, taken in one transaction; return it as kept.

        See :func:`~dicomrpc_server.ups.records.take_subscription`.
        """

        async def take(connection: asyncpg.Connection, state: SubscriberState) -> object:
            # Share-locked: no event commits until this transaction ends, so the newest
            # sequence and the workitems read next are of one moment.
            last = await connection.fetchval("SELECT last FROM workitem_event_counter FOR SHARE")
            if subscription.workitem_uid:
                rows = await connection.fetch(
                    "SELECT dataset FROM workitems WHERE uid = $1 AND dataset IS NOT NULL",
                    subscription.workitem_uid,
                )
            elif initial is not None:
                rows = await connection.fetch(
                    "SELECT dataset FROM workitems WHERE dataset IS NOT NULL ORDER BY uid"
                )
            else:
                rows = []
            found = [dataset_pb2.Dataset.FromString(row["dataset"]) for row in rows]
            return take_subscription(state, subscription, int(last), lambda: found, initial)

        taken = await self._change(subscription.ae_title, take)
        assert isinstance(taken, UpsSubscriptionRecord)
        return taken

    async def change_subscriber(self, ae_title: str, change: Callable[[SubscriberState], T]) -> T:
        """Apply ``change`` to one AE's DIMSE subscription records, its row locked."""

        async def apply(connection: asyncpg.Connection, state: SubscriberState) -> object:
            del connection
            return change(state)

        return await self._change(ae_title, apply)  # type: ignore[return-value]

    async def _change(
        self,
        ae_title: str,
        change: Callable[[asyncpg.Connection, SubscriberState], Awaitable[object]],
    ) -> object:
        """Lock the AE's row, read its records and the clock, change, write back."""

        async def work(connection: asyncpg.Connection) -> tuple[object, bool]:
            await connection.execute(
                "INSERT INTO ups_subscribers (ae_title) VALUES ($1) ON CONFLICT DO NOTHING",
                ae_title,
            )
            row = await connection.fetchrow(
                "SELECT record, (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now "
                "FROM ups_subscribers WHERE ae_title = $1 FOR UPDATE",
                ae_title,
            )
            subscriber = None if row["record"] is None else bytes(row["record"])
            rows = await connection.fetch(
                "SELECT workitem_uid, record FROM ups_subscriptions WHERE ae_title = $1",
                ae_title,
            )
            entries = {r["workitem_uid"]: bytes(r["record"]) for r in rows}
            state = subscriber_state(ae_title, int(row["now"]), subscriber, entries)
            result = await change(connection, state)
            writes = subscriber_writes(state, subscriber, entries)
            if writes.subscriber is None:
                await connection.execute(
                    "DELETE FROM ups_subscriptions WHERE ae_title = $1", ae_title
                )
                await connection.execute(
                    "DELETE FROM ups_subscribers WHERE ae_title = $1", ae_title
                )
            elif writes.subscriber_changed:
                await connection.execute(
                    "UPDATE ups_subscribers SET record = $2 WHERE ae_title = $1",
                    ae_title,
                    writes.subscriber,
                )
            if writes.removed:
                await connection.execute(
                    "DELETE FROM ups_subscriptions "
                    "WHERE ae_title = $1 AND workitem_uid = ANY($2::text[])",
                    ae_title,
                    writes.removed,
                )
            if writes.put:
                await connection.execute(
                    "INSERT INTO ups_subscriptions (ae_title, workitem_uid, record) "
                    "SELECT $1, * FROM unnest($2::text[], $3::bytea[]) "
                    "ON CONFLICT (ae_title, workitem_uid) DO UPDATE SET record = excluded.record",
                    ae_title,
                    list(writes.put),
                    list(writes.put.values()),
                )
            return result, writes.subscriptions_changed

        async def run() -> object:
            result, changed = await self.backend.transact(work)
            if changed:  # other nodes' senders of this AE read its subscriptions again
                self.backend.committed()
            return result

        return await self.backend.arun(run())

    async def carry_subscriptions(
        self,
        subscribers: list[UpsSubscriberRecord],
        subscriptions: list[UpsSubscriptionRecord],
    ) -> None:
        """Write DIMSE subscriptions copied from another store (``migrate``).

        Each subscriber keeps the sequence delivered, which means the same event in the copied
        log; nobody holds its lease (the copying store's processes serve no more). Records
        present already are kept.
        """
        for subscriber in subscribers:
            subscriber.owner, subscriber.lease_expires_ms = "", 0

        async def carry(connection: asyncpg.Connection) -> None:
            await connection.execute(
                "INSERT INTO ups_subscribers (ae_title, record) "
                "SELECT * FROM unnest($1::text[], $2::bytea[]) ON CONFLICT DO NOTHING",
                [s.ae_title for s in subscribers],
                [s.SerializeToString(deterministic=True) for s in subscribers],
            )
            await connection.execute(
                "INSERT INTO ups_subscriptions (ae_title, workitem_uid, record) "
                "SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) ON CONFLICT DO NOTHING",
                [s.ae_title for s in subscriptions],
                [s.workitem_uid for s in subscriptions],
                [s.SerializeToString(deterministic=True) for s in subscriptions],
            )

        if subscribers or subscriptions:
            await self.backend.arun(self.backend.transact(carry))
            self.backend.committed()

    async def carry_events(self, events: list[tuple[int, bytes, bytes]]) -> None:
        """Write events copied from another store under their own sequences (``migrate``).

        Each is (sequence, serialized event, encoded terms); the counter moves to the last
        one, so that the next change numbers after them and a subscriber's position in the
        copied log still means the same event. Events present already are kept.
        """
        if not events:
            return

        async def carry(connection: asyncpg.Connection) -> None:
            await connection.execute(
                "WITH added AS ("
                "  INSERT INTO workitem_events (sequence, event, terms)"
                "  SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::bytea[])"
                "  ON CONFLICT DO NOTHING"
                ") UPDATE workitem_event_counter SET last = GREATEST(last, $4)",
                [event[0] for event in events],
                [event[1] for event in events],
                [event[2] for event in events],
                max(event[0] for event in events),
            )

        await self.backend.arun(self.backend.transact(carry))
        self.backend.committed()
