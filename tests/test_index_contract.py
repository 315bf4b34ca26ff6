"""The instance index's contract, run against every implementation (LMDB, PostgreSQL).

Records, metadata and frame tables read back as stored; a duplicate SOP instance is refused
with 45070; the study and series aggregates (counts, ModalitiesInStudy, the latest stored
attributes) are the same after stores and deletes; deletes return the files to remove and
record them until forgotten; the change log lists creations and deletions in order, each with
its state; the term scans the search planner reads return the same pairs in the same order.
On PostgreSQL, two nodes storing at once: every change is read once, in sequence order, and a
node hears the other's commits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, MRImageStorage

from dicomrpc.v1 import dataset_pb2
from dicomrpc_server.dicom.attributes import Level
from dicomrpc_server.errors import Code, ServiceError
from dicomrpc_server.query.engine import SearchCore, SearchRequest
from dicomrpc_server.query.extended import RequestedTag, define
from dicomrpc_server.query.term_search import TermSearch
from dicomrpc_server.query.terms import EXACT
from dicomrpc_server.storage import keys, records_pb2
from dicomrpc_server.storage.index_records import MODALITIES_IN_STUDY, RECORD_TYPES, split_term
from dicomrpc_server.storage.lmdb_index import LmdbIndex
from dicomrpc_server.storage.postgres import PostgresBackend
from dicomrpc_server.storage.postgres.index import PostgresIndex
from dicomrpc_server.storage.protocols import ChangeAction, ChangeState, NewInstance
from tests.indexes import KINDS, add_all, new_instance, open_index
from tests.test_search_property import PAGING_CORPUS, Instance, Series, Study, _instance_bytes

Index = LmdbIndex | PostgresIndex
ROOT = "1.2.826.0.1.3680043.10.543.77"
PATIENT_NAME = 0x00100010
STUDY_DESCRIPTION = 0x00081030


@pytest.fixture(params=KINDS)
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Index]:
    opened = open_index(request.param, request, tmp_path)
    yield opened
    opened.close()


def _study(s: int, name: str = "Doe^John", description: str = "Chest") -> Study:
    return Study(
        uid=f"{ROOT}.{s}",
        patient_name=name,
        patient_id=f"P{s}",
        birth_date="19700101",
        accession=f"A{s}",
        referring="Smith^Alice",
        date="20200101",
        time="1200",
        description=description,
        study_id=str(s),
    )


def _entry(
    folder: Path, study: Study, r: int, i: int, modality: str = "CT", number: int = 1
) -> NewInstance:
    series = Series(f"{study.uid}.{r}", modality, r)
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    instance = Instance(f"{study.uid}.{r}.{i}", sop_class, number)
    return new_instance(_instance_bytes(study, series, instance), folder)


def _delete(index: Index, study: str, series: str = "", sop: str = "") -> list[str]:
    return asyncio.run(index.delete(study, series, sop))


def test_an_instance_reads_back_as_stored(index: Index, tmp_path: Path) -> None:
    study = _study(1)
    new = _entry(tmp_path, study, 1, 1)
    blob_id, metadata, frames = new.record.blob_id, new.metadata, new.frames
    assert frames is not None
    (version,) = add_all(index, [new])
    series_uid, sop = f"{study.uid}.1", f"{study.uid}.1.1"
    record = index.get_instance(study.uid, series_uid, sop)
    assert record is not None
    assert record.version == version and record.blob_id == blob_id and record.stored_at_us > 0
    assert record.modality == "CT" and record.sop_class_uid == CTImageStorage
    assert index.locate_sop(sop) == (study.uid, series_uid)
    assert index.locate_sop(f"{ROOT}.9") is None
    assert index.has_blob(blob_id) and not index.has_blob("nope")
    assert index.blob_ids() == {blob_id}
    assert index.blob_instance(blob_id) == (study.uid, series_uid, sop)
    stored_metadata = index.get_metadata(study.uid, series_uid, sop)
    expected = dataset_pb2.Dataset.FromString(metadata)
    assert stored_metadata == expected
    many = index.get_metadata_many([(study.uid, series_uid, sop), (study.uid, "x", "y")])
    assert [dataset_pb2.Dataset.FromString(raw) for raw in many] == [expected]
    assert index.get_frames(study.uid, series_uid, sop) == frames
    assert [(s, r, i) for s, r, i, _ in index.list_instances(study.uid)] == [
        (study.uid, series_uid, sop)
    ]
    assert index.list_instances(study.uid, "1.2.3") == []
    assert index.get_instance(study.uid, series_uid, "1.2.3") is None


def test_a_duplicate_sop_instance_is_refused_with_45070(index: Index, tmp_path: Path) -> None:
    study, other = _study(1), _study(2)
    add_all(index, [_entry(tmp_path, study, 1, 1)])
    for again in (_entry(tmp_path, study, 1, 1), _entry(tmp_path, study, 1, 1)):
        with pytest.raises(ServiceError) as caught:
            add_all(index, [again])
        assert caught.value.dicom_status == 45070
        assert caught.value.code is Code.ALREADY_EXISTS
    # The same SOP instance UID under another study: refused too, naming where it is.
    moved = _entry(tmp_path, other, 1, 1)
    moved.sop_uid = f"{study.uid}.1.1"
    with pytest.raises(ServiceError) as caught:
        add_all(index, [moved])
    assert caught.value.dicom_status == 45070 and study.uid in caught.value.message
    assert index.counts().instances == 1
    assert [c.sequence for c in index.changes(0, 10)] == [1]


def test_aggregates_follow_stores_and_deletes(index: Index, tmp_path: Path) -> None:
    study = _study(1, description="First")
    entries = [_entry(tmp_path, study, 1, i) for i in range(3)]
    entries += [_entry(tmp_path, study, 2, i, modality="MR") for i in range(2)]
    add_all(index, entries, window=1)
    later = _study(1, description="Latest")  # the study attributes of the latest store win
    add_all(index, [_entry(tmp_path, later, 3, 1, modality="MR")])
    record = index.get_study(study.uid)
    assert record is not None
    assert (record.series_count, record.instance_count) == (3, 6)
    assert dict(record.modality_counts) == {"CT": 3, "MR": 3}
    assert record.attributes.attributes["00081030"].strings.values == ["Latest"]
    series = index.get_series(study.uid, f"{study.uid}.1")
    assert series is not None and series.instance_count == 3
    counts = index.counts()
    assert (counts.studies, counts.series, counts.instances) == (1, 3, 6)
    description = index.scan_terms(Level.STUDY, STUDY_DESCRIPTION, b"")
    assert description == [(EXACT + b"Latest", keys.study_key(study.uid))]

    # One instance, then a whole series, then what is left.
    removed = _delete(index, study.uid, f"{study.uid}.1", f"{study.uid}.1.0")
    assert removed == [entries[0].record.blob_id]
    removed = _delete(index, study.uid, f"{study.uid}.2")
    assert sorted(removed) == sorted(e.record.blob_id for e in entries[3:5])
    record = index.get_study(study.uid)
    assert record is not None
    assert (record.series_count, record.instance_count) == (2, 3)
    assert dict(record.modality_counts) == {"CT": 2, "MR": 1}
    assert index.get_series(study.uid, f"{study.uid}.2") is None
    assert index.scan_terms(Level.SERIES, 0x00080060, b"") == [
        (EXACT + b"CT", keys.series_key(study.uid, f"{study.uid}.1")),
        (EXACT + b"MR", keys.series_key(study.uid, f"{study.uid}.3")),
    ]
    add_all(index, [_entry(tmp_path, study, 1, 7)])
    _delete(index, study.uid, f"{study.uid}.3")
    modalities = index.scan_terms(Level.STUDY, MODALITIES_IN_STUDY, b"")
    assert modalities == [(EXACT + b"CT", keys.study_key(study.uid))]  # MR is gone
    _delete(index, study.uid)
    assert index.get_study(study.uid) is None
    counts = index.counts()
    assert (counts.studies, counts.series, counts.instances) == (0, 0, 0)
    for level, tag in ((Level.STUDY, PATIENT_NAME), (Level.SERIES, 0x00080060)):
        assert index.scan_terms(level, tag, b"") == []
    assert index.record_keys(Level.INSTANCE) == []


def test_deletes_record_removals_until_forgotten(index: Index, tmp_path: Path) -> None:
    studies = [_study(1), _study(2)]
    entries = [_entry(tmp_path, s, r, i) for s in studies for r in (1, 2) for i in (1, 2)]
    add_all(index, entries)
    blob_ids = {e.record.blob_id for e in entries}
    removed = _delete(index, studies[0].uid)
    assert len(removed) == 4 and set(removed) <= blob_ids
    assert sorted(index.pending_removals()) == sorted(removed)
    assert index.blob_ids() == blob_ids - set(removed)
    assert not any(index.has_blob(b) for b in removed)
    with pytest.raises(ServiceError) as caught:
        _delete(index, studies[0].uid)
    assert caught.value.code is Code.NOT_FOUND
    with pytest.raises(ServiceError) as caught:
        _delete(index, studies[1].uid, f"{studies[1].uid}.1", "1.2.3")
    assert caught.value.code is Code.NOT_FOUND
    index.forget_removals(removed[:2]).result(timeout=30)
    assert sorted(index.pending_removals()) == sorted(removed[2:])
    index.forget_removals(removed[2:]).result(timeout=30)
    assert index.pending_removals() == []


def test_the_change_log_lists_changes_in_order_with_their_states(
    index: Index, tmp_path: Path
) -> None:
    study = _study(1)
    first, second = _entry(tmp_path, study, 1, 1), _entry(tmp_path, study, 1, 2)
    add_all(index, [first])
    add_all(index, [second])
    assert index.latest_change() is not None
    _delete(index, study.uid, f"{study.uid}.1", f"{study.uid}.1.2")
    again = _entry(tmp_path, study, 1, 2)  # stored again: a new version
    add_all(index, [again])
    changes = index.changes(0, 100)
    assert [c.sequence for c in changes] == [1, 2, 3, 4]
    assert [(c.action, c.state) for c in changes] == [
        (ChangeAction.CREATED, ChangeState.CURRENT),
        (ChangeAction.CREATED, ChangeState.REPLACED),  # the instance has another version now
        (ChangeAction.DELETED, ChangeState.REPLACED),
        (ChangeAction.CREATED, ChangeState.CURRENT),
    ]
    assert changes[1].sop_uid == changes[2].sop_uid == f"{study.uid}.1.2"
    assert changes[1].version == changes[2].version != changes[3].version
    assert all(c.time_us > 0 for c in changes)
    assert index.changes(2, 1) == changes[2:3]
    assert index.latest_change() == changes[-1]
    _delete(index, study.uid)
    assert [c.state for c in index.changes(0, 100)] == [ChangeState.DELETED] * 6


def test_record_keys_and_maps_page_in_key_order(index: Index, tmp_path: Path) -> None:
    entries = [_entry(tmp_path, _study(s), r, i) for s in (1, 2, 10) for r in (1, 2) for i in (1,)]
    add_all(index, entries)
    everything = index.record_keys(Level.SERIES)
    assert everything == sorted(everything) and len(everything) == 6
    assert index.record_keys(Level.SERIES, after=everything[1], limit=2) == everything[2:4]
    # A prefix is a byte prefix, as LMDB's cursor reads it: study 1's key prefixes study 10's.
    assert index.record_keys(Level.STUDY, keys.study_key(f"{ROOT}.1")) == [
        keys.study_key(f"{ROOT}.1"),
        keys.study_key(f"{ROOT}.10"),
    ]
    children = index.record_keys(Level.SERIES, keys.child_prefix(keys.study_key(f"{ROOT}.1")))
    assert children == everything[:2]
    found = index.record_map(Level.SERIES, [*everything[:2], b"missing"])
    assert set(found) == set(everything[:2])
    pairs = index.scan_terms(Level.STUDY, PATIENT_NAME, EXACT + b"doe", prefix=EXACT + b"doe")
    assert [pk for _, pk in pairs] == sorted(keys.study_key(f"{ROOT}.{s}") for s in (1, 2, 10))
    assert index.scan_terms(Level.STUDY, PATIENT_NAME, b"", limit=2) == pairs[:2]
    owners = index.having_terms(
        Level.STUDY,
        PATIENT_NAME,
        [EXACT + b"doe^john"],
        {
            keys.instance_key(*k)
            for k in [(f"{ROOT}.1", f"{ROOT}.1.1", f"{ROOT}.1.1.1"), ("9.9", "9.9.1", "9.9.1.1")]
        },
    )
    assert owners == {keys.instance_key(f"{ROOT}.1", f"{ROOT}.1.1", f"{ROOT}.1.1.1")}


@pytest.mark.slow
def test_both_indexes_hold_the_same_entries_and_scan_them_alike(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The same stores and deletes give the same terms in the same byte order, the same records
    and the same change log; every scan the search planner may ask returns the same pairs."""
    files = [
        _instance_bytes(study, series, instance)
        for study in PAGING_CORPUS
        for series in study.series
        for instance in series.instances
    ]
    lmdb = open_index("lmdb", request, tmp_path)
    postgres = open_index("postgresql", request, tmp_path)
    assert isinstance(lmdb, LmdbIndex) and isinstance(postgres, PostgresIndex)
    try:
        for opened in (lmdb, postgres):
            entries = [
                new_instance(data, tmp_path / "files", f"b{n}") for n, data in enumerate(files)
            ]
            for n, new in enumerate(entries):
                new.record.stored_at_us = 1000 + n
            add_all(opened, entries, window=1)  # one after the other: the same versions
            study = PAGING_CORPUS[1]
            _delete(opened, study.uid, study.series[0].uid, study.series[0].instances[0].uid)
            _delete(opened, PAGING_CORPUS[2].uid)
        with lmdb.read() as txn:
            cursor = txn.cursor(db=lmdb.database("terms"))
            lmdb_terms = [
                bytes(key)
                for key in cursor.iternext(values=False)
                if bytes(key)[0] != Level.WORKITEM
            ]
        rows = postgres._fetch(
            "SELECT level, tag, entry FROM index_terms ORDER BY level, tag, entry"
        )
        postgres_terms = [
            struct.pack(">BI", r["level"], r["tag"]) + bytes(r["entry"]) for r in rows
        ]
        assert postgres_terms == lmdb_terms

        by_attribute: dict[tuple[int, int], list[bytes]] = {}
        for key in lmdb_terms:
            level, tag = struct.unpack(">BI", key[:5])
            term = split_term(key[5:])[0]
            by_attribute.setdefault((level, tag), []).append(term)
        for (level, tag), terms in by_attribute.items():
            starts = [b"", terms[0], terms[len(terms) // 2], terms[-1] + b"\xff"]
            stops: list[bytes | None] = [None]
            for term in terms[:: max(1, len(terms) // 6)]:
                stops += [term, term + keys.SEP, term[:2]]
            for start in starts:
                for stop in stops:
                    for limit in (None, 3):
                        args = (Level(level), tag, start, stop)
                        assert postgres.scan_terms(*args, limit=limit) == lmdb.scan_terms(
                            *args, limit=limit
                        ), (level, tag, start, stop, limit)
                        # The distinct terms: the first pair of each term of the scan.
                        firsts: dict[bytes, bytes] = {}
                        for term, pk in lmdb.scan_terms(*args):
                            firsts.setdefault(term, pk)
                        distinct = list(firsts.items())[:limit]
                        assert lmdb.distinct_terms(*args, limit=limit) == distinct
                        assert postgres.distinct_terms(*args, limit=limit) == distinct
                prefix = start[:3]
                assert postgres.scan_terms(
                    Level(level), tag, prefix, prefix=prefix
                ) == lmdb.scan_terms(Level(level), tag, prefix, prefix=prefix)
                assert postgres.distinct_terms(
                    Level(level), tag, prefix, prefix=prefix
                ) == lmdb.distinct_terms(Level(level), tag, prefix, prefix=prefix)
            # Each term's keys from a key on: what a scan of the term from that key returns.
            distinct_values = sorted(set(terms))
            owners = [pk for _, pk in lmdb.scan_terms(Level(level), tag, b"")]
            for key in [b"", *owners[:: max(1, len(owners) // 4)], owners[-1] + b"0"]:
                for limit in (1, 2, 100):
                    expected = [
                        [
                            pk
                            for _, pk in lmdb.scan_terms(
                                Level(level), tag, term + keys.SEP + key, term + keys.SEP
                            )
                        ][:limit]
                        for term in distinct_values
                    ]
                    args2 = (Level(level), tag, distinct_values, key, limit)
                    assert lmdb.term_entries_from(*args2) == expected
                    assert postgres.term_entries_from(*args2) == expected

        for level in (Level.STUDY, Level.SERIES, Level.INSTANCE):
            found = lmdb.record_keys(level)
            assert postgres.record_keys(level) == found
            for after in found:
                assert postgres.record_keys(level, after=after, limit=2) == lmdb.record_keys(
                    level, after=after, limit=2
                )
            parse = RECORD_TYPES[level].FromString
            lmdb_records = {k: parse(v) for k, v in lmdb.record_map(level, found).items()}
            postgres_records = {k: parse(v) for k, v in postgres.record_map(level, found).items()}
            assert postgres_records == lmdb_records
        assert postgres.counts() == lmdb.counts()
        assert sorted(postgres.pending_removals()) == sorted(lmdb.pending_removals())

        def timeless(index: Index) -> list[object]:
            return [dataclasses.replace(c, time_us=0) for c in index.changes(0, 1000)]

        assert timeless(postgres) == timeless(lmdb)
        with lmdb.read() as txn:
            lmdb_log = [bytes(v) for _, v in txn.cursor(db=lmdb.database("changes"))]
        rows = postgres._fetch("SELECT record FROM index_changes ORDER BY sequence")
        for raw_lmdb, row in zip(lmdb_log, rows, strict=True):
            ours = records_pb2.ChangeRecord.FromString(bytes(row["record"]))
            theirs = records_pb2.ChangeRecord.FromString(raw_lmdb)
            ours.ClearField("time")
            theirs.ClearField("time")
            assert ours == theirs
    finally:
        lmdb.close()
        postgres.close()


# --------------------------------------------------------------------------------------------
# PostgreSQL: two nodes on one database
# --------------------------------------------------------------------------------------------


@pytest.fixture
def nodes(postgres_dsn: str) -> Iterator[tuple[PostgresIndex, PostgresIndex]]:
    indexes = [PostgresIndex(PostgresBackend(postgres_dsn, pool_size=4)) for _ in range(2)]
    try:
        yield indexes[0], indexes[1]
    finally:
        for opened in indexes:
            opened.close()


@pytest.mark.slow
def test_changes_read_while_two_nodes_store_come_once_in_order(
    nodes: tuple[PostgresIndex, PostgresIndex], tmp_path: Path
) -> None:
    # Both nodes store into the same studies at once: the aggregates must add up too.
    studies = [_study(s) for s in range(3)]
    entries = [
        _entry(tmp_path, studies[n % 3], n % 2, n, modality="CT" if n % 4 else "MR")
        for n in range(60)
    ]
    done = threading.Event()
    seen: list[int] = []

    def follow() -> None:
        after = 0
        while True:
            finished = done.is_set()
            for change in nodes[1].changes(after, 7):
                seen.append(change.sequence)
                after = change.sequence
            if finished and not nodes[1].changes(after, 1):
                return

    reader = threading.Thread(target=follow)
    reader.start()
    try:

        async def store() -> None:
            await asyncio.gather(*(nodes[n % 2].add_instance(new) for n, new in enumerate(entries)))

        asyncio.run(store())
    finally:
        done.set()
        reader.join(60)
    assert seen == list(range(1, 61))
    for node in nodes:
        counts = node.counts()
        assert (counts.studies, counts.series, counts.instances) == (3, 6, 60)
        for study in studies:
            record = node.get_study(study.uid)
            assert record is not None and record.instance_count == 20
            assert sum(record.modality_counts.values()) == 20
    assert sorted(c.sequence for c in nodes[0].changes(0, 100)) == list(range(1, 61))


def test_a_listener_on_one_node_hears_the_other_nodes_commits(
    postgres_dsn: str, tmp_path: Path
) -> None:
    writer = PostgresIndex(PostgresBackend(postgres_dsn, pool_size=2))
    reader = PostgresIndex(PostgresBackend(postgres_dsn, pool_size=2, poll_s=3600))
    try:
        heard: queue.Queue[int] = queue.Queue()
        # A listener reads through its node, as the change feed does: it runs off the loop.
        reader.on_commit(lambda: heard.put(len(reader.changes(0, 100))))
        add_all(writer, [_entry(tmp_path, _study(1), 1, 1)])
        assert heard.get(timeout=10) == 1
        _delete(writer, f"{ROOT}.1")
        while heard.get(timeout=10) != 2:
            pass
    finally:
        writer.close()
        reader.close()


def test_two_nodes_storing_one_sop_instance_have_one_winner(
    nodes: tuple[PostgresIndex, PostgresIndex], tmp_path: Path
) -> None:
    for round_ in range(5):
        same = [_entry(tmp_path, _study(round_), 1, 1) for _ in range(4)]

        async def race(entries: list[NewInstance] = same) -> list[BaseException | int]:
            return await asyncio.gather(
                *(nodes[n % 2].add_instance(e) for n, e in enumerate(entries)),
                return_exceptions=True,
            )

        results = asyncio.run(race())
        assert sum(isinstance(r, int) for r in results) == 1, results
        assert all(
            isinstance(r, int) or (isinstance(r, ServiceError) and r.dicom_status == 45070)
            for r in results
        )
    assert nodes[0].counts().instances == 5


# --------------------------------------------------------------------------------------------
# Extended query tags
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keyword", "level", "value", "kept"),
    [
        ("Rows", Level.INSTANCE, "2", True),  # kept in instance records anyway
        ("PhotometricInterpretation", Level.SERIES, "MONOCHROME2", False),
    ],
)
def test_an_extended_query_tag_is_registered_reindexed_searched_and_removed(
    index: Index, tmp_path: Path, keyword: str, level: Level, value: str, kept: bool
) -> None:
    study = _study(1)
    add_all(index, [_entry(tmp_path, study, 1, i) for i in range(3)])
    tag = define(RequestedTag(keyword, level=int(level)), "tags[0]")
    hex_tag, number = tag.hex_tag, int(tag.hex_tag, 16)
    operation = records_pb2.ReindexOperation(operation_id="op", hex_tags=[hex_tag])
    registered = asyncio.run(index.add_query_tags([tag], operation))
    assert registered.total_instances == 3 and not registered.done
    assert [(t.hex_tag, t.ready, t.operation_id) for t in index.query_tags()] == [
        (hex_tag, False, "op")
    ]
    with pytest.raises(ServiceError) as caught:
        again = records_pb2.ReindexOperation(operation_id="op2", hex_tags=[hex_tag])
        asyncio.run(index.add_query_tags([define(RequestedTag(keyword, level=level), "t")], again))
    assert caught.value.code is Code.ALREADY_EXISTS
    add_all(index, [_entry(tmp_path, study, 2, 1)])  # stored after: indexed by its store
    assert len(index.scan_terms(level, number, b"")) == 1
    with pytest.raises(ServiceError) as caught:
        asyncio.run(index.reindex_batch("nope", 2))
    assert caught.value.code is Code.NOT_FOUND
    batches = 0
    while not (progress := asyncio.run(index.reindex_batch("op", 2))).done:
        batches += 1
    assert batches == 1 and progress.processed_instances == 4  # the last batch ends it
    assert index.operation("op") == progress and index.operations() == [progress]
    assert [t.ready for t in index.query_tags()] == [True]
    records = len(index.record_keys(level))
    entries = index.scan_terms(level, number, b"")
    assert len(entries) == records and len({term for term, _ in entries}) == 1
    core = SearchCore(index, TermSearch(index))
    found = core.search(SearchRequest(level=level.name.lower(), match={keyword: value}))
    assert len(found.results) == records
    assert all(r.attributes[hex_tag].WhichOneof("value") for r in found.results)

    while not asyncio.run(index.drop_query_tag(hex_tag, 3)):
        assert index.query_tags() == [] and index.pending_drops() == [hex_tag]
    assert index.pending_drops() == [] and index.query_tags() == []
    assert index.scan_terms(level, number, b"") == []
    parse = RECORD_TYPES[level].FromString
    for raw in index.record_map(level, index.record_keys(level)).values():
        assert (hex_tag in parse(raw).attributes.attributes) is kept
    assert asyncio.run(index.drop_query_tag(hex_tag, 3))  # nothing left to remove


def test_stores_on_one_node_while_the_other_reindexes_are_all_indexed(
    nodes: tuple[PostgresIndex, PostgresIndex], tmp_path: Path
) -> None:
    studies = [_study(s) for s in range(4)]
    before = [_entry(tmp_path, studies[n % 4], 1, n) for n in range(12)]
    during = [_entry(tmp_path, studies[n % 4], 2, n) for n in range(40)]
    add_all(nodes[0], before)
    tag = define(RequestedTag("Rows", level=int(Level.INSTANCE)), "tags[0]")
    operation = records_pb2.ReindexOperation(operation_id="op", hex_tags=[tag.hex_tag])

    async def run() -> None:
        async def store() -> None:
            for new in during:
                await nodes[1].add_instance(new)

        async def register_and_walk() -> None:
            await asyncio.sleep(0.05)
            await nodes[0].add_query_tags([tag], operation)
            while not (await nodes[0].reindex_batch("op", 2)).done:
                pass

        await asyncio.gather(store(), register_and_walk())

    asyncio.run(run())
    for node in nodes:
        assert len(node.scan_terms(Level.INSTANCE, 0x00280010, b"")) == 52
        assert node.counts().instances == 52


def test_stores_and_deletes_of_one_study_on_two_nodes_keep_the_aggregates_true(
    nodes: tuple[PostgresIndex, PostgresIndex], tmp_path: Path
) -> None:
    """A study deleted while stores wait for its lock is created again by them; whatever the
    interleaving, the records' counts are those of the rows, and the change log adds up."""
    study = _study(1)
    entries = [
        _entry(tmp_path, study, n % 3, n, modality="CT" if n % 2 else "MR") for n in range(45)
    ]

    async def run() -> int:
        deleted = 0

        async def store(node: PostgresIndex, mine: list[NewInstance]) -> None:
            for new in mine:
                await node.add_instance(new)

        async def delete() -> None:
            nonlocal deleted
            for _ in range(6):
                await asyncio.sleep(0.02)
                try:
                    deleted += len(await nodes[1].delete(study.uid))
                except ServiceError as error:
                    assert error.code is Code.NOT_FOUND

        await asyncio.gather(
            store(nodes[0], entries[0::2]), store(nodes[1], entries[1::2]), delete()
        )
        return deleted

    deleted = asyncio.run(run())
    listed = nodes[0].list_instances(study.uid)
    assert len(listed) + deleted == len(entries)
    record = nodes[0].get_study(study.uid)
    if listed:
        assert record is not None and record.instance_count == len(listed)
        assert record.series_count == len({series for _, series, _, _ in listed})
        modalities: dict[str, int] = {}
        for _, _, _, instance in listed:
            modalities[instance.modality] = modalities.get(instance.modality, 0) + 1
        assert dict(record.modality_counts) == modalities
    else:
        assert record is None
    counts = nodes[1].counts()
    assert (counts.studies, counts.instances) == (1 if listed else 0, len(listed))
    changes = nodes[1].changes(0, 1000)
    assert [c.sequence for c in changes] == list(range(1, len(changes) + 1))
    created = sum(c.action is ChangeAction.CREATED for c in changes)
    assert (created, len(changes) - created) == (len(entries), deleted)


def test_stored_change_records_carry_their_sequence(postgres_dsn: str) -> None:
    """The statement numbering changes appends the sequence's protobuf field to each record."""
    backend = PostgresBackend(postgres_dsn, pool_size=1)
    try:
        base = records_pb2.ChangeRecord(
            kind=records_pb2.CHANGE_KIND_DELETED, sop_instance_uid="1.2.3", version=7
        )
        for n in (1, 127, 128, 300, 16384, 2**31, 2**56 + 5, 2**62, 2**63 - 1):
            raw = backend.run(
                backend.fetchval(
                    "SELECT $1::bytea || change_sequence_field($2)", base.SerializeToString(), n
                )
            )
            expected = records_pb2.ChangeRecord()
            expected.CopyFrom(base)
            expected.sequence = n
            assert records_pb2.ChangeRecord.FromString(raw) == expected, n
    finally:
        backend.close()


def test_dimse_peers_are_kept_replaced_and_forgotten(index: Index) -> None:
    ws = records_pb2.DimsePeerRecord(name="ws", ae_title="WS1", host="10.0.0.1", port=104)
    asyncio.run(index.put_dimse_peer(ws))
    asyncio.run(index.put_dimse_peer(records_pb2.DimsePeerRecord(name="a", ae_title="A", port=1)))
    moved = records_pb2.DimsePeerRecord(name="ws", ae_title="WS1", host="10.0.0.2", port=104)
    asyncio.run(index.put_dimse_peer(moved))
    assert [(p.name, p.host) for p in index.dimse_peers()] == [("a", ""), ("ws", "10.0.0.2")]
    assert asyncio.run(index.delete_dimse_peer("ws"))
    assert not asyncio.run(index.delete_dimse_peer("ws"))
    assert [p.name for p in index.dimse_peers()] == ["a"]


def test_stored_bytes_sums_every_instance_batch_by_batch(index: Index, tmp_path: Path) -> None:
    """What the console's dashboard shows as bytes stored, read a few records at a time."""
    study = _study(1)
    entries = [_entry(tmp_path, study, 1, i) for i in range(5)]
    for number, entry in enumerate(entries):
        entry.record.size_bytes = 1000 + number
    add_all(index, entries)
    assert index.stored_bytes(batch=2) == sum(1000 + n for n in range(5))
    _delete(index, study.uid, f"{study.uid}.1", f"{study.uid}.1.0")
    assert index.stored_bytes(batch=2) == sum(1000 + n for n in range(1, 5))
