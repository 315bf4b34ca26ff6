"""The PostgreSQL schema as numbered steps, each applied once per database.

A database records the steps applied to it in ``schema_version``. At start every node applies
the steps it knows and the database lacks, in order, each in its own transaction together
with its ``schema_version`` row, so a step is either applied and recorded or neither. Nodes
starting together would otherwise race to create the same tables: the whole check-and-apply
runs under a session advisory lock (:data:`LOCK_KEY`), so the second node waits, then finds
every step recorded and applies nothing.

A step, once released, is never edited: a change of schema is a new step appended to
:data:`MIGRATIONS`. A database holding a step this code does not know was migrated by a newer
release; the node refuses to start on it rather than run on a schema it cannot read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from dicomrpc_server.errors import StartupError

# pg_advisory_lock's key for the migrations: any fixed 64-bit number no other lock uses
# (these are the ASCII bytes of "dcmrpcsv").
LOCK_KEY = 0x64636D7270637376


@dataclass(frozen=True)
class Migration:
    """One schema step: its number (1, 2, ... with no gap), a name, and its SQL statements."""

    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "workitems, their search terms and their event log",
        # Workitem UIDs and terms compare byte by byte (COLLATE "C", bytea), as LMDB keys do:
        # search pages come in UID order and term ranges are byte ranges, whatever the
        # database's locale. A workitem row with no data set is the placeholder a first change
        # locks (see ups/postgres_store.py); it is never committed. The event counter is the
        # one row every event-writing transaction updates: it numbers events in commit order.
        """
        CREATE TABLE workitems (
            uid text COLLATE "C" PRIMARY KEY,
            dataset bytea
        );
        CREATE TABLE workitem_terms (
            tag bigint NOT NULL,
            term bytea NOT NULL,
            uid text COLLATE "C" NOT NULL,
            PRIMARY KEY (tag, term, uid)
        );
        CREATE TABLE workitem_events (
            sequence bigint PRIMARY KEY,
            event bytea NOT NULL,
            terms bytea NOT NULL
        );
        CREATE TABLE workitem_event_counter (
            only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
            last bigint NOT NULL
        );
        INSERT INTO workitem_event_counter (last) VALUES (0);
        """,
    ),
    Migration(
        2,
        "the instance index: records, terms, blob references, removals, the change log, "
        "the extended query tags and their re-indexing",
        # Records are keyed by the LMDB index's keys (the UIDs, ASCII, joined by NUL: the
        # natural keys), and terms by LMDB's term keys after level and tag (term, NUL, primary
        # key): bytea compares byte by byte, so ranges and orders are LMDB's. A study row with
        # no record is the placeholder a first store locks; it is never committed. The counter
        # is the one row every change-writing transaction updates, last: it numbers changes in
        # commit order and keeps the counts of studies, series and instances.
        # change_sequence_field(n) is the protobuf encoding of ChangeRecord.sequence = n
        # (field 1, a varint; n >= 1): appended to a record written without it, the record's
        # bytes carry the sequence the counter gave, as LMDB's do.
        """
        CREATE TABLE studies (
            key bytea PRIMARY KEY,
            record bytea
        );
        CREATE TABLE series (
            key bytea PRIMARY KEY,
            record bytea NOT NULL
        );
        CREATE TABLE instances (
            key bytea PRIMARY KEY,
            sop_uid text COLLATE "C" NOT NULL UNIQUE,
            blob_id text COLLATE "C" NOT NULL UNIQUE,
            record bytea NOT NULL,
            metadata bytea NOT NULL,
            frames bytea
        );
        CREATE TABLE instance_removals (
            blob_id text COLLATE "C" PRIMARY KEY,
            key bytea NOT NULL
        );
        CREATE TABLE index_terms (
            level smallint NOT NULL,
            tag bigint NOT NULL,
            entry bytea NOT NULL,
            PRIMARY KEY (level, tag, entry)
        );
        CREATE TABLE index_changes (
            sequence bigint PRIMARY KEY,
            key bytea NOT NULL,
            record bytea NOT NULL
        );
        CREATE FUNCTION change_sequence_field(n bigint) RETURNS bytea
        LANGUAGE sql IMMUTABLE STRICT AS $$
            SELECT decode('08', 'hex') || string_agg(
                set_byte(decode('00', 'hex'), 0, (((n >> (7 * i)) & 127)
                    | CASE WHEN n >> (7 * (i + 1)) > 0 THEN 128 ELSE 0 END)::int),
                ''::bytea ORDER BY i)
            FROM generate_series(0, 9) AS i
            WHERE i = 0 OR n >> (7 * i) > 0
        $$;
        CREATE TABLE index_counter (
            only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
            last_change bigint NOT NULL,
            studies bigint NOT NULL,
            series bigint NOT NULL,
            instances bigint NOT NULL
        );
        INSERT INTO index_counter (last_change, studies, series, instances) VALUES (0, 0, 0, 0);
        CREATE SEQUENCE instance_version;
        CREATE TABLE query_tags (
            hex_tag text COLLATE "C" PRIMARY KEY,
            record bytea NOT NULL
        );
        CREATE TABLE query_tag_drops (
            hex_tag text COLLATE "C" PRIMARY KEY,
            record bytea NOT NULL
        );
        CREATE TABLE reindex_operations (
            operation_id text COLLATE "C" PRIMARY KEY,
            record bytea NOT NULL
        );
        """,
    ),
    Migration(
        3,
        "the DIMSE peers added at run time",
        # One row per peer, keyed by its name (COLLATE "C": listed in byte order, as LMDB's
        # keys are); the record is the DimsePeerRecord the LMDB index keeps.
        """
        CREATE TABLE dimse_peers (
            name text COLLATE "C" PRIMARY KEY,
            record bytea NOT NULL
        );
        """,
    ),
    Migration(
        4,
        "the archive's signing keys",
        # One row per key, by purpose (the retrieve grants' key: see access/grants.py). The
        # first node to start writes a random key; every node reads the same one, so any node
        # accepts the grants of any other.
        """
        CREATE TABLE signing_keys (
            name text COLLATE "C" PRIMARY KEY,
            key bytea NOT NULL
        );
        """,
    ),
    Migration(
        5,
        "the DIMSE UPS subscriptions and their delivery",
        # One row per Receiving AE (its UpsSubscriberRecord: the last event delivered, and the
        # lease of the node delivering), one per subscription (its UpsSubscriptionRecord; the
        # global one has the empty workitem UID), as the LMDB index keeps them. A subscriber
        # row with no record is the placeholder a first change locks (see
        # ups/postgres_store.py); it is never committed.
        """
        CREATE TABLE ups_subscribers (
            ae_title text COLLATE "C" PRIMARY KEY,
            record bytea
        );
        CREATE TABLE ups_subscriptions (
            ae_title text COLLATE "C" NOT NULL,
            workitem_uid text COLLATE "C" NOT NULL,
            record bytea NOT NULL,
            PRIMARY KEY (ae_title, workitem_uid)
        );
        """,
    ),
)


def check_steps(migrations: Sequence[Migration]) -> None:
    """Refuse a list of steps that is not numbered 1, 2, 3 ... (a programming error)."""
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migrations must be numbered 1, 2, 3 ...: {versions}")


async def migrate(
    connection: asyncpg.Connection, migrations: Sequence[Migration] = MIGRATIONS
) -> list[int]:
    """Apply the steps the database lacks, once across nodes; return the versions applied.

    Raises :class:`StartupError` ``INDEX_SCHEMA_NEWER`` when the database holds steps beyond
    ``migrations`` (a newer release migrated it).
    """
    check_steps(migrations)
    await connection.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
    try:
        await connection.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_version (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        rows = await connection.fetch("SELECT version FROM schema_version")
        present = {int(row["version"]) for row in rows}
        newer = sorted(v for v in present if v > len(migrations))
        if newer:
            raise StartupError(
                "INDEX_SCHEMA_NEWER",
                f"the PostgreSQL index has schema steps {newer} this release does not know "
                f"(it knows 1 to {len(migrations)}): it was migrated by a newer release; "
                "run that release",
            )
        applied = []
        for step in migrations:
            if step.version in present:
                continue
            async with connection.transaction():
                await connection.execute(step.sql)
                await connection.execute(
                    "INSERT INTO schema_version (version, name) VALUES ($1, $2)",
                    step.version,
                    step.name,
                )
            applied.append(step.version)
        return applied
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
