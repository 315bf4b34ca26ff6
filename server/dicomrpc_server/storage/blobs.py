"""Instance files on a local file system, written once and never modified in place.

Layout under the data directory::

    uploads/<random>.part              files being received (removed at start-up)
    blobs/<8 hex>/<8 hex><24 hex>.dcm  stored instances, named by a random id (never by a UID)

An upload becomes a blob by fsync then rename; the rename is made durable by fsyncing its
directory, which :meth:`LocalBlobStore.sync` does for all renames since the last call, once per
index commit (group commit) rather than once per file. New blobs go to one current directory
(its name is the first 8 hex digits of their ids) until it holds ``SHARD_SIZE`` files, so a commit
of many instances costs one directory fsync, not one per instance.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from dicomrpc_server.storage.protocols import Upload

PREAMBLE_LENGTH = 128
SHARD_SIZE = 10_000


class LocalUpload:
    """A file being received; its preamble is zeroed as it is written.

    The 128-byte preamble can carry executable content (a "polyglot" file that is both a DICOM
    instance and a program), so the archive never keeps what was sent there.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._fp: BinaryIO | None = open(path, "xb")  # noqa: SIM115 - closed in close()

    def write(self, data: bytes | memoryview) -> None:
        """Append bytes, replacing any that fall in the preamble by zeros."""
        assert self._fp is not None, "upload already closed"
        view = memoryview(data)
        if self.size < PREAMBLE_LENGTH:
            n = min(PREAMBLE_LENGTH - self.size, len(data))
            self._fp.write(bytes(n))
            view = view[n:]
        self._fp.write(view)
        self.size += len(data)

    def close(self) -> None:
        """Flush and close the file (idempotent; a flush that fails still closes it)."""
        fp, self._fp = self._fp, None
        if fp is not None:
            fp.close()

    def discard(self) -> None:
        """Close and remove the partial file, even when its last bytes find no space."""
        with contextlib.suppress(OSError):  # they are being thrown away
            self.close()
        self.path.unlink(missing_ok=True)


class LocalBlobStore:
    """The default :class:`~dicomrpc_server.storage.protocols.BlobStore`: a directory tree."""

    def __init__(self, root: Path) -> None:
        self.uploads_dir = root / "uploads"
        self.blobs_dir = root / "blobs"
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        _fsync_dir(root)
        self._dirty: set[Path] = set()
        self._lock = threading.Lock()
        self._shard = ""
        self._shard_count = SHARD_SIZE

    def new_upload(self) -> LocalUpload:
        """Start receiving a file under ``uploads/``."""
        return LocalUpload(self.uploads_dir / f"{uuid.uuid4().hex}.part")

    def path(self, blob_id: str) -> Path:
        """The file of a blob id."""
        return self.blobs_dir / blob_id[:8] / f"{blob_id}.dcm"

    def _next_blob_id(self) -> str:
        """A new random blob id in the current shard (a new shard every SHARD_SIZE blobs)."""
        with self._lock:
            if self._shard_count >= SHARD_SIZE:
                self._shard = uuid.uuid4().hex[:8]
                (self.blobs_dir / self._shard).mkdir()
                _fsync_dir(self.blobs_dir)
                self._shard_count = 0
            self._shard_count += 1
            return self._shard + uuid.uuid4().hex[:24]

    def persist(self, upload: Upload) -> str:
        """Fsync the upload and rename it into ``blobs/``; return its new blob id."""
        upload.close()
        fd = os.open(upload.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        blob_id = self._next_blob_id()
        target = self.path(blob_id)
        os.rename(upload.path, target)
        with self._lock:
            self._dirty.add(target.parent)
        return blob_id

    def sync(self) -> None:
        """Fsync every directory that received a blob since the last call."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        for directory in dirty:
            _fsync_dir(directory)

    def open(self, blob_id: str) -> BinaryIO:
        """Open a stored file for reading."""
        return open(self.path(blob_id), "rb")

    def delete(self, blob_id: str) -> None:
        """Remove a stored file; a missing one is not an error."""
        self.path(blob_id).unlink(missing_ok=True)

    def blob_ids(self) -> Iterator[str]:
        """Every stored blob id."""
        for shard in sorted(self.blobs_dir.iterdir()):
            if shard.is_dir():
                for entry in os.scandir(shard):
                    if entry.name.endswith(".dcm"):
                        yield entry.name[: -len(".dcm")]

    def clear_uploads(self) -> int:
        """Remove uploads a previous process left behind."""
        count = 0
        for entry in self.uploads_dir.iterdir():
            entry.unlink(missing_ok=True)
            count += 1
        return count


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
