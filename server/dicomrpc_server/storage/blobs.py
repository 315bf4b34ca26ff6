"""Instance files on a local file system, written once and never modified in place.

Layout under the data directory::

    uploads/<blob id>.part             files being received, named by the blob id they will have
    uploads/<process>/<blob id>.part   the same, of one of several processes serving the folder
    blobs/<8 hex>/<8 hex><24 hex>.dcm  stored instances, named by a random id (never by a UID)

A file is stored in three steps, so that start-up can prove which files are garbage:

1. :meth:`LocalBlobStore.persist` fsyncs the upload (its bytes are on stable storage).
2. :meth:`LocalBlobStore.sync`, which the index writer calls in every write transaction just
   before it commits, fsyncs ``uploads/`` (the upload's name is durable), hard-links each
   persisted upload to its final name in ``blobs/`` and fsyncs those directories. Then the index
   commit names the blob.
3. :meth:`LocalBlobStore.committed` removes the upload's name once the commit is done.

The final name exists before the index can name it, so readers always open ``blobs/``; an
upload name beside a blob marks a commit that was about to happen. After a crash, a blob whose
upload name remains and that the index does not name was never acknowledged (garbage), and a
blob without an upload name that the index does not name is one the index lost (kept, and
reported: see :mod:`.recovery`). New blobs go to one current directory (its name is the first 8
hex digits of their ids) until it holds ``SHARD_SIZE`` files, so a commit of many instances
costs one directory fsync there, not one per instance.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from dicomrpc_server.storage.file_reader import FileReader, FolderSpec
from dicomrpc_server.storage.protocols import BlobRef, Upload

PREAMBLE_LENGTH = 128
SHARD_SIZE = 10_000
UPLOAD_SUFFIX = ".part"
BLOB_SUFFIX = ".dcm"
# The folder of a data folder (or shared folder) that holds the instance files.
BLOBS_DIR = "blobs"

log = logging.getLogger(__name__)


class LocalUpload:
    """A file being received; its preamble is zeroed as it is written.

    The 128-byte preamble can carry executable content (a "polyglot" file that is both a DICOM
    instance and a program), so the archive never keeps what was sent there.
    """

    def __init__(self, path: Path, blob_id: str) -> None:
        self.path = path
        self.blob_id = blob_id
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
    """The default :class:`~dicomrpc_server.storage.protocols.BlobStore`: a directory tree.

    Parameters
    ----------
    root
        The data folder.
    uploads
        The name of this process's own folder under ``uploads/`` when several processes
        serve the folder (each judges only its own uploads, and those of processes that have
        exited); empty for the one process that owns the folder alone.
    """

    def __init__(self, root: Path, uploads: str = "") -> None:
        self.uploads_root = root / "uploads"
        self.uploads_dir = self.uploads_root / uploads if uploads else self.uploads_root
        self.blobs_dir = root / BLOBS_DIR
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        fsync_dir(root)
        if uploads:
            fsync_dir(self.uploads_root)
        # Persisted uploads waiting for their final name, linked by the next sync().
        self._staged: list[LocalUpload] = []
        self._lock = threading.Lock()
        self._linking = threading.Lock()
        self._shard = ""
        self._shard_count = SHARD_SIZE

    def new_upload(self) -> LocalUpload:
        """Start receiving a file under ``uploads/``, named by the blob id it will have."""
        blob_id = self._next_blob_id()
        return LocalUpload(self.upload_path(blob_id), blob_id)

    def path(self, blob_id: str) -> Path:
        """The file of a blob id."""
        return self.blobs_dir / blob_name(blob_id)

    def upload_path(self, blob_id: str) -> Path:
        """The upload name of a blob id (present while its index commit is under way)."""
        return self.uploads_dir / f"{blob_id}{UPLOAD_SUFFIX}"

    def _next_blob_id(self) -> str:
        """A new random blob id in the current shard (a new shard every SHARD_SIZE blobs)."""
        with self._lock:
            if self._shard_count >= SHARD_SIZE:
                self._shard = uuid.uuid4().hex[:8]
                (self.blobs_dir / self._shard).mkdir()
                fsync_dir(self.blobs_dir)
                self._shard_count = 0
            self._shard_count += 1
            return self._shard + uuid.uuid4().hex[:24]

    def persist(self, upload: Upload) -> str:
        """Fsync the upload; it gets its final name at the next :meth:`sync`. Return its id."""
        assert isinstance(upload, LocalUpload)
        upload.close()
        fd = os.open(upload.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        with self._lock:
            self._staged.append(upload)
        return upload.blob_id

    def sync(self) -> None:
        """Give every persisted upload its final name, durably (before an index commit).

        ``uploads/`` is fsynced first, so that a final name is never durable without the upload
        name that marks it as not yet committed.
        """
        with self._lock:
            staged, self._staged = self._staged, []
        if not staged:
            return
        fsync_dir(self.uploads_dir)
        directories: set[Path] = set()
        with self._linking:
            for i, upload in enumerate(staged):
                target = self.path(upload.blob_id)
                try:
                    _link(upload.path, target)
                except FileNotFoundError:
                    # Discarded meanwhile (its store failed): it has nothing left to name.
                    log.warning("upload %s was removed before it was stored", upload.path.name)
                    continue
                except BaseException:
                    with self._lock:  # the next commit tries again
                        self._staged[:0] = staged[i:]
                    raise
                directories.add(target.parent)
        for directory in directories:
            fsync_dir(directory)

    def committed(self, upload: Upload) -> None:
        """Remove the upload name of a blob the index now names (it keeps its final name)."""
        upload.path.unlink(missing_ok=True)

    def discard(self, upload: Upload) -> None:
        """Remove a persisted upload whose commit failed, under both of its names."""
        assert isinstance(upload, LocalUpload)
        with self._lock:
            if upload in self._staged:
                self._staged.remove(upload)
        target = self.path(upload.blob_id)
        with self._linking:  # not while sync() may be linking it
            if same_file(upload.path, target):
                target.unlink(missing_ok=True)
            upload.discard()

    def open(self, blob_id: str) -> FileReader:
        """Open a stored file for reading: positional reads on its descriptor."""
        return FileReader(self.path(blob_id))

    def ref(self, blob_id: str) -> BlobRef:
        """A reference worker processes open the file by (they share the file system)."""
        return BlobRef(FolderSpec(self.blobs_dir, BLOB_SUFFIX), blob_id)

    def remove(self, blob_ids: Iterable[str]) -> None:
        """Remove stored files (and any upload name left beside one), durably.

        The directories are fsynced before this returns: the index may then forget that the
        files were to be removed, and they never come back after a crash.
        """
        directories: set[Path] = set()
        for blob_id in blob_ids:
            path = self.path(blob_id)
            if _unlink(path):
                directories.add(path.parent)
            if _unlink(self.upload_path(blob_id)):
                directories.add(self.uploads_dir)
        for directory in directories:
            fsync_dir(directory)

    def blob_ids(self) -> Iterator[str]:
        """Every stored blob id."""
        for blob_id, _, _ in self.blob_entries():
            yield blob_id

    def blob_entries(self) -> Iterator[tuple[str, str, Path]]:
        """Every stored file as (blob id, shard folder name, path), a listing per shard.

        A file's id is its name; its shard folder is where it is, which is the first 8 digits
        of the id unless the file was copied in elsewhere.
        """
        for shard in sorted(os.scandir(self.blobs_dir), key=lambda e: e.name):
            if shard.is_dir():
                for entry in os.scandir(shard.path):
                    if entry.name.endswith(BLOB_SUFFIX):
                        yield entry.name[: -len(BLOB_SUFFIX)], shard.name, Path(entry.path)

    def upload_files(self) -> dict[str, Path]:
        """Every file under ``uploads/`` and its process folders, by name without ``.part``."""
        return upload_files(self.uploads_root, recurse=True)

    def process_folders(self) -> list[Path]:
        """The process folders under ``uploads/`` (this process's own included)."""
        return [Path(e.path) for e in os.scandir(self.uploads_root) if e.is_dir()]


def upload_files(folder: Path, *, recurse: bool = False) -> dict[str, Path]:
    """The files of an uploads folder by name without ``.part`` (and its subfolders')."""
    found: dict[str, Path] = {}
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False):
            if recurse:
                found.update(upload_files(Path(entry.path)))
        else:
            found[entry.name.removesuffix(UPLOAD_SUFFIX)] = Path(entry.path)
    return found


def _link(source: Path, target: Path) -> None:
    """Give ``source`` the name ``target`` too (done already when it is the same file)."""
    try:
        os.link(source, target)
    except FileExistsError:
        if not same_file(source, target):
            raise


def same_file(a: Path, b: Path) -> bool:
    """Whether two names are links to one file (False when either is missing)."""
    try:
        return os.path.samefile(a, b)
    except FileNotFoundError:
        return False


def _unlink(path: Path) -> bool:
    """Remove a name; return whether there was one."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def blob_name(blob_id: str) -> str:
    """A blob's file below the blobs folder: ``<first 8 characters>/<blob id>.dcm``.

    One layout for every store that keeps files in a folder, and for the backups of one.
    """
    return f"{blob_id[:8]}/{blob_id}{BLOB_SUFFIX}"


def fsync_dir(path: Path) -> None:
    """Make the entries of a directory (names created, renamed or removed) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
