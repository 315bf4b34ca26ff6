"""``dicomrpc rebuild-index``: a new index from the instance files, resumable and idempotent.

The instance files hold everything the index says about them, so a lost index (a failed
mount) or one older than its files (a restored backup) can be rebuilt from them:

1. The data folder is locked (no server runs meanwhile). When the current index is readable,
   what a crash left is settled against it first, as at start-up: the files of committed
   deletes are removed (they must not come back), uploads are cleared.
2. When that index names exactly the files present, it is up to date: nothing is done.
3. Otherwise a new index is built in ``<data>/index.rebuilding``. What the files cannot give
   back is carried over from the current index when it can be read: workitems with their
   events and index entries, the extended query tag definitions (the files are then indexed
   for them, so they are ready at once), the DIMSE peers added at run time, and the DIMSE UPS
   subscriptions with where their delivery stands.
4. Every file in ``blobs/`` is parsed by the store's own :func:`~.store.prepare.prepare` in
   worker processes, oldest first (so that the study and series attributes of the latest
   instance win, as when they were stored), and indexed by the index writer, a batch per
   commit. Each commit also records the walk's cursor: a rebuild that is stopped resumes where
   it stopped.
5. Files that cannot be indexed (they do not parse, or hold an instance another file holds)
   are moved to the quarantine folder (:mod:`.storage.quarantine`).
6. The current index is moved aside to ``<data>/index.replaced-<UTC time>`` (never deleted) and
   the new one takes its place.

Versions and the change feed start again from 1 (the feed of the old index described another
history). A server refuses to start while ``index.rebuilding`` exists.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import lmdb
from tqdm import tqdm

from dicomrpc_server.config import Settings, command_settings
from dicomrpc_server.dicom.attributes import Level
from dicomrpc_server.errors import ServiceError, StartupError
from dicomrpc_server.logs import log_to_stderr
from dicomrpc_server.storage import records_pb2
from dicomrpc_server.storage.blobs import LocalBlobStore, fsync_dir
from dicomrpc_server.storage.folder_lock import DataFolderLock
from dicomrpc_server.storage.lmdb_index import LmdbIndex
from dicomrpc_server.storage.protocols import NewInstance
from dicomrpc_server.storage.quarantine import Suspect, quarantine
from dicomrpc_server.storage.recovery import (
    INDEX_DIR,
    REBUILDING_DIR,
    Listing,
    examine,
    settle,
)
from dicomrpc_server.storage.spooled_startup import FOLDER_STORE, recorded_index, recorded_store
from dicomrpc_server.store.prepare import PreparedInstance, prepare
from dicomrpc_server.workers import WorkerPool

log = logging.getLogger(__name__)
RecordT = TypeVar("RecordT", records_pb2.QueryTagRecord, records_pb2.ReindexOperation)

REPLACED_PREFIX = "index.replaced-"
# The rebuild's state in the new index's "meta": its cursor, and whether the walk is done.
STATE_KEY = b"rebuild"
# Files indexed per commit, and files parsed ahead of the commits per worker.
BATCH = 64
AHEAD_PER_WORKER = 8
# Records carried over per write transaction.
CARRY_BATCH = 10_000
_BLOB_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class BlobFile:
    """A file to index, in walk order: oldest first, then by blob id."""

    mtime_ns: int
    blob_id: str
    path: Path

    @property
    def key(self) -> tuple[int, str]:
        """Its place in the walk (what the cursor records)."""
        return self.mtime_ns, self.blob_id


@dataclass
class RebuildSummary:
    """What a rebuild did."""

    up_to_date: bool = False
    files: int = 0
    resumed_after: int = 0
    instances: int = 0
    studies: int = 0
    series: int = 0
    quarantined: int = 0
    quarantine: Path | None = None
    replaced: Path | None = None
    workitems: int = 0
    query_tags: int = 0


def rebuild_index(
    data_dir: Path, *, workers: int, progress: bool = True, settings: Settings | None = None
) -> RebuildSummary:
    """Rebuild the index of ``data_dir`` from its instance files (see the module).

    Raises
    ------
    StartupError
        When the folder does not exist or is in use (``DATA_FOLDER_IN_USE``), or its files
        are kept elsewhere or it is indexed in PostgreSQL (``REBUILD_UNSUPPORTED``).
    """
    if not data_dir.is_dir():
        raise StartupError("DATA_FOLDER_MISSING", f"data folder {data_dir} does not exist")
    indexed_in = recorded_index(data_dir)
    if indexed_in is not None:
        raise StartupError(
            "REBUILD_UNSUPPORTED",
            f"data folder {data_dir} is a node of an archive indexed in PostgreSQL "
            f"({indexed_in}); rebuild-index rebuilds the embedded index from the data folder's "
            "files, and this folder holds neither. Nothing was changed",
        )
    stored_in = recorded_store(data_dir)
    if stored_in is not None and stored_in != FOLDER_STORE:
        raise StartupError(
            "REBUILD_UNSUPPORTED",
            f"the instance files of data folder {data_dir} are kept in {stored_in}, and "
            "rebuild-index reads files in the data folder: it cannot rebuild this index. "
            "Nothing was changed",
        )
    lock = DataFolderLock(data_dir, "dicomrpc rebuild-index")
    try:
        settings = settings or Settings.from_env(data_dir=data_dir)
        return asyncio.run(_Rebuild(data_dir, workers, progress, settings).run())
    finally:
        lock.release()


class _Rebuild:
    def __init__(self, data_dir: Path, workers: int, progress: bool, settings: Settings) -> None:
        self.data_dir = data_dir
        self.workers = max(1, workers)
        self.progress = progress
        # The index is opened as the server opens it: with its settings.
        self.settings = settings
        self.store = LocalBlobStore(data_dir)
        self.current = data_dir / INDEX_DIR
        self.rebuilding = data_dir / REBUILDING_DIR
        self.summary = RebuildSummary()

    def _open(self, path: Path) -> LmdbIndex:
        return LmdbIndex(
            path,
            map_size=self.settings.lmdb_map_size,
            max_readers=self.settings.lmdb_max_readers,
            max_batch=self.settings.commit_batch,
            before_commit=lambda: None,
        )

    async def run(self) -> RebuildSummary:
        if not self.rebuilding.exists() and self._settle_current():
            self.summary.up_to_date = True
            return self.summary
        index = self._open(self.rebuilding)
        try:
            raw = index.get_meta(STATE_KEY)
            if raw is None:
                await self._carry_over(index)
                raw = index.get_meta(STATE_KEY)
                assert raw is not None
            state = json.loads(raw)
            if not state["done"]:
                pool = WorkerPool(self.workers)
                try:
                    await self._walk(index, pool, state["cursor"])
                    await self._quarantine_rest(index, pool)
                finally:
                    pool.shutdown()
                state["done"] = True
                await index.writer.run(lambda txn: _put_state(index, txn, state))
            if not self.summary.files:  # a run that only had the swap left to do
                self.summary.files = sum(1 for _ in self.store.blob_ids())
            counts = index.counts()
            self.summary.instances = counts.instances
            self.summary.studies = counts.studies
            self.summary.series = counts.series
            with index.read() as txn:
                self.summary.workitems = txn.stat(index.database("workitems"))["entries"]
            self.summary.query_tags = len(index.query_tags())
        finally:
            index.close()
        self._swap()
        return self.summary

    def _settle_current(self) -> bool:
        """Settle what a crash left against the current index; True when it is up to date."""
        current = None
        if (self.current / "data.mdb").exists():
            try:
                current = self._open(self.current)
            except (lmdb.Error, RuntimeError) as exc:
                log.warning("the current index cannot be opened (%s): it is rebuilt anyway", exc)
        try:
            settle(examine(Listing.of(self.store), current), self.store, current)
            return current is not None and current.blob_ids() == set(self.store.blob_ids())
        finally:
            if current is not None:
                current.close()

    async def _carry_over(self, index: LmdbIndex) -> None:
        """Copy what the files cannot give back from the current index, then start the walk."""
        records = _readable_records(self.current) if (self.current / "data.mdb").exists() else {}
        batches: list[list[tuple[str, bytes, bytes]]] = [[]]
        for name, entries in records.items():
            for key, value in entries:
                if len(batches[-1]) >= CARRY_BATCH:
                    batches.append([])
                batches[-1].append((name, key, value))
        state: dict[str, object] = {
            "done": False,
            "cursor": None,
            "started": _utc_stamp(),
            "source": None,
        }
        if records:
            state["source"] = str(self.current)
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1

            def put(
                txn: lmdb.Transaction,
                batch: list[tuple[str, bytes, bytes]] = batch,
                last: bool = last,
            ) -> None:
                for name, key, value in batch:
                    txn.put(key, value, db=index.database(name))
                if last:  # the state last: once it is there, the carry-over is complete
                    _put_state(index, txn, state)

            await index.writer.run(put)

    async def _walk(self, index: LmdbIndex, pool: WorkerPool, cursor: list[object] | None) -> None:
        """Index every file after the cursor, a batch per commit, parsing ahead in the pool."""
        files = sorted(_placed(self.store, _blob_files(self.store)), key=lambda f: f.key)
        named = index.blob_ids()
        after = (int(str(cursor[0])), str(cursor[1])) if cursor else None
        todo = [f for f in files if (after is None or f.key > after) and f.blob_id not in named]
        self.summary.files = len(files)
        self.summary.resumed_after = len(files) - len(todo)
        bar = tqdm(
            total=len(files),
            initial=len(files) - len(todo),
            unit=" files",
            desc="rebuilding",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        try:
            ahead: deque[tuple[BlobFile, asyncio.Future[PreparedInstance]]] = deque()
            upcoming = iter(todo)

            def parse_next() -> None:
                file = next(upcoming, None)
                if file is not None:
                    ahead.append((file, asyncio.ensure_future(pool.run(prepare, file.path))))

            for _ in range(self.workers * AHEAD_PER_WORKER):
                parse_next()
            batch: list[tuple[BlobFile, NewInstance | None]] = []
            committing: asyncio.Future[int] | None = None
            while ahead:
                file, parsing = ahead.popleft()
                parse_next()
                new: NewInstance | None = None
                try:
                    new = (await parsing).new
                    new.record.blob_id = file.blob_id
                    new.record.stored_at_us = file.mtime_ns // 1000
                except Exception as exc:  # reported when the file is quarantined
                    log.debug("%s cannot be indexed: %s", file.path, exc)
                batch.append((file, new))
                if len(batch) >= BATCH or not ahead:
                    if committing is not None:
                        bar.update(await committing)
                    committing = asyncio.ensure_future(_commit(index, batch))
                    batch = []
            if committing is not None:
                bar.update(await committing)
        finally:
            bar.close()

    async def _quarantine_rest(self, index: LmdbIndex, pool: WorkerPool) -> None:
        """Move the files the walk could not index to quarantine, saying why for each.

        Each is parsed once more first: one that parses now (its worker had died) and holds an
        instance no other file holds is indexed instead.
        """
        named = index.blob_ids()
        suspects = []
        for file in _blob_files(self.store):
            if file.blob_id in named:
                continue
            try:
                new = (await pool.run(prepare, file.path)).new
            except Exception as exc:
                suspects.append(Suspect(file.blob_id, file.path, f"cannot be indexed: {exc}"))
                continue
            new.record.blob_id = file.blob_id
            new.record.stored_at_us = file.mtime_ns // 1000
            await _commit(index, [(file, new)], advance=False)
            if not index.has_blob(file.blob_id):
                suspects.append(Suspect(file.blob_id, file.path, _duplicate_reason(index, new)))
        if suspects:
            self.summary.quarantine = quarantine(self.data_dir, suspects)
            self.summary.quarantined = len(suspects)

    def _swap(self) -> None:
        """Move the current index aside (never deleted) and put the new one in its place."""
        if self.current.exists():
            replaced = self.data_dir / f"{REPLACED_PREFIX}{_utc_stamp()}"
            n = 1
            while replaced.exists():
                n += 1
                replaced = self.data_dir / f"{REPLACED_PREFIX}{_utc_stamp()}-{n}"
            os.rename(self.current, replaced)
            self.summary.replaced = replaced
        os.rename(self.rebuilding, self.current)
        fsync_dir(self.data_dir)


async def _commit(
    index: LmdbIndex, batch: list[tuple[BlobFile, NewInstance | None]], *, advance: bool = True
) -> int:
    """Index a batch in one write transaction, with the cursor after it; return its size.

    Each instance is added in a transaction of its own inside it, so one that cannot be
    indexed (another file holds it) is left out alone. ``advance`` false leaves the cursor.
    """
    cursor = list(batch[-1][0].key)

    def add(txn: lmdb.Transaction) -> int:
        for _, new in batch:
            if new is None:
                continue
            try:
                with index.env.begin(write=True, parent=txn) as child:
                    index.add_instance_in(child, new)
            except ServiceError:
                continue
        if not advance:
            return len(batch)
        raw = txn.get(STATE_KEY, db=index.database("meta"))
        state = json.loads(bytes(raw)) if raw is not None else {"done": False}
        state["cursor"] = cursor
        _put_state(index, txn, state)
        return len(batch)

    return await index.writer.run(add)


def _put_state(index: LmdbIndex, txn: lmdb.Transaction, state: dict[str, object]) -> None:
    txn.put(STATE_KEY, json.dumps(state).encode(), db=index.database("meta"))


def _duplicate_reason(index: LmdbIndex, new: NewInstance) -> str:
    """Why a file that parses was not indexed: another file holds its instance."""
    where = index.locate_sop(new.sop_uid)
    record = index.get_instance(*where, new.sop_uid) if where is not None else None
    if record is None:
        return f"holds SOP instance {new.sop_uid}, which could not be indexed"
    return f"holds SOP instance {new.sop_uid}, which is indexed from blob {record.blob_id}"


def _placed(store: LocalBlobStore, files: Iterable[BlobFile]) -> Iterator[BlobFile]:
    """The files, each moved to where the store reads it from when it was copied elsewhere.

    A file is read at ``blobs/<first 8 digits of its id>/<id>.dcm``; one copied into another
    folder, or named otherwise than by a blob id, is renamed there (under a new id if its name
    is not one) before it is indexed.
    """
    moved: set[Path] = set()
    for file in files:
        if _BLOB_ID.fullmatch(file.blob_id) and file.path == store.path(file.blob_id):
            yield file
            continue
        blob_id = file.blob_id if _BLOB_ID.fullmatch(file.blob_id) else uuid.uuid4().hex
        target = store.path(blob_id)
        if target.exists():
            blob_id = uuid.uuid4().hex
            target = store.path(blob_id)
        target.parent.mkdir(exist_ok=True)
        os.rename(file.path, target)
        log.warning("moved %s to %s to index it", file.path, target)
        moved.update((file.path.parent, target.parent))
        yield BlobFile(file.mtime_ns, blob_id, target)
    for directory in moved:
        fsync_dir(directory)
    if moved:
        fsync_dir(store.blobs_dir)


def _blob_files(store: LocalBlobStore) -> Iterator[BlobFile]:
    for blob_id, _, path in store.blob_entries():
        yield BlobFile(path.stat().st_mtime_ns, blob_id, path)


def _readable_records(path: Path) -> dict[str, list[tuple[bytes, bytes]]]:
    """What the files cannot give back, read from an index (empty when it cannot be read).

    Workitems with their events and index entries as they are; extended query tags marked
    ready and their operations done, since the rebuild indexes every file for them.
    """
    out: dict[str, list[tuple[bytes, bytes]]] = {}
    try:
        env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=64)
    except lmdb.Error as exc:
        log.warning("the current index cannot be read (%s): nothing is carried over", exc)
        return out
    try:
        with env.begin(buffers=False) as txn:
            for name in (
                "workitems",
                "wi_events",
                "query_tags",
                "operations",
                "peers",
                "ups_subscribers",
                "ups_subscriptions",
            ):
                out[name] = _entries(env, txn, name)
            workitem_terms = bytes([Level.WORKITEM])
            out["terms"] = [
                (key, value)
                for key, value in _entries(env, txn, "terms", workitem_terms)
                if key.startswith(workitem_terms)
            ]
    except lmdb.Error as exc:
        log.warning("the current index cannot be read (%s): nothing is carried over", exc)
        return {}
    finally:
        env.close()
    out["query_tags"] = [
        (key, _mark(records_pb2.QueryTagRecord, value, lambda r: setattr(r, "ready", True)))
        for key, value in out["query_tags"]
    ]
    out["operations"] = [
        (key, _mark(records_pb2.ReindexOperation, value, _finish_operation))
        for key, value in out["operations"]
    ]
    return {name: entries for name, entries in out.items() if entries}


def _entries(
    env: lmdb.Environment, txn: lmdb.Transaction, name: str, start: bytes = b""
) -> list[tuple[bytes, bytes]]:
    try:
        db = env.open_db(name.encode(), txn=txn, create=False)
    except lmdb.NotFoundError:
        return []
    cursor = txn.cursor(db=db)
    if start and not cursor.set_range(start):
        return []
    if not start and not cursor.first():
        return []
    out = []
    for key, value in cursor:
        if start and not bytes(key).startswith(start):
            break
        out.append((bytes(key), bytes(value)))
    return out


def _mark(kind: type[RecordT], value: bytes, change: Callable[[RecordT], None]) -> bytes:
    record = kind.FromString(value)
    change(record)
    return record.SerializeToString()


def _finish_operation(operation: records_pb2.ReindexOperation) -> None:
    operation.done = True
    operation.processed_instances = operation.total_instances


def _utc_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def run(args: argparse.Namespace) -> int:
    """Entry point of ``dicomrpc rebuild-index``."""
    log_to_stderr(args.log_level)
    settings = command_settings("rebuild-index", args)
    if settings is None:
        return 2
    data_dir = settings.data_dir
    try:
        summary = rebuild_index(
            data_dir,
            workers=args.workers or os.cpu_count() or 1,
            progress=not args.quiet,
            settings=settings,
        )
    except StartupError as exc:
        print(f"dicomrpc rebuild-index: {exc}", file=sys.stderr)
        return 1
    for line in describe(data_dir, summary):
        print(line)
    return 0


def describe(data_dir: Path, summary: RebuildSummary) -> list[str]:
    """The summary a rebuild prints."""
    if summary.up_to_date:
        return [
            f"the index of {data_dir} is up to date: it names every instance file; "
            "nothing was rebuilt"
        ]
    lines = [
        f"rebuilt the index of {data_dir}: {summary.instances} instances in {summary.studies} "
        f"studies and {summary.series} series, from {summary.files} files"
        + (
            f" ({summary.resumed_after} indexed before this run resumed)"
            if summary.resumed_after
            else ""
        )
    ]
    if summary.quarantine is not None:
        lines.append(
            f"{summary.quarantined} files could not be indexed and were moved to "
            f"{summary.quarantine} (see its manifest.json)"
        )
    if summary.workitems or summary.query_tags:
        lines.append(
            f"carried over from the previous index: {summary.workitems} workitems, "
            f"{summary.query_tags} extended query tags"
        )
    if summary.replaced is not None:
        lines.append(f"the previous index is kept at {summary.replaced}")
    lines.append("versions and the change feed start again from 1")
    return lines
