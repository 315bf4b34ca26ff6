"""An embedded archive read as it lies, for ``dicomrpc migrate``: nothing in its folder changes.

The LMDB environment is opened read-only and without LMDB's lock file (the caller holds the
data folder's lock, so no server writes meanwhile), which leaves every file of the folder as it
was: the embedded archive stays servable exactly as before, and a migration can be run again.

What it gives are the stored records themselves (:mod:`.lmdb_environment` lists the sub-databases),
so that an instance is indexed elsewhere from the bytes the embedded index derived when it was
stored, never from a second parse of its file: :meth:`EmbeddedSource.new_instance` turns the
records of one instance back into the :class:`~.protocols.NewInstance` a store hands an index.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lmdb

from dicomrpc_server.dicom.attributes import Level
from dicomrpc_server.errors import StartupError
from dicomrpc_server.storage import keys, records_pb2
from dicomrpc_server.storage.blobs import BLOBS_DIR, blob_name
from dicomrpc_server.storage.index_records import Record, kept_by_level, strip_tag
from dicomrpc_server.storage.lmdb_environment import SCHEMA_VERSION
from dicomrpc_server.storage.lmdb_query_tags import DROPPING
from dicomrpc_server.storage.protocols import NewInstance
from dicomrpc_server.storage.recovery import INDEX_DIR

# Instances read per read transaction while walking (a transaction is short, memory bounded).
WALK_BATCH = 256


@dataclass(frozen=True)
class SourceInstance:
    """One indexed instance: its key, its record, and the file that holds it."""

    key: bytes
    record: records_pb2.InstanceRecord
    path: Path


@dataclass(frozen=True)
class Event:
    """A workitem event as the embedded index keeps it: its sequence, the event, its terms.

    ``event`` is the serialized ``SubscribeWorkitemsResponse``; ``terms`` the workitem's index
    terms after it, as :func:`~dicomrpc_server.ups.index.encode_terms` wrote them.
    """

    sequence: int
    event: bytes
    terms: bytes


class EmbeddedSource:
    """The embedded index of ``data_dir``, opened read-only (see module).

    Raises
    ------
    StartupError
        ``SOURCE_INDEX_MISSING`` when the folder has no index, ``SOURCE_INDEX_UNREADABLE`` when
        LMDB cannot open it or it has another schema; both point to ``rebuild-index``.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.blobs_dir = data_dir / BLOBS_DIR
        path = data_dir / INDEX_DIR
        rebuild = f"`dicomrpc rebuild-index --data {data_dir}` rebuilds it from the instance files"
        if not (path / "data.mdb").is_file():
            raise StartupError(
                "SOURCE_INDEX_MISSING",
                f"data folder {data_dir} has no index ({path / 'data.mdb'} is missing); "
                f"{rebuild}, then migrate. Nothing was changed",
            )
        try:
            self.env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=32, readahead=False)
        except lmdb.Error as exc:
            raise StartupError(
                "SOURCE_INDEX_UNREADABLE",
                f"the index of data folder {data_dir} cannot be read ({exc}); {rebuild}, then "
                "migrate. Nothing was changed",
            ) from None
        try:
            # Opened outside a transaction of ours, so that the handles outlive it.
            self._db = {
                name: self._open_db(name)
                for name in (
                    "meta",
                    "studies",
                    "series",
                    "instances",
                    "metadata",
                    "frames",
                    "query_tags",
                    "operations",
                    "workitems",
                    "wi_events",
                    "peers",
                    "ups_subscribers",
                    "ups_subscriptions",
                )
            }
            with self.env.begin(buffers=False) as txn:
                schema = self._get(txn, "meta", b"schema")
            found = None if schema is None else struct.unpack(">I", schema)[0]
            if found != SCHEMA_VERSION:
                raise StartupError(
                    "SOURCE_INDEX_UNREADABLE",
                    f"the index of data folder {data_dir} has schema {found}, this release "
                    f"reads {SCHEMA_VERSION}; {rebuild}, then migrate. Nothing was changed",
                )
        except lmdb.Error as exc:
            self.env.close()
            raise StartupError(
                "SOURCE_INDEX_UNREADABLE",
                f"the index of data folder {data_dir} cannot be read ({exc}); {rebuild}, then "
                "migrate. Nothing was changed",
            ) from None
        except BaseException:
            self.env.close()
            raise
        self.drops = self._drops()

    def _open_db(self, name: str) -> lmdb._Database | None:
        try:
            return self.env.open_db(name.encode(), create=False)
        except lmdb.NotFoundError:  # never written: an index of an archive that never held it
            return None

    def _get(self, txn: lmdb.Transaction, name: str, key: bytes) -> bytes | None:
        db = self._db[name]
        if db is None:
            return None
        value = txn.get(key, db=db)
        return None if value is None else bytes(value)

    def _entries(self, name: str, start: bytes = b"") -> list[tuple[bytes, bytes]]:
        """Every (key, value) of a sub-database from ``start`` on, in key order."""
        db = self._db[name]
        if db is None:
            return []
        with self.env.begin(buffers=False) as txn:
            cursor = txn.cursor(db=db)
            if not (cursor.set_range(start) if start else cursor.first()):
                return []
            return [(bytes(k), bytes(v)) for k, v in cursor]

    def _count(self, name: str) -> int:
        db = self._db[name]
        if db is None:
            return 0
        with self.env.begin() as txn:
            return int(txn.stat(db)["entries"])

    def _drops(self) -> list[records_pb2.QueryTagRecord]:
        """The extended query tags whose removal a stopped server left unfinished."""
        return [
            records_pb2.QueryTagRecord.FromString(value)
            for key, value in self._entries("meta", DROPPING)
            if key.startswith(DROPPING)
        ]

    # -- instances ---------------------------------------------------------------------------

    def path(self, blob_id: str) -> Path:
        """The file of a blob id, where the folder store keeps it (:mod:`.blobs`)."""
        return self.blobs_dir / blob_name(blob_id)

    def instances(self) -> Iterator[SourceInstance]:
        """Every indexed instance, in key order (study by study), a short transaction a batch."""
        db = self._db["instances"]
        if db is None:
            return
        after: bytes | None = None
        while True:
            batch: list[tuple[bytes, bytes]] = []
            with self.env.begin(buffers=False) as txn:
                cursor = txn.cursor(db=db)
                found = cursor.set_range(after) if after is not None else cursor.first()
                if found and after is not None and bytes(cursor.key()) == after:
                    found = cursor.next()
                while found and len(batch) < WALK_BATCH:
                    batch.append((bytes(cursor.key()), bytes(cursor.value())))
                    found = cursor.next()
            for key, raw in batch:
                record = records_pb2.InstanceRecord.FromString(raw)
                yield SourceInstance(key, record, self.path(record.blob_id))
            if len(batch) < WALK_BATCH:
                return
            after = batch[-1][0]

    def new_instance(self, instance: SourceInstance) -> NewInstance:
        """What a store of this instance handed the index, rebuilt from the stored records.

        The instance record, metadata and frame table are the stored ones; the study and
        series attributes are those of the stored study and series records (the latest stored
        instance's, which every instance of the study then carries, so that whatever order
        they are indexed in, the last one leaves exactly these), without the aggregates the
        index computes again (counts, modalities, version). The values of a query tag whose
        removal is unfinished are left out, as that removal would have left them.
        """
        study, series, sop = keys.split_key(instance.key)
        with self.env.begin(buffers=False) as txn:
            raw_study = self._get(txn, "studies", keys.study_key(study))
            raw_series = self._get(txn, "series", keys.series_key(study, series))
            metadata = self._get(txn, "metadata", instance.key)
            frames = self._get(txn, "frames", instance.key)
        if raw_study is None or raw_series is None or metadata is None:
            raise StartupError(
                "SOURCE_INDEX_UNREADABLE",
                f"the index of data folder {self.data_dir} lacks the study, series or metadata "
                f"record of instance {sop}; `dicomrpc rebuild-index --data {self.data_dir}` "
                "rebuilds it from the instance files, then migrate",
            )
        stored_study = records_pb2.StudyRecord.FromString(raw_study)
        stored_series = records_pb2.SeriesRecord.FromString(raw_series)
        record = records_pb2.InstanceRecord()
        record.CopyFrom(instance.record)
        record.version = 0  # the index numbers versions itself
        new = NewInstance(
            study_uid=study,
            series_uid=series,
            sop_uid=sop,
            record=record,
            study_attributes=records_pb2.StudyRecord(
                attributes=stored_study.attributes, unindexed_tags=stored_study.unindexed_tags
            ),
            series_attributes=records_pb2.SeriesRecord(
                attributes=stored_series.attributes, unindexed_tags=stored_series.unindexed_tags
            ),
            metadata=metadata,
            frames=None if frames is None else records_pb2.FrameTable.FromString(frames),
        )
        levels: dict[Level, Record] = {
            Level.STUDY: new.study_attributes,
            Level.SERIES: new.series_attributes,
            Level.INSTANCE: new.record,
        }
        for tag in self.drops:
            if kept_by_level(tag.hex_tag) is None:  # else its level keeps it anyway
                strip_tag(levels[Level(tag.level)], tag.hex_tag)
        return new

    def counts(self) -> tuple[int, int, int]:
        """The numbers of studies, series and instances."""
        return self._count("studies"), self._count("series"), self._count("instances")

    # -- what the files cannot give back -----------------------------------------------------

    def query_tags(self) -> list[records_pb2.QueryTagRecord]:
        """The extended query tags, in tag order (ready or not)."""
        return [
            records_pb2.QueryTagRecord.FromString(value) for _, value in self._entries("query_tags")
        ]

    def operations(self) -> list[records_pb2.ReindexOperation]:
        """The re-indexing operations, finished or not."""
        return [
            records_pb2.ReindexOperation.FromString(value)
            for _, value in self._entries("operations")
        ]

    def workitems(self) -> list[tuple[str, bytes]]:
        """Every workitem: its UID and its serialized ``dicomrpc.v1.Dataset``, by UID."""
        return [(key.decode("ascii"), value) for key, value in self._entries("workitems")]

    def workitem_count(self) -> int:
        """The number of workitems."""
        return self._count("workitems")

    def events(self) -> list[Event]:
        """The workitem event log, in sequence order (see :mod:`..ups.store`)."""
        out = []
        for key, value in self._entries("wi_events"):
            (length,) = struct.unpack_from(">I", value)
            out.append(
                Event(struct.unpack(">Q", key)[0], value[4 : 4 + length], value[4 + length :])
            )
        return out

    def peers(self) -> list[records_pb2.DimsePeerRecord]:
        """The DIMSE peers added at run time, by name."""
        return [
            records_pb2.DimsePeerRecord.FromString(value) for _, value in self._entries("peers")
        ]

    def ups_subscribers(self) -> list[records_pb2.UpsSubscriberRecord]:
        """Where the delivery to each DIMSE UPS subscriber stands, by AE title."""
        return [
            records_pb2.UpsSubscriberRecord.FromString(value)
            for _, value in self._entries("ups_subscribers")
        ]

    def ups_subscriptions(self) -> list[records_pb2.UpsSubscriptionRecord]:
        """The DIMSE UPS subscriptions, by AE title and workitem UID."""
        return [
            records_pb2.UpsSubscriptionRecord.FromString(value)
            for _, value in self._entries("ups_subscriptions")
        ]

    def close(self) -> None:
        """Close the environment (nothing was written)."""
        self.env.close()
