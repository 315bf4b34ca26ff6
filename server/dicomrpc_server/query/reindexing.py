"""ExtendedQueryTags: add, list and remove query tags; re-index stored instances in the background.

Adding tags registers them (not ready) and an operation in one write transaction; a task then
walks the instances in batches, each batch one write transaction through the index writer, so
that stores and deletes interleave with it and a batch is never half applied. The operation's
cursor is committed with each batch: a server restarted mid-way resumes the walk
(:meth:`ExtendedQueryTags.resume`). Searches on a tag answer FAILED_PRECONDITION until its
operation is done.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Coroutine, Sequence
from typing import Any

from dicomrpc_server.errors import Code, ServiceError, invalid_argument
from dicomrpc_server.query.extended import (
    RequestedTag,
    canonical_hex,
    define,
    unknown_operation,
)
from dicomrpc_server.storage import records_pb2
from dicomrpc_server.storage.lmdb_index import LmdbIndex

log = logging.getLogger(__name__)

REINDEX_BATCH = 500
DROP_BATCH = 5000


class ExtendedQueryTags:
    """The extended query tags of an archive and their background re-indexing.

    Parameters
    ----------
    index
        The index the tags live in.
    batch
        Instances re-indexed per write transaction: small enough that stores waiting behind a
        batch wait milliseconds, large enough that the walk is not dominated by commits.
    """

    def __init__(self, index: LmdbIndex, batch: int = REINDEX_BATCH) -> None:
        self.index = index
        self.batch = batch
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def add(
        self, requested: Sequence[RequestedTag]
    ) -> tuple[list[records_pb2.QueryTagRecord], str]:
        """Register tags and start re-indexing the stored instances for them.

        Returns the registered tags and the operation id to poll with :meth:`status`.
        """
        if not requested:
            raise invalid_argument("tags", "name at least one tag")
        tags = [define(r, f"tags[{i}]") for i, r in enumerate(requested)]
        seen: set[str] = set()
        for i, tag in enumerate(tags):
            if tag.hex_tag in seen:
                raise invalid_argument(f"tags[{i}]", f"{tag.hex_tag} is named twice")
            seen.add(tag.hex_tag)
        operation = records_pb2.ReindexOperation(
            operation_id=uuid.uuid4().hex, hex_tags=[t.hex_tag for t in tags]
        )
        await self.index.add_query_tags(tags, operation)
        self._start(operation.operation_id)
        return tags, operation.operation_id

    def list(self) -> list[records_pb2.QueryTagRecord]:
        """Every extended query tag, ready or not."""
        return self.index.query_tags()

    async def delete(self, name: str) -> None:
        """Unregister a tag and remove its index entries (NOT_FOUND when it is not registered)."""
        hex_tag = canonical_hex(name, "tag")
        if not any(t.hex_tag == hex_tag for t in self.index.query_tags()):
            raise ServiceError(
                Code.NOT_FOUND,
                "RESOURCE_NOT_FOUND",
                f"{name} is not an extended query tag",
                metadata={"tag": hex_tag},
            )
        await self._drop(hex_tag)

    async def _drop(self, hex_tag: str) -> None:
        while not await self.index.drop_query_tag(hex_tag, DROP_BATCH):
            pass

    def status(self, operation_id: str) -> records_pb2.ReindexOperation:
        """The progress of a re-indexing operation (NOT_FOUND for an unknown id)."""
        operation = self.index.operation(operation_id)
        if operation is None:
            raise unknown_operation(operation_id)
        return operation

    def resume(self) -> None:
        """Finish what a stopped server left unfinished: removals, then re-indexings.

        Call on a running loop.
        """
        for hex_tag in self.index.pending_drops():
            log.info("finishing the removal of extended query tag %s", hex_tag)
            self._spawn(f"drop {hex_tag}", self._drop(hex_tag))
        for operation in self.index.operations():
            if not operation.done:
                log.info(
                    "resuming re-indexing %s at %d of %d instances",
                    operation.operation_id,
                    operation.processed_instances,
                    operation.total_instances,
                )
                self._start(operation.operation_id)

    async def stop(self) -> None:
        """Stop the walks between batches; what they committed stays, and resumes on start."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _start(self, operation_id: str) -> None:
        if operation_id not in self._tasks:
            self._spawn(operation_id, self._walk(operation_id))

    def _spawn(self, key: str, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task kept under ``key`` until it ends (and cancelled by stop)."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks[key] = task
        task.add_done_callback(lambda _: self._tasks.pop(key, None))

    async def _walk(self, operation_id: str) -> None:
        try:
            while not (await self.index.reindex_batch(operation_id, self.batch)).done:
                await asyncio.sleep(0)  # let queued stores reach the writer between batches
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("re-indexing %s failed; it resumes at the next start", operation_id)
            return
        log.info("re-indexing %s done", operation_id)
