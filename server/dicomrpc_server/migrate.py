"""``dicomrpc migrate``: an embedded archive copied to a PostgreSQL index and a shared store.

An archive outgrows one machine when it should be served by several nodes: they share a
PostgreSQL index and a store of instance files every node reads, a shared folder or S3 (README,
"Several nodes: a shared PostgreSQL index"). This moves an embedded archive (LMDB index and
files in its data folder) there, once, resumably:

1. The data folder is locked (no server runs on it meanwhile) and read as it lies
   (:mod:`.storage.embedded_source`): nothing in it changes but its lock file. Its index must
   be readable and name exactly its files (else ``rebuild-index``, or a start of ``serve``,
   must settle it first).
2. The target database is checked: it may be empty, or hold exactly what an interrupted
   migration of this archive wrote (every instance this archive's, under the same file, with
   nothing deleted or stored since; no workitem, event, tag or peer this archive does not
   have).
   Anything else is another archive's data, and two archives are never merged silently.
3. The extended query tags are registered first, ready, with their operations done: every
   instance is then indexed for them by its own store below, with nothing left to walk.
   The DIMSE peers added at run time are copied too.
4. Every instance the target does not hold yet is copied: its file is written as the
   store's object under the same blob id (durable when :meth:`ObjectStore.put` returns), then
   indexed by the target index's own store path (:meth:`PostgresIndex.add_instance`, one
   transaction each) from the source's stored records, not from a new parse: records,
   metadata, frame tables and the terms derived from them are the ones an instance stored there
   gets. An indexed instance therefore always has its file; a file written by a run that was
   killed before it was indexed is written again by the next run, under the same name.
5. Workitems are written by the target's workitem store, each with the index terms it derives;
   their event log is copied under its own sequence numbers, so that a subscriber's position
   still means the same event. The DIMSE UPS subscriptions are copied with where each
   subscriber's delivery stands.
6. The counts of both sides are compared (studies, series, instances, bytes of the files,
   workitems, events, query tags, peers); any difference fails the command, naming it.

Instance versions are numbered anew by the target, and its change feed starts again from 1
(each instance copied is one "created" change): the feed of the embedded index described the
embedded archive's history, which a follower reading the new archive starts again from 0.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

from tqdm import tqdm

from dicomrpc.v1 import dataset_pb2
from dicomrpc_server.config import Settings, command_settings, redact_dsn
from dicomrpc_server.errors import ServiceError, StartupError
from dicomrpc_server.logs import log_to_stderr
from dicomrpc_server.storage import keys, records_pb2
from dicomrpc_server.storage.blobs import BLOB_SUFFIX
from dicomrpc_server.storage.embedded_source import EmbeddedSource, SourceInstance
from dicomrpc_server.storage.folder_lock import DataFolderLock
from dicomrpc_server.storage.postgres.index import PostgresIndex
from dicomrpc_server.storage.recovery import REBUILDING_DIR
from dicomrpc_server.storage.spooled import ObjectStore
from dicomrpc_server.storage.spooled_startup import (
    FOLDER_STORE,
    object_store,
    open_postgres_index,
    recorded_index,
    recorded_store,
)
from dicomrpc_server.ups.postgres_store import PostgresWorkitemStore
from dicomrpc_server.ups.records import Mutation

log = logging.getLogger(__name__)

HOLDER = "dicomrpc migrate"
# Instances copied at once: each is a file write and an index transaction, which overlap.
CONCURRENCY = 8
# Workitem events written per transaction.
EVENT_BATCH = 10_000
# Instances or workitems named in an error.
NAMED_IN_ERRORS = 3


@dataclass(frozen=True)
class Tally:
    """What one side of a migration holds: the figures compared at the end."""

    studies: int
    series: int
    instances: int
    bytes: int
    workitems: int
    workitem_events: int
    query_tags: int
    dimse_peers: int

    def differences(self, target: Tally) -> list[str]:
        """What differs from ``target``, one line per figure."""
        return [
            f"{f.name.replace('_', ' ')}: {getattr(self, f.name)} in the embedded archive, "
            f"{getattr(target, f.name)} in the new storage"
            for f in fields(self)
            if getattr(self, f.name) != getattr(target, f.name)
        ]


@dataclass
class MigrateSummary:
    """What a migration did."""

    source: Tally
    target: Tally
    copied: int = 0
    present: int = 0
    seconds: float = 0.0

    @property
    def differences(self) -> list[str]:
        """What the verification found different (empty: the copy is complete)."""
        return self.source.differences(self.target)


@dataclass(frozen=True)
class Target:
    """Where the archive goes: the ``--to-index`` database and the ``--to-blobs`` store."""

    index: str
    blobs: str
    s3_endpoint: str = ""

    def serve_command(self) -> str:
        """The ``dicomrpc serve`` command of a node of the new storage (without the password)."""
        command = (
            f"dicomrpc serve --data NEW_DATA_FOLDER --index {redact_dsn(self.index)} "
            f"--blobs {self.blobs}"
        )
        return command + (f" --s3-endpoint {self.s3_endpoint}" if self.s3_endpoint else "")


def migrate(
    data_dir: Path,
    target: Target,
    *,
    concurrency: int = CONCURRENCY,
    progress: bool = True,
    settings: Settings | None = None,
) -> MigrateSummary:
    """Copy the embedded archive of ``data_dir`` to ``target`` (see the module).

    Raises
    ------
    StartupError
        When the folder is missing, in use or not an embedded archive of its own files, its
        index is missing or does not name exactly its files, the target store cannot be used,
        or the target database holds another archive's data. Nothing was copied then.
    """
    if not data_dir.is_dir():
        raise StartupError("DATA_FOLDER_MISSING", f"data folder {data_dir} does not exist")
    _check_source_kind(data_dir)
    if not (target.blobs.startswith("s3://") or Path(target.blobs).is_absolute()):
        raise StartupError(
            "BLOB_STORE_INVALID",
            f"--to-blobs {target.blobs} is neither s3://BUCKET/PREFIX nor an absolute path: "
            "every node must find the shared folder at the same path",
        )
    lock = DataFolderLock(data_dir, HOLDER)
    try:
        settings = settings or Settings.from_env(data_dir=data_dir)
        return asyncio.run(_Migration(data_dir, target, concurrency, progress, settings).run())
    finally:
        lock.release()


def _check_source_kind(data_dir: Path) -> None:
    """Refuse a data folder that is not an embedded archive of its own files."""
    indexed_in = recorded_index(data_dir)
    if indexed_in is not None:
        raise StartupError(
            "MIGRATE_UNSUPPORTED",
            f"data folder {data_dir} is a node of an archive indexed in PostgreSQL "
            f"({indexed_in}) already; migrate copies an embedded archive. Nothing was changed",
        )
    stored_in = recorded_store(data_dir)
    if stored_in is not None and stored_in != FOLDER_STORE:
        raise StartupError(
            "MIGRATE_UNSUPPORTED",
            f"the instance files of data folder {data_dir} are kept in {stored_in}; migrate "
            "copies an archive whose files are in its data folder. Nothing was changed",
        )
    if (data_dir / REBUILDING_DIR).exists():
        raise StartupError(
            "REBUILD_UNFINISHED",
            f"a rebuild of the index of data folder {data_dir} is unfinished; run "
            f"`dicomrpc rebuild-index --data {data_dir}` again to finish it, then migrate",
        )


class _Migration:
    def __init__(
        self,
        data_dir: Path,
        target: Target,
        concurrency: int,
        progress: bool,
        settings: Settings,
    ) -> None:
        self.data_dir = data_dir
        # The source's settings (its config file's): the target's are these, pointed at it.
        self.settings = settings
        self.target = target
        self.concurrency = max(1, concurrency)
        self.progress = progress
        self.url = redact_dsn(target.index)

    async def run(self) -> MigrateSummary:
        started = time.monotonic()
        source = EmbeddedSource(self.data_dir)
        try:
            indexed, source_bytes = self._check_files(source)
            settings = dataclasses.replace(
                self.settings,
                index=self.target.index,
                blobs=self.target.blobs,
                s3_endpoint=self.target.s3_endpoint,
            )
            objects = object_store(settings)
            objects.check()
            index = open_postgres_index(settings)
            try:
                workitems = PostgresWorkitemStore(index.backend)
                present = self._check_target(source, indexed, index, workitems)
                await index.carry_query_tags(
                    [_ready(tag) for tag in source.query_tags()],
                    [_done(operation) for operation in source.operations()],
                )
                for peer in source.peers():
                    await index.put_dimse_peer(peer)
                copied = await self._copy_instances(source, objects, index, present)
                await self._copy_workitems(source, workitems)
                await workitems.carry_subscriptions(
                    source.ups_subscribers(), source.ups_subscriptions()
                )
                summary = MigrateSummary(
                    source=self._source_tally(source, source_bytes),
                    target=self._target_tally(index, objects),
                    copied=copied,
                    present=len(present),
                )
            finally:
                index.close()
        finally:
            source.close()
        summary.seconds = time.monotonic() - started
        return summary

    # -- checks ------------------------------------------------------------------------------

    def _check_files(self, source: EmbeddedSource) -> tuple[dict[str, bytes], int]:
        """Every indexed blob id with its instance key, and their files' bytes.

        Refuses an index that names files that are missing, or that does not name every file:
        both would lose instances (the start-up checks of ``serve`` say the same).
        """
        indexed: dict[str, bytes] = {}
        missing: list[str] = []
        total = 0
        for instance in source.instances():
            indexed[instance.record.blob_id] = instance.key
            try:
                total += instance.path.stat().st_size
            except FileNotFoundError:
                missing.append(keys.split_key(instance.key)[2])
        if missing:
            raise StartupError(
                "SOURCE_FILES_MISSING",
                f"the index of data folder {self.data_dir} names {len(missing)} instances whose "
                f"files are missing (SOP instances {', '.join(missing[:NAMED_IN_ERRORS])}"
                f"{' ...' if len(missing) > NAMED_IN_ERRORS else ''}); restore the files or run "
                f"`dicomrpc rebuild-index --data {self.data_dir}`, then migrate. Nothing was "
                "copied",
            )
        unnamed = sum(1 for blob_id in _blob_files(source.blobs_dir) if blob_id not in indexed)
        if unnamed:
            raise StartupError(
                "SOURCE_INDEX_BEHIND",
                f"data folder {self.data_dir} holds {unnamed} instance files that its index does "
                "not name; start `dicomrpc serve` on it once (start-up settles what an "
                f"interrupted store left) or run `dicomrpc rebuild-index --data {self.data_dir}`"
                ", then migrate. Nothing was copied",
            )
        return indexed, total

    def _check_target(
        self,
        source: EmbeddedSource,
        indexed: dict[str, bytes],
        index: PostgresIndex,
        workitems: PostgresWorkitemStore,
    ) -> set[bytes]:
        """The keys of the instances the target holds already; refuse another archive's data.

        The target may hold only what an interrupted migration of this archive wrote: each
        instance one of this archive's under the same blob id, one change per instance (no
        delete, no store of its own since), and workitems, events, query tags and DIMSE UPS
        subscriptions this archive has.
        """
        backend = index.backend
        rows = backend.run(backend.fetch("SELECT key, blob_id FROM instances"))
        present: set[bytes] = set()
        foreign: list[str] = []
        for row in rows:
            key = bytes(row["key"])
            if indexed.get(row["blob_id"]) == key:
                present.add(key)
            else:
                foreign.append(f"instance {keys.split_key(key)[2]}")
        (counter,) = backend.run(backend.fetch("SELECT last_change, instances FROM index_counter"))
        if counter["last_change"] != counter["instances"]:
            foreign.append(
                f"{counter['last_change']} changes for {counter['instances']} instances (it was "
                "served: instances were stored or deleted there)"
            )
        source_uids = {uid for uid, _ in source.workitems()}
        foreign += [
            f"workitem {row['uid']}"
            for row in backend.run(
                backend.fetch("SELECT uid FROM workitems WHERE dataset IS NOT NULL ORDER BY uid")
            )
            if row["uid"] not in source_uids
        ]
        events = source.events()
        last = events[-1].sequence if events else 0
        target_last = int(backend.run(backend.fetchval("SELECT last FROM workitem_event_counter")))
        if target_last > last:
            foreign.append(f"workitem events up to {target_last} (this archive's end at {last})")
        tags = {tag.hex_tag for tag in source.query_tags()}
        foreign += [
            f"extended query tag {tag.hex_tag}"
            for tag in index.query_tags()
            if tag.hex_tag not in tags
        ]
        foreign += [f"a removal of query tag {hex_tag}" for hex_tag in index.pending_drops()]
        subscriptions = {(s.ae_title, s.workitem_uid) for s in source.ups_subscriptions()}
        foreign += [
            f"the DIMSE UPS subscription of {s.ae_title} to {s.workitem_uid or 'all workitems'}"
            for ae_title in {r.ae_title for r in workitems.subscribers()}
            for s in workitems.subscriptions(ae_title)
            if (s.ae_title, s.workitem_uid) not in subscriptions
        ]
        peers = {peer.name: peer for peer in source.peers()}
        foreign += [
            f"DIMSE peer {peer.name}"
            for peer in index.dimse_peers()
            if peers.get(peer.name) != peer
        ]
        if foreign:
            raise StartupError(
                "TARGET_HOLDS_ANOTHER_ARCHIVE",
                f"the PostgreSQL database {self.url} holds data that is not this archive's "
                f"({'; '.join(foreign[:NAMED_IN_ERRORS])}"
                f"{' ...' if len(foreign) > NAMED_IN_ERRORS else ''}); two archives are never "
                "merged: migrate into a new, empty database. Nothing was copied",
            )
        return present

    # -- copying -----------------------------------------------------------------------------

    async def _copy_instances(
        self,
        source: EmbeddedSource,
        objects: ObjectStore,
        index: PostgresIndex,
        present: set[bytes],
    ) -> int:
        """Copy every instance the target lacks: its object first, then its index entry."""
        total = source.counts()[2]
        bar = tqdm(
            total=total,
            initial=len(present),
            unit=" instances",
            desc="migrating",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        copied = 0

        async def copy(instance: SourceInstance) -> None:
            nonlocal copied
            new = source.new_instance(instance)
            await asyncio.to_thread(_put, objects, instance.path, instance.record.blob_id)
            try:
                await index.add_instance(new)
            except ServiceError as exc:
                if exc.dicom_status != 45070 or not index.has_blob(instance.record.blob_id):
                    raise
            copied += 1
            bar.update(1)

        running: set[asyncio.Task[None]] = set()
        try:
            for instance in source.instances():
                if instance.key in present:
                    continue
                if len(running) >= self.concurrency:
                    done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()
                running.add(asyncio.ensure_future(copy(instance)))
            if running:
                done, running = await asyncio.wait(running)
                for task in done:
                    task.result()
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.wait(running)
            bar.close()
        return copied

    async def _copy_workitems(
        self, source: EmbeddedSource, workitems: PostgresWorkitemStore
    ) -> None:
        """Write each workitem the target lacks through its own store, then the event log."""
        for uid, raw in source.workitems():
            dataset = dataset_pb2.Dataset.FromString(raw)

            def decide(
                stored: dataset_pb2.Dataset | None, dataset: dataset_pb2.Dataset = dataset
            ) -> Mutation[None]:
                return Mutation(None, workitem=dataset if stored is None else None)

            await workitems.mutate(uid, decide)
        batch: list[tuple[int, bytes, bytes]] = []
        for event in source.events():
            record = records_pb2.WorkitemEventRecord.FromString(event.event)
            record.sequence = 0  # the row's sequence is the event's (as the store writes it)
            batch.append((event.sequence, record.SerializeToString(), event.terms))
            if len(batch) >= EVENT_BATCH:
                await workitems.carry_events(batch)
                batch = []
        await workitems.carry_events(batch)

    # -- verifying ---------------------------------------------------------------------------

    def _source_tally(self, source: EmbeddedSource, files_bytes: int) -> Tally:
        studies, series, instances = source.counts()
        return Tally(
            studies=studies,
            series=series,
            instances=instances,
            bytes=files_bytes,
            workitems=source.workitem_count(),
            workitem_events=len(source.events()),
            query_tags=len(source.query_tags()),
            dimse_peers=len(source.peers()),
        )

    def _target_tally(self, index: PostgresIndex, objects: ObjectStore) -> Tally:
        """The target's figures: its index's, and the bytes of the objects it names."""
        backend = index.backend
        counts = index.counts()
        named = index.blob_ids()
        stored = sum(size for blob_id, size in objects.blob_sizes() if blob_id in named)
        return Tally(
            studies=counts.studies,
            series=counts.series,
            instances=counts.instances,
            bytes=stored,
            workitems=int(
                backend.run(
                    backend.fetchval("SELECT count(*) FROM workitems WHERE dataset IS NOT NULL")
                )
            ),
            workitem_events=int(
                backend.run(backend.fetchval("SELECT count(*) FROM workitem_events"))
            ),
            query_tags=len([tag for tag in index.query_tags() if tag.ready]),
            dimse_peers=len(index.dimse_peers()),
        )


def _put(objects: ObjectStore, path: Path, blob_id: str) -> None:
    """Write a file as its object; what a killed run left of the same object is replaced."""
    try:
        objects.put(path, blob_id)
    except FileExistsError:  # a shared folder's temporary copy, left by a run that was killed
        objects.remove([blob_id])
        objects.put(path, blob_id)


def _blob_files(blobs_dir: Path) -> Iterator[str]:
    """The blob id of every file in the folder store's ``blobs/`` (listed, never created)."""
    if not blobs_dir.is_dir():
        return
    for shard in os.scandir(blobs_dir):
        if shard.is_dir():
            for entry in os.scandir(shard.path):
                if entry.name.endswith(BLOB_SUFFIX):
                    yield entry.name[: -len(BLOB_SUFFIX)]


def _ready(tag: records_pb2.QueryTagRecord) -> records_pb2.QueryTagRecord:
    """A tag as the target registers it: ready, since every instance is indexed for it."""
    out = records_pb2.QueryTagRecord()
    out.CopyFrom(tag)
    out.ready = True
    return out


def _done(operation: records_pb2.ReindexOperation) -> records_pb2.ReindexOperation:
    """An operation as the target records it: done, nothing left to walk."""
    out = records_pb2.ReindexOperation()
    out.CopyFrom(operation)
    out.done = True
    out.processed_instances = out.total_instances
    return out


def run(args: argparse.Namespace) -> int:
    """Entry point of ``dicomrpc migrate``."""
    log_to_stderr(args.log_level)
    settings = command_settings("migrate", args)
    if settings is None:
        return 2
    data_dir = settings.data_dir
    target = Target(args.to_index, args.to_blobs, args.s3_endpoint or "")
    try:
        summary = migrate(
            data_dir,
            target,
            concurrency=args.concurrency,
            progress=not args.quiet,
            settings=settings,
        )
    except StartupError as exc:
        print(f"dicomrpc migrate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "dicomrpc migrate: interrupted; run the same command again to continue where it "
            "stopped",
            file=sys.stderr,
        )
        return 130
    differences = summary.differences
    for line in describe(data_dir, target, summary):
        print(line, file=sys.stderr if differences else sys.stdout)
    return 1 if differences else 0


def describe(data_dir: Path, target: Target, summary: MigrateSummary) -> list[str]:
    """The summary a migration prints: what was copied, verified, and how to serve it."""
    source = summary.source
    rate = summary.copied / summary.seconds if summary.seconds > 0 else 0.0
    lines = [
        f"migrated {data_dir} to {redact_dsn(target.index)} and {target.blobs}: "
        f"{source.instances} instances in {source.studies} studies and {source.series} series, "
        f"{source.bytes} bytes ({summary.copied} copied by this run in {summary.seconds:.1f} s, "
        f"{rate:.0f} instances/s; {summary.present} there already)",
        f"carried over: {source.workitems} workitems with {source.workitem_events} events, "
        f"{source.query_tags} extended query tags, {source.dimse_peers} DIMSE peers",
    ]
    differences = summary.differences
    if differences:
        lines.append("the new storage does not match the embedded archive:")
        lines += [f"  {line}" for line in differences]
        lines.append("run the same command again; if it persists, the new storage is incomplete")
        return lines
    lines += [
        "verified: studies, series, instances, bytes, workitems, events, query tags and peers "
        "are the same on both sides",
        "instance versions are numbered anew and the change feed starts again from 1",
        f"the embedded archive in {data_dir} is unchanged: serve the new storage instead (never "
        "both, or they diverge), on each node with a new, empty data folder of its own:",
        f"  {target.serve_command()}",
    ]
    if redact_dsn(target.index) != target.index:
        lines.append("  (with the database password in the URL or PGPASSWORD: it is not printed)")
    return lines
