"""Instance files in a folder that several machines mount (``--blobs /mnt/archive``).

Nodes that share one index (PostgreSQL) keep their instance files in one folder, mounted on
each (NFS or another network file system). What the folder store does in the data folder
cannot be done there: locks on shared files are unreliable, a hard link between the data
folder and the shared folder is impossible, and a node must never judge another node's
uploads. So the shared folder holds only finished objects, each written once under a name no
other node can choose, and everything about uploads in flight stays in the node's data folder
(:mod:`.spooled`: a spool file and a marker in ``shared-uploads/``).

Layout under the shared folder::

    incoming/<blob id>.tmp             an object being copied in (removed by its node)
    blobs/<8 hex>/<8 hex><24 hex>.dcm  stored instances, as the folder store names them

An object is copied to ``incoming/`` under its blob id, fsynced, renamed into ``blobs/`` and
the folder fsynced (rename is atomic on POSIX file systems and on NFS): a reader on any node
sees a whole file or none. Blob ids are random; each node fills a shard folder of its own
choosing (a random 8-hex name) up to :data:`~.blobs.SHARD_SIZE` files, as the folder store
does, so nodes never contend for names. A node killed mid-copy leaves ``incoming/<id>.tmp``
and its marker; its next start removes both (the id is in the marker), and never anything
else: start-up does not list the shared folder.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

from dicomrpc_server.errors import StartupError
from dicomrpc_server.storage.blobs import BLOB_SUFFIX, BLOBS_DIR, SHARD_SIZE, blob_name, fsync_dir
from dicomrpc_server.storage.file_reader import FileReader, FolderSpec
from dicomrpc_server.storage.protocols import BlobRef
from dicomrpc_server.storage.spooled import SpooledBlobStore

SPOOL_FOLDER = "shared-uploads"
INCOMING = "incoming"
TEMPORARY_SUFFIX = ".tmp"


class SharedFolder:
    """The objects of a shared folder: the :class:`~.spooled.ObjectStore` of a mounted folder.

    Parameters
    ----------
    root
        The shared folder (absolute; it must exist: a mount point that is missing must not
        become an empty local folder).
    """

    spool_folder = SPOOL_FOLDER

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs_dir = root / BLOBS_DIR
        self.incoming_dir = root / INCOMING
        self._lock = threading.Lock()
        self._shard = ""
        self._shard_count = SHARD_SIZE

    @property
    def url(self) -> str:
        """The folder's absolute path, as ``--blobs`` takes it."""
        return str(self.root)

    def check(self) -> None:
        """Fail at start-up when the folder is missing or cannot be written."""
        if not self.root.is_dir():
            raise StartupError(
                "BLOB_STORE_UNAVAILABLE",
                f"the shared folder of --blobs {self.root} does not exist (is it mounted?); "
                "create it, or mount it, and start again",
            )
        try:
            for folder in (self.blobs_dir, self.incoming_dir):
                folder.mkdir(exist_ok=True)
            fsync_dir(self.root)
            probe = self.incoming_dir / f"check-{uuid.uuid4().hex}{TEMPORARY_SUFFIX}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StartupError(
                "BLOB_STORE_UNAVAILABLE",
                f"the shared folder of --blobs {self.root} cannot be written: {exc}",
            ) from exc

    def new_blob_id(self) -> str:
        """A random id in this node's current shard (a new shard every SHARD_SIZE blobs)."""
        with self._lock:
            if self._shard_count >= SHARD_SIZE:
                self._shard = uuid.uuid4().hex[:8]
                self._shard_count = 0
            self._shard_count += 1
            return self._shard + uuid.uuid4().hex[:24]

    def path(self, blob_id: str) -> Path:
        """The file of a blob id."""
        return self.blobs_dir / blob_name(blob_id)

    def _temporary(self, blob_id: str) -> Path:
        return self.incoming_dir / f"{blob_id}{TEMPORARY_SUFFIX}"

    def key(self, blob_id: str) -> str:
        """The blob's file, as a marker records it."""
        return str(self.path(blob_id))

    def put(self, path: Path, blob_id: str) -> None:
        """Copy the file in under a temporary name, fsync it, rename it into place, durably."""
        temporary = self._temporary(blob_id)
        target = self.path(blob_id)
        with open(path, "rb") as source, open(temporary, "xb") as copy:
            shutil.copyfileobj(source, copy, 1 << 20)
            copy.flush()
            os.fsync(copy.fileno())
        shard = target.parent
        if not shard.is_dir():
            shard.mkdir(exist_ok=True)
            fsync_dir(self.blobs_dir)
        os.rename(temporary, target)
        fsync_dir(shard)
        fsync_dir(self.incoming_dir)

    def open(self, blob_id: str) -> FileReader:
        """Open the blob's file: positional reads on its descriptor, as the folder store does."""
        return FileReader(self.path(blob_id))

    def ref(self, blob_id: str) -> BlobRef:
        """A reference worker processes open the file by (they mount the same folder)."""
        return BlobRef(FolderSpec(self.blobs_dir, BLOB_SUFFIX), blob_id)

    def remove(self, blob_ids: list[str]) -> None:
        """Remove files (and a copy left in ``incoming/``), durably."""
        folders: set[Path] = set()
        for blob_id in blob_ids:
            for path in (self.path(blob_id), self._temporary(blob_id)):
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
                folders.add(path.parent)
        for folder in folders:
            fsync_dir(folder)

    def blob_ids(self) -> Iterator[str]:
        """Every stored blob id (every node's), a listing per shard."""
        return (blob_id for blob_id, _ in self.blob_sizes())

    def blob_sizes(self) -> Iterator[tuple[str, int]]:
        """Every stored blob id with its size in bytes (what ``migrate`` verifies it copied)."""
        if not self.blobs_dir.is_dir():
            return
        for shard in sorted(os.scandir(self.blobs_dir), key=lambda e: e.name):
            if shard.is_dir():
                for entry in os.scandir(shard.path):
                    if entry.name.endswith(BLOB_SUFFIX):
                        yield entry.name[: -len(BLOB_SUFFIX)], entry.stat().st_size


class SharedFolderBlobStore(SpooledBlobStore):
    """The :class:`~dicomrpc_server.storage.protocols.BlobStore` of a shared folder.

    Parameters
    ----------
    root
        The shared folder.
    data_dir
        The data folder: uploads spool to, and their markers are kept in, ``shared-uploads/``.
    uploads_dir
        Another folder for them (one per process of a group).
    """

    def __init__(self, root: Path, data_dir: Path, *, uploads_dir: Path | None = None) -> None:
        self.folder = SharedFolder(root)
        super().__init__(self.folder, data_dir, uploads_dir=uploads_dir)
