"""``dicomrpc backup``: a consistent copy of an embedded archive, taken while it serves.

The server keeps the data folder locked and goes on writing; the backup takes no lock and
writes nothing in the folder. It relies on two properties of the embedded archive:

* LMDB gives any process a consistent snapshot of the index in a read transaction, beside
  the writer: ``Environment.copy(compact=True)`` writes that snapshot to a file.
* Instance files are written once, named by a random id, before any index commit names them,
  and never changed afterwards (:mod:`..storage.blobs`).

So the index is snapshotted first, and then every file the snapshot names is copied: each
one was complete before the snapshot existed. A file may only disappear in between, when its
instance is deleted after the snapshot (:mod:`.delete` removes files once the deletion has
committed). Such an instance is checked against the live index: if the live index no longer
names the file, the deletion is applied to the copy too, through the index's own delete, and
the manifest lists it; if the live index still names a file that is not there, the archive is
damaged and the backup fails. Every copied file's size is checked against its index record,
and its SHA-256 recorded in the manifest for ``restore`` to verify.

The backup is written to ``DEST.partial`` (marked as such) and renamed to ``DEST`` once the
manifest is written and everything is on disk, so an interrupted backup never leaves a folder
``restore`` accepts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import json
import logging
import os
import shutil
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import lmdb
from tqdm import tqdm

from dicomrpc_server.access.grants import KEY_FILE
from dicomrpc_server.config import POSTGRES_SCHEMES, redact_dsn
from dicomrpc_server.storage import keys, records_pb2
from dicomrpc_server.storage.blobs import BLOBS_DIR, blob_name, fsync_dir
from dicomrpc_server.storage.lmdb_environment import SCHEMA_VERSION
from dicomrpc_server.storage.lmdb_index import LmdbIndex
from dicomrpc_server.storage.recovery import INDEX_DIR
from dicomrpc_server.storage.spooled_startup import (
    FOLDER_STORE,
    STORE_FILE,
    recorded_index,
    recorded_store,
)

log = logging.getLogger("dicomrpc.backup")

MANIFEST = "manifest.json"
# LMDB's data file: the whole index (its lock file holds nothing to keep).
INDEX_FILE_NAME = "data.mdb"
# Present in a backup being written, removed just before it gets its final name.
PARTIAL_MARKER = ".dicomrpc-backup-partial"
PARTIAL_SUFFIX = ".partial"
FORMAT = "dicomrpc-backup"
FORMAT_VERSION = 1
COPY_BUFFER = 1024 * 1024
# The sub-databases the backup reads from the snapshot (the rest is copied as it is).
_READ_DBS = ("meta", "studies", "series", "instances", "changes")


class BackupError(Exception):
    """A backup or restore that cannot be made: the message says what was found and what to do.

    Parameters
    ----------
    reason
        A stable UPPER_SNAKE name (``NOT_EMBEDDED``, ``NO_INDEX``, ``TARGET_EXISTS``,
        ``FILE_MISSING``, ``SIZE_MISMATCH``, ``NOT_A_BACKUP``, ``INCOMPLETE_BACKUP``,
        ``DIGEST_MISMATCH``, ...).
    message
        Sentences for the operator naming the folder or file at fault.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class Manifest:
    """What a backup holds, written last as ``manifest.json``.

    Attributes
    ----------
    change_sequence
        The change feed's last sequence in the snapshot: a feed follower restored with the
        backup resumes after it.
    studies, series, instances
        Counts of the backup's index (after deletions applied during the backup).
    instance_bytes
        The sum of the instance files' sizes.
    files
        Each file of the backup by its path relative to the backup: size and SHA-256.
    deleted_during_backup
        ``study/series/sop`` of the instances deleted from the live archive between the
        snapshot and the copy of their file, removed from the backup's index too.
    """

    source: str
    created: str
    change_sequence: int
    studies: int
    series: int
    instances: int
    instance_bytes: int
    files: dict[str, dict[str, object]] = field(default_factory=dict)
    deleted_during_backup: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        """The manifest as written, with its format named first."""
        body = {"format": FORMAT, "format_version": FORMAT_VERSION, **self.__dict__}
        return json.dumps(body, indent=1, sort_keys=False) + "\n"

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        """The manifest of a complete backup in ``folder``.

        Raises
        ------
        BackupError
            ``INCOMPLETE_BACKUP`` for a folder an interrupted backup left; ``NOT_A_BACKUP``
            when it has no manifest of this format.
        """
        if (folder / PARTIAL_MARKER).exists():
            raise BackupError(
                "INCOMPLETE_BACKUP",
                f"{folder} is a backup that was interrupted before it was complete; make a new "
                "one with `dicomrpc backup`",
            )
        try:
            body = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BackupError(
                "NOT_A_BACKUP", f"{folder} is not a backup of `dicomrpc backup` (no {MANIFEST})"
            ) from None
        except (OSError, ValueError) as exc:
            raise BackupError(
                "NOT_A_BACKUP", f"{folder / MANIFEST} cannot be read: {exc}"
            ) from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise BackupError("NOT_A_BACKUP", f"{folder / MANIFEST} is not a {FORMAT} manifest")
        if body.get("format_version") != FORMAT_VERSION:
            raise BackupError(
                "NOT_A_BACKUP",
                f"{folder / MANIFEST} has format version {body.get('format_version')}; this "
                f"release reads {FORMAT_VERSION}",
            )
        body.pop("format")
        body.pop("format_version")
        try:
            return cls(**body)
        except TypeError as exc:
            raise BackupError("NOT_A_BACKUP", f"{folder / MANIFEST} is damaged: {exc}") from None


def backup(
    data_dir: Path, dest: Path, progress: Callable[[int, int], None] | None = None
) -> Manifest:
    """Copy the embedded archive of ``data_dir`` to the new folder ``dest`` (see module).

    Parameters
    ----------
    data_dir
        The data folder, served or not: nothing in it is locked or written.
    dest
        The backup folder to create.
    progress
        Called before each instance file is copied, with the files copied so far and the
        files to copy: for a progress display, and for a caller that acts between the
        snapshot and the copies.

    Raises
    ------
    BackupError
        When the folder is not an embedded archive, ``dest`` exists, or a file the live index
        names is missing or has another size than its record.
    """
    _check_source(data_dir)
    if dest.resolve().is_relative_to(data_dir.resolve()):
        raise BackupError(
            "TARGET_INSIDE",
            f"{dest} is inside the data folder {data_dir}: a backup there is lost with the "
            "folder, and the server would find a folder it does not know; choose another "
            "place (nothing was written)",
        )
    if dest.exists():
        raise BackupError(
            "TARGET_EXISTS", f"{dest} exists; back up to a new folder (nothing was written)"
        )
    partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
    _clear_partial(partial)
    partial.mkdir(parents=True)
    (partial / PARTIAL_MARKER).write_text(f"dicomrpc backup of {data_dir}, pid {os.getpid()}\n")
    (partial / INDEX_DIR).mkdir()
    source_env = _open_live(data_dir)
    files: dict[str, dict[str, object]] = {}
    missing: list[tuple[str, str, str, str]] = []
    total = 0
    try:
        # One read transaction, for as long as the copy of the index takes: the files are
        # copied afterwards, without holding pages the server's writer would reuse.
        source_env.copy(str(partial / INDEX_DIR), compact=True)
        log.info("index snapshot written to %s", partial / INDEX_DIR)
        with Snapshot(partial / INDEX_DIR) as snapshot:
            change_sequence = snapshot.change_sequence
            for done, (study, series, sop, blob_id, size) in enumerate(snapshot.instances()):
                if progress is not None:
                    progress(done, snapshot.counts[2])
                relative = f"{BLOBS_DIR}/{blob_name(blob_id)}"
                copied = _copy_instance(data_dir, partial, relative, blob_id, sop, size, source_env)
                if copied is None:
                    missing.append((study, series, sop, blob_id))
                else:
                    files[relative] = copied
                    total += size
    finally:
        source_env.close()
    if missing:
        _apply_deletions(partial / INDEX_DIR, missing)
    with Snapshot(partial / INDEX_DIR) as final:
        counts = final.counts
    files[f"{INDEX_DIR}/{INDEX_FILE_NAME}"] = _sync_and_describe(
        partial / INDEX_DIR / INDEX_FILE_NAME
    )
    with contextlib.suppress(FileNotFoundError):
        (partial / INDEX_DIR / "lock.mdb").unlink()
    extras = [KEY_FILE] + ([STORE_FILE] if recorded_store(data_dir) == FOLDER_STORE else [])
    for name in extras:
        with contextlib.suppress(FileNotFoundError):
            size, digest = copy_file(data_dir / name, partial / name)
            files[name] = {"size": size, "sha256": digest}
    manifest = Manifest(
        source=str(data_dir.resolve()),
        created=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        change_sequence=change_sequence,
        studies=counts[0],
        series=counts[1],
        instances=counts[2],
        instance_bytes=total,
        files=files,
        deleted_during_backup=[f"{s}/{r}/{i}" for s, r, i, _ in missing],
    )
    _write_synced(partial / MANIFEST, manifest.to_json().encode())
    sync_folders(partial)
    (partial / PARTIAL_MARKER).unlink()
    fsync_dir(partial)
    partial.rename(dest)
    fsync_dir(dest.parent)
    return manifest


def _copy_instance(
    data_dir: Path,
    partial: Path,
    relative: str,
    blob_id: str,
    sop: str,
    size: int,
    live: lmdb.Environment,
) -> dict[str, object] | None:
    """Copy one instance file; its manifest entry, or None when deleted since the snapshot.

    Raises
    ------
    BackupError
        ``FILE_MISSING`` when the file is gone but the live index still names it, and
        ``SIZE_MISMATCH`` when it has another size than its record: a damaged archive.
    """
    try:
        copied, digest = copy_file(data_dir / relative, partial / relative)
    except FileNotFoundError:
        if _still_named(live, blob_id):
            raise BackupError(
                "FILE_MISSING",
                f"{data_dir / relative}, the file of instance {sop}, is missing although the "
                "index names it; the archive is damaged (`dicomrpc rebuild-index` reindexes "
                "what files there are). The backup was not made",
            ) from None
        return None
    if copied != size:
        raise BackupError(
            "SIZE_MISMATCH",
            f"{data_dir / relative} has {copied} bytes, its index record {size}: the archive "
            "is damaged. The backup was not made",
        )
    return {"size": copied, "sha256": digest}


def _check_source(data_dir: Path) -> None:
    """Refuse what is not an embedded archive: only its index and files are copied."""
    index = recorded_index(data_dir)
    store = recorded_store(data_dir)
    if index is not None:
        _refuse_shared(data_dir, index)
    if store is not None and store != FOLDER_STORE:
        _refuse_shared(data_dir, store)
    if not (data_dir / INDEX_DIR / "data.mdb").is_file():
        raise BackupError(
            "NO_INDEX",
            f"{data_dir} holds no archive index ({data_dir / INDEX_DIR / 'data.mdb'} is "
            "missing); name the data folder of `dicomrpc serve --data`. Nothing was written",
        )


def _refuse_shared(data_dir: Path, where: str) -> None:
    """Refuse an archive whose index or files are elsewhere: they have backups of their own.

    Raises
    ------
    BackupError
        ``NOT_EMBEDDED``, saying what to use instead.
    """
    what = (
        f"the PostgreSQL index {redact_dsn(where)}"
        if where.startswith(POSTGRES_SCHEMES)
        else f"instance files in {where}"
    )
    raise BackupError(
        "NOT_EMBEDDED",
        f"data folder {data_dir} is served with {what}; `dicomrpc backup` copies an embedded "
        "archive only. Back up the PostgreSQL database with pg_dump and the instance files "
        "with the store's own snapshots (see the README's Backup and restore). Nothing was "
        "written",
    )


def _clear_partial(partial: Path) -> None:
    """Remove what an interrupted backup left at ``partial``: only a folder marked as ours.

    Raises
    ------
    BackupError
        ``TARGET_EXISTS`` when ``partial`` exists without the marker (not provably ours).
    """
    if not partial.exists():
        return
    if not (partial / PARTIAL_MARKER).is_file():
        raise BackupError(
            "TARGET_EXISTS",
            f"{partial} exists and is not an interrupted backup's; move it away "
            "(nothing was written)",
        )
    log.info("removing %s, left by an interrupted backup", partial)
    shutil.rmtree(partial)


def _open_live(data_dir: Path) -> lmdb.Environment:
    """The live index, read-only beside its server (LMDB's lock file shares the readers)."""
    try:
        return lmdb.open(
            str(data_dir / INDEX_DIR), readonly=True, lock=True, max_dbs=32, readahead=False
        )
    except lmdb.Error as exc:
        raise BackupError(
            "INDEX_UNREADABLE",
            f"the index of {data_dir} cannot be opened ({exc}). Nothing was written",
        ) from None


class Snapshot:
    """A copy of the index, read-only: its counts, change sequence and instances.

    Nothing writes the copy while it is read, so one read transaction may last the whole
    walk; the instances are walked, never held all at once, whatever the archive's size.

    Raises
    ------
    BackupError
        ``INDEX_UNREADABLE`` when the copy cannot be opened or has another schema.
    """

    def __init__(self, path: Path) -> None:
        try:
            self.env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=32, readahead=False)
        except lmdb.Error as exc:
            raise BackupError(
                "INDEX_UNREADABLE", f"the index at {path} cannot be read: {exc}"
            ) from None
        try:
            self._dbs: dict[str, lmdb._Database | None] = {}
            for name in _READ_DBS:
                try:
                    self._dbs[name] = self.env.open_db(name.encode(), create=False)
                except lmdb.NotFoundError:  # never written: an archive that never held it
                    self._dbs[name] = None
            with self.env.begin(buffers=False) as txn:
                meta = self._dbs["meta"]
                schema = txn.get(b"schema", db=meta) if meta is not None else None
                if schema is None or struct.unpack(">I", schema)[0] != SCHEMA_VERSION:
                    raise BackupError(
                        "INDEX_UNREADABLE",
                        f"the index at {path} is not of schema {SCHEMA_VERSION}",
                    )
                self.change_sequence = 0
                changes = self._dbs["changes"]
                if changes is not None:
                    cursor = txn.cursor(db=changes)
                    if cursor.last():
                        self.change_sequence = struct.unpack(">Q", bytes(cursor.key()))[0]
                studies, series, instances = (
                    txn.stat(db)["entries"] if db is not None else 0
                    for db in (self._dbs["studies"], self._dbs["series"], self._dbs["instances"])
                )
                self.counts: tuple[int, int, int] = (studies, series, instances)
        except BaseException:
            self.env.close()
            raise

    def instances(self) -> Iterator[tuple[str, str, str, str, int]]:
        """``(study, series, sop, blob id, size)`` of every instance, in key order."""
        db = self._dbs["instances"]
        if db is None:
            return
        with self.env.begin(buffers=False) as txn:
            for key, value in txn.cursor(db=db):
                study, series, sop = keys.split_key(bytes(key))
                record = records_pb2.InstanceRecord.FromString(bytes(value))
                yield study, series, sop, record.blob_id, record.size_bytes

    def close(self) -> None:
        """Close the environment (before the copy is written, or renamed)."""
        self.env.close()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _still_named(env: lmdb.Environment, blob_id: str) -> bool:
    """Whether the live index names a file now (a fresh read transaction)."""
    db = env.open_db(b"blobs", create=False)
    while True:
        try:
            txn = env.begin()
        except lmdb.MapResizedError:  # the server enlarged the map since: adopt its size
            env.set_mapsize(0)
            continue
        with txn:
            return txn.get(blob_id.encode("ascii"), db=db) is not None


def _apply_deletions(index_dir: Path, missing: list[tuple[str, str, str, str]]) -> None:
    """Delete from the copy the instances deleted live meanwhile, as the server deleted them.

    The index's own delete keeps the study and series records, counts and search terms right;
    the files it would remove were never copied, so their removal records are cleared at once.
    """
    index = LmdbIndex(
        index_dir, map_size=1 << 30, max_readers=8, max_batch=256, before_commit=lambda: None
    )
    try:

        async def delete_all() -> None:
            for study, series, sop, _ in missing:
                blob_ids = await index.delete(study, series, sop)
                index.forget_removals(blob_ids).result()

        asyncio.run(delete_all())
    finally:
        index.close()
    log.info("%d instances deleted during the backup were removed from it", len(missing))


def copy_file(source: Path, target: Path) -> tuple[int, str]:
    """Copy a file with its permissions, fsynced; its size and SHA-256 as read.

    The copy is created with the source's permissions, never wider for a moment: the data
    folder's retrieve-grant key is readable by its owner alone.

    Raises
    ------
    FileNotFoundError
        When the source is gone (nothing is created then).
    """
    digest = hashlib.sha256()
    size = 0
    with source.open("rb") as reader:  # opened first: a missing file creates nothing
        target.parent.mkdir(parents=True, exist_ok=True)
        mode = os.fstat(reader.fileno()).st_mode & 0o777
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(descriptor, "wb") as writer:
            while chunk := reader.read(COPY_BUFFER):
                writer.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            writer.flush()
            os.fsync(writer.fileno())
    return size, digest.hexdigest()


def _sync_and_describe(path: Path) -> dict[str, object]:
    """Make a file written by another writer (LMDB's copy) durable; its size and SHA-256."""
    with path.open("rb") as reader:
        os.fsync(reader.fileno())
        digest = hashlib.file_digest(reader, "sha256")
        return {"size": os.fstat(reader.fileno()).st_size, "sha256": digest.hexdigest()}


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("xb") as writer:
        writer.write(data)
        writer.flush()
        os.fsync(writer.fileno())


def sync_folders(root: Path) -> None:
    """Make every directory entry under ``root`` durable before the rename.

    The files themselves are already: each was fsynced as it was written (:func:`copy_file`,
    the index copy, the manifest).
    """
    for folder, _, _ in os.walk(root):
        fsync_dir(Path(folder))


def summary(manifest: Manifest, dest: Path) -> Iterator[str]:
    """The lines ``backup`` prints once done."""
    yield (
        f"backed up {manifest.instances} instances ({manifest.instance_bytes} bytes) in "
        f"{manifest.series} series of {manifest.studies} studies to {dest}, change feed at "
        f"sequence {manifest.change_sequence}"
    )
    if manifest.deleted_during_backup:
        yield f"{len(manifest.deleted_during_backup)} instances deleted meanwhile are left out"
    yield f"restore with: dicomrpc restore --from {dest} --data NEWDIR"


def run(args: argparse.Namespace) -> int:
    """Entry point of ``dicomrpc backup``."""
    from dicomrpc_server.config import command_settings
    from dicomrpc_server.logs import log_to_stderr

    log_to_stderr(args.log_level)
    settings = command_settings("backup", args)
    if settings is None:
        return 2
    try:
        if settings.index or settings.blobs:
            _refuse_shared(settings.data_dir, settings.index or settings.blobs)
        with tqdm(unit="files", desc="copying", disable=args.quiet) as bar:

            def show(done: int, total: int) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            manifest = backup(settings.data_dir, args.to, progress=show)
    except BackupError as exc:
        print(f"dicomrpc backup: {exc}", file=sys.stderr)
        return 1
    for line in summary(manifest, args.to):
        print(line)
    return 0
