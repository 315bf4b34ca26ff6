"""Blob stores outside the data folder: uploads spooled locally, objects written once elsewhere.

S3-compatible object storage (:mod:`.s3`) and a folder that several machines mount
(:mod:`.shared_folder`) keep instance files where other nodes can reach them, so neither may
hold a store's "not yet committed" state: a node cannot lock a file on NFS, and it must never
judge another node's files. Both share this store, which keeps that state in the node's own
data folder and asks the backend (an :class:`ObjectStore`) only to write, read, list and
remove whole objects.

Uploads spool to a local file as they arrive, so memory stays bounded and the parse workers
read them as they read the folder store's; :meth:`SpooledBlobStore.persist` then writes the
object, which is durable when the backend's :meth:`ObjectStore.put` returns.

The durability rule is the folder store's (:mod:`.blobs`): the index names a blob only after
its object is durable, and start-up can prove what is garbage. Before an object is written, a
marker ``<spool folder>/<blob id>.pending`` is made durable in the data folder; it is removed
once the index names the blob. At start-up (:meth:`SpooledBlobStore.recover`), a marker whose
blob the index names is dropped; one whose blob the index does not name belongs to a store
that was never acknowledged: its object (if the write got that far) and the marker are removed.
An object without a marker was either named by the index when its marker went, or belongs to
another node sharing the store: start-up never lists the store and never removes such an
object. Deleted instances' objects are removed after the index commit, and start-up finishes
removals a crash interrupted, as with the folder store.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dicomrpc_server.storage.blobs import LocalUpload, fsync_dir
from dicomrpc_server.storage.protocols import BlobReader, BlobRef, Index, Upload

log = logging.getLogger(__name__)

SPOOL_SUFFIX = ".part"
MARKER_SUFFIX = ".pending"


class ObjectStore(Protocol):
    """Where a spooled store keeps its objects: whole files written once, by blob id."""

    @property
    def url(self) -> str:
        """The store as ``--blobs`` names it (recorded in the data folder, shown in messages)."""

    @property
    def spool_folder(self) -> str:
        """The name of the data folder's subfolder for this kind of store's uploads."""

    def check(self) -> None:
        """Raise ``StartupError`` naming the store when it cannot be used."""

    def new_blob_id(self) -> str:
        """A new blob id, unique among every node's."""

    def key(self, blob_id: str) -> str:
        """Where the blob's object is, as a marker records it (for people reading markers)."""

    def put(self, path: Path, blob_id: str) -> None:
        """Write the file at ``path`` as the blob's object; it is durable when this returns.

        Raises ``OSError`` when it cannot be written (the store answers STORAGE_FAILURE).
        """

    def open(self, blob_id: str) -> BlobReader:
        """A reader of the blob's object (``FileNotFoundError`` now or at the first read)."""

    def ref(self, blob_id: str) -> BlobRef:
        """A picklable reference worker processes open the object by."""

    def remove(self, blob_ids: list[str]) -> None:
        """Remove objects durably (missing ones are not an error)."""

    def blob_ids(self) -> Iterator[str]:
        """Every blob id in the store."""

    def blob_sizes(self) -> Iterator[tuple[str, int]]:
        """Every blob id in the store with its object's size in bytes."""


class SpooledBlobStore:
    """A :class:`~dicomrpc_server.storage.protocols.BlobStore` over an :class:`ObjectStore`.

    Parameters
    ----------
    objects
        Where the objects go.
    data_dir
        The data folder: uploads spool to, and their markers are kept in, its subfolder
        ``objects.spool_folder``.
    uploads_dir
        Another folder for them: one per process when several serve one data folder (each
        settles only its own folder and those of processes that have exited).
    """

    def __init__(
        self, objects: ObjectStore, data_dir: Path, *, uploads_dir: Path | None = None
    ) -> None:
        self.objects = objects
        self.uploads_dir = uploads_dir or data_dir / objects.spool_folder
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        fsync_dir(data_dir)

    def check(self) -> None:
        """Fail at start-up, naming the store, when it cannot be used."""
        self.objects.check()

    # -- writing ---------------------------------------------------------------------------

    def new_upload(self) -> LocalUpload:
        """Start spooling a file in the spool folder, named by its blob id."""
        blob_id = self.objects.new_blob_id()
        return LocalUpload(self._spool(blob_id), blob_id)

    def _spool(self, blob_id: str) -> Path:
        return self.uploads_dir / f"{blob_id}{SPOOL_SUFFIX}"

    def _marker(self, blob_id: str) -> Path:
        return self.uploads_dir / f"{blob_id}{MARKER_SUFFIX}"

    def persist(self, upload: Upload) -> str:
        """Mark the upload durably as uncommitted, write its object; return its blob id.

        The object is durable when this returns; the spool file is removed then.
        """
        assert isinstance(upload, LocalUpload)
        upload.close()
        marker = self._marker(upload.blob_id)
        with open(marker, "wb") as fp:
            fp.write(self.objects.key(upload.blob_id).encode())
            fp.flush()
            os.fsync(fp.fileno())
        fsync_dir(self.uploads_dir)
        self.objects.put(upload.path, upload.blob_id)
        upload.path.unlink(missing_ok=True)
        return upload.blob_id

    def sync(self) -> None:
        """Nothing to do: every persisted upload's object is durable under its final name."""

    def committed(self, upload: Upload) -> None:
        """Drop the marker of an upload the index now names (and any spool left)."""
        self._marker(upload.blob_id).unlink(missing_ok=True)
        upload.path.unlink(missing_ok=True)

    def discard(self, upload: Upload) -> None:
        """Remove a persisted upload whose commit failed: its object, then spool and marker."""
        assert isinstance(upload, LocalUpload)
        upload.discard()
        try:
            self.objects.remove([upload.blob_id])
        except Exception:
            # The marker stays: start-up removes the object, which the index does not name.
            log.warning("could not remove the object of failed upload %s", upload.blob_id)
            return
        self._marker(upload.blob_id).unlink(missing_ok=True)

    # -- reading ---------------------------------------------------------------------------

    def open(self, blob_id: str) -> BlobReader:
        """A reader of the blob's object."""
        return self.objects.open(blob_id)

    def ref(self, blob_id: str) -> BlobRef:
        """A reference worker processes open the object by."""
        return self.objects.ref(blob_id)

    # -- removing and listing --------------------------------------------------------------

    def remove(self, blob_ids: Iterable[str]) -> None:
        """Remove objects durably (missing ones are not an error)."""
        self.objects.remove(list(blob_ids))

    def blob_ids(self) -> Iterator[str]:
        """Every blob id in the store (every node's)."""
        return self.objects.blob_ids()

    # -- start-up --------------------------------------------------------------------------

    def recover(self, index: Index, pending_removals: list[str]) -> SpooledRecovery:
        """Settle what a crash left: markers, spool files, and removals of deleted instances.

        Only what is provably garbage goes: a spool file without a marker (never written out),
        and the object and marker of an upload the index does not name (never acknowledged).
        The store is not listed: an object without a marker here is named by the index or
        belongs to another node.
        """
        report = SpooledRecovery()
        if pending_removals:
            self.objects.remove(pending_removals)
            report.removals = len(pending_removals)
        entries = {
            entry.name: Path(entry.path)
            for entry in os.scandir(self.uploads_dir)
            if not entry.is_dir(follow_symlinks=False)
        }
        markers = {
            name.removesuffix(MARKER_SUFFIX) for name in entries if name.endswith(MARKER_SUFFIX)
        }
        garbage = sorted(blob_id for blob_id in markers if not index.has_blob(blob_id))
        if garbage:
            self.objects.remove(garbage)  # before their markers: a crash here leaves the markers
        report.unfinished_commits = len(garbage)
        report.completed = len(markers) - len(garbage)
        for name, path in entries.items():
            if name.endswith(SPOOL_SUFFIX) and name.removesuffix(SPOOL_SUFFIX) not in markers:
                report.partial_uploads += 1
            path.unlink(missing_ok=True)
        if entries:
            fsync_dir(self.uploads_dir)
        if report.partial_uploads or report.unfinished_commits:
            log.warning(
                "recovery removed %d partial uploads and the objects of %d unfinished stores",
                report.partial_uploads,
                report.unfinished_commits,
            )
        if report.removals:
            log.warning(
                "recovery finished removing the objects of %d deleted instances", report.removals
            )
        return report


@dataclass
class SpooledRecovery:
    """What start-up recovery did with a spooled blob store."""

    partial_uploads: int = 0
    unfinished_commits: int = 0
    completed: int = 0
    removals: int = 0
