"""Extended query tags on the PostgreSQL index: registering, re-indexing, removing them.

The same steps as the LMDB index's (:class:`~dicomrpc_server.storage.lmdb_index.LmdbIndex`
``add_query_tags``, ``reindex_batch``, ``drop_query_tag``), each one transaction, with what
several nodes writing at once add:

The tag list a store indexes is the list at its commit
    Every store and delete takes :data:`TAGS_LOCK` shared, before it reads the tags; a change
    of the list (a registration, the unregistration of a removal) takes it exclusively. A
    registration therefore commits between stores, never during one: a store that committed
    before it is walked by the re-indexing (which starts after the registration), and a store
    after it indexes the new tags itself. Nothing is indexed for a removed tag once its
    unregistration committed, so the removal's walk never races a store adding its entries.

Records change under their study's lock
    A re-indexing batch and a removal batch rewrite study, series and instance records; they
    first lock the rows of every study they touch, in key order, as stores and deletes lock
    theirs, so no record is written from a stale read.

Tables (:mod:`.migrations`, step 2): ``query_tags`` (8 hex digits, ``QueryTagRecord``),
``query_tag_drops`` (the tags whose removal is under way, resumed at start), and
``reindex_operations`` (operation id, ``ReindexOperation``: the walk's cursor and progress).
"""

from __future__ import annotations

import asyncpg

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

# pg_advisory_xact_lock's key of the tag list: the ASCII bytes of "dcmrpctg".
TAGS_LOCK = 0x64636D7270637467
_TABLES = {Level.STUDY: "studies", Level.SERIES: "series", Level.INSTANCE: "instances"}


async def add_query_tags(
    connection: asyncpg.Connection,
    tags: list[records_pb2.QueryTagRecord],
    operation: records_pb2.ReindexOperation,
) -> records_pb2.ReindexOperation:
    """Register tags (not ready) and the operation re-indexing for them (in a transaction).

    Raises FAILED_PRECONDITION for a tag still being removed, RESOURCE_EXHAUSTED past
    :data:`MAX_QUERY_TAGS`, ALREADY_EXISTS for a tag registered already.
    """
    await connection.execute("SELECT pg_advisory_xact_lock($1)", TAGS_LOCK)
    wanted = [tag.hex_tag for tag in tags]
    dropping = await connection.fetch(
        "SELECT hex_tag FROM query_tag_drops WHERE hex_tag = ANY($1::text[]) ORDER BY hex_tag",
        wanted,
    )
    if dropping:
        tag = next(t for t in tags if t.hex_tag == dropping[0]["hex_tag"])
        raise query_tag_removing_error(tag)
    registered = int(await connection.fetchval("SELECT count(*) FROM query_tags"))
    if registered + len(tags) > MAX_QUERY_TAGS:
        raise too_many_query_tags_error(registered, len(tags))
    existing = await connection.fetch(
        "SELECT hex_tag FROM query_tags WHERE hex_tag = ANY($1::text[])", wanted
    )
    if existing:
        present = {row["hex_tag"] for row in existing}
        tag = next(t for t in tags if t.hex_tag in present)
        raise query_tag_exists_error(tag)
    for tag in tags:
        tag.operation_id = operation.operation_id
    await connection.execute(
        "INSERT INTO query_tags (hex_tag, record) SELECT * FROM unnest($1::text[], $2::bytea[])",
        wanted,
        [tag.SerializeToString() for tag in tags],
    )
    operation.total_instances = int(
        await connection.fetchval("SELECT instances FROM index_counter")
    )
    await _put_operation(connection, operation)
    return operation


async def reindex_batch(
    connection: asyncpg.Connection, operation_id: str, limit: int
) -> records_pb2.ReindexOperation:
    """Index up to ``limit`` more instances for an operation's tags (in a transaction).

    The walk goes in instance key order from the operation's cursor, saved in the same
    transaction; at the end its tags are marked ready. Instances stored meanwhile are indexed
    by their store; walking over one of them again changes nothing.
    """
    await connection.execute("SELECT pg_advisory_xact_lock_shared($1)", TAGS_LOCK)
    raw = await connection.fetchval(
        "SELECT record FROM reindex_operations WHERE operation_id = $1", operation_id
    )
    if raw is None:
        raise unknown_operation(operation_id)
    operation = records_pb2.ReindexOperation.FromString(raw)
    if operation.done:
        return operation
    extended = await read_tags(connection)
    # A tag removed and added again belongs to its new operation, not to this one.
    tags = [t for t in extended if t.operation_id == operation_id]
    rows = await connection.fetch(
        "SELECT key FROM instances WHERE key > $1 ORDER BY key LIMIT $2",
        operation.cursor,
        limit + 1,
    )
    walked = [bytes(row["key"]) for row in rows[:limit]]
    more = len(rows) > limit
    if tags and walked:
        await _reindex(connection, walked, tags, extended)
    operation.processed_instances += len(walked)
    if walked:
        operation.cursor = walked[-1]
    if not more:
        operation.done = True
        for tag in tags:
            tag.ready = True
        await connection.execute(
            "UPDATE query_tags SET record = t.record "
            "FROM unnest($1::text[], $2::bytea[]) AS t (hex_tag, record) "
            "WHERE query_tags.hex_tag = t.hex_tag",
            [tag.hex_tag for tag in tags],
            [tag.SerializeToString() for tag in tags],
        )
    await _put_operation(connection, operation)
    return operation


async def _reindex(
    connection: asyncpg.Connection,
    instance_keys: list[bytes],
    tags: list[records_pb2.QueryTagRecord],
    extended: list[records_pb2.QueryTagRecord],
) -> None:
    """Copy the tags' values from each instance's metadata into its records, and index them."""
    await _lock_studies(connection, instance_keys)
    metadata_rows = await connection.fetch(
        "SELECT key, metadata FROM instances WHERE key = ANY($1::bytea[]) ORDER BY key",
        instance_keys,
    )
    walked = [(bytes(row["key"]), bytes(row["metadata"])) for row in metadata_rows]
    records: dict[tuple[Level, bytes], bytes] = {}
    for level in sorted({Level(t.level) for t in tags}):
        wanted = sorted({_owner(ikey, level) for ikey, _ in walked})
        for pk, raw in (await _records(connection, level, wanted)).items():
            records[(level, pk)] = raw
    removed: list[tuple[int, int, bytes]] = []
    added: list[tuple[int, int, bytes]] = []
    for rewrite in reindexed(walked, lambda level, pk: records.get((level, pk)), tags, extended):
        number, pk = int(rewrite.level), rewrite.key
        removed += [(number, tag, term + keys.SEP + pk) for tag, term in rewrite.removed]
        added += [(number, tag, term + keys.SEP + pk) for tag, term in rewrite.added]
        await connection.execute(
            f"UPDATE {_TABLES[rewrite.level]} SET record = $2 WHERE key = $1",
            pk,
            rewrite.record.SerializeToString(),
        )
    await _write_terms(connection, removed, added)


async def drop_query_tag(connection: asyncpg.Connection, hex_tag: str, limit: int) -> bool:
    """Remove a tag, ``limit`` index entries per call (in a transaction); True when all gone.

    The first call unregisters the tag (searches stop using it at once); each call then
    deletes up to ``limit`` of its index entries and of the record values it had added.
    """
    raw = await connection.fetchval("SELECT record FROM query_tags WHERE hex_tag = $1", hex_tag)
    if raw is not None:
        await connection.execute("SELECT pg_advisory_xact_lock($1)", TAGS_LOCK)
        await connection.execute("DELETE FROM query_tags WHERE hex_tag = $1", hex_tag)
        await connection.execute(
            "INSERT INTO query_tag_drops (hex_tag, record) VALUES ($1, $2) "
            "ON CONFLICT (hex_tag) DO UPDATE SET record = EXCLUDED.record",
            hex_tag,
            raw,
        )
    else:
        raw = await connection.fetchval(
            "SELECT record FROM query_tag_drops WHERE hex_tag = $1", hex_tag
        )
        if raw is None:
            return True
    tag = records_pb2.QueryTagRecord.FromString(raw)
    level = Level(tag.level)
    rows = await connection.fetch(
        "DELETE FROM index_terms WHERE level = $1 AND tag = $2 AND entry IN ("
        "  SELECT entry FROM index_terms WHERE level = $1 AND tag = $2 ORDER BY entry LIMIT $3"
        ") RETURNING entry",
        int(level),
        int(hex_tag, 16),
        limit,
    )
    if kept_by_level(tag.hex_tag) is None:  # else the level keeps it anyway
        owners = sorted({split_term(bytes(row["entry"]))[1] for row in rows})
        await _lock_studies(connection, owners)
        for pk, raw_record in (await _records(connection, level, owners)).items():
            record = RECORD_TYPES[level].FromString(raw_record)
            if strip_tag(record, hex_tag):
                await connection.execute(
                    f"UPDATE {_TABLES[level]} SET record = $2 WHERE key = $1",
                    pk,
                    record.SerializeToString(),
                )
    if len(rows) < limit:
        await connection.execute("DELETE FROM query_tag_drops WHERE hex_tag = $1", hex_tag)
        return True
    return False


# -- reads -----------------------------------------------------------------------------------


async def read_tags(connection: asyncpg.Connection) -> list[records_pb2.QueryTagRecord]:
    """The registered tags, in tag order."""
    rows = await connection.fetch("SELECT record FROM query_tags ORDER BY hex_tag")
    return [records_pb2.QueryTagRecord.FromString(row["record"]) for row in rows]


def _owner(key: bytes, level: Level) -> bytes:
    """The key of the record of ``level`` holding the record of ``key``."""
    return keys.SEP.join(key.split(keys.SEP)[: int(level)])


async def _lock_studies(connection: asyncpg.Connection, record_keys: list[bytes]) -> None:
    """Lock the rows of the studies holding these records, in key order (as stores do)."""
    studies = sorted({_owner(key, Level.STUDY) for key in record_keys})
    if studies:
        await connection.execute(
            "SELECT key FROM studies WHERE key = ANY($1::bytea[]) ORDER BY key FOR UPDATE",
            studies,
        )


async def _records(
    connection: asyncpg.Connection, level: Level, primary_keys: list[bytes]
) -> dict[bytes, bytes]:
    rows = await connection.fetch(
        f"SELECT key, record FROM {_TABLES[level]} "
        "WHERE key = ANY($1::bytea[]) AND record IS NOT NULL",
        primary_keys,
    )
    return {bytes(row["key"]): bytes(row["record"]) for row in rows}


async def _write_terms(
    connection: asyncpg.Connection,
    removed: list[tuple[int, int, bytes]],
    added: list[tuple[int, int, bytes]],
) -> None:
    removed, added = sorted(removed), sorted(added)
    await connection.execute(
        "WITH gone AS (DELETE FROM index_terms WHERE (level, tag, entry) IN "
        "  (SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bytea[]))) "
        "INSERT INTO index_terms (level, tag, entry) "
        "SELECT * FROM unnest($4::smallint[], $5::bigint[], $6::bytea[]) ON CONFLICT DO NOTHING",
        [t[0] for t in removed],
        [t[1] for t in removed],
        [t[2] for t in removed],
        [t[0] for t in added],
        [t[1] for t in added],
        [t[2] for t in added],
    )


async def _put_operation(
    connection: asyncpg.Connection, operation: records_pb2.ReindexOperation
) -> None:
    await connection.execute(
        "INSERT INTO reindex_operations (operation_id, record) VALUES ($1, $2) "
        "ON CONFLICT (operation_id) DO UPDATE SET record = EXCLUDED.record",
        operation.operation_id,
        operation.SerializeToString(),
    )


async def carry_query_tags(
    connection: asyncpg.Connection,
    tags: list[records_pb2.QueryTagRecord],
    operations: list[records_pb2.ReindexOperation],
) -> None:
    """Register tags and operations copied from another index as they are (in a transaction).

    ``dicomrpc migrate`` registers the tags before it indexes any instance, so that every
    instance is indexed for them by its own store: the tags come ready and their operations
    done, with nothing left to walk. Rows present already (a migration run again) are kept.
    """
    await connection.execute("SELECT pg_advisory_xact_lock($1)", TAGS_LOCK)
    await connection.execute(
        "INSERT INTO query_tags (hex_tag, record) "
        "SELECT * FROM unnest($1::text[], $2::bytea[]) ON CONFLICT DO NOTHING",
        [tag.hex_tag for tag in tags],
        [tag.SerializeToString() for tag in tags],
    )
    await connection.execute(
        "INSERT INTO reindex_operations (operation_id, record) "
        "SELECT * FROM unnest($1::text[], $2::bytea[]) ON CONFLICT DO NOTHING",
        [operation.operation_id for operation in operations],
        [operation.SerializeToString() for operation in operations],
    )
