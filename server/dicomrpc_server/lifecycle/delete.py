"""Deleting studies, series and instances: index first, atomically; files after.

Readers never see half a deletion: every index entry of what is deleted goes in one write
transaction, which also records the files to remove (pending removals). Files are removed only
after that commit, then the records are cleared, so a crash in between leaves files start-up can
prove are garbage and removes (:mod:`dicomrpc_server.storage.recovery`), and never an index
entry without its file. A retrieve already streaming a deleted instance keeps its open file and
finishes; one that has not opened it yet ends with NOT_FOUND.
"""

from __future__ import annotations

import asyncio

from dicomrpc_server.retrieve.scope import check_scope
from dicomrpc_server.storage.lmdb_index import LmdbIndex
from dicomrpc_server.storage.protocols import BlobStore


class DeleteCore:
    """Removes what a request names from the index, then from the blob store."""

    def __init__(self, index: LmdbIndex, blobs: BlobStore) -> None:
        self.index = index
        self.blobs = blobs

    async def delete(self, study: str, series: str = "", sop: str = "") -> int:
        """Delete a study, series or instance; return how many instances went.

        The UIDs are checked first: one holding the index's key separator (NUL) would name a
        key range the request never meant.
        """
        check_scope(study, series, sop)
        blob_ids = await self.index.delete(study, series, sop)
        await asyncio.to_thread(self.blobs.remove, blob_ids)
        self.index.forget_removals(blob_ids)
        return len(blob_ids)
