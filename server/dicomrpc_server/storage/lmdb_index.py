"""The embedded index: one LMDB environment with a named sub-database per kind of record.

Sub-databases (keys in :mod:`.keys`):

=============  ======================  =========================================================
name           key                     value
=============  ======================  =========================================================
``meta``       setting name            counters (``version``, ``change``) and the schema version
``studies``    study                   ``StudyRecord``
``series``     study/series            ``SeriesRecord``
``instances``  study/series/sop        ``InstanceRecord``
``sops``       sop                     study/series/sop: the UID map
``blobs``      blob id                 study/series/sop: which files the index references
``removals``   blob id                 study/series/sop: files of deleted instances still to be
                                       removed (recorded by the delete, cleared once removed)
``metadata``   study/series/sop        ``dicomrpc.v1.Dataset``: pre-computed metadata
``frames``     study/series/sop        ``FrameTable``: the byte ranges of every frame
``terms``      level/tag/term/pk       empty: secondary indexes, scanned with ``set_range``
``changes``    sequence                ``ChangeRecord``: the change feed
``query_tags`` 8 hex digits            ``QueryTagRecord``: the extended query tags
``operations`` operation id            ``ReindexOperation``: background re-indexing progress
``workitems``  workitem UID            ``dicomrpc.v1.Dataset``: a UPS (:mod:`..ups.store`)
``wi_events``  sequence                a workitem event (:mod:`..ups.store`)
``peers``      peer name               ``DimsePeerRecord``: a DIMSE peer added at run time
``ups_subscribers``  AE title          ``UpsSubscriberRecord``: DIMSE UPS event delivery
``ups_subscriptions``  AE/workitem     ``UpsSubscriptionRecord``: a DIMSE UPS subscription
=============  ======================  =========================================================

Reads run on the caller's thread in short read transactions; writes go through the
:class:`~.writer.IndexWriter`.

Several processes may open one environment (``dicomrpc serve --processes N``): LMDB serializes
their write transactions, the counters and sequences are read and advanced inside them, and a
map enlarged by one process is adopted by the others when their next transaction finds it
resized (``MDB_MAP_RESIZED``). Commit listeners hear the other processes' commits through
:mod:`.wakeups`.
"""

from __future__ import annotations

import concurrent.futures
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import lmdb

from dicomrpc.v1 import dataset_pb2
from dicomrpc_server.dicom.attributes import Level
from dicomrpc_server.query.extended import unknown_operation
from dicomrpc_server.storage import keys, records_pb2
from dicomrpc_server.storage.index_records import (
    MAX_QUERY_TAGS,
    RECORD_TYPES,
    Record,
    Removal,
    add_extended,
    instance_exists_error,
    kept_by_level,
    not_stored_error,
    query_tag_exists_error,
    query_tag_removing_error,
    record_terms,
    reindexed,
    series_after_removal,
    split_term,
    stored_series,
    stored_study,
    strip_tag,
    studies_of_series,
    study_after_removal,
    term_changes,
    too_many_query_tags_error,
)
from dicomrpc_server.storage.protocols import (
    Change,
    ChangeAction,
    ChangeState,
    IndexCounts,
    NewInstance,
)
from dicomrpc_server.storage.wakeups import Wakeups
from dicomrpc_server.storage.writer import IndexWriter

SCHEMA_VERSION = 1
_DB_NAMES = (
    "meta",
    "studies",
    "series",
    "instances",
    "sops",
    "blobs",
    "removals",
    "metadata",
    "frames",
    "terms",
    "changes",
    "query_tags",
    "operations",
    "workitems",
    "wi_events",
    "peers",
    "ups_subscribers",
    "ups_subscriptions",
)
# "meta" keys of query tags being removed (the removal resumes at start-up).
DROPPING = b"dropping\x00"
_LEVEL_DB = {Level.STUDY: "studies", Level.SERIES: "series", Level.INSTANCE: "instances"}
_ACTIONS = {
    records_pb2.CHANGE_KIND_CREATED: ChangeAction.CREATED,
    records_pb2.CHANGE_KIND_DELETED: ChangeAction.DELETED,
}


def _get(txn: lmdb.Transaction, key: bytes, db: lmdb._Database) -> bytes | None:
    """A value as ``bytes`` (the environment is opened without buffers), or ``None``."""
    value = txn.get(key, db=db)
    return None if value is None else bytes(value)


class _ReadGate:
    """Lets the writer enlarge the map only while no read transaction is open."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._resizing = False

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._resizing = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


class LmdbIndex:
    """The :class:`~dicomrpc_server.storage.protocols.Index` on LMDB.

    Parameters
    ----------
    path
        The environment's directory.
    map_size
        The map size reserved up front (address space, not disk); doubled whenever full.
    max_readers
        Reader slots, sized for peak concurrent streams.
    max_batch
        The most writes grouped into one commit.
    before_commit
        Called inside every write transaction before it commits (the blob store's sync).
    wakeups
        The folder of the wake-up pipes when other processes share the environment (see
        :mod:`.wakeups`); ``None`` when this process is its only user.
    """

    def __init__(
        self,
        path: Path,
        *,
        map_size: int,
        max_readers: int,
        max_batch: int,
        before_commit: Callable[[], None],
        wakeups: Path | None = None,
    ) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=len(_DB_NAMES) + 4,
            max_readers=max_readers,
            sync=True,
            metasync=True,
            readahead=False,
        )
        self.env.reader_check()
        self._db = {name: self.env.open_db(name.encode()) for name in _DB_NAMES}
        self._gate = _ReadGate()
        with self.env.begin(write=True) as txn:
            stored = _get(txn, b"schema", self._db["meta"])
            if stored is None:
                txn.put(b"schema", struct.pack(">I", SCHEMA_VERSION), db=self._db["meta"])
            elif struct.unpack(">I", stored)[0] != SCHEMA_VERSION:
                raise RuntimeError(
                    f"the index at {path} has schema {struct.unpack('>I', stored)[0]}, "
                    f"this server reads {SCHEMA_VERSION}"
                )
        self.writer = IndexWriter(
            self.env,
            before_commit=before_commit,
            grow=self._grow,
            adopt=self._adopt,
            hold=self._gate.reading,
            max_batch=max_batch,
        )
        self._listeners: list[Callable[[], None]] = []
        self.wakeups = None if wakeups is None else Wakeups(wakeups, self._committed_elsewhere)
        if self.wakeups is not None:
            self.writer.add_listener(self.wakeups.notify)

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every commit, this process's or another's.

        It runs on the index writer's thread or the wake-up thread, possibly both at once: it
        must not block, and it reads what changed from the index, never from the call.
        """
        self._listeners.append(listener)
        self.writer.add_listener(listener)

    def _committed_elsewhere(self) -> None:
        for listener in self._listeners:
            listener()

    def database(self, name: str) -> lmdb._Database:
        """The handle of a named sub-database, for the cores that keep records of their own."""
        return self._db[name]

    # -- reads -------------------------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[lmdb.Transaction]:
        """A short read transaction; copy what you need out of it before yielding to a client."""
        while True:
            with self._gate.reading():
                try:
                    txn = self.env.begin(buffers=False)
                except lmdb.MapResizedError:  # another process enlarged the map
                    pass
                else:
                    with txn:
                        yield txn
                    return
            self._adopt()

    def get_instance(self, study: str, series: str, sop: str) -> records_pb2.InstanceRecord | None:
        """The record of an instance, or ``None``."""
        with self.read() as txn:
            raw = _get(txn, keys.instance_key(study, series, sop), self._db["instances"])
        return None if raw is None else records_pb2.InstanceRecord.FromString(raw)

    def locate_sop(self, sop: str) -> tuple[str, str] | None:
        """The (study, series) holding a SOP instance UID, or ``None``."""
        with self.read() as txn:
            raw = _get(txn, sop.encode("ascii"), self._db["sops"])
        if raw is None:
            return None
        study, series, _ = keys.split_key(raw)
        return study, series

    def has_blob(self, blob_id: str) -> bool:
        """Whether an index entry references the blob."""
        with self.read() as txn:
            return _get(txn, blob_id.encode("ascii"), self._db["blobs"]) is not None

    def blob_ids(self) -> set[str]:
        """Every referenced blob id (for consistency checks)."""
        with self.read() as txn:
            return {
                bytes(k).decode("ascii")
                for k in txn.cursor(db=self._db["blobs"]).iternext(values=False)
            }

    def blob_instance(self, blob_id: str) -> tuple[str, str, str] | None:
        """The (study, series, SOP instance) UIDs of the instance a blob holds, or ``None``."""
        with self.read() as txn:
            raw = _get(txn, blob_id.encode("ascii"), self._db["blobs"])
        if raw is None:
            return None
        study, series, sop = keys.split_key(raw)
        return study, series, sop

    def pending_removals(self) -> list[str]:
        """Blob ids of deleted instances whose files may not be removed yet."""
        with self.read() as txn:
            cursor = txn.cursor(db=self._db["removals"])
            return [bytes(k).decode("ascii") for k in cursor.iternext(values=False)]

    def held_instances(self) -> bool:
        """Whether an instance was ever indexed here (an index made empty by deletes was)."""
        with self.read() as txn:
            return _get(txn, b"version", self._db["meta"]) is not None

    def get_meta(self, name: bytes) -> bytes | None:
        """A value of the ``meta`` sub-database (settings and state of the index itself)."""
        with self.read() as txn:
            return _get(txn, name, self._db["meta"])

    def counts(self) -> IndexCounts:
        """The number of studies, series and instances."""
        with self.read() as txn:
            return IndexCounts(
                studies=txn.stat(self._db["studies"])["entries"],
                series=txn.stat(self._db["series"])["entries"],
                instances=txn.stat(self._db["instances"])["entries"],
            )

    def stored_bytes(self, batch: int = 10_000) -> int:
        """The sum of every stored instance's file size, walked ``batch`` records at a time.

        Each batch is its own short read transaction, so that a walk of a large archive never
        holds pages writers would reuse.
        """
        total = 0
        after: bytes | None = None
        while True:
            with self.read() as txn:
                cursor = txn.cursor(db=self._db["instances"])
                found = cursor.set_range(after) if after is not None else cursor.first()
                if found and after is not None and bytes(cursor.key()) == after:
                    found = cursor.next()
                count = 0
                while found and count < batch:
                    total += records_pb2.InstanceRecord.FromString(bytes(cursor.value())).size_bytes
                    after = bytes(cursor.key())
                    count += 1
                    found = cursor.next()
            if not found:
                return total

    def get_metadata(self, study: str, series: str, sop: str) -> dataset_pb2.Dataset | None:
        """The pre-computed metadata of an instance, or ``None``."""
        with self.read() as txn:
            raw = _get(txn, keys.instance_key(study, series, sop), self._db["metadata"])
        return None if raw is None else dataset_pb2.Dataset.FromString(raw)

    def get_frames(self, study: str, series: str, sop: str) -> records_pb2.FrameTable | None:
        """The frame offset table of an instance, or ``None``."""
        with self.read() as txn:
            raw = _get(txn, keys.instance_key(study, series, sop), self._db["frames"])
        return None if raw is None else records_pb2.FrameTable.FromString(raw)

    def get_study(self, study: str) -> records_pb2.StudyRecord | None:
        """The record of a study, or ``None``."""
        with self.read() as txn:
            raw = _get(txn, keys.study_key(study), self._db["studies"])
        return None if raw is None else records_pb2.StudyRecord.FromString(raw)

    def get_series(self, study: str, series: str) -> records_pb2.SeriesRecord | None:
        """The record of a series, or ``None``."""
        with self.read() as txn:
            raw = _get(txn, keys.series_key(study, series), self._db["series"])
        return None if raw is None else records_pb2.SeriesRecord.FromString(raw)

    def list_instances(
        self, study: str, series: str | None = None
    ) -> list[tuple[str, str, str, records_pb2.InstanceRecord]]:
        """The instances of a study (or of one of its series), in key order, with records."""
        prefix = keys.child_prefix(
            keys.series_key(study, series) if series is not None else keys.study_key(study)
        )
        out = []
        with self.read() as txn:
            cursor = txn.cursor(db=self._db["instances"])
            if cursor.set_range(prefix):
                for raw_key, value in cursor:
                    key = bytes(raw_key)
                    if not key.startswith(prefix):
                        break
                    study_uid, series_uid, sop_uid = keys.split_key(key)
                    record = records_pb2.InstanceRecord.FromString(bytes(value))
                    out.append((study_uid, series_uid, sop_uid, record))
        return out

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

        The scan ends before the first term that is ``>= stop`` or does not start with
        ``prefix``, or after ``limit`` pairs: exact values, prefixes and ranges are all one
        ordered range scan.
        """
        base = keys.term_prefix(level, tag, b"")
        out: list[tuple[bytes, bytes]] = []
        with self.read() as txn:
            cursor = txn.cursor(db=self._db["terms"])
            if not cursor.set_range(base + start):
                return out
            for raw_key in cursor.iternext(values=False):
                key = bytes(raw_key)
                if not key.startswith(base):
                    break
                term, pk = split_term(key[len(base) :])
                if (stop is not None and term >= stop) or not term.startswith(prefix):
                    break
                out.append((term, pk))
                if limit is not None and len(out) >= limit:
                    break
        return out

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

        One read transaction; after each term the cursor jumps to ``term + 0x01``, which sorts
        above every entry of the term (``term NUL key``) and at or below every greater term.
        """
        base = keys.term_prefix(level, tag, b"")
        out: list[tuple[bytes, bytes]] = []
        with self.read() as txn:
            cursor = txn.cursor(db=self._db["terms"])
            position = base + start
            while cursor.set_range(position):
                key = bytes(cursor.key())
                if not key.startswith(base):
                    break
                term, pk = split_term(key[len(base) :])
                if (stop is not None and term >= stop) or not term.startswith(prefix):
                    break
                out.append((term, pk))
                if limit is not None and len(out) >= limit:
                    break
                position = base + term + b"\x01"
        return out

    def term_entries_from(
        self, level: Level, tag: int, terms: list[bytes], start: bytes, limit: int
    ) -> list[list[bytes]]:
        """For each term, the keys having it that are ``>= start``, in order, at most ``limit``.

        One read transaction and one cursor for all the terms.
        """
        base = keys.term_prefix(level, tag, b"")
        out: list[list[bytes]] = []
        with self.read() as txn:
            cursor = txn.cursor(db=self._db["terms"])
            for term in terms:
                head = base + term + keys.SEP
                found: list[bytes] = []
                if cursor.set_range(head + start):
                    for raw_key in cursor.iternext(values=False):
                        key = bytes(raw_key)
                        if not key.startswith(head):
                            break
                        found.append(key[len(head) :])
                        if len(found) >= limit:
                            break
                out.append(found)
        return out

    def having_terms(
        self, level: Level, tag: int, terms: list[bytes], candidates: set[bytes]
    ) -> set[bytes]:
        """The candidates whose record at ``level`` has one of ``terms`` for ``tag``.

        Candidates are keys of that level or below (an instance is checked through its
        study's entries for a study attribute): one point lookup per distinct record.
        """
        out: set[bytes] = set()
        owners: dict[bytes, bool] = {}
        db = self._db["terms"]
        with self.read() as txn:
            for pk in candidates:
                owner = keys.SEP.join(pk.split(keys.SEP)[: int(level)])
                has = owners.get(owner)
                if has is None:
                    has = any(
                        txn.get(keys.term_key(level, tag, term, owner), db=db) is not None
                        for term in terms
                    )
                    owners[owner] = has
                if has:
                    out.add(pk)
        return out

    def term_entries(self, level: Level, tag: int, term: bytes) -> list[bytes]:
        """Primary keys of records whose attribute ``tag`` has exactly index term ``term``."""
        return [pk for _, pk in self.scan_terms(level, tag, term, term + keys.SEP)]

    def record_keys(
        self, level: Level, prefix: bytes = b"", after: bytes = b"", limit: int | None = None
    ) -> list[bytes]:
        """Primary keys of the records of a level that start with ``prefix``, in order.

        Only keys above ``after`` (when given), and at most ``limit`` of them: a page of a
        level's records costs what the page holds, wherever it starts.
        """
        out: list[bytes] = []
        with self.read() as txn:
            cursor = txn.cursor(db=self._db[_LEVEL_DB[level]])
            if cursor.set_range(max(prefix, after)):
                for raw_key in cursor.iternext(values=False):
                    key = bytes(raw_key)
                    if not key.startswith(prefix):
                        break
                    if key == after:
                        continue
                    out.append(key)
                    if limit is not None and len(out) >= limit:
                        break
        return out

    def record_map(self, level: Level, primary_keys: list[bytes]) -> dict[bytes, bytes]:
        """The serialized records of a level by key, read in one transaction (missing skipped)."""
        out = {}
        with self.read() as txn:
            db = self._db[_LEVEL_DB[level]]
            for pk in primary_keys:
                raw = _get(txn, pk, db)
                if raw is not None:
                    out[pk] = raw
        return out

    def get_metadata_many(self, keys_: list[tuple[str, str, str]]) -> list[bytes]:
        """The pre-computed metadata of several instances, read in one transaction.

        Each is a serialized ``Dataset`` as stored, not parsed: gRPC sends it as it is.
        """
        out = []
        with self.read() as txn:
            for study, series, sop in keys_:
                raw = _get(txn, keys.instance_key(study, series, sop), self._db["metadata"])
                if raw is not None:
                    out.append(raw)
        return out

    def changes(self, after: int, limit: int) -> list[Change]:
        """Change log entries with a sequence above ``after``, at most ``limit``.

        Each entry's state says whether the instance is still as the entry left it: current,
        replaced by a later version, or deleted.
        """
        out = []
        with self.read() as txn:
            cursor = txn.cursor(db=self._db["changes"])
            if cursor.set_range(keys.sequence_key(after + 1)):
                for _, value in cursor:
                    record = records_pb2.ChangeRecord.FromString(bytes(value))
                    uids = (
                        record.study_instance_uid,
                        record.series_instance_uid,
                        record.sop_instance_uid,
                    )
                    raw = _get(txn, keys.instance_key(*uids), self._db["instances"])
                    if raw is None:
                        state = ChangeState.DELETED
                    elif records_pb2.InstanceRecord.FromString(raw).version == record.version:
                        state = ChangeState.CURRENT
                    else:
                        state = ChangeState.REPLACED
                    out.append(
                        Change(
                            sequence=record.sequence,
                            action=_ACTIONS[record.kind],
                            study_uid=uids[0],
                            series_uid=uids[1],
                            sop_uid=uids[2],
                            version=record.version,
                            time_us=record.time.ToMicroseconds(),
                            state=state,
                        )
                    )
                    if len(out) >= limit:
                        break
        return out

    def latest_change(self) -> Change | None:
        """The newest change feed entry, or ``None`` when the feed is empty."""
        with self.read() as txn:
            cursor = txn.cursor(db=self._db["changes"])
            if not cursor.last():
                return None
            sequence = struct.unpack(">Q", bytes(cursor.key()))[0]
        found = self.changes(sequence - 1, 1)
        return found[0] if found else None

    # -- writes ------------------------------------------------------------------------------

    def query_tags(self) -> list[records_pb2.QueryTagRecord]:
        """The extended query tags, in tag order."""
        with self.read() as txn:
            return self._query_tags(txn)

    def operation(self, operation_id: str) -> records_pb2.ReindexOperation | None:
        """A re-indexing operation, or None when there is no such operation.

        An id that could not be a key (empty, or longer than LMDB's 511 bytes) names none.
        """
        key = operation_id.encode("utf-8")
        if not 0 < len(key) <= 511:
            return None
        with self.read() as txn:
            raw = _get(txn, key, self._db["operations"])
        return records_pb2.ReindexOperation.FromString(raw) if raw else None

    def operations(self) -> list[records_pb2.ReindexOperation]:
        """Every re-indexing operation (finished ones included)."""
        with self.read() as txn:
            cursor = txn.cursor(db=self._db["operations"])
            return [records_pb2.ReindexOperation.FromString(bytes(v)) for _, v in cursor]

    def pending_drops(self) -> list[str]:
        """The query tags whose removal a stopped server left unfinished (8 hex digits each)."""
        with self.read() as txn:
            cursor = txn.cursor(db=self._db["meta"])
            found = []
            if cursor.set_range(DROPPING):
                for raw_key in cursor.iternext(values=False):
                    key = bytes(raw_key)
                    if not key.startswith(DROPPING):
                        break
                    found.append(key[len(DROPPING) :].decode("ascii"))
            return found

    def _query_tags(self, txn: lmdb.Transaction) -> list[records_pb2.QueryTagRecord]:
        cursor = txn.cursor(db=self._db["query_tags"])
        return [records_pb2.QueryTagRecord.FromString(bytes(v)) for _, v in cursor]

    async def add_instance(self, new: NewInstance) -> int:
        """Index a persisted instance in one write transaction; return its version."""
        return await self.writer.run(lambda txn: self.add_instance_in(txn, new))

    def add_instance_in(self, txn: lmdb.Transaction, new: NewInstance) -> int:
        """Index a persisted instance in an open write transaction; return its version.

        The record's ``stored_at_us`` is kept when set (a rebuild gives the file's time), else
        it is now.
        """
        db = self._db
        ikey = keys.instance_key(new.study_uid, new.series_uid, new.sop_uid)
        if _get(txn, ikey, db["instances"]) is not None:
            raise instance_exists_error(new.study_uid, new.series_uid, new.sop_uid)
        elsewhere = _get(txn, new.sop_uid.encode("ascii"), db["sops"])
        if elsewhere is not None:
            study, series, _ = keys.split_key(elsewhere)
            raise instance_exists_error(
                new.study_uid, new.series_uid, new.sop_uid, where=f"{study}, series {series}"
            )
        version = self._next(txn, b"version")
        now_us = time.time_ns() // 1000
        record = new.record
        record.version = version
        record.stored_at_us = record.stored_at_us or now_us
        txn.put(ikey, record.SerializeToString(), db=db["instances"])
        txn.put(new.sop_uid.encode("ascii"), ikey, db=db["sops"])
        txn.put(record.blob_id.encode("ascii"), ikey, db=db["blobs"])
        txn.put(ikey, new.metadata, db=db["metadata"])
        if new.frames is not None:
            txn.put(ikey, new.frames.SerializeToString(), db=db["frames"])
        extended = self._query_tags(txn)
        add_extended(new, extended)
        self._put_terms(txn, Level.INSTANCE, ikey, record_terms(Level.INSTANCE, record, extended))

        skey = keys.series_key(new.study_uid, new.series_uid)
        raw_series = _get(txn, skey, db["series"])
        old_series = records_pb2.SeriesRecord.FromString(raw_series) if raw_series else None
        series_record = stored_series(old_series, new, version)
        self._replace_terms(txn, Level.SERIES, skey, old_series, series_record, extended)
        txn.put(skey, series_record.SerializeToString(), db=db["series"])

        stkey = keys.study_key(new.study_uid)
        raw_study = _get(txn, stkey, db["studies"])
        old_study = records_pb2.StudyRecord.FromString(raw_study) if raw_study else None
        study_record = stored_study(old_study, new, old_series is None, version)
        self._replace_terms(txn, Level.STUDY, stkey, old_study, study_record, extended)
        txn.put(stkey, study_record.SerializeToString(), db=db["studies"])

        self._append_change(
            txn,
            records_pb2.CHANGE_KIND_CREATED,
            (new.study_uid, new.series_uid, new.sop_uid),
            version,
            now_us,
        )
        return version

    async def delete(self, study: str, series: str = "", sop: str = "") -> list[str]:
        """Remove a study, series or instance from the index in one write transaction.

        Returns the blob ids of the files to remove once the transaction has committed. The
        same transaction records them as pending removals, so that a crash before they are gone
        leaves files start-up can prove are garbage; :meth:`forget_removals` clears the records
        once they are. Raises NOT_FOUND when nothing matches.
        """
        return await self.writer.run(lambda txn: self._delete(txn, study, series, sop))

    def forget_removals(self, blob_ids: list[str]) -> concurrent.futures.Future[None]:
        """Clear the pending-removal records of files now removed (committed with later writes).

        Returns the future of the write; nobody needs to wait for it: a record that outlives a
        crash only makes start-up remove a file that is gone already.
        """

        def forget(txn: lmdb.Transaction) -> None:
            for blob_id in blob_ids:
                txn.delete(blob_id.encode("ascii"), db=self._db["removals"])

        return self.writer.submit(forget)

    def _delete(self, txn: lmdb.Transaction, study: str, series: str, sop: str) -> list[str]:
        db = self._db
        if sop:
            ikey = keys.instance_key(study, series, sop)
            raw = _get(txn, ikey, db["instances"])
            doomed = [(ikey, raw)] if raw is not None else []
        else:
            prefix = keys.child_prefix(
                keys.series_key(study, series) if series else keys.study_key(study)
            )
            doomed = []
            cursor = txn.cursor(db=db["instances"])
            if cursor.set_range(prefix):
                for raw_key, value in cursor:
                    key = bytes(raw_key)
                    if not key.startswith(prefix):
                        break
                    doomed.append((key, bytes(value)))
        if not doomed:
            raise not_stored_error(study, series, sop)
        now_us = time.time_ns() // 1000
        extended = self._query_tags(txn)
        blob_ids = []
        removal = Removal()
        for ikey, raw in doomed:
            record = records_pb2.InstanceRecord.FromString(raw)
            study_uid, series_uid, sop_uid = keys.split_key(ikey)
            for tag, term in record_terms(Level.INSTANCE, record, extended):
                txn.delete(keys.term_key(Level.INSTANCE, tag, term, ikey), db=db["terms"])
            for name in ("instances", "metadata", "frames"):
                txn.delete(ikey, db=db[name])
            txn.delete(sop_uid.encode("ascii"), db=db["sops"])
            txn.delete(record.blob_id.encode("ascii"), db=db["blobs"])
            txn.put(record.blob_id.encode("ascii"), ikey, db=db["removals"])
            blob_ids.append(record.blob_id)
            removal.add(series_uid, record)
            self._append_change(
                txn,
                records_pb2.CHANGE_KIND_DELETED,
                (study_uid, series_uid, sop_uid),
                record.version,
                now_us,
            )
        emptied_series = 0
        for series_uid, removed in removal.per_series.items():
            skey = keys.series_key(study, series_uid)
            raw_series = _get(txn, skey, db["series"])
            if raw_series is None:
                continue
            old = records_pb2.SeriesRecord.FromString(raw_series)
            updated = series_after_removal(old, removed)
            if updated is None:
                self._replace_terms(txn, Level.SERIES, skey, old, None, extended)
                txn.delete(skey, db=db["series"])
                emptied_series += 1
            else:
                txn.put(skey, updated.SerializeToString(), db=db["series"])
        stkey = keys.study_key(study)
        raw_study = _get(txn, stkey, db["studies"])
        if raw_study is not None:
            old_study = records_pb2.StudyRecord.FromString(raw_study)
            updated_study = study_after_removal(old_study, removal, emptied_series)
            self._replace_terms(txn, Level.STUDY, stkey, old_study, updated_study, extended)
            if updated_study is None:
                txn.delete(stkey, db=db["studies"])
            else:
                txn.put(stkey, updated_study.SerializeToString(), db=db["studies"])
        return blob_ids

    async def add_query_tags(
        self, tags: list[records_pb2.QueryTagRecord], operation: records_pb2.ReindexOperation
    ) -> records_pb2.ReindexOperation:
        """Register new query tags (not ready) and the operation that will re-index for them.

        Raises ALREADY_EXISTS, naming the tag, when one of them is registered already. From the
        commit on, every stored instance contributes to the new tags' index entries.
        """

        def add(txn: lmdb.Transaction) -> records_pb2.ReindexOperation:
            db = self._db
            for tag in tags:
                if _get(txn, DROPPING + tag.hex_tag.encode("ascii"), db["meta"]) is not None:
                    raise query_tag_removing_error(tag)
            registered = txn.stat(db["query_tags"])["entries"]
            if registered + len(tags) > MAX_QUERY_TAGS:
                raise too_many_query_tags_error(registered, len(tags))
            for tag in tags:
                if _get(txn, tag.hex_tag.encode("ascii"), db["query_tags"]) is not None:
                    raise query_tag_exists_error(tag)
            for tag in tags:
                tag.operation_id = operation.operation_id
                txn.put(tag.hex_tag.encode("ascii"), tag.SerializeToString(), db=db["query_tags"])
            operation.total_instances = txn.stat(db["instances"])["entries"]
            self._put_operation(txn, operation)
            return operation

        return await self.writer.run(add)

    async def reindex_batch(self, operation_id: str, limit: int) -> records_pb2.ReindexOperation:
        """Index up to ``limit`` more instances for an operation's tags; mark them ready at the end.

        The walk goes in instance key order from the operation's cursor, which is saved in the
        same transaction, so that a restart resumes where it stopped. Instances stored meanwhile
        are indexed by the store itself; walking over one of them again changes nothing.
        """

        def batch(txn: lmdb.Transaction) -> records_pb2.ReindexOperation:
            db = self._db
            raw = _get(txn, operation_id.encode("utf-8"), db["operations"])
            if raw is None:
                raise unknown_operation(operation_id)
            operation = records_pb2.ReindexOperation.FromString(raw)
            if operation.done:
                return operation
            # A tag removed and added again belongs to its new operation, not to this one.
            extended = self._query_tags(txn)
            tags = [t for t in extended if t.operation_id == operation_id]
            cursor = txn.cursor(db=db["instances"])
            found = (
                cursor.set_range(operation.cursor + b"\x00") if operation.cursor else cursor.first()
            )
            walked: list[bytes] = []
            while found and len(walked) < limit:
                walked.append(bytes(cursor.key()))
                found = cursor.next()
            if tags:
                self._reindex(txn, walked, tags, extended)
            operation.processed_instances += len(walked)
            if walked:
                operation.cursor = walked[-1]
            if not found:
                operation.done = True
                for tag in tags:
                    tag.ready = True
                    txn.put(
                        tag.hex_tag.encode("ascii"), tag.SerializeToString(), db=db["query_tags"]
                    )
            self._put_operation(txn, operation)
            return operation

        return await self.writer.run(batch)

    def _reindex(
        self,
        txn: lmdb.Transaction,
        instance_keys: list[bytes],
        tags: list[records_pb2.QueryTagRecord],
        extended: list[records_pb2.QueryTagRecord],
    ) -> None:
        """Copy the tags' values from each instance's metadata into its records, and index them.

        ``extended`` is every registered tag (``tags`` among them), as read in this transaction.
        """
        db = self._db
        walked = []
        for ikey in instance_keys:
            raw_metadata = _get(txn, ikey, db["metadata"])
            if raw_metadata is not None:
                walked.append((ikey, raw_metadata))
        for rewrite in reindexed(
            walked, lambda level, pk: _get(txn, pk, db[_LEVEL_DB[level]]), tags, extended
        ):
            level, pk = rewrite.level, rewrite.key
            for number, term in rewrite.removed:
                txn.delete(keys.term_key(level, number, term, pk), db=db["terms"])
            self._put_terms(txn, level, pk, rewrite.added)
            txn.put(pk, rewrite.record.SerializeToString(), db=db[_LEVEL_DB[level]])

    async def drop_query_tag(self, hex_tag: str, limit: int) -> bool:
        """Remove an extended query tag, ``limit`` index entries per call; True when all gone.

        The first call unregisters the tag (searches stop using it at once); each call then
        deletes up to ``limit`` of its index entries and of the record values it had added.
        """

        def drop(txn: lmdb.Transaction) -> bool:
            db = self._db
            key = hex_tag.encode("ascii")
            raw = _get(txn, key, db["query_tags"])
            if raw is not None:
                tag = records_pb2.QueryTagRecord.FromString(raw)
                txn.delete(key, db=db["query_tags"])
                txn.put(DROPPING + key, raw, db=db["meta"])
            else:
                raw = _get(txn, DROPPING + key, db["meta"])
                if raw is None:
                    return True
                tag = records_pb2.QueryTagRecord.FromString(raw)
            level = Level(tag.level)
            prefix = keys.term_prefix(level, int(hex_tag, 16), b"")
            cursor = txn.cursor(db=db["terms"])
            removed = 0
            strip = kept_by_level(tag.hex_tag) is None  # else the level keeps it anyway
            found = cursor.set_range(prefix)
            while found and removed < limit and bytes(cursor.key()).startswith(prefix):
                pk = split_term(bytes(cursor.key())[len(prefix) :])[1]
                found = cursor.delete()
                removed += 1
                if strip:
                    self._strip(txn, level, pk, tag.hex_tag)
            if removed < limit:
                txn.delete(DROPPING + key, db=db["meta"])
                return True
            return False

        return await self.writer.run(drop)

    def _strip(self, txn: lmdb.Transaction, level: Level, pk: bytes, hex_tag: str) -> None:
        """Remove an unregistered extended tag's value from one record."""
        name = _LEVEL_DB[level]
        raw = _get(txn, pk, self._db[name])
        if raw is None:
            return
        record = RECORD_TYPES[level].FromString(raw)
        if strip_tag(record, hex_tag):
            txn.put(pk, record.SerializeToString(), db=self._db[name])

    def _put_operation(
        self, txn: lmdb.Transaction, operation: records_pb2.ReindexOperation
    ) -> None:
        txn.put(
            operation.operation_id.encode("utf-8"),
            operation.SerializeToString(),
            db=self._db["operations"],
        )

    def _append_change(
        self,
        txn: lmdb.Transaction,
        kind: records_pb2.ChangeKind.ValueType,
        uids: tuple[str, str, str],
        version: int,
        now_us: int,
    ) -> None:
        sequence = self._next(txn, b"change")
        record = records_pb2.ChangeRecord(
            sequence=sequence,
            kind=kind,
            study_instance_uid=uids[0],
            series_instance_uid=uids[1],
            sop_instance_uid=uids[2],
            version=version,
        )
        record.time.FromMicroseconds(now_us)
        txn.put(keys.sequence_key(sequence), record.SerializeToString(), db=self._db["changes"])

    def _next(self, txn: lmdb.Transaction, counter: bytes) -> int:
        raw = _get(txn, counter, self._db["meta"])
        value = (struct.unpack(">Q", raw)[0] if raw else 0) + 1
        txn.put(counter, struct.pack(">Q", value), db=self._db["meta"])
        return value

    def _put_terms(
        self, txn: lmdb.Transaction, level: Level, pk: bytes, terms: set[tuple[int, bytes]]
    ) -> None:
        for tag, term in terms:
            txn.put(keys.term_key(level, tag, term, pk), b"", db=self._db["terms"])

    def _replace_terms(
        self,
        txn: lmdb.Transaction,
        level: Level,
        pk: bytes,
        old: Record | None,
        new: Record | None,
        extended: list[records_pb2.QueryTagRecord],
    ) -> None:
        removed, added = term_changes(level, old, new, extended)
        for tag, term in removed:
            txn.delete(keys.term_key(level, tag, term, pk), db=self._db["terms"])
        self._put_terms(txn, level, pk, added)

    # -- DIMSE peers ---------------------------------------------------------------------------

    def dimse_peers(self) -> list[records_pb2.DimsePeerRecord]:
        """Every DIMSE peer added at run time, by name."""
        with self.read() as txn:
            return [
                records_pb2.DimsePeerRecord.FromString(bytes(value))
                for _, value in txn.cursor(db=self._db["peers"])
            ]

    async def put_dimse_peer(self, record: records_pb2.DimsePeerRecord) -> None:
        """Keep a DIMSE peer, replacing the one of its name."""
        key, value = record.name.encode(), record.SerializeToString()
        await self.writer.run(lambda txn: txn.put(key, value, db=self._db["peers"]))

    async def delete_dimse_peer(self, name: str) -> bool:
        """Forget a DIMSE peer; whether there was one."""
        key = name.encode()
        return bool(await self.writer.run(lambda txn: txn.delete(key, db=self._db["peers"])))

    def _grow(self) -> None:
        with self._gate.exclusive():
            new_size = self.env.info()["map_size"] * 2
            self.env.set_mapsize(new_size)

    def _adopt(self) -> None:
        """Take the map size another process set (LMDB's ``mdb_env_set_mapsize(env, 0)``)."""
        with self._gate.exclusive():
            self.env.set_mapsize(0)

    def close(self) -> None:
        """Commit queued writes, stop the wake-ups, then close the environment."""
        self.writer.close()
        if self.wakeups is not None:
            self.wakeups.close()
        self.env.close()
