"""Extended query tags on the LMDB index: registering, re-indexing, removing them.

Why this module exists: a tag registered at run time is indexed for the instances stored before
it by a re-indexing operation walked in batches, and removed in batches too, each batch one
write transaction that saves where the walk stopped, so that a restart resumes it. The PostgreSQL
index does the same steps in :mod:`.postgres.query_tags`.
"""

from __future__ import annotations

import lmdb

from dicomrpc_server.dicom.attributes import Level
from dicomrpc_server.query.extended import unknown_operation
from dicomrpc_server.storage import keys, records_pb2
from dicomrpc_server.storage.index_records import (
    MAX_QUERY_TAGS,
    RECORD_TYPES,
    kept_by_level,
    query_tag_exists_error,
    query_tag_removing_error,
    reindexed,
    split_term,
    strip_tag,
    too_many_query_tags_error,
)
from dicomrpc_server.storage.lmdb_environment import LEVEL_DB, get_value
from dicomrpc_server.storage.lmdb_terms import LmdbTerms

# "meta" keys of query tags being removed (the removal resumes at start-up).
DROPPING = b"dropping\x00"


class LmdbQueryTags(LmdbTerms):
    """The ``query_tags`` and ``operations`` sub-databases, and the re-indexing they drive."""

    def query_tags(self) -> list[records_pb2.QueryTagRecord]:
        """The extended query tags, in tag order."""
        with self.read() as txn:
            return self.query_tags_in(txn)

    def operation(self, operation_id: str) -> records_pb2.ReindexOperation | None:
        """A re-indexing operation, or None when there is no such operation.

        An id that could not be a key (empty, or longer than LMDB's 511 bytes) names none.
        """
        key = operation_id.encode("utf-8")
        if not 0 < len(key) <= 511:
            return None
        with self.read() as txn:
            raw = get_value(txn, key, self._db["operations"])
        return records_pb2.ReindexOperation.FromString(raw) if raw else None

    def operations(self) -> list[records_pb2.ReindexOperation]:
        """Every re-indexing operation (finished ones included)."""
        with self.read() as txn:
            cursor = txn.cursor(db=self._db["operations"])
            return [records_pb2.ReindexOperation.FromString(bytes(v)) for _, v in cursor]

    def pending_drops(self) -> list[str]:
        """The query tags whose removal a stopped server left unfinished (8 hex digits each)."""
        with self.read() as txn:
            cursor = txn.cursor(db=self._db["meta"])
            found = []
            if cursor.set_range(DROPPING):
                for raw_key in cursor.iternext(values=False):
                    key = bytes(raw_key)
                    if not key.startswith(DROPPING):
                        break
                    found.append(key[len(DROPPING) :].decode("ascii"))
            return found

    def query_tags_in(self, txn: lmdb.Transaction) -> list[records_pb2.QueryTagRecord]:
        """The extended query tags, in tag order, as an open transaction sees them."""
        cursor = txn.cursor(db=self._db["query_tags"])
        return [records_pb2.QueryTagRecord.FromString(bytes(v)) for _, v in cursor]

    async def add_query_tags(
        self, tags: list[records_pb2.QueryTagRecord], operation: records_pb2.ReindexOperation
    ) -> records_pb2.ReindexOperation:
        """Register new query tags (not ready) and the operation that will re-index for them.

        Raises ALREADY_EXISTS, naming the tag, when one of them is registered already. From the
        commit on, every stored instance contributes to the new tags' index entries.
        """

        def add(txn: lmdb.Transaction) -> records_pb2.ReindexOperation:
            db = self._db
            for tag in tags:
                if get_value(txn, DROPPING + tag.hex_tag.encode("ascii"), db["meta"]) is not None:
                    raise query_tag_removing_error(tag)
            registered = txn.stat(db["query_tags"])["entries"]
            if registered + len(tags) > MAX_QUERY_TAGS:
                raise too_many_query_tags_error(registered, len(tags))
            for tag in tags:
                if get_value(txn, tag.hex_tag.encode("ascii"), db["query_tags"]) is not None:
                    raise query_tag_exists_error(tag)
            for tag in tags:
                tag.operation_id = operation.operation_id
                txn.put(tag.hex_tag.encode("ascii"), tag.SerializeToString(), db=db["query_tags"])
            operation.total_instances = txn.stat(db["instances"])["entries"]
            self._put_operation(txn, operation)
            return operation

        return await self.writer.run(add)

    async def reindex_batch(self, operation_id: str, limit: int) -> records_pb2.ReindexOperation:
        """Index up to ``limit`` more instances for an operation's tags; mark them ready at the end.

        The walk goes in instance key order from the operation's cursor, which is saved in the
        same transaction, so that a restart resumes where it stopped. Instances stored meanwhile
        are indexed by the store itself; walking over one of them again changes nothing.
        """

        def batch(txn: lmdb.Transaction) -> records_pb2.ReindexOperation:
            db = self._db
            raw = get_value(txn, operation_id.encode("utf-8"), db["operations"])
            if raw is None:
                raise unknown_operation(operation_id)
            operation = records_pb2.ReindexOperation.FromString(raw)
            if operation.done:
                return operation
            # A tag removed and added again belongs to its new operation, not to this one.
            extended = self.query_tags_in(txn)
            tags = [t for t in extended if t.operation_id == operation_id]
            cursor = txn.cursor(db=db["instances"])
            found = (
                cursor.set_range(operation.cursor + b"\x00") if operation.cursor else cursor.first()
            )
            walked: list[bytes] = []
            while found and len(walked) < limit:
                walked.append(bytes(cursor.key()))
                found = cursor.next()
            if tags:
                self._reindex(txn, walked, tags, extended)
            operation.processed_instances += len(walked)
            if walked:
                operation.cursor = walked[-1]
            if not found:
                operation.done = True
                for tag in tags:
                    tag.ready = True
                    txn.put(
                        tag.hex_tag.encode("ascii"), tag.SerializeToString(), db=db["query_tags"]
                    )
            self._put_operation(txn, operation)
            return operation

        return await self.writer.run(batch)

    def _reindex(
        self,
        txn: lmdb.Transaction,
        instance_keys: list[bytes],
        tags: list[records_pb2.QueryTagRecord],
        extended: list[records_pb2.QueryTagRecord],
    ) -> None:
        """Copy the tags' values from each instance's metadata into its records, and index them.

        ``extended`` is every registered tag (``tags`` among them), as read in this transaction.
        """
        db = self._db
        walked = []
        for ikey in instance_keys:
            raw_metadata = get_value(txn, ikey, db["metadata"])
            if raw_metadata is not None:
                walked.append((ikey, raw_metadata))
        for rewrite in reindexed(
            walked, lambda level, pk: get_value(txn, pk, db[LEVEL_DB[level]]), tags, extended
        ):
            level, pk = rewrite.level, rewrite.key
            for number, term in rewrite.removed:
                txn.delete(keys.term_key(level, number, term, pk), db=db["terms"])
            self.put_terms(txn, level, pk, rewrite.added)
            txn.put(pk, rewrite.record.SerializeToString(), db=db[LEVEL_DB[level]])

    async def drop_query_tag(self, hex_tag: str, limit: int) -> bool:
        """Remove an extended query tag, ``limit`` index entries per call; True when all gone.

        The first call unregisters the tag (searches stop using it at once); each call then
        deletes up to ``limit`` of its index entries and of the record values it had added.
        """

        def drop(txn: lmdb.Transaction) -> bool:
            db = self._db
            key = hex_tag.encode("ascii")
            raw = get_value(txn, key, db["query_tags"])
            if raw is not None:
                tag = records_pb2.QueryTagRecord.FromString(raw)
                txn.delete(key, db=db["query_tags"])
                txn.put(DROPPING + key, raw, db=db["meta"])
            else:
                raw = get_value(txn, DROPPING + key, db["meta"])
                if raw is None:
                    return True
                tag = records_pb2.QueryTagRecord.FromString(raw)
            level = Level(tag.level)
            prefix = keys.term_prefix(level, int(hex_tag, 16), b"")
            cursor = txn.cursor(db=db["terms"])
            removed = 0
            strip = kept_by_level(tag.hex_tag) is None  # else the level keeps it anyway
            found = cursor.set_range(prefix)
            while found and removed < limit and bytes(cursor.key()).startswith(prefix):
                pk = split_term(bytes(cursor.key())[len(prefix) :])[1]
                found = cursor.delete()
                removed += 1
                if strip:
                    self._strip(txn, level, pk, tag.hex_tag)
            if removed < limit:
                txn.delete(DROPPING + key, db=db["meta"])
                return True
            return False

        return await self.writer.run(drop)

    def _strip(self, txn: lmdb.Transaction, level: Level, pk: bytes, hex_tag: str) -> None:
        """Remove an unregistered extended tag's value from one record."""
        name = LEVEL_DB[level]
        raw = get_value(txn, pk, self._db[name])
        if raw is None:
            return
        record = RECORD_TYPES[level].FromString(raw)
        if strip_tag(record, hex_tag):
            txn.put(pk, record.SerializeToString(), db=self._db[name])

    def _put_operation(
        self, txn: lmdb.Transaction, operation: records_pb2.ReindexOperation
    ) -> None:
        txn.put(
            operation.operation_id.encode("utf-8"),
            operation.SerializeToString(),
            db=self._db["operations"],
        )
