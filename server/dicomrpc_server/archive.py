"""The archive: the data folder locked, storage opened and checked, core services built.

This is the composition root both adapters (gRPC and DICOMweb) are given; it holds no rules of
its own.
"""

from __future__ import annotations

import logging

from dicomrpc_server.access.authenticator import Authenticator
from dicomrpc_server.access.setup import check as check_access
from dicomrpc_server.audit.auditor import Auditor
from dicomrpc_server.audit.records import Patient
from dicomrpc_server.config import Settings
from dicomrpc_server.lifecycle.delete import DeleteCore
from dicomrpc_server.lifecycle.feed import ChangeFeed
from dicomrpc_server.query.engine import SearchCore
from dicomrpc_server.query.reindexing import ExtendedQueryTags
from dicomrpc_server.retrieve.service import RetrieveCore
from dicomrpc_server.storage.blobs import LocalBlobStore
from dicomrpc_server.storage.folder_lock import DataFolderLock
from dicomrpc_server.storage.lmdb_index import LmdbIndex
from dicomrpc_server.storage.protocols import BlobStore
from dicomrpc_server.storage.recovery import (
    INDEX_DIR,
    Listing,
    RecoveryReport,
    check_before_open,
    recover,
)
from dicomrpc_server.storage.s3 import S3Recovery
from dicomrpc_server.storage.s3_startup import check_folder_store, open_s3_storage
from dicomrpc_server.store.ingest import StoreCore
from dicomrpc_server.ups.service import WorkitemCore
from dicomrpc_server.ups.values import text
from dicomrpc_server.workers import CODEC_MODULES, PARSE_MODULES, WorkerPool

log = logging.getLogger(__name__)

PATIENT_ID, PATIENT_NAME = "00100020", "00100010"


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

    Raises
    ------
    StartupError
        When the folder is in use, or its index is missing, behind its files or being rebuilt;
        an ``AccessSetupError`` when the access settings are refused (checked before the
        folder is touched).
    """

    def __init__(self, settings: Settings, holder: str = "dicomrpc serve") -> None:
        self.settings = settings
        self.tls = check_access(settings)
        self.access = Authenticator(settings)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.lock = DataFolderLock(settings.data_dir, holder)
        try:
            # Before recovery changes anything: a server asked to audit does not run without
            # its audit trail.
            self.auditor = Auditor(settings, self.patient_of)
        except BaseException:
            self.lock.release()
            raise
        self.blobs: BlobStore
        self.recovery: RecoveryReport | S3Recovery
        try:
            if settings.blobs:  # objects in S3: see storage/s3_startup.py
                self.blobs, self.index, self.recovery = open_s3_storage(settings)
            else:
                check_folder_store(settings.data_dir)
                self.blobs = blobs = LocalBlobStore(settings.data_dir)
                listing = Listing.of(blobs)
                check_before_open(settings.data_dir, listing)
                self.index = LmdbIndex(
                    settings.data_dir / INDEX_DIR,
                    map_size=settings.lmdb_map_size,
                    max_readers=settings.lmdb_max_readers,
                    max_batch=settings.commit_batch,
                    before_commit=blobs.sync,
                )
                try:
                    self.recovery = recover(
                        settings.data_dir,
                        blobs,
                        self.index,
                        listing,
                        quarantine_unindexed=settings.quarantine_unindexed,
                    )
                except BaseException:
                    self.index.close()
                    raise
        except BaseException:
            self.auditor.close()
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
        self.store = StoreCore(settings, self.blobs, self.index, self.parse_workers)
        self.search = SearchCore(self.index)
        self.query_tags = ExtendedQueryTags(self.index)
        self.delete = DeleteCore(self.index, self.blobs)
        self.feed = ChangeFeed(self.index)
        self.workitems = WorkitemCore(
            self.index, settings.subscriber_queue, settings.max_sequence_depth
        )
        self.retrieve = RetrieveCore(
            self.index,
            self.blobs,
            settings.chunk_bytes,
            self.codec_workers,
            settings.max_frames_per_request,
            settings.max_frame_pixels,
        )

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
        self.index.close()
        self.auditor.close()
        self.lock.release()
