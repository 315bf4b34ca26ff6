"""bench/search.py's corpus as a PostgreSQL index, built fast, for the search half of scale.py.

Storing 10^6 instances through ``PostgresIndex.add_instance`` (one transaction of three
statements each, all serialized on the change counter) would take hours on this machine, so the
rows are derived here and written with COPY. They are exactly what the server writes:

- each instance is bench/search.py's ``NewInstance`` (the records ``prepare()`` gives for the
  file, checked by ``check_against_prepare``);
- the rows follow ``PostgresIndex._add`` step by step, instance after instance in the corpus'
  order, with the same functions (``stored_series``, ``stored_study``, ``record_terms`` of
  :mod:`dicomrpc_server.storage.index_records`, ``_change`` of the index): versions and change
  sequences 1, 2, 3 ... as a one-at-a-time ingest draws them, the study and series records
  parsed back from their bytes before each update, as the server reads them from its table;
- before the build, :func:`check_rows` stores the first instances of the corpus both ways, into
  two databases, through ``PostgresIndex.add_instance`` and through :func:`copy_rows`, and
  compares every table byte for byte (the change records' times aside: they are the clock's).

Tables keep their keys and indexes while the rows are copied in (the B-trees grow as they
would under ingest, not packed by a rebuild). The built database is kept under
``bench/.work/`` in a cluster of its own with a marker of what it holds, so that later runs
only start that cluster.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from search import SEED, SeriesTemplate, StudyPlan

from dicomrpc_server.dicom.attributes import Level
from dicomrpc_server.storage import keys, records_pb2
from dicomrpc_server.storage.index_records import record_terms, stored_series, stored_study
from dicomrpc_server.storage.postgres.backend import PostgresBackend
from dicomrpc_server.storage.postgres.index import PostgresIndex, _change, _copy
from dicomrpc_server.storage.protocols import NewInstance

BUILD_VERSION = 1
# The time every derived instance record says it was stored at (add_instance keeps a set one):
# a fixed value makes the two ways of writing comparable byte for byte.
STORED_AT_US = 1_764_000_000_000_000
CHUNK = 5000  # instances per COPY round
TABLES = ("studies", "series", "instances", "index_terms", "index_changes")


@dataclass
class Rows:
    """Rows for the tables, ready for COPY."""

    studies: list[tuple[bytes, bytes]] = field(default_factory=list)
    series: list[tuple[bytes, bytes]] = field(default_factory=list)
    instances: list[tuple[bytes, str, str, bytes, bytes, bytes | None]] = field(
        default_factory=list
    )
    terms: list[tuple[int, int, bytes]] = field(default_factory=list)
    changes: list[tuple[int, bytes, bytes]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.instances)


@dataclass
class Totals:
    """What the counter row and the version sequence hold after the rows."""

    last: int = 0
    studies: int = 0
    series: int = 0


def _instances(
    studies: list[StudyPlan], frames: records_pb2.FrameTable
) -> Iterator[tuple[StudyPlan, list[NewInstance]]]:
    """Each study with its instances in corpus order (blob ids as search.new_instances)."""
    blob = 0
    for study in studies:
        out = []
        for series in study.series:
            template = SeriesTemplate(study, series, frames)
            for number in range(1, series.count + 1):
                blob += 1
                new = template.new_instance(number, f"{blob:08x}{0:024x}")
                new.record.stored_at_us = STORED_AT_US
                out.append(new)
        yield study, out


def study_rows(instances: list[NewInstance], totals: Totals, rows: Rows) -> None:
    """Append the rows ``PostgresIndex._add`` leaves after storing a study's instances in turn.

    The aggregates are computed per instance from the bytes the previous store left, as the
    server reads them back; the level records' terms are those of their final records (every
    store moves exactly the difference, so the entries left are the final record's).
    """
    study_bytes: bytes | None = None
    series_bytes: dict[bytes, bytes] = {}
    stkey = b""
    for original in instances:
        new = _copy(original)  # as add_instance's transaction works on a copy
        totals.last += 1
        version = sequence = totals.last
        stkey = keys.study_key(new.study_uid)
        skey = keys.series_key(new.study_uid, new.series_uid)
        ikey = keys.instance_key(new.study_uid, new.series_uid, new.sop_uid)
        record = new.record
        record.version = version
        record.stored_at_us = record.stored_at_us or STORED_AT_US
        rows.instances.append(
            (
                ikey,
                new.sop_uid,
                record.blob_id,
                record.SerializeToString(),
                new.metadata,
                None if new.frames is None else new.frames.SerializeToString(),
            )
        )
        old_series = (
            records_pb2.SeriesRecord.FromString(series_bytes[skey])
            if skey in series_bytes
            else None
        )
        old_study = None if study_bytes is None else records_pb2.StudyRecord.FromString(study_bytes)
        series_record = stored_series(old_series, new, version)
        study_record = stored_study(old_study, new, old_series is None, version)
        series_bytes[skey] = series_record.SerializeToString()
        study_bytes = study_record.SerializeToString()
        rows.terms += [
            (int(Level.INSTANCE), tag, term + keys.SEP + ikey)
            for tag, term in record_terms(Level.INSTANCE, record, [])
        ]
        now_us = STORED_AT_US
        key, change = _change(records_pb2.CHANGE_KIND_CREATED, ikey, version, now_us)
        # The sequence field the statement appends (change_sequence_field): protobuf's bytes.
        change += records_pb2.ChangeRecord(sequence=sequence).SerializeToString()
        rows.changes.append((sequence, key, change))
    assert study_bytes is not None
    study = records_pb2.StudyRecord.FromString(study_bytes)
    rows.studies.append((stkey, study_bytes))
    rows.terms += [
        (int(Level.STUDY), tag, term + keys.SEP + stkey)
        for tag, term in record_terms(Level.STUDY, study, [])
    ]
    for skey, raw in series_bytes.items():
        rows.series.append((skey, raw))
        series = records_pb2.SeriesRecord.FromString(raw)
        rows.terms += [
            (int(Level.SERIES), tag, term + keys.SEP + skey)
            for tag, term in record_terms(Level.SERIES, series, [])
        ]
    totals.studies += 1
    totals.series += len(series_bytes)


async def _copy_in(connection: asyncpg.Connection, rows: Rows) -> None:
    async with connection.transaction():
        await connection.copy_records_to_table(
            "studies", records=rows.studies, columns=["key", "record"]
        )
        await connection.copy_records_to_table(
            "series", records=rows.series, columns=["key", "record"]
        )
        await connection.copy_records_to_table(
            "instances",
            records=rows.instances,
            columns=["key", "sop_uid", "blob_id", "record", "metadata", "frames"],
        )
        await connection.copy_records_to_table(
            "index_terms", records=rows.terms, columns=["level", "tag", "entry"]
        )
        await connection.copy_records_to_table(
            "index_changes", records=rows.changes, columns=["sequence", "key", "record"]
        )


def migrate(dsn: str) -> None:
    """Create the archive's schema in a new database (the server's own migrations)."""
    PostgresBackend(dsn, pool_size=1).close()


async def copy_rows(
    dsn: str, studies: list[StudyPlan], frames: records_pb2.FrameTable, progress: bool = False
) -> Totals:
    """Write the corpus' rows into a migrated, empty database; set its counter and sequence."""
    connection = await asyncpg.connect(dsn)
    totals = Totals()
    started = time.perf_counter()
    reported = 0
    try:
        rows = Rows()
        for _, instances in _instances(studies, frames):
            study_rows(instances, totals, rows)
            if len(rows) >= CHUNK:
                await _copy_in(connection, rows)
                rows = Rows()
                if progress and totals.last >= reported + 100_000:
                    reported = totals.last
                    rate = totals.last / (time.perf_counter() - started)
                    print(f"  {totals.last} instances, {rate:.0f}/s", flush=True)
        await _copy_in(connection, rows)
        await connection.execute(
            "UPDATE index_counter SET last_change = $1, studies = $2, series = $3, instances = $1",
            totals.last,
            totals.studies,
            totals.series,
        )
        if totals.last:
            await connection.execute("SELECT setval('instance_version', $1)", totals.last)
        await connection.execute("ANALYZE")
    finally:
        await connection.close()
    return totals


async def _dump(dsn: str) -> dict[str, list[tuple[object, ...]]]:
    connection = await asyncpg.connect(dsn)
    try:
        out: dict[str, list[tuple[object, ...]]] = {}
        for table in TABLES:
            order = "level, tag, entry" if table == "index_terms" else "1"
            rows = await connection.fetch(f"SELECT * FROM {table} ORDER BY {order}")
            out[table] = [tuple(row.values()) for row in rows]
        counter = await connection.fetch(
            "SELECT last_change, studies, series, instances FROM index_counter"
        )
        out["index_counter"] = [tuple(row.values()) for row in counter]
        version = await connection.fetch("SELECT last_value FROM instance_version")
        out["instance_version"] = [tuple(row.values()) for row in version]
        return out
    finally:
        await connection.close()


def _without_time(change: bytes) -> bytes:
    record = records_pb2.ChangeRecord.FromString(change)
    record.ClearField("time")
    return record.SerializeToString()


def check_rows(
    reference_dsn: str, copied_dsn: str, studies: list[StudyPlan], frames: records_pb2.FrameTable
) -> int:
    """Store ``studies`` through the server's index and by :func:`copy_rows`; compare.

    Both databases must be new and empty. Returns the number of rows compared; raises
    AssertionError naming the first table that differs.
    """
    migrate(reference_dsn)
    migrate(copied_dsn)
    index = PostgresIndex(PostgresBackend(reference_dsn, pool_size=2))
    try:

        async def store() -> None:
            for _, instances in _instances(studies, frames):
                for new in instances:
                    await index.add_instance(new)

        asyncio.run(store())
    finally:
        index.close()
    asyncio.run(copy_rows(copied_dsn, studies, frames))
    reference, copied = asyncio.run(_dump(reference_dsn)), asyncio.run(_dump(copied_dsn))
    compared = 0
    for table, expected in reference.items():
        got = copied[table]
        if table == "index_changes":
            expected = [(s, k, _without_time(bytes(r))) for s, k, r in expected]  # type: ignore[arg-type]
            got = [(s, k, _without_time(bytes(r))) for s, k, r in got]  # type: ignore[arg-type]
        if expected != got:
            raise AssertionError(f"the copied rows of {table} differ from add_instance's")
        compared += len(expected)
    return compared


def marker_of(folder: Path, size: int) -> Path:
    """Where a cached database's description is kept."""
    return folder / f"search-{size}.json"


def cached(folder: Path, size: int) -> dict[str, object] | None:
    """The description of the database of ``size`` instances built earlier, if current."""
    marker = marker_of(folder, size)
    if not marker.exists():
        return None
    info: dict[str, object] = json.loads(marker.read_text())
    expected = {"version": BUILD_VERSION, "size": size, "seed": SEED}
    return info if {k: info.get(k) for k in expected} == expected else None


def remember(folder: Path, size: int, database: str, build_s: float, totals: Totals) -> None:
    """Record a finished build (written last: a build cut short leaves no marker)."""
    marker_of(folder, size).write_text(
        json.dumps(
            {
                "version": BUILD_VERSION,
                "size": size,
                "seed": SEED,
                "database": database,
                "build_s": build_s,
                "studies": totals.studies,
                "series": totals.series,
            }
        )
    )
