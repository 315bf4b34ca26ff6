"""The archive: storage opened, crash leftovers swept, core services built.

This is the composition root both adapters (gRPC and DICOMweb) are given; it holds no rules of
its own.
"""

from __future__ import annotations

import logging

from dicomrpc_server.access.authenticator import Authenticator
from dicomrpc_server.access.setup import check as check_access
from dicomrpc_server.config import Settings
from dicomrpc_server.lifecycle.delete import DeleteCore
from dicomrpc_server.lifecycle.feed import ChangeFeed
from dicomrpc_server.query.engine import SearchCore
from dicomrpc_server.query.reindexing import ExtendedQueryTags
from dicomrpc_server.retrieve.service import RetrieveCore
from dicomrpc_server.storage.blobs import LocalBlobStore
from dicomrpc_server.storage.lmdb_index import LmdbIndex
from dicomrpc_server.store.ingest import StoreCore
from dicomrpc_server.ups.service import WorkitemCore
from dicomrpc_server.workers import WorkerPool

log = logging.getLogger(__name__)


class Archive:
    """Opens the storage in ``settings.data_dir`` and builds the core services.

    Raises
    ------
    AccessSetupError
        When the access settings are refused (checked before any storage is opened).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tls = check_access(settings)
        self.access = Authenticator(settings)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.blobs = LocalBlobStore(settings.data_dir)
        self.index = LmdbIndex(
            settings.data_dir / "index",
            map_size=settings.lmdb_map_size,
            max_readers=settings.lmdb_max_readers,
            max_batch=settings.commit_batch,
            before_commit=self.blobs.sync,
        )
        self.recover()
        self.workers = WorkerPool(settings.workers)
        self.store = StoreCore(settings, self.blobs, self.index, self.workers)
        self.search = SearchCore(self.index)
        self.query_tags = ExtendedQueryTags(self.index)
        self.delete = DeleteCore(self.index, self.blobs)
        self.feed = ChangeFeed(self.index)
        self.workitems = WorkitemCore(self.index, settings.subscriber_queue)
        self.retrieve = RetrieveCore(
            self.index,
            self.blobs,
            settings.chunk_bytes,
            self.workers,
            settings.max_frames_per_request,
        )

    def recover(self) -> tuple[int, int]:
        """Remove what a crash left: unfinished uploads, and files the index does not reference.

        Returns the number of uploads and orphan files removed.
        """
        uploads = self.blobs.clear_uploads()
        referenced = self.index.blob_ids()
        orphans = 0
        for blob_id in list(self.blobs.blob_ids()):
            if blob_id not in referenced:
                self.blobs.delete(blob_id)
                orphans += 1
        if uploads or orphans:
            log.warning(
                "recovery removed %d unfinished uploads and %d orphan files", uploads, orphans
            )
        return uploads, orphans

    def close(self) -> None:
        """Let queued work finish, then close the index."""
        self.workers.shutdown()
        self.index.close()
