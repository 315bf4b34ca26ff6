"""ExtendedQueryTags: add, list and remove query tags; re-index stored instances in the background.

Adding tags registers them (not ready) and an operation in one write transaction; a task then
walks the instances in batches, each batch one write transaction through the index writer, so
that stores and deletes interleave with it and a batch is never half applied. The operation's
cursor is committed with each batch: a server restarted mid-way resumes the walk
(:meth:`ExtendedQueryTags.resume`). Searches on a tag answer FAILED_PRECONDITION until its
operation is done.

With several processes on one archive, each walk holds a lock named by its operation
(:mod:`~dicomrpc_server.storage.key_locks`; with a PostgreSQL index, an advisory lock shared by
every node, :mod:`~dicomrpc_server.storage.postgres.locks`): one process walks it, and every
process looks for unfinished operations nobody walks every few seconds, so that a walk whose
process (or node) died is taken over where its last batch left it.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import logging
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from dicomrpc_server.errors import Code, ServiceError, invalid_argument
from dicomrpc_server.query.extended import (
    RequestedTag,
    canonical_hex,
    define,
    unknown_operation,
)
from dicomrpc_server.storage import records_pb2
from dicomrpc_server.storage.key_locks import NamedLocks
from dicomrpc_server.storage.protocols import QueryTagRecords

log = logging.getLogger(__name__)

REINDEX_BATCH = 500
DROP_BATCH = 5000
# How often unfinished work that no process is doing is looked for.
TAKEOVER_S = 2.0


class ExtendedQueryTags:
    """The extended query tags of an archive and their background re-indexing.

    Parameters
    ----------
    index
        The index the tags live in.
    locks
        The locks shared with the other processes serving the archive: the data folder's
        (:class:`~dicomrpc_server.storage.key_locks.KeyLocks`), or PostgreSQL's advisory
        locks when nodes share a PostgreSQL index, so that one node walks each operation.
    batch
        Instances re-indexed per write transaction: small enough that stores waiting behind a
        batch wait milliseconds, large enough that the walk is not dominated by commits.
    """

    def __init__(
        self, index: QueryTagRecords, locks: NamedLocks, batch: int = REINDEX_BATCH
    ) -> None:
        self.index = index
        self.locks = locks
        self.batch = batch
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._watch: asyncio.Task[None] | None = None

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

    def operations(self) -> builtins.list[records_pb2.ReindexOperation]:
        """Every re-indexing operation the index remembers, finished or not."""
        return self.index.operations()

    def resume(self) -> None:
        """Finish what a stopped server left unfinished: removals, then re-indexings.

        Then keep looking for unfinished work that no process is doing. Call on a running loop.
        """
        self._take_over(quiet=False)
        if self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._keep_watch())

    async def _keep_watch(self) -> None:
        while True:
            await asyncio.sleep(TAKEOVER_S)
            try:
                self._take_over(quiet=True)
            except Exception:  # the index being closed under it, say: the next look retries
                log.exception("looking for unfinished re-indexing failed")

    def _take_over(self, *, quiet: bool) -> None:
        """Start every unfinished removal and re-indexing that no process is doing."""
        for hex_tag in self.index.pending_drops():
            key = f"drop {hex_tag}"
            if key not in self._tasks and self._spawn(key, functools.partial(self._drop, hex_tag)):
                log.info("finishing the removal of extended query tag %s", hex_tag)
        for operation in self.index.operations():
            if not operation.done and self._start(operation.operation_id) and not quiet:
                log.info(
                    "resuming re-indexing %s at %d of %d instances",
                    operation.operation_id,
                    operation.processed_instances,
                    operation.total_instances,
                )

    async def stop(self) -> None:
        """Stop the walks between batches; what they committed stays, and resumes on start."""
        tasks = list(self._tasks.values())
        if self._watch is not None:
            tasks.append(self._watch)
            self._watch = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _start(self, operation_id: str) -> bool:
        """Walk an operation unless a walk of it runs here or in another process.

        Returns whether a walk was started.
        """
        if operation_id in self._tasks:
            return False
        return self._spawn(operation_id, lambda: self._walk(operation_id))

    def _spawn(self, key: str, work: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        """Run ``work()`` as a task kept under ``key`` until it ends (or stop cancels it).

        The task holds the lock named by ``key`` meanwhile; nothing is started when another
        process holds it. Returns whether the task was started.
        """
        lock = f"reindex {key}"
        if not self.locks.acquire(lock):
            return False
        task = asyncio.get_running_loop().create_task(work())
        self._tasks[key] = task

        def finished(_: asyncio.Task[None]) -> None:
            self._tasks.pop(key, None)
            self.locks.release(lock)

        task.add_done_callback(finished)
        return True

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
