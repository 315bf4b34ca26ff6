"""Date ranges are paged from the cursor: in key order, across stores, reading about a page.

A search whose terms are all matched by index terms known before the scan (exact values, UID
lists, and date ranges) is answered by reading each term's entries in key order from the page
token, not by collecting every match (``query/term_search.py``). These tests page date-range
searches on both indexes (LMDB, PostgreSQL) while studies are stored between the pages, and
count what a page of a range reads from a real LMDB index.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomrpc_server.dicom.attributes import Level
from dicomrpc_server.query.engine import SearchCore, SearchRequest
from dicomrpc_server.query.term_search import MIN_BATCH, RANGE_PROBE, TermSearch
from dicomrpc_server.storage import records_pb2
from dicomrpc_server.storage.lmdb_index import LmdbIndex
from dicomrpc_server.storage.postgres.index import PostgresIndex
from dicomrpc_server.storage.protocols import NewInstance
from tests.indexes import KINDS, add_all, open_index
from tests.test_index_contract import _entry, _study

Index = LmdbIndex | PostgresIndex
ROOT = "1.2.826.0.1.3680043.10.543.78"
FIRST_DAY = dt.date(2020, 1, 1)


def _day(number: int) -> str:
    return (FIRST_DAY + dt.timedelta(days=number)).strftime("%Y%m%d")


class Entries:
    """Index entries of one-instance studies, made from one prepared file.

    ``prepare()`` of a file per study would take minutes for 10^4 studies: the entry of one
    file is copied with the study's UIDs, date and description put where ``prepare()`` puts
    them (the study, series and instance records, which the index terms are made of), and a
    blob id of its own.
    """

    def __init__(self, folder: Path) -> None:
        self.template = _entry(folder, _study(0), 1, 1)

    def make(self, uid: str, day: int, description: str = "Chest") -> NewInstance:
        template = self.template
        study = records_pb2.StudyRecord()
        study.CopyFrom(template.study_attributes)
        attributes = study.attributes.attributes
        attributes["0020000D"].strings.values[:] = [uid]
        attributes["00080020"].strings.values[:] = [_day(day)]
        attributes["00081030"].strings.values[:] = [description]
        series = records_pb2.SeriesRecord()
        series.CopyFrom(template.series_attributes)
        series.attributes.attributes["0020000E"].strings.values[:] = [f"{uid}.1"]
        record = records_pb2.InstanceRecord()
        record.CopyFrom(template.record)
        record.attributes.attributes["00080018"].strings.values[:] = [f"{uid}.1.1"]
        record.blob_id = uuid.uuid4().hex
        return NewInstance(
            study_uid=uid,
            series_uid=f"{uid}.1",
            sop_uid=f"{uid}.1.1",
            record=record,
            study_attributes=study,
            series_attributes=series,
            metadata=template.metadata,
            frames=template.frames,
        )


def _uids(
    core: SearchCore, match: dict[str, str], page_size: int, token: str
) -> tuple[list[str], str]:
    page = core.search(SearchRequest("study", match=match, page_size=page_size, page_token=token))
    return [ds.attributes["0020000D"].strings.values[0] for ds in page.results], (
        page.next_page_token
    )


def _everything(core: SearchCore, match: dict[str, str]) -> list[str]:
    """Every match, as one big page."""
    uids, token = _uids(core, match, 1000, "")
    assert not token
    return uids


@pytest.fixture(params=KINDS)
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Index]:
    opened = open_index(request.param, request, tmp_path)
    yield opened
    opened.close()


RANGES = [
    {"StudyDate": f"{_day(3)}-{_day(12)}"},
    {"StudyDate": f"-{_day(4)}"},
    {"StudyDate": f"{_day(15)}-"},
    {"StudyDate": f"{_day(2)}-{_day(17)}", "StudyDescription": "Chest"},
]


@pytest.mark.slow
@pytest.mark.parametrize("match", RANGES, ids=lambda m: "+".join(f"{k}={v}" for k, v in m.items()))
def test_range_pages_are_the_big_page_across_stores(
    index: Index, tmp_path: Path, match: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages of 17 followed by their tokens give the one big page's matches, in its order;
    studies stored between the pages are returned when they sort above the cursor, and the
    matches are never collected whole (the set intersection is not called).
    """
    entries = Entries(tmp_path / "files")
    # Key order is not date order: study s gets day (s * 7) % 20.
    add_all(
        index,
        [
            entries.make(f"{ROOT}.{s}", (s * 7) % 20, "Chest" if s % 3 else "Head")
            for s in range(1, 301)
        ],
    )
    core = SearchCore(index, TermSearch(index))
    expected = _everything(core, match)
    assert len(expected) > 60

    def collect(*args: object) -> set[bytes]:
        raise AssertionError("a date range was collected whole")

    monkeypatch.setattr(TermSearch, "_intersect", collect)
    paged: list[str] = []
    token = ""
    for round_number in range(1, 1000):
        uids, token = _uids(core, match, 17, token)
        paged += uids
        if not token:
            break
        # Store a study below the cursor (never returned) and one above it (returned when it
        # matches), each dated inside and outside the range in turn.
        last = paged[-1]
        below, above = f"{ROOT}.0.{round_number}", f"{last}9.{round_number}"
        assert below < last < above
        day = (round_number * 5) % 20
        add_all(index, [entries.make(below, day), entries.make(above, day)])
    else:
        pytest.fail("page tokens never ended")
    assert paged == sorted(paged)
    assert len(paged) == len(set(paged))
    now = _everything(core, match)
    # Every first match is returned, and every match stored above the cursor; none below.
    assert set(expected) <= set(paged)
    assert set(paged) <= set(now)
    assert [uid for uid in now if uid not in paged] == [
        uid for uid in now if uid.startswith(f"{ROOT}.0.")
    ]


class CountingIndex:
    """A real LMDB index, with a count of the entries and records each read returns."""

    def __init__(self, index: LmdbIndex) -> None:
        self.index = index
        self.read = 0

    def scan_terms(
        self,
        level: Level,
        tag: int,
        start: bytes,
        stop: bytes | None = None,
        prefix: bytes = b"",
        limit: int | None = None,
    ) -> list[tuple[bytes, bytes]]:
        found = self.index.scan_terms(level, tag, start, stop, prefix, limit)
        self.read += len(found)
        return found

    def distinct_terms(
        self,
        level: Level,
        tag: int,
        start: bytes,
        stop: bytes | None = None,
        prefix: bytes = b"",
        limit: int | None = None,
    ) -> list[tuple[bytes, bytes]]:
        found = self.index.distinct_terms(level, tag, start, stop, prefix, limit)
        self.read += len(found)
        return found

    def term_entries_from(
        self, level: Level, tag: int, terms: list[bytes], start: bytes, limit: int
    ) -> list[list[bytes]]:
        found = self.index.term_entries_from(level, tag, terms, start, limit)
        self.read += sum(len(keys) for keys in found)
        return found

    def having_terms(
        self, level: Level, tag: int, terms: list[bytes], candidates: set[bytes]
    ) -> set[bytes]:
        self.read += len(candidates) * len(terms)
        return self.index.having_terms(level, tag, terms, candidates)

    def record_keys(
        self, level: Level, prefix: bytes = b"", after: bytes = b"", limit: int | None = None
    ) -> list[bytes]:
        found = self.index.record_keys(level, prefix, after, limit)
        self.read += len(found)
        return found

    def record_map(self, level: Level, primary_keys: list[bytes]) -> dict[bytes, bytes]:
        return self.index.record_map(level, primary_keys)


DAYS = 100
STUDIES = 12_000


@pytest.fixture(scope="module")
def counted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CountingIndex]:
    """12,000 studies over 100 days (120 a day), in key order unrelated to date order."""
    folder = tmp_path_factory.mktemp("counted")
    index = LmdbIndex(
        folder / "index",
        map_size=1 << 28,
        max_readers=64,
        max_batch=256,
        before_commit=lambda: None,
    )
    entries = Entries(folder / "files")
    add_all(
        index,
        [entries.make(f"{ROOT}.{s}", (s * 37) % DAYS) for s in range(1, STUDIES + 1)],
        window=256,
    )
    yield CountingIndex(index)
    index.close()


@pytest.mark.slow
@pytest.mark.parametrize(("first", "last"), [(0, 99), (10, 94), (50, 50 + 1)])
def test_a_range_page_reads_about_a_page_not_every_match(
    counted: CountingIndex, first: int, last: int
) -> None:
    """A page of 100 of a range matching up to 12,000 studies reads O(page + dates) entries,
    on the first page and on a deep one."""
    core = SearchCore(counted.index, TermSearch(counted))
    match = {"StudyDate": f"{_day(first)}-{_day(last)}"}
    days = last - first + 1
    matching = days * STUDIES // DAYS
    token = ""
    for page in range(min(30, matching // 100)):
        counted.read = 0
        uids, token = _uids(core, match, 100, token)
        assert len(uids) == 100
        # The range's first entries (RANGE_PROBE), one entry for each later date, a first
        # batch of each date's keys at the cursor (MIN_BATCH), then about a page of entries.
        bound = RANGE_PROBE + (1 + MIN_BATCH) * days + 2 * 100
        assert counted.read <= bound, (page, counted.read, matching)


def test_a_study_scope_is_that_study_not_the_studies_its_uid_begins(
    index: Index, tmp_path: Path
) -> None:
    """A study-level search scoped to 1.2.3 does not return 1.2.30 (whose key it begins)."""
    entries = Entries(tmp_path / "files")
    uids = [f"{ROOT}.1", f"{ROOT}.10", f"{ROOT}.11", f"{ROOT}.2"]
    add_all(index, [entries.make(uid, 3) for uid in uids])
    core = SearchCore(index, TermSearch(index))
    for match in ({}, {"StudyDate": _day(3)}, {"StudyDate": f"{_day(1)}-{_day(5)}"}):
        page = core.search(SearchRequest("study", match=match, study_uid=f"{ROOT}.1"))
        assert [ds.attributes["0020000D"].strings.values[0] for ds in page.results] == [f"{ROOT}.1"]
