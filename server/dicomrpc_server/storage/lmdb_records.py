"""The stored records of the LMDB index: studies, series, instances and what each instance brings.

Why this module exists: an instance is indexed, and a study, series or instance deleted, in one
write transaction that keeps every record in step: the instance record, its UID map, blob
reference, metadata and frame table, the series and study aggregates, their search terms and
the change log entry. Reading those records back is here too.
"""

from __future__ import annotations

import concurrent.futures
import time

import lmdb

from dicomrpc.v1 import dataset_pb2
from dicomrpc_server.dicom.attributes import Level
from dicomrpc_server.storage import keys, records_pb2
from dicomrpc_server.storage.index_records import (
    Removal,
    add_extended,
    instance_exists_error,
    not_stored_error,
    record_terms,
    series_after_removal,
    stored_series,
    stored_study,
    study_after_removal,
)
from dicomrpc_server.storage.lmdb_changes import LmdbChangeLog
from dicomrpc_server.storage.lmdb_environment import LEVEL_DB, get_value
from dicomrpc_server.storage.lmdb_query_tags import LmdbQueryTags
from dicomrpc_server.storage.protocols import IndexCounts, NewInstance


class LmdbRecords(LmdbQueryTags, LmdbChangeLog):
    """Study, series and instance records with their metadata, frame tables and blob references."""

    def get_instance(self, study: str, series: str, sop: str) -> records_pb2.InstanceRecord | None:
        """The record of an instance, or ``None``."""
        with self.read() as txn:
            raw = get_value(txn, keys.instance_key(study, series, sop), self._db["instances"])
        return None if raw is None else records_pb2.InstanceRecord.FromString(raw)

    def locate_sop(self, sop: str) -> tuple[str, str] | None:
        """The (study, series) holding a SOP instance UID, or ``None``."""
        with self.read() as txn:
            raw = get_value(txn, sop.encode("ascii"), self._db["sops"])
        if raw is None:
            return None
        study, series, _ = keys.split_key(raw)
        return study, series

    def has_blob(self, blob_id: str) -> bool:
        """Whether an index entry references the blob."""
        with self.read() as txn:
            return get_value(txn, blob_id.encode("ascii"), self._db["blobs"]) is not None

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
            raw = get_value(txn, blob_id.encode("ascii"), self._db["blobs"])
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
            return get_value(txn, b"version", self._db["meta"]) is not None

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
            raw = get_value(txn, keys.instance_key(study, series, sop), self._db["metadata"])
        return None if raw is None else dataset_pb2.Dataset.FromString(raw)

    def get_frames(self, study: str, series: str, sop: str) -> records_pb2.FrameTable | None:
        """The frame offset table of an instance, or ``None``."""
        with self.read() as txn:
            raw = get_value(txn, keys.instance_key(study, series, sop), self._db["frames"])
        return None if raw is None else records_pb2.FrameTable.FromString(raw)

    def get_study(self, study: str) -> records_pb2.StudyRecord | None:
        """The record of a study, or ``None``."""
        with self.read() as txn:
            raw = get_value(txn, keys.study_key(study), self._db["studies"])
        return None if raw is None else records_pb2.StudyRecord.FromString(raw)

    def get_series(self, study: str, series: str) -> records_pb2.SeriesRecord | None:
        """The record of a series, or ``None``."""
        with self.read() as txn:
            raw = get_value(txn, keys.series_key(study, series), self._db["series"])
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

    def get_metadata_many(self, keys_: list[tuple[str, str, str]]) -> list[bytes]:
        """The pre-computed metadata of several instances, read in one transaction.

        Each is a serialized ``Dataset`` as stored, not parsed: gRPC sends it as it is.
        """
        out = []
        with self.read() as txn:
            for study, series, sop in keys_:
                raw = get_value(txn, keys.instance_key(study, series, sop), self._db["metadata"])
                if raw is not None:
                    out.append(raw)
        return out

    def record_keys(
        self, level: Level, prefix: bytes = b"", after: bytes = b"", limit: int | None = None
    ) -> list[bytes]:
        """Primary keys of the records of a level that start with ``prefix``, in order.

        Only keys above ``after`` (when given), and at most ``limit`` of them: a page of a
        level's records costs what the page holds, wherever it starts.
        """
        out: list[bytes] = []
        with self.read() as txn:
            cursor = txn.cursor(db=self._db[LEVEL_DB[level]])
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
            db = self._db[LEVEL_DB[level]]
            for pk in primary_keys:
                raw = get_value(txn, pk, db)
                if raw is not None:
                    out[pk] = raw
        return out

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
        if get_value(txn, ikey, db["instances"]) is not None:
            raise instance_exists_error(new.study_uid, new.series_uid, new.sop_uid)
        elsewhere = get_value(txn, new.sop_uid.encode("ascii"), db["sops"])
        if elsewhere is not None:
            study, series, _ = keys.split_key(elsewhere)
            raise instance_exists_error(
                new.study_uid, new.series_uid, new.sop_uid, where=f"{study}, series {series}"
            )
        version = self.next_counter(txn, b"version")
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
        extended = self.query_tags_in(txn)
        add_extended(new, extended)
        self.put_terms(txn, Level.INSTANCE, ikey, record_terms(Level.INSTANCE, record, extended))

        skey = keys.series_key(new.study_uid, new.series_uid)
        raw_series = get_value(txn, skey, db["series"])
        old_series = records_pb2.SeriesRecord.FromString(raw_series) if raw_series else None
        series_record = stored_series(old_series, new, version)
        self.replace_terms(txn, Level.SERIES, skey, old_series, series_record, extended)
        txn.put(skey, series_record.SerializeToString(), db=db["series"])

        stkey = keys.study_key(new.study_uid)
        raw_study = get_value(txn, stkey, db["studies"])
        old_study = records_pb2.StudyRecord.FromString(raw_study) if raw_study else None
        study_record = stored_study(old_study, new, old_series is None, version)
        self.replace_terms(txn, Level.STUDY, stkey, old_study, study_record, extended)
        txn.put(stkey, study_record.SerializeToString(), db=db["studies"])

        self.append_change(
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
            raw = get_value(txn, ikey, db["instances"])
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
        extended = self.query_tags_in(txn)
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
            self.append_change(
                txn,
                records_pb2.CHANGE_KIND_DELETED,
                (study_uid, series_uid, sop_uid),
                record.version,
                now_us,
            )
        emptied_series = 0
        for series_uid, removed in removal.per_series.items():
            skey = keys.series_key(study, series_uid)
            raw_series = get_value(txn, skey, db["series"])
            if raw_series is None:
                continue
            old = records_pb2.SeriesRecord.FromString(raw_series)
            updated = series_after_removal(old, removed)
            if updated is None:
                self.replace_terms(txn, Level.SERIES, skey, old, None, extended)
                txn.delete(skey, db=db["series"])
                emptied_series += 1
            else:
                txn.put(skey, updated.SerializeToString(), db=db["series"])
        stkey = keys.study_key(study)
        raw_study = get_value(txn, stkey, db["studies"])
        if raw_study is not None:
            old_study = records_pb2.StudyRecord.FromString(raw_study)
            updated_study = study_after_removal(old_study, removal, emptied_series)
            self.replace_terms(txn, Level.STUDY, stkey, old_study, updated_study, extended)
            if updated_study is None:
                txn.delete(stkey, db=db["studies"])
            else:
                txn.put(stkey, updated_study.SerializeToString(), db=db["studies"])
        return blob_ids
