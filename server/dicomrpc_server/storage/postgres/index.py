"""The instance index on PostgreSQL: the LMDB index's records, terms and change log, shared.

=====================  ===========================================================================
table                  rows
=====================  ===========================================================================
``studies``            study key, ``StudyRecord``
``series``             series key, ``SeriesRecord``
``instances``          instance key, SOP instance UID, blob id, ``InstanceRecord``, the metadata
                       (``dicomrpc.v1.Dataset``) and the ``FrameTable``
``instance_removals``  blob id, instance key: files of deleted instances still to be removed
``index_terms``        (level, tag, term NUL primary key): the secondary-index entries
``index_changes``      sequence, instance key, ``ChangeRecord``: the change log
``index_counter``      one row: the newest change's sequence; the numbers of studies, series,
                       instances
``query_tags``         8 hex digits, ``QueryTagRecord``: the extended query tags (with
                       ``query_tag_drops`` and ``reindex_operations``: :mod:`.query_tags`)
=====================  ===========================================================================

(The tables are created by :mod:`.migrations`, step 2.)

This is the PostgreSQL implementation of the index roles of :mod:`..protocols` (``Index``,
``ChangeLog``, ``Deletions``, ``InstanceReads``, ``QueryTagRecords``) and of the
term store the search planner reads (:class:`~dicomrpc_server.query.term_search.TermStore`);
several nodes may run it on one database at once. Records, terms and aggregates are the LMDB
index's, computed by the same functions (:mod:`..index_records`) and stored as the same bytes:
the two indexes answer every read and every search alike (``tests/test_index_contract.py``).

Keys
    A record's key is LMDB's: its UIDs (ASCII) joined by NUL, the natural key of the study,
    series or instance. Rows are created with ``INSERT ... ON CONFLICT`` on it, never looked up
    first; and since bytea compares byte by byte, ``ORDER BY key`` and key ranges are LMDB's
    cursor order and prefixes. A term is stored as LMDB's term key after the level and tag
    (the term, NUL, the primary key), so a term scan is the same byte range in the same order.

One store, one transaction; one study at a time
    :meth:`PostgresIndex.add_instance` first makes sure the study's row exists (an insert that
    does nothing when it does) and locks it (``SELECT ... FOR UPDATE``); every write of a
    study's series, instances and aggregates, on any node, does the same first. Two stores into
    one study therefore compute the aggregates one after the other, each from what the other
    committed: counts, modalities and the latest stored attributes are those a single LMDB
    writer would give. A new SOP instance is inserted with ``ON CONFLICT DO NOTHING``: a
    duplicate, here or in another study, inserts nothing and gives 45070, and two nodes storing
    the same SOP instance at once have one winner (the second waits for the first to commit).
    A study deleted while a store waits for its lock is created again by the store.

Change sequences follow commit order, with no gap
    As the workitem events (:mod:`dicomrpc_server.ups.postgres_store`): each change-writing
    transaction advances the one row of ``index_counter`` in its last statement and numbers its
    changes from it. The row stays locked until the commit, so the next writer numbers after
    this one committed: a reader that sees change *n* sees every change before it, and a
    follower moving from the last sequence it read never skips a late commit. The same row
    keeps the counts, which cost nothing more there. Every write locks a study first and the
    counter last: they cannot deadlock on the two. The statement appends the sequence's field
    to each ``ChangeRecord`` it writes, so the stored records carry it, as LMDB's do (protobuf
    reads fields in any order). Instance versions come from a PostgreSQL
    sequence, drawn under the study's lock: unique, and increasing within a study.

Reads are single statements on the pool, each seeing the database as committed when it started.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg

from dicomrpc.v1 import dataset_pb2
from dicomrpc_server.dicom.attributes import Level
from dicomrpc_server.storage import keys, records_pb2
from dicomrpc_server.storage.index_records import (
    Record,
    Removal,
    Terms,
    add_extended,
    instance_exists_error,
    not_stored_error,
    record_terms,
    series_after_removal,
    split_term,
    stored_series,
    stored_study,
    studies_of_series,
    study_after_removal,
    term_changes,
)
from dicomrpc_server.storage.postgres import query_tags
from dicomrpc_server.storage.postgres.backend import PostgresBackend
from dicomrpc_server.storage.postgres.query_tags import TAGS_LOCK
from dicomrpc_server.storage.protocols import (
    Change,
    ChangeAction,
    ChangeState,
    IndexCounts,
    NewInstance,
)

_TABLES = {Level.STUDY: "studies", Level.SERIES: "series", Level.INSTANCE: "instances"}
_ACTIONS = {
    records_pb2.CHANGE_KIND_CREATED: ChangeAction.CREATED,
    records_pb2.CHANGE_KIND_DELETED: ChangeAction.DELETED,
}
# Term entries read per statement of a scan, at first and at most: a scan whose bounds the
# database cannot express exactly (see scan_terms) reads on in growing batches.
_SCAN_FIRST, _SCAN_MOST = 512, 16384

# Everything a store or a delete writes after its reads, in one statement (one round trip); each
# data-modifying part runs whether the final INSERT uses it or not. The counter row is locked
# from this statement, the change's last, to its commit. $15 is the number of changes.
_WRITE = """
WITH removed_terms AS (
    DELETE FROM index_terms
    WHERE (level, tag, entry) IN (SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bytea[]))
), added_terms AS (
    INSERT INTO index_terms (level, tag, entry)
    SELECT * FROM unnest($4::smallint[], $5::bigint[], $6::bytea[])
    ON CONFLICT DO NOTHING
), removed_series AS (
    DELETE FROM series WHERE key = ANY($7::bytea[])
), written_series AS (
    INSERT INTO series (key, record) SELECT * FROM unnest($8::bytea[], $9::bytea[])
    ON CONFLICT (key) DO UPDATE SET record = EXCLUDED.record
), removed_study AS (
    DELETE FROM studies WHERE key = $10 AND $11::bytea IS NULL
), written_study AS (
    UPDATE studies SET record = $11 WHERE key = $10 AND $11::bytea IS NOT NULL
), removals AS (
    INSERT INTO instance_removals (blob_id, key) SELECT * FROM unnest($12::text[], $13::bytea[])
    ON CONFLICT (blob_id) DO UPDATE SET key = EXCLUDED.key
), counter AS (
    UPDATE index_counter SET last_change = last_change + $15, studies = studies + $16,
        series = series + $17, instances = instances + $18
    RETURNING last_change
)
INSERT INTO index_changes (sequence, key, record)
SELECT counter.last_change - $15 + c.n, c.key,
    c.record || change_sequence_field(counter.last_change - $15 + c.n)
FROM counter, unnest($14::bytea[], $19::bytea[]) WITH ORDINALITY AS c (key, record, n)
"""


# The distinct terms of an attribute from $3 (below $4 when given), each with its first entry,
# at most $5: a skip scan, each step one index lookup. An entry's term is cut as split_term
# cuts it: a number term ("#", 0x23) is 9 bytes, any other ends at the first NUL.
_DISTINCT_TERMS = """
WITH RECURSIVE walk (entry, n) AS (
    (SELECT entry, 1 FROM index_terms
     WHERE level = $1 AND tag = $2 AND entry >= $3 AND ($4::bytea IS NULL OR entry < $4)
     ORDER BY entry LIMIT 1)
    UNION ALL
    SELECT step.entry, walk.n + 1 FROM walk CROSS JOIN LATERAL (
        SELECT entry FROM index_terms
        WHERE level = $1 AND tag = $2
          AND entry >= (CASE WHEN get_byte(walk.entry, 0) = 35
                             THEN substring(walk.entry FROM 1 FOR 9)
                             ELSE substring(walk.entry FROM 1
                                            FOR position('\\x00'::bytea IN walk.entry) - 1)
                        END) || '\\x01'::bytea
          AND ($4::bytea IS NULL OR entry < $4)
        ORDER BY entry LIMIT 1
    ) step
    WHERE $5::int IS NULL OR walk.n < $5
)
SELECT entry FROM walk ORDER BY n
"""

# For each term of $3 (numbered from 1), its entries from term NUL $4 on, at most $5 each.
_TERM_ENTRIES_FROM = """
SELECT t.n, e.entry
FROM unnest($3::bytea[]) WITH ORDINALITY AS t (term, n)
CROSS JOIN LATERAL (
    SELECT entry FROM index_terms
    WHERE level = $1 AND tag = $2
      AND entry >= t.term || '\\x00'::bytea || $4 AND entry < t.term || '\\x01'::bytea
    ORDER BY entry LIMIT $5
) e
ORDER BY t.n, e.entry
"""


def _successor(prefix: bytes) -> bytes | None:
    """The least byte string above every string starting with ``prefix`` (None: no bound)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def _stop_bound(stop: bytes) -> bytes:
    """The least entry bound above every entry (term NUL key) whose term is below ``stop``.

    An entry of a term below ``stop`` is below ``stop`` itself, except when the term is the
    part of ``stop`` before one of its NULs: the entry then starts with that part and a NUL,
    so it is below that part followed by 0x01 (for the first NUL, the largest such bound).
    """
    cut = stop.find(keys.SEP)
    return stop if cut < 0 else stop[:cut] + b"\x01"


def _range(prefix: bytes) -> tuple[bytes, bytes | None]:
    """The keys starting with ``prefix``, as ``lower <= key < upper`` (None: no upper bound)."""
    return prefix, _successor(prefix) if prefix else None


@dataclass
class _Write:
    """The rows one store or delete writes in :data:`_WRITE`."""

    removed_terms: list[tuple[int, int, bytes]] = field(default_factory=list)
    added_terms: list[tuple[int, int, bytes]] = field(default_factory=list)
    removed_series: list[bytes] = field(default_factory=list)
    written_series: list[tuple[bytes, bytes]] = field(default_factory=list)
    study_key: bytes = b""
    study: bytes | None = None  # None: the study row is deleted
    removals: list[tuple[str, bytes]] = field(default_factory=list)
    changes: list[tuple[bytes, bytes]] = field(default_factory=list)
    studies: int = 0
    series: int = 0
    instances: int = 0

    def terms(self, level: Level, pk: bytes, removed: Terms, added: Terms) -> None:
        """Remove and add a record's entries."""
        self.removed_terms += [(int(level), tag, term + keys.SEP + pk) for tag, term in removed]
        self.added_terms += [(int(level), tag, term + keys.SEP + pk) for tag, term in added]

    def arguments(self) -> list[object]:
        """The parameters of :data:`_WRITE`."""
        removed, added = sorted(self.removed_terms), sorted(self.added_terms)
        return [
            [t[0] for t in removed],
            [t[1] for t in removed],
            [t[2] for t in removed],
            [t[0] for t in added],
            [t[1] for t in added],
            [t[2] for t in added],
            self.removed_series,
            [s[0] for s in self.written_series],
            [s[1] for s in self.written_series],
            self.study_key,
            self.study,
            [r[0] for r in self.removals],
            [r[1] for r in self.removals],
            [c[0] for c in self.changes],
            len(self.changes),
            self.studies,
            self.series,
            self.instances,
            [c[1] for c in self.changes],
        ]


def _change(
    kind: records_pb2.ChangeKind.ValueType, ikey: bytes, version: int, now_us: int
) -> tuple[bytes, bytes]:
    """A change log row, its record without the sequence (:data:`_WRITE` appends it)."""
    study, series, sop = keys.split_key(ikey)
    record = records_pb2.ChangeRecord(
        kind=kind,
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop,
        version=version,
    )
    record.time.FromMicroseconds(now_us)
    return ikey, record.SerializeToString()


def _copy(new: NewInstance) -> NewInstance:
    """A copy of what a store may change (a transaction run again starts from the original)."""
    return NewInstance(
        study_uid=new.study_uid,
        series_uid=new.series_uid,
        sop_uid=new.sop_uid,
        record=_clone(new.record),
        study_attributes=_clone(new.study_attributes),
        series_attributes=_clone(new.series_attributes),
        metadata=new.metadata,
        frames=new.frames,
    )


R = TypeVar("R", bound=Record)
T = TypeVar("T")


def _clone(record: R) -> R:
    out = type(record)()
    out.MergeFrom(record)  # type: ignore[arg-type]  # the same message type, as mypy cannot tell
    return out


class PostgresIndex:
    """The archive's instance index in a PostgreSQL database (see module).

    It owns ``backend``: :meth:`close` closes it, after the other roles sharing it are done.
    """

    def __init__(self, backend: PostgresBackend) -> None:
        self.backend = backend
        self._pending: set[concurrent.futures.Future[None]] = set()
        backend.add_probe("SELECT last_change FROM index_counter")

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every commit, this node's or another's (see .notify)."""
        self.backend.on_commit(listener)

    def _fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        return self.backend.run(self.backend.fetch(query, *args))

    def _bytes(self, query: str, *args: object) -> bytes | None:
        """The bytea (or text, as ASCII) of one statement's first row and column, or None."""
        value = self.backend.run(self.backend.fetchval(query, *args))
        if value is None:
            return None
        return value.encode("ascii") if isinstance(value, str) else bytes(value)

    # -- records -----------------------------------------------------------------------------

    def get_instance(self, study: str, series: str, sop: str) -> records_pb2.InstanceRecord | None:
        """The record of an instance, or ``None``."""
        raw = self._bytes(
            "SELECT record FROM instances WHERE key = $1", keys.instance_key(study, series, sop)
        )
        return None if raw is None else records_pb2.InstanceRecord.FromString(raw)

    def get_study(self, study: str) -> records_pb2.StudyRecord | None:
        """The record of a study, or ``None``."""
        raw = self._bytes(
            "SELECT record FROM studies WHERE key = $1 AND record IS NOT NULL",
            keys.study_key(study),
        )
        return None if raw is None else records_pb2.StudyRecord.FromString(raw)

    def get_series(self, study: str, series: str) -> records_pb2.SeriesRecord | None:
        """The record of a series, or ``None``."""
        raw = self._bytes(
            "SELECT record FROM series WHERE key = $1", keys.series_key(study, series)
        )
        return None if raw is None else records_pb2.SeriesRecord.FromString(raw)

    def locate_sop(self, sop: str) -> tuple[str, str] | None:
        """The (study, series) holding a SOP instance UID, or ``None``."""
        raw = self._bytes("SELECT key FROM instances WHERE sop_uid = $1", sop)
        if raw is None:
            return None
        study, series, _ = keys.split_key(raw)
        return study, series

    def has_blob(self, blob_id: str) -> bool:
        """Whether an index entry references the blob."""
        return self._bytes("SELECT blob_id FROM instances WHERE blob_id = $1", blob_id) is not None

    def blob_ids(self) -> set[str]:
        """Every referenced blob id (for consistency checks)."""
        return {row["blob_id"] for row in self._fetch("SELECT blob_id FROM instances")}

    def blob_instance(self, blob_id: str) -> tuple[str, str, str] | None:
        """The (study, series, SOP instance) UIDs of the instance a blob holds, or ``None``."""
        raw = self._bytes("SELECT key FROM instances WHERE blob_id = $1", blob_id)
        if raw is None:
            return None
        study, series, sop = keys.split_key(raw)
        return study, series, sop

    def pending_removals(self) -> list[str]:
        """Blob ids of deleted instances whose files may not be removed yet."""
        rows = self._fetch("SELECT blob_id FROM instance_removals ORDER BY blob_id")
        return [row["blob_id"] for row in rows]

    def counts(self) -> IndexCounts:
        """The number of studies, series and instances (kept with the change counter)."""
        (row,) = self._fetch("SELECT studies, series, instances FROM index_counter")
        return IndexCounts(studies=row["studies"], series=row["series"], instances=row["instances"])

    def stored_bytes(self, batch: int = 10_000) -> int:
        """The sum of every stored instance's file size, read ``batch`` records at a time."""
        total = 0
        after = b""
        while True:
            rows = self._fetch(
                "SELECT key, record FROM instances WHERE key > $1 ORDER BY key LIMIT $2",
                after,
                batch,
            )
            for row in rows:
                total += records_pb2.InstanceRecord.FromString(bytes(row["record"])).size_bytes
            if len(rows) < batch:
                return total
            after = bytes(rows[-1]["key"])

    def list_instances(
        self, study: str, series: str | None = None
    ) -> list[tuple[str, str, str, records_pb2.InstanceRecord]]:
        """The instances of a study (or of one of its series), in key order, with records."""
        lower, upper = _range(
            keys.child_prefix(
                keys.series_key(study, series) if series is not None else keys.study_key(study)
            )
        )
        rows = self._fetch(
            "SELECT key, record FROM instances WHERE key >= $1 AND key < $2 ORDER BY key",
            lower,
            upper,
        )
        out = []
        for row in rows:
            study_uid, series_uid, sop_uid = keys.split_key(bytes(row["key"]))
            record = records_pb2.InstanceRecord.FromString(bytes(row["record"]))
            out.append((study_uid, series_uid, sop_uid, record))
        return out

    def get_metadata(self, study: str, series: str, sop: str) -> dataset_pb2.Dataset | None:
        """The pre-computed metadata of an instance, or ``None``."""
        raw = self._bytes(
            "SELECT metadata FROM instances WHERE key = $1", keys.instance_key(study, series, sop)
        )
        return None if raw is None else dataset_pb2.Dataset.FromString(raw)

    def get_metadata_many(self, keys_: list[tuple[str, str, str]]) -> list[bytes]:
        """The pre-computed metadata of several instances, in the given order, in one statement.

        Each is a serialized ``Dataset`` as stored, not parsed: gRPC sends it as it is.
        """
        wanted = [keys.instance_key(*uids) for uids in keys_]
        rows = self._fetch(
            "SELECT key, metadata FROM instances WHERE key = ANY($1::bytea[])", wanted
        )
        found = {bytes(row["key"]): bytes(row["metadata"]) for row in rows}
        return [found[key] for key in wanted if key in found]

    def get_frames(self, study: str, series: str, sop: str) -> records_pb2.FrameTable | None:
        """The frame offset table of an instance, or ``None``."""
        raw = self._bytes(
            "SELECT frames FROM instances WHERE key = $1", keys.instance_key(study, series, sop)
        )
        return None if raw is None else records_pb2.FrameTable.FromString(raw)

    # -- the term store of the search planner ------------------------------------------------

    def scan_terms(
        self,
        level: Level,
        tag: int,
        start: bytes,
        stop: bytes | None = None,
        prefix: bytes = b"",
        limit: int | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """(term, primary key) pairs of one attribute, in term order, from ``start``.

        The scan of :meth:`LmdbIndex.scan_terms`: from the first entry at or above ``start``,
        it ends before the first term that is ``>= stop`` or does not start with ``prefix``,
        or after ``limit`` pairs. The database is asked for the entries in a byte range that
        holds every pair those bounds allow, in batches; the same checks as LMDB's then end
        the scan, so both indexes return exactly the same pairs.
        """
        upper = _successor(prefix) if prefix else None
        if stop is not None:
            bound = _stop_bound(stop)
            upper = bound if upper is None else min(upper, bound)
        out: list[tuple[bytes, bytes]] = []
        position, above = start, False
        batch = _SCAN_FIRST
        while True:
            size = batch if limit is None else min(batch, limit - len(out))
            rows = self._fetch(
                "SELECT entry FROM index_terms WHERE level = $1 AND tag = $2 "
                + ("AND entry > $3 " if above else "AND entry >= $3 ")
                + "AND ($4::bytea IS NULL OR entry < $4) ORDER BY entry LIMIT $5",
                int(level),
                tag,
                position,
                upper,
                size,
            )
            for row in rows:
                entry = bytes(row["entry"])
                term, pk = split_term(entry)
                if (stop is not None and term >= stop) or not term.startswith(prefix):
                    return out
                out.append((term, pk))
            if len(rows) < size or (limit is not None and len(out) >= limit):
                return out
            position, above = bytes(rows[-1]["entry"]), True
            batch = min(batch * 2, _SCAN_MOST)

    def studies_of_series(self, series: str) -> list[str]:
        """The studies holding a series with this SeriesInstanceUID (normally one)."""
        return studies_of_series(self.scan_terms, series)

    def distinct_terms(
        self,
        level: Level,
        tag: int,
        start: bytes,
        stop: bytes | None = None,
        prefix: bytes = b"",
        limit: int | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """Each distinct term :meth:`scan_terms` would return, with its lowest key, in order.

        One statement: a recursive skip scan that, after each entry, looks up the first entry
        at or above its term followed by 0x01 (above every ``term NUL key`` of that term). The
        term of an entry is cut as :func:`split_term` cuts it (a number's 9 bytes, else up to
        the first NUL); the same checks as :meth:`scan_terms` then end the list.
        """
        upper = _successor(prefix) if prefix else None
        if stop is not None:
            bound = _stop_bound(stop)
            upper = bound if upper is None else min(upper, bound)
        rows = self._fetch(_DISTINCT_TERMS, int(level), tag, start, upper, limit)
        out: list[tuple[bytes, bytes]] = []
        for row in rows:
            term, pk = split_term(bytes(row["entry"]))
            if (stop is not None and term >= stop) or not term.startswith(prefix):
                break
            out.append((term, pk))
        return out

    def term_entries_from(
        self, level: Level, tag: int, terms: list[bytes], start: bytes, limit: int
    ) -> list[list[bytes]]:
        """For each term, the keys having it that are ``>= start``, in order, at most ``limit``.

        One statement: a lateral index scan per term, from ``term NUL start`` to ``term 0x01``.
        """
        if not terms:
            return []
        rows = self._fetch(_TERM_ENTRIES_FROM, int(level), tag, terms, start, limit)
        out: list[list[bytes]] = [[] for _ in terms]
        for row in rows:
            number = row["n"] - 1
            out[number].append(bytes(row["entry"])[len(terms[number]) + 1 :])
        return out

    def having_terms(
        self, level: Level, tag: int, terms: list[bytes], candidates: set[bytes]
    ) -> set[bytes]:
        """The candidates whose record at ``level`` has one of ``terms`` for ``tag``.

        Candidates are keys of that level or below (an instance is checked through its
        study's entries for a study attribute): one statement looks up every entry.
        """
        owners: dict[bytes, list[bytes]] = {}
        for pk in candidates:
            owners.setdefault(keys.SEP.join(pk.split(keys.SEP)[: int(level)]), []).append(pk)
        if not owners or not terms:
            return set()
        entries = [term + keys.SEP + owner for owner in sorted(owners) for term in terms]
        rows = self._fetch(
            "SELECT entry FROM index_terms WHERE level = $1 AND tag = $2 "
            "AND entry = ANY($3::bytea[])",
            int(level),
            tag,
            entries,
        )
        out: set[bytes] = set()
        for row in rows:
            owner = split_term(bytes(row["entry"]))[1]
            out.update(owners.get(owner, ()))
        return out

    def term_entries(self, level: Level, tag: int, term: bytes) -> list[bytes]:
        """Primary keys of records whose attribute ``tag`` has exactly index term ``term``."""
        return [pk for _, pk in self.scan_terms(level, tag, term, term + keys.SEP)]

    def record_keys(
        self, level: Level, prefix: bytes = b"", after: bytes = b"", limit: int | None = None
    ) -> list[bytes]:
        """Primary keys of the records of a level that start with ``prefix``, in order.

        Only keys above ``after`` (when given), and at most ``limit`` of them.
        """
        lower, upper = _range(prefix)
        rows = self._fetch(
            f"SELECT key FROM {_TABLES[level]} WHERE key >= $1 AND key > $2 "
            "AND ($3::bytea IS NULL OR key < $3) ORDER BY key LIMIT $4",
            lower,
            after,
            upper,
            limit,
        )
        return [bytes(row["key"]) for row in rows]

    def record_map(self, level: Level, primary_keys: list[bytes]) -> dict[bytes, bytes]:
        """The serialized records of a level by key, read in one statement (missing skipped)."""
        if not primary_keys:
            return {}
        rows = self._fetch(
            f"SELECT key, record FROM {_TABLES[level]} "
            "WHERE key = ANY($1::bytea[]) AND record IS NOT NULL",
            primary_keys,
        )
        return {bytes(row["key"]): bytes(row["record"]) for row in rows}

    # -- the change log ----------------------------------------------------------------------

    def changes(self, after: int, limit: int) -> list[Change]:
        """Change log entries with a sequence above ``after``, at most ``limit``.

        Each entry's state says whether the instance is still as the entry left it: current,
        replaced by a later version, or deleted (read with the entries, in one statement).
        """
        return self._changes(
            "SELECT c.sequence, c.record, i.record AS instance FROM index_changes c "
            "LEFT JOIN instances i ON i.key = c.key "
            "WHERE c.sequence > $1 ORDER BY c.sequence LIMIT $2",
            after,
            limit,
        )

    def latest_change(self) -> Change | None:
        """The newest change log entry, or ``None`` when the log is empty."""
        found = self._changes(
            "SELECT c.sequence, c.record, i.record AS instance FROM index_changes c "
            "LEFT JOIN instances i ON i.key = c.key ORDER BY c.sequence DESC LIMIT 1"
        )
        return found[0] if found else None

    def _changes(self, query: str, *args: object) -> list[Change]:
        out = []
        for row in self._fetch(query, *args):
            record = records_pb2.ChangeRecord.FromString(bytes(row["record"]))
            if row["instance"] is None:
                state = ChangeState.DELETED
            elif (
                records_pb2.InstanceRecord.FromString(bytes(row["instance"])).version
                == record.version
            ):
                state = ChangeState.CURRENT
            else:
                state = ChangeState.REPLACED
            out.append(
                Change(
                    sequence=row["sequence"],
                    action=_ACTIONS[record.kind],
                    study_uid=record.study_instance_uid,
                    series_uid=record.series_instance_uid,
                    sop_uid=record.sop_instance_uid,
                    version=record.version,
                    time_us=record.time.ToMicroseconds(),
                    state=state,
                )
            )
        return out

    # -- writes ------------------------------------------------------------------------------

    async def add_instance(self, new: NewInstance) -> int:
        """Index a persisted instance in one transaction; return its version.

        Raises the ``ServiceError`` 45070 when the SOP instance is stored already (in this
        series or anywhere). The record's ``stored_at_us`` is kept when set, else it is now.
        """

        async def store() -> int:
            version, stored = await self.backend.transact(
                lambda connection: self._add(connection, _copy(new))
            )
            self.backend.committed()
            new.record.CopyFrom(stored)
            return version

        return await self.backend.arun(store())

    async def _lock_study(
        self, connection: asyncpg.Connection, stkey: bytes, *, create: bool
    ) -> asyncpg.Record | None:
        """Lock a study's row, created first when ``create``; ``None``: there is no such study.

        The row returned has the study's record, a new version (when ``create``) and the
        extended query tags as the transaction reads them.
        """
        # The tag list is locked (shared) by a statement of its own, before it is read: a
        # registration then commits before this transaction reads the tags, or after it ends.
        if create:
            await connection.execute(
                "WITH tags AS (SELECT pg_advisory_xact_lock_shared($2)) "
                "INSERT INTO studies (key) SELECT $1 FROM tags ON CONFLICT DO NOTHING",
                stkey,
                TAGS_LOCK,
            )
        else:
            await connection.execute("SELECT pg_advisory_xact_lock_shared($1)", TAGS_LOCK)
        while True:
            # The version is drawn under the lock: versions grow in each study's commit order.
            row: asyncpg.Record | None = await connection.fetchrow(
                "SELECT s.record, "
                + ("nextval('instance_version')" if create else "0")
                + " AS version, ARRAY(SELECT record FROM query_tags ORDER BY hex_tag) AS tags "
                "FROM studies s WHERE s.key = $1 FOR UPDATE OF s",
                stkey,
            )
            # A row deleted while this waited for its lock is not returned: create it again.
            if row is not None or not create:
                return row
            await connection.execute(
                "INSERT INTO studies (key) VALUES ($1) ON CONFLICT DO NOTHING", stkey
            )

    async def _add(
        self, connection: asyncpg.Connection, new: NewInstance
    ) -> tuple[int, records_pb2.InstanceRecord]:
        """The store's transaction (see module); it may run several times, on copies of new."""
        stkey = keys.study_key(new.study_uid)
        skey = keys.series_key(new.study_uid, new.series_uid)
        ikey = keys.instance_key(new.study_uid, new.series_uid, new.sop_uid)
        locked = await self._lock_study(connection, stkey, create=True)
        assert locked is not None
        version: int = locked["version"]
        extended = [records_pb2.QueryTagRecord.FromString(raw) for raw in locked["tags"]]
        old_study = (
            None
            if locked["record"] is None
            else records_pb2.StudyRecord.FromString(locked["record"])
        )
        now_us = time.time_ns() // 1000
        record = new.record
        record.version = version
        record.stored_at_us = record.stored_at_us or now_us
        add_extended(new, extended)
        found = await connection.fetchrow(
            "WITH added AS ("
            "  INSERT INTO instances (key, sop_uid, blob_id, record, metadata, frames)"
            "  VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING true"
            ") SELECT (SELECT true FROM added) AS added, "
            "(SELECT record FROM series WHERE key = $7) AS series",
            ikey,
            new.sop_uid,
            record.blob_id,
            record.SerializeToString(),
            new.metadata,
            None if new.frames is None else new.frames.SerializeToString(),
            skey,
        )
        if not found["added"]:
            await self._refuse_duplicate(connection, new, ikey)
        old_series = (
            None
            if found["series"] is None
            else records_pb2.SeriesRecord.FromString(found["series"])
        )
        series_record = stored_series(old_series, new, version)
        study_record = stored_study(old_study, new, old_series is None, version)
        write = _Write(study_key=stkey, study=study_record.SerializeToString())
        write.terms(Level.INSTANCE, ikey, set(), record_terms(Level.INSTANCE, record, extended))
        write.terms(
            Level.SERIES, skey, *term_changes(Level.SERIES, old_series, series_record, extended)
        )
        write.terms(
            Level.STUDY, stkey, *term_changes(Level.STUDY, old_study, study_record, extended)
        )
        write.written_series.append((skey, series_record.SerializeToString()))
        write.changes.append(_change(records_pb2.CHANGE_KIND_CREATED, ikey, version, now_us))
        write.studies = 1 if old_study is None else 0
        write.series = 1 if old_series is None else 0
        write.instances = 1
        await connection.execute(_WRITE, *write.arguments())
        return version, record

    @staticmethod
    async def _refuse_duplicate(
        connection: asyncpg.Connection, new: NewInstance, ikey: bytes
    ) -> None:
        """Raise the 45070 of a SOP instance already stored, naming where it is."""
        raw = await connection.fetchval("SELECT key FROM instances WHERE sop_uid = $1", new.sop_uid)
        if raw is None or bytes(raw) == ikey:
            raise instance_exists_error(new.study_uid, new.series_uid, new.sop_uid)
        study, series, _ = keys.split_key(raw)
        raise instance_exists_error(
            new.study_uid, new.series_uid, new.sop_uid, where=f"{study}, series {series}"
        )

    async def delete(self, study: str, series: str = "", sop: str = "") -> list[str]:
        """Remove a study, series or instance from the index in one transaction.

        Returns the blob ids of the files to remove once the transaction has committed. The
        same transaction records them as pending removals, so that a crash before they are gone
        leaves files start-up can prove are garbage; :meth:`forget_removals` clears the records
        once they are. Raises NOT_FOUND when nothing matches.
        """

        async def remove() -> list[str]:
            blob_ids = await self.backend.transact(
                lambda connection: self._delete(connection, study, series, sop)
            )
            self.backend.committed()
            return blob_ids

        return await self.backend.arun(remove())

    async def _delete(
        self, connection: asyncpg.Connection, study: str, series: str, sop: str
    ) -> list[str]:
        stkey = keys.study_key(study)
        locked = await self._lock_study(connection, stkey, create=False)
        if locked is None:
            raise not_stored_error(study, series, sop)
        extended = [records_pb2.QueryTagRecord.FromString(raw) for raw in locked["tags"]]
        if sop:
            rows = await connection.fetch(
                "DELETE FROM instances WHERE key = $1 RETURNING key, record",
                keys.instance_key(study, series, sop),
            )
        else:
            lower, upper = _range(
                keys.child_prefix(keys.series_key(study, series) if series else stkey)
            )
            rows = await connection.fetch(
                "DELETE FROM instances WHERE key >= $1 AND key < $2 RETURNING key, record",
                lower,
                upper,
            )
        if not rows:
            raise not_stored_error(study, series, sop)
        now_us = time.time_ns() // 1000
        write = _Write(study_key=stkey)
        removal = Removal()
        blob_ids = []
        for row in sorted(rows, key=lambda r: bytes(r["key"])):  # LMDB's order: key order
            ikey = bytes(row["key"])
            record = records_pb2.InstanceRecord.FromString(bytes(row["record"]))
            write.terms(Level.INSTANCE, ikey, record_terms(Level.INSTANCE, record, extended), set())
            write.removals.append((record.blob_id, ikey))
            write.changes.append(
                _change(records_pb2.CHANGE_KIND_DELETED, ikey, record.version, now_us)
            )
            blob_ids.append(record.blob_id)
            removal.add(keys.split_key(ikey)[1], record)
        series_rows = await connection.fetch(
            "SELECT key, record FROM series WHERE key = ANY($1::bytea[])",
            [keys.series_key(study, uid) for uid in removal.per_series],
        )
        emptied = 0
        for row in series_rows:
            skey = bytes(row["key"])
            old = records_pb2.SeriesRecord.FromString(bytes(row["record"]))
            updated = series_after_removal(old, removal.per_series[keys.split_key(skey)[1]])
            if updated is None:
                write.terms(Level.SERIES, skey, *term_changes(Level.SERIES, old, None, extended))
                write.removed_series.append(skey)
                emptied += 1
            else:
                write.written_series.append((skey, updated.SerializeToString()))
        if locked["record"] is not None:
            old_study = records_pb2.StudyRecord.FromString(locked["record"])
            updated_study = study_after_removal(old_study, removal, emptied)
            write.terms(
                Level.STUDY, stkey, *term_changes(Level.STUDY, old_study, updated_study, extended)
            )
            if updated_study is not None:
                write.study = updated_study.SerializeToString()
            else:
                write.studies = -1
        write.series = -emptied
        write.instances = -len(rows)
        await connection.execute(_WRITE, *write.arguments())
        return blob_ids

    # -- extended query tags (see .query_tags) -----------------------------------------------

    def query_tags(self) -> list[records_pb2.QueryTagRecord]:
        """The extended query tags, in tag order."""
        rows = self._fetch("SELECT record FROM query_tags ORDER BY hex_tag")
        return [records_pb2.QueryTagRecord.FromString(bytes(row["record"])) for row in rows]

    def operation(self, operation_id: str) -> records_pb2.ReindexOperation | None:
        """A re-indexing operation, or None when there is no such operation.

        An id PostgreSQL text cannot hold (a NUL) names none, as an id LMDB could not key does
        not: operation ids are hex, and a request naming another gets NOT_FOUND, not an error.
        """
        if not operation_id or "\x00" in operation_id:
            return None
        raw = self._bytes(
            "SELECT record FROM reindex_operations WHERE operation_id = $1", operation_id
        )
        return None if raw is None else records_pb2.ReindexOperation.FromString(raw)

    def operations(self) -> list[records_pb2.ReindexOperation]:
        """Every re-indexing operation (finished ones included), by id."""
        rows = self._fetch("SELECT record FROM reindex_operations ORDER BY operation_id")
        return [records_pb2.ReindexOperation.FromString(bytes(row["record"])) for row in rows]

    def pending_drops(self) -> list[str]:
        """The query tags whose removal is unfinished (8 hex digits each)."""
        return [row["hex_tag"] for row in self._fetch("SELECT hex_tag FROM query_tag_drops")]

    async def add_query_tags(
        self, tags: list[records_pb2.QueryTagRecord], operation: records_pb2.ReindexOperation
    ) -> records_pb2.ReindexOperation:
        """Register new query tags (not ready) and the operation that will re-index for them.

        Raises ALREADY_EXISTS, naming the tag, when one of them is registered already. From the
        commit on, every store on every node indexes the new tags.
        """
        return await self._transact(
            lambda connection: query_tags.add_query_tags(connection, tags, operation)
        )

    async def reindex_batch(self, operation_id: str, limit: int) -> records_pb2.ReindexOperation:
        """Index up to ``limit`` more instances for an operation's tags; ready at the end."""
        return await self._transact(
            lambda connection: query_tags.reindex_batch(connection, operation_id, limit)
        )

    async def drop_query_tag(self, hex_tag: str, limit: int) -> bool:
        """Remove an extended query tag, ``limit`` index entries per call; True when all gone."""
        return await self._transact(
            lambda connection: query_tags.drop_query_tag(connection, hex_tag, limit)
        )

    async def carry_query_tags(
        self,
        tags: list[records_pb2.QueryTagRecord],
        operations: list[records_pb2.ReindexOperation],
    ) -> None:
        """Register tags and operations copied from another index as they are (``migrate``)."""
        await self._transact(
            lambda connection: query_tags.carry_query_tags(connection, tags, operations)
        )

    # -- DIMSE peers (dicomrpc_server.peers.PeerRecords) -------------------------------------

    def dimse_peers(self) -> list[records_pb2.DimsePeerRecord]:
        """Every DIMSE peer added at run time on any node, by name."""
        rows = self._fetch("SELECT record FROM dimse_peers ORDER BY name")
        return [records_pb2.DimsePeerRecord.FromString(bytes(row["record"])) for row in rows]

    async def put_dimse_peer(self, record: records_pb2.DimsePeerRecord) -> None:
        """Keep a DIMSE peer, replacing the one of its name."""

        async def put(connection: asyncpg.Connection) -> None:
            await connection.execute(
                "INSERT INTO dimse_peers (name, record) VALUES ($1, $2) "
                "ON CONFLICT (name) DO UPDATE SET record = EXCLUDED.record",
                record.name,
                record.SerializeToString(),
            )

        await self.backend.arun(self.backend.transact(put))

    async def delete_dimse_peer(self, name: str) -> bool:
        """Forget a DIMSE peer; whether there was one."""

        async def delete(connection: asyncpg.Connection) -> bool:
            removed = await connection.fetchval(
                "DELETE FROM dimse_peers WHERE name = $1 RETURNING true", name
            )
            return bool(removed)

        return await self.backend.arun(self.backend.transact(delete))

    async def _transact(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        async def run() -> T:
            result: T = await self.backend.transact(work)
            self.backend.committed()
            return result

        return await self.backend.arun(run())

    def forget_removals(self, blob_ids: list[str]) -> concurrent.futures.Future[None]:
        """Clear the pending-removal records of files now removed.

        Returns the future of the write; nobody needs to wait for it: a record that outlives a
        crash only makes start-up remove a file that is gone already. :meth:`close` waits.
        """

        async def forget() -> None:
            await self.backend.fetch(
                "DELETE FROM instance_removals WHERE blob_id = ANY($1::text[])", list(blob_ids)
            )

        future = self.backend.submit(forget())
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return future

    def close(self) -> None:
        """Wait for the removal records being cleared, then close the backend."""
        concurrent.futures.wait(list(self._pending), timeout=30)
        self.backend.close()
