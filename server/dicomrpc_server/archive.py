"""The archive: the data folder locked, storage opened and checked, core services built.

This is the composition root both adapters (gRPC and DICOMweb) are given; it holds no rules of
its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from dataclasses import dataclass

from dicomrpc_server.access.authenticator import Authenticator
from dicomrpc_server.access.grants import RetrieveGrants, folder_key
from dicomrpc_server.access.setup import check as check_access
from dicomrpc_server.audit.auditor import Auditor
from dicomrpc_server.audit.records import Patient
from dicomrpc_server.config import Settings
from dicomrpc_server.lifecycle.delete import DeleteCore
from dicomrpc_server.lifecycle.feed import ChangeFeed
from dicomrpc_server.lifecycle.health import HealthCheck
from dicomrpc_server.lifecycle.metrics import Metrics
from dicomrpc_server.lifecycle.statistics import StatisticsCore
from dicomrpc_server.peers import PeerRegistry
from dicomrpc_server.query.engine import SearchCore
from dicomrpc_server.query.reindexing import ExtendedQueryTags
from dicomrpc_server.query.term_search import TermSearch
from dicomrpc_server.retrieve.service import RetrieveCore
from dicomrpc_server.storage.blobs import LocalBlobStore
from dicomrpc_server.storage.folder_lock import DataFolderLock
from dicomrpc_server.storage.key_locks import KeyLocks, NamedLocks
from dicomrpc_server.storage.lmdb_index import LmdbIndex
from dicomrpc_server.storage.postgres.index import PostgresIndex
from dicomrpc_server.storage.postgres.locks import AdvisoryLocks
from dicomrpc_server.storage.postgres.signing_keys import shared_key
from dicomrpc_server.storage.protocols import BlobStore
from dicomrpc_server.storage.recovery import (
    INDEX_DIR,
    Listing,
    RecoveryReport,
    check_before_open,
    recover,
    recover_departed,
    uploads_lock,
)
from dicomrpc_server.storage.spooled import SpooledBlobStore, SpooledRecovery
from dicomrpc_server.storage.spooled_startup import (
    GroupStorage,
    SharedIndex,
    check_folder_store,
    check_index,
    open_spooled_storage,
    spool_folder,
)
from dicomrpc_server.store.ingest import StoreCore
from dicomrpc_server.ups.postgres_store import PostgresWorkitemStore
from dicomrpc_server.ups.records import WorkitemRecords
from dicomrpc_server.ups.service import WorkitemCore
from dicomrpc_server.ups.store import WorkitemStore
from dicomrpc_server.ups.values import text
from dicomrpc_server.workers import CODEC_MODULES, PARSE_MODULES, WorkerPool

log = logging.getLogger(__name__)

PATIENT_ID, PATIENT_NAME = "00100020", "00100010"
RUN_DIR = "run"


@dataclass(frozen=True)
class GroupMember:
    """How one process of a group (``dicomrpc serve --processes N``) opens the archive.

    The group's supervisor has locked the folder and run the start-up checks and recovery
    before starting its processes; each process shares the lock through an inherited
    descriptor, keeps its uploads in a folder of its own and hears the others' commits.

    Attributes
    ----------
    lock_fd
        The data folder's locked descriptor, inherited from the supervisor.
    """

    lock_fd: int


class Archive:
    """Opens the storage in ``settings.data_dir`` and builds the core services.

    The data folder is locked for the archive's lifetime (one owner: see
    :mod:`~dicomrpc_server.storage.folder_lock`) and checked against its index before anything
    is served (:mod:`~dicomrpc_server.storage.recovery`).

    Parameters
    ----------
    settings
        The settings; ``data_dir`` is created when missing.
    holder
        What opens the folder, named to a second process that tries to.
    member
        Set in the processes of a group: the folder is then already locked and checked.

    Raises
    ------
    StartupError
        When the folder is in use, or its index is missing, behind its files or being rebuilt;
        an ``AccessSetupError`` when the access settings are refused (checked before the
        folder is touched).
    """

    def __init__(
        self,
        settings: Settings,
        holder: str = "dicomrpc serve",
        member: GroupMember | None = None,
    ) -> None:
        self.settings = settings
        self.member = member
        self.tls = check_access(settings)
        self.access = Authenticator(settings)
        data_dir = settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        if member is None:
            self.lock = DataFolderLock(data_dir, holder)
        else:
            self.lock = DataFolderLock.inherited(data_dir, member.lock_fd)
        self.locks = KeyLocks(data_dir / RUN_DIR / "locks")
        try:
            # Before recovery changes anything: a server asked to audit does not run without
            # its audit trail.
            self.auditor = Auditor(settings, self.patient_of)
        except BaseException:
            self.locks.close()
            self.lock.release()
            raise
        self.blobs: BlobStore
        self.index: SharedIndex
        self.recovery: RecoveryReport | SpooledRecovery
        try:
            check_index(settings)
            if settings.blobs and member is None:  # see storage/spooled_startup.py
                self.blobs, self.index, self.recovery = open_spooled_storage(settings)
            elif settings.blobs:
                uploads = self._own_uploads(spool_folder(settings.blobs))
                group = GroupStorage(uploads, self.locks, settings.data_dir / RUN_DIR / "wakeups")
                self.blobs, self.index, self.recovery = open_spooled_storage(settings, group)
            elif member is None:
                check_folder_store(settings.data_dir)
                self._open_alone()
            else:
                self._open_in_group()
        except BaseException:
            self.auditor.close()
            self.locks.close()
            self.lock.release()
            raise
        # Two pools, so that a slow decode (a large or forged frame) never delays a store.
        self.parse_workers = WorkerPool(settings.workers, name="parse", modules=PARSE_MODULES)
        self.codec_workers = WorkerPool(
            settings.codec_workers,
            name="codec",
            timeout_s=settings.codec_timeout_s,
            memory_limit=settings.codec_memory_limit,
            modules=CODEC_MODULES,
            lazy=True,
        )
        # Re-indexing is walked by one holder of its lock: among the processes of this data
        # folder on the embedded index, among every node on a shared PostgreSQL index.
        self.walk_locks: NamedLocks
        workitem_records: WorkitemRecords
        if isinstance(self.index, PostgresIndex):
            self.walk_locks = AdvisoryLocks(self.index.backend)
            workitem_records = PostgresWorkitemStore(self.index.backend)
        else:
            self.walk_locks = self.locks
            workitem_records = WorkitemStore(self.index)
        self.store = StoreCore(settings, self.blobs, self.index, self.parse_workers, self.locks)
        self.search = SearchCore(self.index, TermSearch(self.index))
        self.query_tags = ExtendedQueryTags(self.index, self.walk_locks)
        self.peers = PeerRegistry(settings.dimse_peers, self.index)
        self.delete = DeleteCore(self.index, self.blobs)
        self.feed = ChangeFeed(self.index)
        self.statistics = StatisticsCore(self.index)
        self.health = HealthCheck(self.index)
        self.metrics = Metrics(self.store.outcomes)
        self.workitems = WorkitemCore(
            workitem_records, settings.subscriber_queue, settings.max_sequence_depth
        )
        self.grants = RetrieveGrants(self._grant_key(), settings.public_url)
        self.retrieve = RetrieveCore(
            self.index,
            self.blobs,
            settings.chunk_bytes,
            self.codec_workers,
            settings.max_frames_per_request,
            settings.max_frame_pixels,
        )

    def _grant_key(self) -> bytes:
        """The key of the retrieve grants: in the database shared by every node, or the folder."""
        if isinstance(self.index, PostgresIndex):
            return shared_key(self.index.backend, "retrieve-grant")
        return folder_key(self.settings.data_dir)

    def _open_alone(self) -> None:
        """Open storage as the folder's only process: check it, and recover from a crash."""
        self.blobs = blobs = LocalBlobStore(self.settings.data_dir)
        self.index, self.recovery = _check_and_recover(self.settings, blobs)

    def _open_in_group(self) -> None:
        """Open storage as one of a group's processes.

        It gets an uploads folder of its own, held by a lock, and settles what group
        processes that exited left.
        """
        settings = self.settings
        uploads = self._own_uploads("uploads")
        self.blobs = blobs = LocalBlobStore(settings.data_dir, uploads=uploads)
        self.index = _open_index(settings, blobs, wakeups=True)
        try:
            self.recovery = recover_departed(blobs, self.index, self.locks)
        except BaseException:
            self.index.close()
            raise

    def _own_uploads(self, parent: str) -> str:
        """Name this process's uploads folder (under ``parent``) and hold its lock.

        The lock is taken before the folder exists, so that no other process ever takes the
        folder for one whose process has exited.
        """
        name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.locks.acquire(uploads_lock(self.settings.data_dir / parent / name))
        return name

    def patient_of(self, study: str) -> Patient | None:
        """The patient of a stored study (from its index record), or None: unknown or no ID."""
        record = self.index.get_study(study)
        patient_id = "" if record is None else text(record.attributes, PATIENT_ID)
        if record is None or not patient_id:
            return None
        name = record.attributes.attributes.get(PATIENT_NAME)
        names = name.person_names.values if name is not None else ()
        return Patient(patient_id, names[0].alphabetic if names else "")

    def close(self) -> None:
        """Finish queued work, close the index and the audit trail, then free the folder."""
        self.parse_workers.shutdown()
        self.codec_workers.shutdown()
        if isinstance(self.walk_locks, AdvisoryLocks):
            self.walk_locks.close()  # its connection, before the backend it came from
        self.index.close()
        blobs = self.blobs
        if self.member is not None and isinstance(blobs, LocalBlobStore | SpooledBlobStore):
            # Every store has finished: the folder is empty, unless a store was interrupted
            # (the next process to start settles what it holds).
            with contextlib.suppress(OSError):
                blobs.uploads_dir.rmdir()
        self.auditor.close()
        self.locks.close()
        self.lock.release()


def recover_folder(settings: Settings) -> RecoveryReport | SpooledRecovery:
    """Check a data folder this process has locked, and recover it from a crash.

    What an archive opened alone does before it serves; a group's supervisor does it once
    before it starts the group's processes. The index is closed again.

    Raises
    ------
    StartupError
        As :class:`Archive` does, when the index is missing, behind its files or being rebuilt.
    """
    check_index(settings)
    if settings.blobs:
        _, spooled_index, spooled_report = open_spooled_storage(settings)
        spooled_index.close()
        return spooled_report
    check_folder_store(settings.data_dir)
    index, report = _check_and_recover(settings, LocalBlobStore(settings.data_dir))
    index.close()
    return report


def _check_and_recover(
    settings: Settings, blobs: LocalBlobStore
) -> tuple[LmdbIndex, RecoveryReport]:
    listing = Listing.of(blobs)
    check_before_open(settings.data_dir, listing)
    index = _open_index(settings, blobs, wakeups=False)
    try:
        report = recover(
            settings.data_dir,
            blobs,
            index,
            listing,
            quarantine_unindexed=settings.quarantine_unindexed,
        )
    except BaseException:
        index.close()
        raise
    return index, report


def _open_index(settings: Settings, blobs: LocalBlobStore, *, wakeups: bool) -> LmdbIndex:
    return LmdbIndex(
        settings.data_dir / INDEX_DIR,
        map_size=settings.lmdb_map_size,
        max_readers=settings.lmdb_max_readers,
        max_batch=settings.commit_batch,
        before_commit=blobs.sync,
        wakeups=settings.data_dir / RUN_DIR / "wakeups" if wakeups else None,
    )
