"""The search engine against an independent brute-force matcher (PS3.4 C.2.2.2 as specified).

Small corpora are generated from small alphabets (so that queries match), indexed afresh, and
every generated query's result set is compared with what a plain Python reference matcher finds
in the generated model. Paging, fuzzy names (word prefixes, as the README's "What works"
describes them) and invalid requests are checked on fixed corpora. Every test runs on the LMDB
index (the corpus stored through the archive's store path) and on the PostgreSQL index (see
:func:`corpus_core`): the term search reads both alike.
"""

from __future__ import annotations

import asyncio
import io
import re
import unicodedata
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    UltrasoundImageStorage,
)

from dicomrpc.datasets import to_json
from dicomrpc_server.archive import Archive
from dicomrpc_server.config import Settings
from dicomrpc_server.errors import Code, ServiceError
from dicomrpc_server.query.engine import SCAN_CAP, SearchCore, SearchRequest
from dicomrpc_server.query.term_search import TermSearch
from dicomrpc_server.storage.postgres import PostgresBackend
from dicomrpc_server.storage.postgres.index import PostgresIndex
from dicomrpc_server.store.ingest import StoreStream
from tests.indexes import add_all, new_instance

# --------------------------------------------------------------------------------------------
# The corpus model
# --------------------------------------------------------------------------------------------

UID_ROOT = "1.2.826.0.1.3680043.10.543"
SOP_CLASSES = {"CT": CTImageStorage, "MR": MRImageStorage, "US": UltrasoundImageStorage}

PATIENT_NAMES = ["Doe^John", "Doe^Jane", "Müller^José", "van der Berg^Ann", "Johnson^Don"]
REFERRING_NAMES = ["Smith^Alice", "Śmith^Bob", "Brown^Carl"]
PATIENT_IDS = ["P1", "P2", "p1", "P10"]
BIRTH_DATES = ["19700101", "19851231", "20000229"]
ACCESSIONS = ["A1", "A2", "a1", "AB1"]
STUDY_DATES = ["20190101", "20190615", "20200101", "20200229", "20201231", "20210704"]
STUDY_TIMES = ["0930", "093000", "093015.5", "101112", "1530", "235959", "10"]
DESCRIPTIONS = ["Chest", "CHEST", "Chest CT", "Head Neck"]
STUDY_IDS = ["1", "2", "S1"]
MODALITIES = ["CT", "MR", "US"]


@dataclass
class Instance:
    uid: str
    sop_class: str
    number: int


@dataclass
class Series:
    uid: str
    modality: str
    number: int
    instances: list[Instance] = field(default_factory=list)


@dataclass
class Study:
    uid: str
    patient_name: str
    patient_id: str
    birth_date: str
    accession: str
    referring: str
    date: str
    time: str
    description: str
    study_id: str
    series: list[Series] = field(default_factory=list)


def study_uid(s: int) -> str:
    return f"{UID_ROOT}.{s + 1}"


def series_uid(s: int, r: int) -> str:
    return f"{study_uid(s)}.{r + 1}"


def sop_uid(s: int, r: int, i: int) -> str:
    return f"{series_uid(s, r)}.{i + 1}"


def _instance_bytes(study: Study, series: Series, instance: Instance) -> bytes:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = instance.sop_class
    ds.SOPInstanceUID = instance.uid
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = series.uid
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.birth_date
    ds.AccessionNumber = study.accession
    ds.ReferringPhysicianName = study.referring
    ds.StudyDate = study.date
    ds.StudyTime = study.time
    ds.StudyDescription = study.description
    ds.StudyID = study.study_id
    ds.Modality = series.modality
    ds.SeriesNumber = series.number
    ds.InstanceNumber = instance.number
    ds.Rows, ds.Columns = 2, 2
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PixelData = np.zeros((2, 2), dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.preamble = b"\x00" * 128
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _store_all(archive: Archive, instances: list[bytes]) -> None:
    async def run() -> None:
        async def one(data: bytes) -> None:
            ingest = archive.store.begin(StoreStream())
            ingest.write(data)
            result = await ingest.finish()
            assert result.failure is None, result.failure

        await asyncio.gather(*(one(d) for d in instances))

    asyncio.run(run())


def store_corpus(archive: Archive, corpus: list[Study]) -> None:
    _store_all(
        archive,
        [
            _instance_bytes(study, series, instance)
            for study in corpus
            for series in study.series
            for instance in series.instances
        ],
    )


def open_archive(data_dir: Path) -> Archive:
    return Archive(Settings(data_dir=data_dir, lmdb_map_size=64 * 1024 * 1024))


INDEXES = ["lmdb", "postgresql"]


@contextmanager
def corpus_core(
    kind: str, request: pytest.FixtureRequest, folder: Path, corpus: list[Study]
) -> Iterator[SearchCore]:
    """A search over ``corpus`` on an index of ``kind``.

    On LMDB the corpus is stored through the archive's store path; on PostgreSQL each file is
    turned into the entry the store would index (``prepare()``) and indexed directly, on a
    database of its own.
    """
    if kind == "lmdb":
        archive = open_archive(folder / "data")
        try:
            store_corpus(archive, corpus)
            yield SearchCore(archive.index, TermSearch(archive.index))
        finally:
            archive.close()
        return
    cluster = request.getfixturevalue("postgres")
    dsn = cluster.create_database()
    index = PostgresIndex(PostgresBackend(dsn, pool_size=4))
    try:
        entries = [
            new_instance(_instance_bytes(study, series, instance), folder / "files")
            for study in corpus
            for series in study.series
            for instance in series.instances
        ]
        add_all(index, entries)
        yield SearchCore(index, TermSearch(index))
    finally:
        index.close()
        cluster.drop_database(dsn)


# --------------------------------------------------------------------------------------------
# The reference matcher
# --------------------------------------------------------------------------------------------


def fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


_WORDS = re.compile(r"[ ^,\-.]+")


def words(text: str) -> list[str]:
    return [w for w in _WORDS.split(fold(text)) if w]


def wildcard(pattern: str, value: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL) is not None


def match_string(query: str, value: str) -> bool:
    if "*" in query or "?" in query:
        return wildcard(query, value)
    return query == value


def match_pn(query: str, value: str, fuzzy: bool) -> bool:
    if fuzzy:
        name_words = words(value)
        return all(any(wildcard(q + "*", w) for w in name_words) for q in words(query))
    return match_string(fold(query), fold(value))


def match_uid(query: str, value: str) -> bool:
    return value in re.split(r"[,\\]", query)


def match_date(query: str, value: str) -> bool:
    if "-" not in query:
        return query == value
    low, high = query.split("-")
    return (not low or low <= value) and (not high or value <= high)


def time_span(value: str) -> tuple[Fraction, Fraction]:
    """The first and last instant (in seconds) a TM value stands for: "1015" is a minute."""
    main, _, frac = value.partition(".")
    digits = main.replace(":", "")
    hours, minutes, seconds = int(digits[:2]), int(digits[2:4] or 0), int(digits[4:6] or 0)
    start = Fraction(hours * 3600 + minutes * 60 + seconds) + Fraction(
        int(frac or 0), 10 ** len(frac)
    )
    precision = {2: 3600, 4: 60}.get(len(digits), Fraction(1, 10 ** len(frac)))
    return start, start + precision - Fraction(1, 10**6)


def order_key(value: str) -> str:
    """Dates as they are, times padded to HHMMSS: an order for drawing ranges."""
    main, _, frac = value.partition(".")
    return main + "000000"[len(main) :] + "." + frac


def match_time(query: str, value: str) -> bool:
    v = time_span(value)[0]
    if "-" not in query:
        first, last = time_span(query)
        return first <= v <= last
    low, high = query.split("-")
    return (not low or time_span(low)[0] <= v) and (not high or v <= time_span(high)[1])


def match_int(query: str, value: int) -> bool:
    return int(query) == value


@dataclass(frozen=True)
class Attr:
    keyword: str
    tag: str
    level: str  # "study", "series" or "instance"
    kind: str  # "ui", "pn", "str", "da", "tm", "int", "modalities"


ATTRS = [
    Attr("StudyInstanceUID", "0020000D", "study", "ui"),
    Attr("PatientName", "00100010", "study", "pn"),
    Attr("PatientID", "00100020", "study", "str"),
    Attr("PatientBirthDate", "00100030", "study", "da"),
    Attr("AccessionNumber", "00080050", "study", "str"),
    Attr("ReferringPhysicianName", "00080090", "study", "pn"),
    Attr("StudyDate", "00080020", "study", "da"),
    Attr("StudyTime", "00080030", "study", "tm"),
    Attr("StudyDescription", "00081030", "study", "str"),
    Attr("StudyID", "00200010", "study", "str"),
    Attr("ModalitiesInStudy", "00080061", "study", "modalities"),
    Attr("SeriesInstanceUID", "0020000E", "series", "ui"),
    Attr("Modality", "00080060", "series", "str"),
    Attr("SeriesNumber", "00200011", "series", "int"),
    Attr("SOPInstanceUID", "00080018", "instance", "ui"),
    Attr("SOPClassUID", "00080016", "instance", "ui"),
    Attr("InstanceNumber", "00200013", "instance", "int"),
]
BY_NAME = {a.keyword: a for a in ATTRS} | {a.tag: a for a in ATTRS}
LEVELS = ["study", "series", "instance"]
RESULT_TAG = {"study": "0020000D", "series": "0020000E", "instance": "00080018"}


def attribute_value(attr: Attr, study: Study, series: Series, instance: Instance) -> object:
    return {
        "StudyInstanceUID": study.uid,
        "PatientName": study.patient_name,
        "PatientID": study.patient_id,
        "PatientBirthDate": study.birth_date,
        "AccessionNumber": study.accession,
        "ReferringPhysicianName": study.referring,
        "StudyDate": study.date,
        "StudyTime": study.time,
        "StudyDescription": study.description,
        "StudyID": study.study_id,
        "ModalitiesInStudy": sorted({s.modality for s in study.series}),
        "SeriesInstanceUID": series.uid,
        "Modality": series.modality,
        "SeriesNumber": series.number,
        "SOPInstanceUID": instance.uid,
        "SOPClassUID": instance.sop_class,
        "InstanceNumber": instance.number,
    }[attr.keyword]


def term_matches(attr: Attr, query: str, value: object, fuzzy: bool) -> bool:
    if query == "":
        return True
    if attr.kind == "ui":
        return match_uid(query, str(value))
    if attr.kind == "pn":
        return match_pn(query, str(value), fuzzy)
    if attr.kind == "str":
        return match_string(query, str(value))
    if attr.kind == "da":
        return match_date(query, str(value))
    if attr.kind == "tm":
        return match_time(query, str(value))
    if attr.kind == "int":
        assert isinstance(value, int)
        return match_int(query, value)
    assert attr.kind == "modalities" and isinstance(value, list)
    return any(match_string(query, m) for m in value)


@dataclass
class Query:
    level: str
    match: dict[str, str]
    fuzzy: bool = False
    study_uid: str = ""
    series_uid: str = ""

    def request(self, **paging: object) -> SearchRequest:
        return SearchRequest(
            level=self.level,
            match=dict(self.match),
            fuzzy=self.fuzzy,
            study_uid=self.study_uid,
            series_uid=self.series_uid,
            **paging,  # type: ignore[arg-type]
        )


def reference(corpus: list[Study], query: Query) -> set[str]:
    """Every UID at the query's level whose study/series/instance satisfies all terms."""
    found: set[str] = set()
    for study in corpus:
        if query.study_uid and study.uid != query.study_uid:
            continue
        for series in study.series:
            if query.series_uid and series.uid != query.series_uid:
                continue
            for instance in series.instances:
                if all(
                    term_matches(
                        BY_NAME[key],
                        value,
                        attribute_value(BY_NAME[key], study, series, instance),
                        query.fuzzy,
                    )
                    for key, value in query.match.items()
                ):
                    found.add(
                        {"study": study.uid, "series": series.uid, "instance": instance.uid}[
                            query.level
                        ]
                    )
    return found


def result_uids(core: SearchCore, request: SearchRequest) -> list[str]:
    page = core.search(request)
    tag = RESULT_TAG[request.level]
    uids = []
    for ds in page.results:
        data = to_json(ds)
        assert tag in data, f"result without {tag}: {data}"
        uids.append(data[tag]["Value"][0])
    return uids


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------


@st.composite
def corpora(draw: st.DrawFn) -> list[Study]:
    studies = []
    for s in range(draw(st.integers(1, 4))):
        study = Study(
            uid=study_uid(s),
            patient_name=draw(st.sampled_from(PATIENT_NAMES)),
            patient_id=draw(st.sampled_from(PATIENT_IDS)),
            birth_date=draw(st.sampled_from(BIRTH_DATES)),
            accession=draw(st.sampled_from(ACCESSIONS)),
            referring=draw(st.sampled_from(REFERRING_NAMES)),
            date=draw(st.sampled_from(STUDY_DATES)),
            time=draw(st.sampled_from(STUDY_TIMES)),
            description=draw(st.sampled_from(DESCRIPTIONS)),
            study_id=draw(st.sampled_from(STUDY_IDS)),
        )
        for r in range(draw(st.integers(1, 3))):
            modality = draw(st.sampled_from(MODALITIES))
            series = Series(series_uid(s, r), modality, draw(st.integers(1, 3)))
            for i in range(draw(st.integers(1, 3))):
                sop_class = draw(st.sampled_from([SOP_CLASSES[modality], CTImageStorage]))
                series.instances.append(
                    Instance(sop_uid(s, r, i), sop_class, draw(st.integers(1, 3)))
                )
            study.series.append(series)
        studies.append(study)
    return studies


PN_QUERIES = {
    "PatientName": [
        *PATIENT_NAMES,
        "doe^john",
        "DOE^JANE",
        "muller^jose",
        "MÜLLER^JOSÉ",
        "Van Der Berg^ann",
        "Doe",
        "doe*",
        "*john",
        "D?e^J*",
        "*er*",
        "VAN*",
        "*",
        "?oe^John",
        "mu?ler*",
        "J*",
    ],
    "ReferringPhysicianName": [
        *REFERRING_NAMES,
        "smith^alice",
        "SMITH*",
        "*^b*",
        "Smith",
        "?rown^Carl",
    ],
}
FUZZY_QUERIES = {
    "PatientName": [
        "joh",
        "do",
        "jo do",
        "Doe",
        "John Doe",
        "ohn",
        "Muller",
        "jose",
        "van berg",
        "der",
        "an",
        "d",
        "Don",
        "bergx",
        "DOE^JOHN",
        "müll-jo",
        "john,doe",
    ],
    "ReferringPhysicianName": ["smith", "sm", "Bob", "c", "brown carl", "mith"],
}
STRING_QUERIES = {
    "PatientID": [*PATIENT_IDS, "P*", "p*", "P?", "*1", "P1*", "?1*", "P3"],
    "AccessionNumber": [*ACCESSIONS, "A*", "a*", "A?", "*1", "*B*", "B1"],
    "StudyDescription": [*DESCRIPTIONS, "Chest*", "*CT", "C?EST", "*e*", "chest", "Head"],
    "StudyID": [*STUDY_IDS, "S*", "?", "*1"],
    "Modality": [*MODALITIES, "ct", "?R", "*T", "*", "XA"],
    "ModalitiesInStudy": [*MODALITIES, "ct", "?R", "*T", "XA"],
}


def uid_pool(kind: str) -> list[str]:
    if kind == "StudyInstanceUID":
        return [study_uid(s) for s in range(4)] + [f"{UID_ROOT}.9"]
    if kind == "SeriesInstanceUID":
        return [series_uid(s, r) for s in range(4) for r in range(3)] + [f"{UID_ROOT}.9.9"]
    if kind == "SOPInstanceUID":
        return [sop_uid(s, r, i) for s in range(4) for r in range(3) for i in range(3)]
    return [*SOP_CLASSES.values(), "1.2.840.10008.5.1.4.1.1.7"]


@st.composite
def uid_queries(draw: st.DrawFn, keyword: str) -> str:
    chosen = draw(st.lists(st.sampled_from(uid_pool(keyword)), min_size=1, max_size=3))
    return draw(st.sampled_from([",", "\\"])).join(chosen)


@st.composite
def range_queries(draw: st.DrawFn, pool: list[str]) -> str:
    kind = draw(st.sampled_from(["single", "closed", "below", "above"]))
    a, b = sorted(draw(st.lists(st.sampled_from(pool), min_size=2, max_size=2)), key=order_key)
    if kind == "single":
        return a
    if kind == "closed":
        return f"{a}-{b}"
    if kind == "below":
        return f"-{b}"
    return f"{a}-"


def value_strategy(attr: Attr, fuzzy: bool) -> st.SearchStrategy[str]:
    if attr.kind == "ui":
        return uid_queries(attr.keyword)
    if attr.kind == "pn":
        return st.sampled_from((FUZZY_QUERIES if fuzzy else PN_QUERIES)[attr.keyword])
    if attr.keyword == "PatientBirthDate":
        return range_queries([*BIRTH_DATES, "19800101", "20000301"])
    if attr.keyword == "StudyDate":
        return range_queries([*STUDY_DATES, "20191231", "20200102", "20210101"])
    if attr.kind == "tm":
        return range_queries([*STUDY_TIMES, "1000", "1200", "093001"])
    if attr.kind == "int":
        return st.sampled_from(["1", "2", "3", "4"])
    return st.sampled_from(STRING_QUERIES[attr.keyword])


@st.composite
def queries(draw: st.DrawFn) -> Query:
    level = draw(st.sampled_from(LEVELS))
    fuzzy = draw(st.booleans())
    allowed = [a for a in ATTRS if LEVELS.index(a.level) <= LEVELS.index(level)]
    attrs = draw(st.lists(st.sampled_from(allowed), min_size=1, max_size=3, unique=True))
    match = {}
    for attr in attrs:
        key = draw(st.sampled_from([attr.keyword, attr.tag]))
        universal = draw(st.integers(0, 9)) == 0
        match[key] = "" if universal else draw(value_strategy(attr, fuzzy))
    query = Query(level, match, fuzzy)
    if level != "study" and draw(st.integers(0, 3)) == 0:
        s = draw(st.integers(0, 3))
        query.study_uid = study_uid(s)
        if level == "instance" and draw(st.booleans()):
            query.series_uid = series_uid(s, draw(st.integers(0, 2)))
    return query


# --------------------------------------------------------------------------------------------
# 1. Engine == reference, on generated corpora and queries
# --------------------------------------------------------------------------------------------


def check(core: SearchCore, corpus: list[Study], query: Query) -> None:
    got = result_uids(core, query.request())
    assert len(got) == len(set(got)), f"duplicate results for {query}: {got}"
    expected = reference(corpus, query)
    assert set(got) == expected, (
        f"{query}\n  missing:    {sorted(expected - set(got))}\n"
        f"  unexpected: {sorted(set(got) - expected)}"
    )
    assert result_uids(core, query.request()) == got, f"order not stable for {query}"


@pytest.mark.slow
@pytest.mark.timeout(600)
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(corpus=corpora(), query_list=st.lists(queries(), min_size=1, max_size=25))
@pytest.mark.parametrize("kind", INDEXES)
def test_search_matches_reference(
    kind: str,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    corpus: list[Study],
    query_list: list[Query],
) -> None:
    with corpus_core(kind, request, tmp_path_factory.mktemp("search"), corpus) as core:
        for query in query_list:
            check(core, corpus, query)


# --------------------------------------------------------------------------------------------
# Fixed corpora for paging, fuzzy examples, invalid requests
# --------------------------------------------------------------------------------------------


def _paging_corpus() -> list[Study]:
    corpus = []
    for s in range(3):
        study = Study(
            uid=study_uid(s),
            patient_name=PATIENT_NAMES[s],
            patient_id=f"PAGE{s}",
            birth_date=BIRTH_DATES[s],
            accession=f"ACC{s}",
            referring=REFERRING_NAMES[s],
            date=STUDY_DATES[s],
            time=STUDY_TIMES[s],
            description="Chest",
            study_id=str(s),
        )
        for r in range(2):
            modality = MODALITIES[(s + r) % 3]
            series = Series(series_uid(s, r), modality, r + 1)
            series.instances = [
                Instance(sop_uid(s, r, i), SOP_CLASSES[modality], i + 1) for i in range(5)
            ]
            study.series.append(series)
        corpus.append(study)
    return corpus


PAGING_CORPUS = _paging_corpus()  # 3 studies x 2 series x 5 instances = 30 instances


@pytest.fixture(scope="module", params=INDEXES)
def paging_core(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SearchCore]:
    folder = tmp_path_factory.mktemp("paging")
    with corpus_core(request.param, request, folder, PAGING_CORPUS) as core:
        yield core


PAGING_QUERIES = [
    Query("instance", {}),
    Query("instance", {"Modality": "CT"}),
    Query("instance", {"StudyDescription": "Chest", "InstanceNumber": "3"}),
    Query("series", {}),
    Query("study", {}),
    Query("instance", {}, study_uid=study_uid(1)),
]


@pytest.mark.parametrize("query", PAGING_QUERIES, ids=lambda q: f"{q.level}-{q.match}")
def test_limit_offset_pages_cover_every_match_once(paging_core: SearchCore, query: Query) -> None:
    everything = result_uids(paging_core, query.request(limit=1000))
    assert set(everything) == reference(PAGING_CORPUS, query)
    assert result_uids(paging_core, query.request()) == everything  # limit 0 means 100
    paged: list[str] = []
    for page in range(20):
        uids = result_uids(paging_core, query.request(limit=7, offset=7 * page))
        assert len(uids) <= 7
        paged += uids
        if len(uids) < 7:
            break
    assert paged == everything
    # An offset past the end is an empty page, not an error.
    assert result_uids(paging_core, query.request(limit=7, offset=len(everything))) == []


@pytest.mark.parametrize("query", PAGING_QUERIES, ids=lambda q: f"{q.level}-{q.match}")
def test_token_pages_cover_every_match_once(paging_core: SearchCore, query: Query) -> None:
    everything = result_uids(paging_core, query.request(limit=1000))
    paged: list[str] = []
    token = ""
    for _ in range(20):
        page = paging_core.search(query.request(page_size=7, page_token=token))
        tag = RESULT_TAG[query.level]
        uids = [to_json(ds)[tag]["Value"][0] for ds in page.results]
        assert len(uids) <= 7
        paged += uids
        token = page.next_page_token
        if not token:
            break
    else:
        pytest.fail("page tokens never ended")
    assert paged == everything


def _large_corpus() -> list[Study]:
    """More entries per term than the search scans before it streams (SCAN_CAP)."""
    corpus = []
    for s in range(SCAN_CAP + 100):
        study = Study(
            uid=study_uid(s),
            patient_name="Doe^John",
            patient_id=f"L{s % 3}",
            birth_date="19700101",
            accession=f"L{s}",
            referring="Smith^Alice",
            date=f"202001{s * 11 % 28 + 1:02d}",  # key order is not date order
            time="1200",
            description="Chest",
            study_id="1",
        )
        instances = [Instance(sop_uid(s, 0, 0), CTImageStorage, 1)]
        instances.append(Instance(sop_uid(s, 0, 1), EnhancedCTImageStorage, 2))
        study.series.append(Series(series_uid(s, 0), "CT", 1, instances))
        corpus.append(study)
    return corpus


LARGE_CORPUS = _large_corpus()

LARGE_QUERIES = [
    Query("instance", {}),
    Query("study", {"StudyDescription": "Chest"}),
    Query("series", {"Modality": "CT", "StudyDescription": "Chest"}),
    Query("instance", {"Modality": "CT"}),  # series entries lifted to their instances
    Query("instance", {"StudyDescription": "Chest", "InstanceNumber": "2"}),
    Query("instance", {"SOPClassUID": f"{CTImageStorage},{EnhancedCTImageStorage}"}),  # merged
    Query("instance", {"StudyDescription": "Chest", "AccessionNumber": "L7"}),
    Query("study", {"StudyDate": "20200103-"}),  # one key-ordered read per date, merged
    Query("study", {"StudyDate": "-20200126", "StudyDescription": "Chest"}),
    Query("series", {"StudyDate": "20200102-20200128", "Modality": "CT"}),  # lifted
    Query("instance", {"StudyDate": "20200110-20200111", "InstanceNumber": "2"}),
]


@pytest.fixture(scope="module", params=INDEXES)
def large_core(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SearchCore]:
    folder = tmp_path_factory.mktemp("large")
    with corpus_core(request.param, request, folder, LARGE_CORPUS) as core:
        yield core


@pytest.mark.slow
@pytest.mark.parametrize("query", LARGE_QUERIES, ids=lambda q: f"{q.level}-{q.match}")
def test_large_matches_are_paged_from_the_cursor(
    large_core: SearchCore, query: Query, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = reference(LARGE_CORPUS, query)
    if len(expected) > SCAN_CAP:
        # Streamed: the set intersection, which collects every match, is never used.
        def collect(*args: object) -> set[bytes]:
            raise AssertionError("a large match was collected whole")

        monkeypatch.setattr(TermSearch, "_intersect", collect)
    by_token: list[str] = []
    token = ""
    for _ in range(100):
        page = large_core.search(query.request(page_size=97, page_token=token))
        tag = RESULT_TAG[query.level]
        by_token += [to_json(ds)[tag]["Value"][0] for ds in page.results]
        token = page.next_page_token
        if not token:
            break
    assert len(by_token) == len(set(by_token))
    assert set(by_token) == expected
    by_offset: list[str] = []
    while uids := result_uids(large_core, query.request(limit=500, offset=len(by_offset))):
        by_offset += uids
    assert by_offset == by_token


# --------------------------------------------------------------------------------------------
# 3. Fuzzy names
# --------------------------------------------------------------------------------------------


def _fuzzy_corpus() -> list[Study]:
    corpus = []
    for s, name in enumerate(["John^Doe", "Müller^José", "Roe^Jane"]):
        study = Study(
            uid=study_uid(s),
            patient_name=name,
            patient_id=f"F{s}",
            birth_date="19700101",
            accession=f"F{s}",
            referring=name,
            date="20200101",
            time="1200",
            description="Fuzzy",
            study_id=str(s),
        )
        series = Series(series_uid(s, 0), "CT", 1, [Instance(sop_uid(s, 0, 0), CTImageStorage, 1)])
        study.series.append(series)
        corpus.append(study)
    return corpus


FUZZY_CORPUS = _fuzzy_corpus()
JOHN_DOE, MULLER, ROE = study_uid(0), study_uid(1), study_uid(2)


@pytest.fixture(scope="module", params=INDEXES)
def fuzzy_core(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SearchCore]:
    folder = tmp_path_factory.mktemp("fuzzy")
    with corpus_core(request.param, request, folder, FUZZY_CORPUS) as core:
        yield core


def _fuzzy(core: SearchCore, attribute: str, value: str) -> set[str]:
    return set(
        result_uids(core, SearchRequest(level="study", match={attribute: value}, fuzzy=True))
    )


@pytest.mark.parametrize("attribute", ["PatientName", "ReferringPhysicianName"])
@pytest.mark.parametrize("value", ["joh", "do", "jo do", "Doe", "John Doe"])
def test_fuzzy_spec_examples_match(fuzzy_core: SearchCore, attribute: str, value: str) -> None:
    assert JOHN_DOE in _fuzzy(fuzzy_core, attribute, value)


@pytest.mark.parametrize("attribute", ["PatientName", "ReferringPhysicianName"])
def test_fuzzy_is_word_prefix_not_substring(fuzzy_core: SearchCore, attribute: str) -> None:
    assert JOHN_DOE not in _fuzzy(fuzzy_core, attribute, "ohn")


@pytest.mark.parametrize("attribute", ["PatientName", "ReferringPhysicianName"])
def test_fuzzy_folds_accents(fuzzy_core: SearchCore, attribute: str) -> None:
    assert _fuzzy(fuzzy_core, attribute, "Muller") == {MULLER}


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ("*oh*", {JOHN_DOE}),
        ("jo*", {JOHN_DOE, MULLER}),
        ("*ll*", {MULLER}),
        ("r?e", {"ROE"}),
        ("j?n", {"ROE"}),
        ("x*", set()),
        ("?oe", {JOHN_DOE, "ROE"}),
        ("*", {JOHN_DOE, MULLER, "ROE"}),
        ("do* *an*", set()),
        ("ro* *an*", {"ROE"}),
    ],
)
def test_fuzzy_words_take_wildcards(fuzzy_core: SearchCore, value: str, found: set[str]) -> None:
    """Each word of a fuzzy value begins a word of the name, its wildcards matching as usual:
    OHIF's patient search sends ``*text*`` with ``fuzzymatching=true``."""
    expected = {ROE if uid == "ROE" else uid for uid in found}
    assert _fuzzy(fuzzy_core, "PatientName", value) == expected


def test_without_fuzzy_a_word_is_not_a_name(fuzzy_core: SearchCore) -> None:
    request = SearchRequest(level="study", match={"PatientName": "Doe"})
    assert result_uids(fuzzy_core, request) == []


# --------------------------------------------------------------------------------------------
# 4. Invalid requests
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_",
    [
        SearchRequest(level="study", match={"NoSuchKeyword": "x"}),
        SearchRequest(level="study", match={"StudyDate": "2020-01-01-x"}),
        SearchRequest(level="study", limit=5000),
    ],
    ids=["unknown-attribute", "malformed-date-range", "limit-5000"],
)
def test_invalid_requests_are_invalid_argument(
    fuzzy_core: SearchCore, request_: SearchRequest
) -> None:
    with pytest.raises(ServiceError) as caught:
        fuzzy_core.search(request_)
    assert caught.value.code is Code.INVALID_ARGUMENT
