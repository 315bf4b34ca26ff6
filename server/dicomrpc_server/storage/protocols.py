"""The roles the services see: where instance files live, the index over them, its change log.

The embedded default is a directory of files plus LMDB (:mod:`.blobs`, :mod:`.lmdb_index`);
S3-compatible object storage (:mod:`.s3`) implements the same blob store role, and a shared
PostgreSQL index (:mod:`.postgres`: the workitem role and the instance index,
:class:`~.postgres.index.PostgresIndex`) implements the index's, so that no service changes
when a deployment outgrows one machine (``tests/test_index_contract.py`` holds both indexes
to one contract).
The blob store gives ranged reads and no local path: the services never assume a file system
under the blobs (``tests/test_blob_contract.py`` holds every store to one contract).
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from dicomrpc.v1 import dataset_pb2
from dicomrpc_server.storage import records_pb2


class Upload(Protocol):
    """A file being received, not yet part of the archive."""

    path: Path
    blob_id: str
    size: int

    def write(self, data: bytes | memoryview) -> None:
        """Append bytes (the first 128, the preamble, are written as zeros)."""

    def close(self) -> None:
        """Flush and close the file: every byte written is in it (idempotent)."""

    def discard(self) -> None:
        """Remove the partial file, even when its last bytes cannot be written (a full disk)."""


class BlobReader(Protocol):
    """One stored blob opened for reading: positional reads, no local path.

    A reader holds what its store needs to read (a file descriptor, a response): close it when
    done. Reads past the end return fewer bytes (none at the end), as ``pread`` does.
    """

    @property
    def size(self) -> int:
        """The blob's size in bytes (blocking where the store must ask for it)."""

    def pread(self, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (blocking: call it from a thread)."""

    def chunks(self, offset: int, length: int, chunk: int) -> AsyncIterator[bytes]:
        """The bytes of ``offset .. offset + length`` in chunks of at most ``chunk`` bytes.

        Read as the consumer asks, without blocking the event loop; it stops early at the end
        of the blob (the caller, who announced a size, tells a short blob from a complete one).
        """

    def close(self) -> None:
        """Release what the reader holds (idempotent)."""


class BlobSpec(Protocol):
    """What a process needs to open a store's blobs: picklable, so worker processes get it.

    Codec workers are separate processes: they are sent a :class:`BlobRef` (this spec and a
    blob id) and open the blob themselves, reading only what they need.
    """

    def open_file(self, blob_id: str) -> BinaryIO:
        """A seekable binary file object over a stored blob (``FileNotFoundError`` if none)."""


@dataclass(frozen=True)
class BlobRef:
    """A stored blob as a worker process finds it: its store's spec and its id (picklable)."""

    spec: BlobSpec
    blob_id: str

    @property
    def name(self) -> str:
        """The blob as messages name it."""
        return self.blob_id

    def open(self) -> BinaryIO:
        """Open the blob for reading, through its store."""
        return self.spec.open_file(self.blob_id)


class BlobStore(Protocol):
    """Write-once storage of instance files: a folder, a shared folder, S3.

    Writes go through a local upload (a spool file the parse workers read), are made durable
    by :meth:`persist` and named by the index only after that; reads go through
    :meth:`open` (a :class:`BlobReader`) or, in a worker process, :meth:`ref`.
    """

    def new_upload(self) -> Upload:
        """Start receiving a file; its blob id is chosen now."""

    def persist(self, upload: Upload) -> str:
        """Make an upload's bytes durable; return its blob id.

        Its blob can be opened, durably, at the latest after the next :meth:`sync`, which the
        index writer calls before every commit: the index never names a blob that cannot be
        opened.
        """

    def sync(self) -> None:
        """Give every upload persisted so far its final name, durably."""

    def committed(self, upload: Upload) -> None:
        """Drop what marked an upload as not yet committed, once the index names its blob."""

    def discard(self, upload: Upload) -> None:
        """Remove a persisted upload whose index commit failed."""

    def open(self, blob_id: str) -> BlobReader:
        """Open a stored blob for reading, without blocking for long (called on the loop).

        Raises ``FileNotFoundError`` when there is no such blob: here, or, for a store that
        cannot look without a round trip (S3), at the reader's first read.
        """

    def ref(self, blob_id: str) -> BlobRef:
        """A picklable reference to a stored blob, for worker processes."""

    def remove(self, blob_ids: Iterable[str]) -> None:
        """Remove stored blobs durably (missing is not an error)."""

    def blob_ids(self) -> Iterator[str]:
        """Every stored blob id, for the start-up checks and maintenance."""


@dataclass
class NewInstance:
    """Everything the index records about an instance being stored.

    Attributes
    ----------
    study_uid, series_uid, sop_uid
        The instance's UIDs.
    record
        The instance record (blob id, size, syntax, instance-level attributes ...).
    study_attributes, series_attributes
        The study- and series-level attributes this instance carries (latest stored wins).
    metadata
        The pre-computed metadata: a serialized ``dicomrpc.v1.Dataset`` without bulk data.
    frames
        The frame offset table, when the instance has pixel data.
    """

    study_uid: str
    series_uid: str
    sop_uid: str
    record: records_pb2.InstanceRecord
    study_attributes: records_pb2.StudyRecord
    series_attributes: records_pb2.SeriesRecord
    metadata: bytes
    frames: records_pb2.FrameTable | None


class ChangeAction(enum.Enum):
    """What a change did to its instance."""

    CREATED = "created"
    DELETED = "deleted"


class ChangeState(enum.Enum):
    """Whether an instance is still as a change left it."""

    CURRENT = "current"  # it is: the change is the instance's latest
    REPLACED = "replaced"  # a later store replaced it with another version
    DELETED = "deleted"  # it has been deleted since


@dataclass(frozen=True)
class Change:
    """One entry of the change log, as the feed serves it (the index keeps its own record)."""

    sequence: int
    action: ChangeAction
    study_uid: str
    series_uid: str
    sop_uid: str
    version: int
    time_us: int
    state: ChangeState


@dataclass(frozen=True)
class IndexCounts:
    """How much the index holds."""

    studies: int
    series: int
    instances: int


class Index(Protocol):
    """The archive's index: records, secondary indexes, metadata and frame tables."""

    async def add_instance(self, new: NewInstance) -> int:
        """Index a persisted instance atomically; return its version.

        Raises a ``ServiceError`` with DICOM status 45070 when the instance exists.
        """

    def get_instance(self, study: str, series: str, sop: str) -> records_pb2.InstanceRecord | None:
        """The record of an instance, or ``None``."""

    def locate_sop(self, sop: str) -> tuple[str, str] | None:
        """The (study, series) holding a SOP instance UID, or ``None``."""

    def studies_of_series(self, series: str) -> list[str]:
        """The studies holding a series with this SeriesInstanceUID (normally one)."""

    def has_blob(self, blob_id: str) -> bool:
        """Whether an index entry points at this blob."""

    def blob_ids(self) -> set[str]:
        """Every blob id the index references (for the start-up checks)."""

    def counts(self) -> IndexCounts:
        """The number of studies, series and instances."""

    def close(self) -> None:
        """Finish pending writes and close."""


class ChangeLog(Protocol):
    """The change log: every created and deleted instance, in commit order.

    An entry is appended in the same transaction as the change it records; readers move from
    a sequence number and never past one that may still commit.
    """

    def changes(self, after: int, limit: int) -> list[Change]:
        """Entries with a sequence above ``after``, in order, at most ``limit``."""

    def latest_change(self) -> Change | None:
        """The newest entry, or ``None`` for an empty log."""

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every commit, this process's or another's."""


class Deletions(Protocol):
    """Removing instances from the index: atomically, recording the files to remove."""

    async def delete(self, study: str, series: str = "", sop: str = "") -> list[str]:
        """Remove a study, series or instance from the index; return its files' blob ids.

        The blob ids are recorded as pending removals in the same transaction.
        """

    def forget_removals(self, blob_ids: list[str]) -> object:
        """Clear the pending-removal records of files now removed (nobody waits for it)."""


class InstanceReads(Protocol):
    """What a retrieve reads of the index: records, frame tables and pre-computed metadata."""

    def get_instance(self, study: str, series: str, sop: str) -> records_pb2.InstanceRecord | None:
        """The record of an instance, or ``None``."""

    def list_instances(
        self, study: str, series: str | None = None
    ) -> list[tuple[str, str, str, records_pb2.InstanceRecord]]:
        """The instances of a study (or of one of its series), in key order, with records."""

    def locate_sop(self, sop: str) -> tuple[str, str] | None:
        """The (study, series) holding a SOP instance UID, or ``None``."""

    def get_frames(self, study: str, series: str, sop: str) -> records_pb2.FrameTable | None:
        """The frame offset table of an instance, or ``None`` without pixel data."""

    def get_metadata(self, study: str, series: str, sop: str) -> dataset_pb2.Dataset | None:
        """The pre-computed metadata of an instance, or ``None``."""

    def get_metadata_many(self, keys_: list[tuple[str, str, str]]) -> list[bytes]:
        """The pre-computed metadata of instances (serialized ``Dataset``), in the given order."""


class QueryTagRecords(Protocol):
    """Extended query tags and the background work that indexes stored instances for them."""

    def query_tags(self) -> list[records_pb2.QueryTagRecord]:
        """Every extended query tag, ready or not."""

    def operation(self, operation_id: str) -> records_pb2.ReindexOperation | None:
        """A re-indexing operation, or ``None``."""

    def operations(self) -> list[records_pb2.ReindexOperation]:
        """Every re-indexing operation."""

    def pending_drops(self) -> list[str]:
        """The tags unregistered whose index entries are still being removed."""

    async def add_query_tags(
        self, tags: list[records_pb2.QueryTagRecord], operation: records_pb2.ReindexOperation
    ) -> records_pb2.ReindexOperation:
        """Register new tags (not ready) and the operation that re-indexes for them."""

    async def reindex_batch(self, operation_id: str, limit: int) -> records_pb2.ReindexOperation:
        """Index up to ``limit`` more instances for an operation, its cursor saved with them."""

    async def drop_query_tag(self, hex_tag: str, limit: int) -> bool:
        """Remove a tag, ``limit`` index entries per call; True once all are gone."""
