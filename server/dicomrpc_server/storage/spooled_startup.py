"""Opening an archive whose instance files are outside its data folder: S3, a shared folder.

The data folder still holds the index (and the spooled uploads with their markers); it records
which blob store its index names blobs in (``blob-store``), so that a folder indexed against
one store is never served against another: an index naming objects served from the folder
store, or the reverse, would answer every retrieve with a missing file, and recovery would
judge one store's leftovers by the other's names.

What start-up does differs from the folder store's on purpose (see :mod:`.spooled`): it settles
this data folder's markers and pending removals and never lists the store, which other nodes
may share. So ``--quarantine-unindexed`` has nothing to act on and is refused, and
``dicomrpc rebuild-index`` (which reads the instance files of the data folder) refuses a
folder whose files are elsewhere.

The index itself is either the embedded LMDB index in the data folder or, with ``--index
postgresql://...``, a PostgreSQL database several nodes share (each node with a data folder of
its own for its spooled uploads, markers and locks). The data folder records a PostgreSQL
index in ``index-store`` (its URL without the password), so that it is never served with
another index: its markers would be judged by an index that never heard of its stores, and
the files an LMDB index names would vanish from the archive. A folder without the record is
served with the embedded index, as it always was. A PostgreSQL index needs ``--blobs``: the
files every node indexes must be where every node can read them.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from dicomrpc_server.config import Settings, redact_dsn
from dicomrpc_server.errors import StartupError
from dicomrpc_server.storage.blobs import fsync_dir
from dicomrpc_server.storage.key_locks import KeyLocks
from dicomrpc_server.storage.lmdb_index import LmdbIndex
from dicomrpc_server.storage.postgres.backend import PostgresBackend
from dicomrpc_server.storage.postgres.index import PostgresIndex
from dicomrpc_server.storage.s3 import S3Location, S3Objects
from dicomrpc_server.storage.shared_folder import SharedFolder
from dicomrpc_server.storage.spooled import ObjectStore, SpooledBlobStore, SpooledRecovery

STORE_FILE = "blob-store"
INDEX_FILE = "index-store"
INDEX_DIR = "index"
REBUILDING_DIR = "index.rebuilding"
FOLDER_STORE = "folder"


def recorded_store(data_dir: Path) -> str | None:
    """The blob store a data folder's index names blobs in, or None: unrecorded.

    ``folder`` (the data folder's own), ``s3://bucket/prefix`` or a shared folder's path.

    A folder without the record has only ever been served with its files in the folder.
    """
    try:
        return (data_dir / STORE_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


def check_folder_store(data_dir: Path) -> None:
    """Refuse to serve a data folder from its own files when its index names files elsewhere."""
    recorded = recorded_store(data_dir)
    if recorded is not None and recorded != FOLDER_STORE:
        raise StartupError(
            "BLOB_STORE_CHANGED",
            f"the index of data folder {data_dir} names instance files stored in {recorded}; "
            f"serve it with `--blobs {recorded}`"
            + (" (and its --s3-endpoint)" if recorded.startswith("s3://") else "")
            + ". Nothing was changed",
        )


def recorded_index(data_dir: Path) -> str | None:
    """The PostgreSQL index (URL without password) a data folder is served with, or None.

    None: the embedded LMDB index in the folder (or a new folder, served with neither yet).
    """
    try:
        return (data_dir / INDEX_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


def check_index(settings: Settings) -> bool:
    """Refuse a data folder served with another index than its own; whether it is recorded.

    Raises
    ------
    StartupError
        ``INDEX_CHANGED``: a folder of a PostgreSQL index served with the embedded one or
        another database, or a folder with an embedded index served with PostgreSQL;
        ``BLOB_STORE_REQUIRED``: a PostgreSQL index without ``--blobs``. Nothing is changed.
    """
    data_dir = settings.data_dir
    recorded = recorded_index(data_dir)
    if not settings.index:
        if recorded is not None:
            raise StartupError(
                "INDEX_CHANGED",
                f"data folder {data_dir} belongs to an archive indexed in PostgreSQL "
                f"({recorded}); serve it with `--index {recorded}` (and its password). "
                "Nothing was changed",
            )
        return False
    url = redact_dsn(settings.index)
    if not settings.blobs:
        raise StartupError(
            "BLOB_STORE_REQUIRED",
            f"--index {url} keeps the index where several nodes share it, so the instance "
            "files must be where every node reads them: add --blobs /SHARED/FOLDER or --blobs "
            "s3://BUCKET/PREFIX. Nothing was changed",
        )
    if recorded == url:
        return True
    if recorded is not None:
        raise StartupError(
            "INDEX_CHANGED",
            f"data folder {data_dir} belongs to the archive indexed in {recorded}, not in "
            f"{url}; use a data folder of its own for each archive. Nothing was changed",
        )
    if (data_dir / INDEX_DIR / "data.mdb").exists():
        raise StartupError(
            "INDEX_CHANGED",
            f"data folder {data_dir} has an embedded index; it cannot be served with --index "
            f"{url}. "
            + (
                f"Copy its archive there with `dicomrpc migrate --data {data_dir} --to-index "
                f"{url} --to-blobs {settings.blobs}`, then serve the new storage with a new data "
                "folder for each node"
                if recorded_store(data_dir) in (None, FOLDER_STORE)
                else "Use a new data folder for a node of a PostgreSQL-indexed archive"
            )
            + ". Nothing was changed",
        )
    return False


def _record_index(data_dir: Path, url: str) -> None:
    """Record, durably, that the data folder is served with the PostgreSQL index at ``url``."""
    _write_record(data_dir, INDEX_FILE, url)


def _write_record(data_dir: Path, name: str, text: str) -> None:
    """Replace the one-line record ``name`` of the data folder durably (written, then renamed)."""
    path = data_dir / name
    temporary = path.with_suffix(".tmp")
    with open(temporary, "w") as fp:
        fp.write(text + "\n")
        fp.flush()
        os.fsync(fp.fileno())
    os.replace(temporary, path)
    fsync_dir(data_dir)


SharedIndex = LmdbIndex | PostgresIndex


def open_postgres_index(settings: Settings) -> PostgresIndex:
    """Open the PostgreSQL index ``--index`` names (migrating its schema if needed).

    Raises ``StartupError`` ``INDEX_UNAVAILABLE`` or ``INDEX_SCHEMA_NEWER``.
    """
    return PostgresIndex(PostgresBackend(settings.index, pool_size=settings.index_pool_size))


def _check_record(data_dir: Path, url: str) -> bool:
    """Refuse a data folder indexed against another store; whether ``url`` is recorded."""
    recorded = recorded_store(data_dir)
    if recorded == url:
        return True
    if recorded is not None:
        raise StartupError(
            "BLOB_STORE_CHANGED",
            f"the index of data folder {data_dir} names instance files stored in {recorded}, "
            f"not in {url}. Nothing was changed",
        )
    if (data_dir / INDEX_DIR / "data.mdb").exists():
        raise StartupError(
            "BLOB_STORE_CHANGED",
            f"data folder {data_dir} has an index of files kept in the folder; it cannot be "
            f"served with --blobs {url}. Use a new data folder for a store outside it",
        )
    return False


def _record(data_dir: Path, url: str) -> None:
    """Record, durably, that the index names objects of the store at ``url``."""
    _write_record(data_dir, STORE_FILE, url)


def spool_folder(blobs: str) -> str:
    """The data folder's subfolder for the uploads of the store ``--blobs`` names."""
    return S3Objects.spool_folder if blobs.startswith("s3://") else SharedFolder.spool_folder


def object_store(settings: Settings) -> ObjectStore:
    """The store ``--blobs`` names: S3 objects, or a shared folder (checked, not yet opened).

    Raises
    ------
    StartupError
        ``BLOB_STORE_INVALID``: an S3 URL that names no bucket, or a shared folder that is
        the data folder or inside it.
    """
    if settings.blobs.startswith("s3://"):
        try:
            return S3Objects(S3Location.parse(settings.blobs, settings.s3_endpoint))
        except ValueError as exc:
            raise StartupError("BLOB_STORE_INVALID", str(exc)) from None
    root = Path(settings.blobs)
    data_dir = settings.data_dir.resolve()
    if root.resolve() == data_dir or data_dir in root.resolve().parents:
        raise StartupError(
            "BLOB_STORE_INVALID",
            f"--blobs {root} is the data folder or inside it; a shared folder is a folder of "
            "its own (without --blobs, instance files are kept in the data folder)",
        )
    return SharedFolder(root)


def open_spooled_storage(
    settings: Settings, group: GroupStorage | None = None
) -> tuple[SpooledBlobStore, SharedIndex, SpooledRecovery]:
    """Open the store of ``settings.blobs`` and the index, and recover.

    The index is the embedded one in the data folder, or the PostgreSQL database of
    ``settings.index``. Recovery is the same for both: it settles this data folder's markers
    (an upload of this node the index does not name was never acknowledged) and the pending
    removals of deleted instances (whichever node deleted them: their files are garbage, and
    removing a file already removed is no error), never anything else of the shared store.

    Alone, every marker and spool file is settled (those of a group's process folders too:
    their processes have all exited). As one process of a group (``group``), its uploads go to
    a folder of its own and only the folders of processes that have exited are settled.

    Raises
    ------
    StartupError
        ``INDEX_CHANGED``, ``INDEX_UNAVAILABLE``, ``INDEX_SCHEMA_NEWER``,
        ``BLOB_STORE_INVALID``, ``QUARANTINE_UNSUPPORTED`` (``--quarantine-unindexed`` with a
        store outside the data folder), ``REBUILD_UNFINISHED``, ``BLOB_STORE_CHANGED`` (a data
        folder indexed against another store) or ``BLOB_STORE_UNAVAILABLE`` (the bucket or
        folder cannot be used); nothing is changed then.
    """
    data_dir = settings.data_dir
    objects = object_store(settings)
    if settings.quarantine_unindexed:
        raise StartupError(
            "QUARANTINE_UNSUPPORTED",
            "--quarantine-unindexed acts on files of the data folder; with --blobs "
            f"{objects.url} start-up never lists the store (other nodes may share it) and "
            "keeps every object it cannot prove to be garbage. Start without it",
        )
    if (data_dir / REBUILDING_DIR).exists():
        raise StartupError(
            "REBUILD_UNFINISHED",
            f"a rebuild of the index of data folder {data_dir} is unfinished "
            f"({data_dir / REBUILDING_DIR} exists)",
        )
    index_recorded = check_index(settings)
    recorded = _check_record(data_dir, objects.url)
    uploads_root = data_dir / objects.spool_folder
    own = None if group is None else uploads_root / group.uploads
    store = SpooledBlobStore(objects, data_dir, uploads_dir=own)
    store.check()
    index: SharedIndex
    if settings.index:
        # Commit wake-ups between nodes (and a group's processes) are PostgreSQL's NOTIFY.
        # The folder is bound to the database once it could be opened, then to the store.
        index = open_postgres_index(settings)
        try:
            if not index_recorded:
                _record_index(data_dir, redact_dsn(settings.index))
            if not recorded:
                _record(data_dir, objects.url)
        except BaseException:
            index.close()
            raise
    else:
        if not recorded:
            _record(data_dir, objects.url)
        index = LmdbIndex(
            data_dir / INDEX_DIR,
            map_size=settings.lmdb_map_size,
            max_readers=settings.lmdb_max_readers,
            max_batch=settings.commit_batch,
            before_commit=store.sync,
            wakeups=None if group is None else group.wakeups,
        )
    try:
        removals = sorted(index.pending_removals())
        report = store.recover(index, removals)
        for folder in sorted(p for p in uploads_root.iterdir() if p.is_dir() and p != own):
            name = f"uploads {folder.name}"
            if group is not None and not group.locks.acquire(name):
                continue  # its process lives
            try:
                departed = SpooledBlobStore(objects, data_dir, uploads_dir=folder)
                settled = departed.recover(index, [])
                with contextlib.suppress(OSError):  # something there was kept
                    folder.rmdir()
            finally:
                if group is not None:
                    group.locks.release(name)
            report.partial_uploads += settled.partial_uploads
            report.unfinished_commits += settled.unfinished_commits
            report.completed += settled.completed
        if removals:
            index.forget_removals(removals).result()
    except BaseException:
        index.close()
        raise
    return store, index, report


@dataclass(frozen=True)
class GroupStorage:
    """What one process of a group needs to open a spooled store beside the others.

    Attributes
    ----------
    uploads
        The name of its own uploads folder (under the spool folder), whose lock it holds.
    locks
        The locks shared by the group's processes.
    wakeups
        The folder of the group's wake-up pipes.
    """

    uploads: str
    locks: KeyLocks
    wakeups: Path
