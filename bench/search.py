"""Search benchmark: QIDO latency of dicomrpc at 10^5 and 10^6 instances, and of Orthanc.

Usage (from the repository root)::

    .venv/bin/python bench/search.py            # 5*10^4 (both servers), 10^5, 10^6; RESULTS.md
    .venv/bin/python bench/search.py --quick    # 2,000 and 5,000 instances, a smoke run
    .venv/bin/python bench/search.py --sizes 100000 --no-orthanc

The corpus is a generated archive: patients with one to four studies each, dated over ten years
(2015-2024); CR, DX, CT, MR, US and MG studies with the series a department would produce
(CT: a localizer, a 100-slice series and one of 40 to 250 slices; MR: four to eight series, some
of 100 images; CR: one or two views ...); family names built from syllables (about 3,000) so that
fuzzy name prefixes match a few patients, not a ninth of the archive. The corpus is a
deterministic stream: the first N instances are the same for every N, so the sizes nest.

dicomrpc's index is built directly, not through ingest: each instance becomes the
``NewInstance`` the store path would make of its file (the attributes come from
``from_pydicom`` on the dataset of a series' first instance, patched per instance), and
``LmdbIndex.add_instance`` is called for every instance with many calls in flight, so the
index writer groups them into large commits. Search never reads instance files, so the blob ids
point at nothing. Before the build, one generated file goes through the real ``prepare()`` and
its records are compared with the directly built ones; after the build, a sample of queries
runs in-process through ``SearchCore`` (with the maximum limit) and their counts are compared
with the generator's. Built indexes are cached under ``bench/.work/`` with their build time.

Latency is measured through the real gRPC server (``dicomrpc serve`` as a subprocess on the
built data directory) with the SDK ``Client.search_studies``/``search_series``/
``search_instances`` on one channel, sequential requests, a warm-up first, each query with a
different value every time (a patient, a name, a month, a series), default limit (100):

- PatientID exact (studies);
- PatientName fuzzy: the first four letters of a family name and a given name, word-prefix
  matched (Orthanc: ``PatientName=ABCD*^GIVEN*``, which the generated names make equivalent);
- StudyDate range of one month (studies);
- ModalitiesInStudy + StudyDate of one month (studies);
- the instances of one 100-instance series.

All servers run at once and the queries are timed in rounds, each round timing a slice of
every kind on every server, the first server rotating, so that a drift of the shared machine
touches all alike. Each query's count is checked against the generator's (the returned count
is the match count capped at the limit). The same engine is also timed in-process
(``SearchCore.search``, no gRPC) at the largest size, to show where the time goes.

Orthanc (the Debian package with its DICOMweb plugin) gets Part 10 files of the first
``--orthanc-count`` instances of the same corpus (16x16 pixels) by STOW-RS, once (its storage is
cached), and answers the same queries as ``GET /dicom-web/studies?...`` and
``/dicom-web/studies/{study}/series/{series}/instances`` on one keep-alive connection (body read,
not parsed, inside the timing). dicomrpc is also measured at that size for the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import http.client
import json
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import lmdb
import numpy as np
import pydicom
from harness import (
    ACCEPT_JSON,
    ROOT,
    WORK,
    ServerError,
    connect_grpc,
    connect_http,
    dicomrpc_server,
    ensure_orthanc,
    load_orthanc,
    machine,
    orthanc_server,
    orthanc_version,
    write_section,
)
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from dicomrpc import Client
from dicomrpc.datasets import from_pydicom
from dicomrpc.v1 import dataset_pb2
from dicomrpc_server.dicom.attributes import Level
from dicomrpc_server.paths import bulk_data_path, instance_path
from dicomrpc_server.query.engine import MAX_LIMIT, SearchCore, SearchRequest
from dicomrpc_server.query.term_search import TermSearch
from dicomrpc_server.query.terms import fold_person_name
from dicomrpc_server.storage import records_pb2
from dicomrpc_server.storage.lmdb_index import LmdbIndex
from dicomrpc_server.storage.protocols import NewInstance
from dicomrpc_server.store.prepare import BULK_DATA_THRESHOLD, level_subset, prepare

SECTION = "## Search"
SEED = 20240601
INDEX_VERSION = 1
UID_ROOT = "1.2.826.0.1.3680043.8.498.4711"
FIRST_DAY = dt.date(2015, 1, 1)
LAST_DAY = dt.date(2024, 12, 31)
PIXELS = 16
LIMIT = 100
SERIES_SIZE = 100

GOAL_P95_MS = 20.0
GOAL_SERIES_P50_MS = 10.0
ORTHANC_SERIES_REFERENCE = "31 ms at 10^3 instances"
GROWTH_TOLERANCE = 1.5
# Sub-millisecond latencies vary by more than their growth: differences below this count as flat.
GROWTH_SLACK_MS = 1.0

BUILD_WINDOW = 4096
BUILD_BATCH = 1024
BUILD_MAP_SIZE = 8 * 1024**3

# --------------------------------------------------------------------------------------------
# The corpus: a deterministic stream of studies
# --------------------------------------------------------------------------------------------

_START = ["SMI", "MUEL", "GAR", "ROS", "DUB", "TAN", "NOW", "SIL", "KIM", "BER", "HOF", "JAN"]
_START += ["KOW", "LEF", "MAR", "PET", "SCH", "WAG", "BRA", "FER", "LIN", "OKA", "HAL", "VOG"]
_START += ["QUI"]
_MIDDLE = ["", "AN", "EN", "IN", "OR", "EL", "AR", "OW"]
_END = ["TH", "LER", "CIA", "SI", "OIS", "AKA", "AK", "VA", "SKI", "MAN", "SON", "SEN", "ER"]
_END += ["EZ", "INI", "OV"]
_GIVEN = ["ANNA", "JOHN", "MARIA", "PETER", "LENA", "YUKI", "OMAR", "EVA", "LUCA", "SARA"]
_GIVEN += ["IGOR", "NOAH", "EMMA", "HUGO", "CLARA", "DAVID", "FATIMA", "GRETA", "HENRIK"]
_GIVEN += ["IRIS", "JONAS", "KARIM", "LUDWIG", "MILA", "NORA", "OSCAR", "PAULA", "RAFAEL"]
_GIVEN += ["SOFIA", "TOBIAS", "ULLA", "VIKTOR", "WILMA", "XAVER", "YARA", "ZOE"]

_SOP_CLASS = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",
}
# (modality, weight, body parts, study description)
_KINDS = [
    ("CR", 30, ["CHEST", "HAND", "KNEE", "SPINE"], "XR {}"),
    ("DX", 8, ["CHEST", "PELVIS", "FOOT"], "DX {}"),
    ("CT", 20, ["CHEST", "ABDOMEN", "HEAD"], "CT {} W/O CONTRAST"),
    ("MR", 15, ["HEAD", "KNEE", "SPINE"], "MR {}"),
    ("US", 15, ["ABDOMEN", "THYROID", "HEART"], "US {}"),
    ("MG", 7, ["BREAST"], "MAMMO {} SCREENING"),
]


@dataclass(frozen=True)
class SeriesPlan:
    """One generated series."""

    uid: str
    number: int
    modality: str
    description: str
    time: str
    count: int


@dataclass(frozen=True)
class StudyPlan:
    """One generated study and its series (instances are made from these on demand)."""

    index: int
    uid: str
    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    date: str
    time: str
    accession: str
    description: str
    body_part: str
    series: tuple[SeriesPlan, ...]

    @property
    def instances(self) -> int:
        return sum(s.count for s in self.series)

    @property
    def modalities(self) -> set[str]:
        return {s.modality for s in self.series}


def family_names() -> list[str]:
    """Every generated family name (start + middle + ending syllables)."""
    return [s + m + e for s in _START for m in _MIDDLE for e in _END]


def _series_counts(modality: str, rng: random.Random) -> list[int]:
    if modality in ("CR", "DX"):
        return [rng.randint(1, 2) for _ in range(rng.randint(1, 2))]
    if modality == "MG":
        return [4]
    if modality == "US":
        return [rng.randint(10, 40)]
    if modality == "CT":
        counts = [2, SERIES_SIZE, rng.randint(40, 250)]
        return [*counts, SERIES_SIZE] if rng.random() < 0.2 else counts
    return [rng.choice([20, 24, 30, 40, 60, SERIES_SIZE]) for _ in range(rng.randint(4, 8))]


def plan(count: int, seed: int = SEED) -> list[StudyPlan]:
    """The studies holding the first ``count`` instances of the corpus (the last one cut)."""
    rng = random.Random(seed)
    families = family_names()
    weights = [k[1] for k in _KINDS]
    days = (LAST_DAY - FIRST_DAY).days + 1
    studies: list[StudyPlan] = []
    total = 0
    patient = 0
    while total < count:
        patient += 1
        name = f"{rng.choice(families)}^{rng.choice(_GIVEN)}"
        birth = dt.date(1930, 1, 1) + dt.timedelta(days=rng.randrange(0, 90 * 365))
        sex = rng.choice("MF")
        for _ in range(min(1 + int(rng.expovariate(1.2)), 4)):
            if total >= count:
                break
            index = len(studies)
            modality, _, parts, description = rng.choices(_KINDS, weights)[0]
            body_part = rng.choice(parts)
            day = FIRST_DAY + dt.timedelta(days=rng.randrange(days))
            series: list[SeriesPlan] = []
            for number, size in enumerate(_series_counts(modality, rng), start=1):
                size = min(size, count - total)
                if size <= 0:
                    break
                total += size
                series.append(
                    SeriesPlan(
                        uid=f"{UID_ROOT}.2.{index}.{number}",
                        number=number,
                        modality=modality,
                        description=f"{body_part} {modality} {number}",
                        time=f"{8 + number % 10:02d}{rng.randrange(60):02d}00",
                        count=size,
                    )
                )
            studies.append(
                StudyPlan(
                    index=index,
                    uid=f"{UID_ROOT}.1.{index}",
                    patient_id=f"PID{patient:08d}",
                    patient_name=name,
                    birth_date=birth.strftime("%Y%m%d"),
                    sex=sex,
                    date=day.strftime("%Y%m%d"),
                    time=f"{7 + index % 12:02d}{index % 60:02d}{rng.randrange(60):02d}",
                    accession=f"ACC{index:09d}",
                    description=description.format(body_part),
                    body_part=body_part,
                    series=tuple(series),
                )
            )
    return studies


def sop_uid(study: StudyPlan, series: SeriesPlan, number: int) -> str:
    return f"{UID_ROOT}.3.{study.index}.{series.number}.{number}"


def instance_dataset(study: StudyPlan, series: SeriesPlan, number: int) -> Dataset:
    """The Part 10 dataset of one instance (16x16 pixels; Orthanc gets these as files)."""
    sop = sop_uid(study, series, number)
    sop_class = _SOP_CLASS[series.modality]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "DICOMRPC_BENCH"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study.date
    ds.StudyTime = study.time
    ds.SeriesTime = series.time
    ds.ContentTime = f"{series.time}.{number:03d}"
    ds.AccessionNumber = study.accession
    ds.Modality = series.modality
    ds.Manufacturer = "ACME Medical"
    ds.InstitutionName = "General Hospital"
    ds.ReferringPhysicianName = "WHO^DOCTOR"
    ds.StationName = f"{series.modality}01"
    ds.StudyDescription = study.description
    ds.SeriesDescription = series.description
    ds.ManufacturerModelName = "Model 7"
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.birth_date
    ds.PatientSex = study.sex
    ds.BodyPartExamined = study.body_part
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = series.uid
    ds.StudyID = str(study.index % 100000)
    ds.SeriesNumber = series.number
    ds.InstanceNumber = number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = PIXELS
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = (np.arange(PIXELS * PIXELS, dtype=np.uint16) * (number % 16)).tobytes()
    return ds


def iter_instances(studies: list[StudyPlan]) -> Iterator[tuple[StudyPlan, SeriesPlan, int]]:
    for study in studies:
        for series in study.series:
            for number in range(1, series.count + 1):
                yield study, series, number


# --------------------------------------------------------------------------------------------
# The index built directly: NewInstance objects as prepare() would make them
# --------------------------------------------------------------------------------------------


def _metadata(ds: Dataset) -> dataset_pb2.Dataset:
    """The metadata prepare() records for a dataset (pixel data as a bulk data URI)."""
    base = instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    metadata = from_pydicom(
        ds,
        bulk_data_threshold=BULK_DATA_THRESHOLD,
        bulk_data_uri=lambda tag_path: bulk_data_path(base, tag_path),
    )
    metadata.attributes["7FE00010"].CopyFrom(
        dataset_pb2.Attribute(vr="OW", bulk_data_uri=bulk_data_path(base, "7FE00010"))
    )
    return metadata


# The attributes new_instance() sets per instance; the rest is the series' first instance's.
_PER_INSTANCE = ("00080018", "00200013", "00080033", "7FE00010")


class SeriesTemplate:
    """The records of a series' first instance, patched for each of its instances."""

    def __init__(self, study: StudyPlan, series: SeriesPlan, frames: records_pb2.FrameTable):
        self.study, self.series, self.frames = study, series, frames
        first = instance_dataset(study, series, 1)
        self.size = 128 + 4 + len(first.PixelData) + 900
        metadata = _metadata(first)
        # Without what differs per instance: each instance appends its own (see new_instance).
        common = dataset_pb2.Dataset()
        common.CopyFrom(metadata)
        for tag in _PER_INSTANCE:
            del common.attributes[tag]
        self.metadata = common.SerializeToString()
        self.study_attributes = records_pb2.StudyRecord(
            attributes=level_subset(metadata, Level.STUDY)
        ).SerializeToString()
        self.series_attributes = records_pb2.SeriesRecord(
            attributes=level_subset(metadata, Level.SERIES)
        ).SerializeToString()
        self.instance_attributes = level_subset(metadata, Level.INSTANCE)

    def new_instance(self, number: int, blob_id: str) -> NewInstance:
        study, series = self.study, self.series
        sop = sop_uid(study, series, number)
        base = instance_path(study.uid, series.uid, sop)
        patch = dataset_pb2.Dataset()
        patch.attributes["00080018"].CopyFrom(self.instance_attributes.attributes["00080018"])
        patch.attributes["00080018"].strings.values[0] = sop
        patch.attributes["00200013"].CopyFrom(self.instance_attributes.attributes["00200013"])
        patch.attributes["00200013"].numbers.values[0] = float(number)
        patch.attributes["00080033"].CopyFrom(self.instance_attributes.attributes["00080033"])
        patch.attributes["00080033"].strings.values[0] = f"{series.time}.{number:03d}"
        attributes = dataset_pb2.Dataset()
        attributes.CopyFrom(self.instance_attributes)
        attributes.MergeFrom(patch)
        patch.attributes["7FE00010"].CopyFrom(
            dataset_pb2.Attribute(vr="OW", bulk_data_uri=bulk_data_path(base, "7FE00010"))
        )
        record = records_pb2.InstanceRecord(
            blob_id=blob_id,
            size_bytes=self.size,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            sop_class_uid=_SOP_CLASS[series.modality],
            number_of_frames=1,
            attributes=attributes,
            modality=series.modality,
        )
        return NewInstance(
            study_uid=study.uid,
            series_uid=series.uid,
            sop_uid=sop,
            record=record,
            study_attributes=records_pb2.StudyRecord.FromString(self.study_attributes),
            series_attributes=records_pb2.SeriesRecord.FromString(self.series_attributes),
            # Concatenated messages merge: the whole dataset, each attribute once.
            metadata=self.metadata + patch.SerializeToString(),
            frames=self.frames,
        )


def new_instances(
    studies: list[StudyPlan], frames: records_pb2.FrameTable
) -> Iterator[NewInstance]:
    """Every instance of the corpus as the index entry the store path would commit."""
    blob = 0
    for study in studies:
        for series in study.series:
            template = SeriesTemplate(study, series, frames)
            for number in range(1, series.count + 1):
                blob += 1
                yield template.new_instance(number, f"{blob:08x}{0:024x}")


def check_against_prepare(studies: list[StudyPlan]) -> records_pb2.FrameTable:
    """Write the corpus' second instance as a file, prepare() it, compare; return its frames.

    Any difference in what the records hold (the blob id and file size aside) would make the
    directly built index search differently from one filled by ingest.
    """
    study, series, number = next(
        (s, se, n) for s, se, n in iter_instances(studies) if n == 2 and se.count >= 2
    )
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        path = Path(tmp) / "sample.dcm"
        instance_dataset(study, series, number).save_as(path, enforce_file_format=True)
        prepared = prepare(path).new
    assert prepared.frames is not None
    direct = SeriesTemplate(study, series, prepared.frames).new_instance(number, "x")
    expected_metadata = dataset_pb2.Dataset.FromString(prepared.metadata)
    got_metadata = dataset_pb2.Dataset.FromString(direct.metadata)
    pairs = [
        ("study attributes", prepared.study_attributes, direct.study_attributes),
        ("series attributes", prepared.series_attributes, direct.series_attributes),
        ("instance attributes", prepared.record.attributes, direct.record.attributes),
        ("metadata", expected_metadata, got_metadata),
    ]
    for what, expected, got in pairs:
        if expected != got:
            raise AssertionError(f"direct build differs from prepare() in the {what}")
    for name in ("transfer_syntax_uid", "sop_class_uid", "number_of_frames", "modality"):
        if getattr(prepared.record, name) != getattr(direct.record, name):
            raise AssertionError(f"direct build differs from prepare() in {name}")
    return prepared.frames


@dataclass
class Built:
    """A built (or cached) index."""

    size: int
    data_dir: Path
    build_s: float
    bytes_on_disk: int
    bytes_used: int
    studies: int
    series: int

    @property
    def per_second(self) -> float:
        return self.size / self.build_s if self.build_s else 0.0


def _disk_usage(directory: Path) -> tuple[int, int]:
    """(bytes allocated on disk, bytes of pages LMDB uses) of an index directory."""
    allocated = sum(p.stat().st_blocks * 512 for p in directory.iterdir() if p.is_file())
    used = 0
    data = directory / "data.mdb"
    if data.exists():
        env = lmdb.open(str(directory), readonly=True, lock=False, max_dbs=16)
        try:
            used = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        finally:
            env.close()
    return allocated, used


def _open_index(index_dir: Path, max_batch: int = 16) -> LmdbIndex:
    return LmdbIndex(
        index_dir,
        map_size=BUILD_MAP_SIZE,
        max_readers=64,
        max_batch=max_batch,
        before_commit=lambda: None,
    )


async def _feed(index: LmdbIndex, instances: Iterator[NewInstance], window: int) -> None:
    """``add_instance`` for every instance, ``window`` calls in flight (group commit)."""
    pending: set[asyncio.Future[int]] = set()
    for new in instances:
        pending.add(asyncio.ensure_future(index.add_instance(new)))
        if len(pending) >= window:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                future.result()
    for future in asyncio.as_completed(pending):
        await future


def build(size: int, studies: list[StudyPlan], frames: records_pb2.FrameTable) -> Built:
    """The index of the first ``size`` instances, from the cache or built now."""
    directory = WORK / f"search-index-{size}"
    marker = directory / "complete.json"
    expected = {"version": INDEX_VERSION, "size": size, "seed": SEED}
    index_dir = directory / "data" / "index"
    if marker.exists():
        info = json.loads(marker.read_text())
        if {k: info.get(k) for k in expected} == expected:
            on_disk, used = _disk_usage(index_dir)
            return Built(
                size,
                directory / "data",
                info["build_s"],
                on_disk,
                used,
                info["studies"],
                info["series"],
            )
    if directory.exists():
        shutil.rmtree(directory)
    print(f"building the index of {size} instances in {directory} ...", flush=True)
    index = _open_index(index_dir, BUILD_BATCH)
    started = time.perf_counter()
    try:
        asyncio.run(_feed(index, new_instances(studies, frames), BUILD_WINDOW))
    finally:
        index.close()
    build_s = time.perf_counter() - started
    counts = _counts(index_dir)
    if counts != (len(studies), sum(len(s.series) for s in studies), size):
        raise AssertionError(f"index counts {counts} differ from the generated corpus")
    on_disk, used = _disk_usage(index_dir)
    marker.write_text(
        json.dumps({**expected, "build_s": build_s, "studies": counts[0], "series": counts[1]})
    )
    print(f"  {size / build_s:.0f} instances/s, {build_s:.1f} s, {on_disk / 2**20:.0f} MiB")
    return Built(size, directory / "data", build_s, on_disk, used, counts[0], counts[1])


def _counts(index_dir: Path) -> tuple[int, int, int]:
    index = _open_index(index_dir)
    try:
        c = index.counts()
        return c.studies, c.series, c.instances
    finally:
        index.close()


# --------------------------------------------------------------------------------------------
# Queries: the values, the expected counts, and how each server is asked
# --------------------------------------------------------------------------------------------

QUERY_NAMES = {
    "patient_id": "PatientID exact",
    "fuzzy_name": "PatientName fuzzy",
    "month": "StudyDate, one month",
    "modality_month": "ModalitiesInStudy + StudyDate (one month)",
    "series": f"instances of a {SERIES_SIZE}-instance series",
}


@dataclass(frozen=True)
class Query:
    """One query value of a kind, and how many records match it in the corpus."""

    kind: str
    match: dict[str, str]
    fuzzy: bool
    orthanc: str
    matches: int
    study: str = ""
    series: str = ""

    @property
    def returned(self) -> int:
        return min(self.matches, LIMIT)


def _query_string(match: dict[str, str]) -> str:
    """A QIDO query string; ``*`` and ``^`` left as they are (Orthanc matches nothing when
    they arrive percent-encoded)."""
    return urllib.parse.urlencode(match, safe="*^")


def _month_range(year: int, month: int) -> tuple[str, str]:
    last = (dt.date(year + month // 12, month % 12 + 1, 1) - dt.timedelta(days=1)).day
    return f"{year}{month:02d}01", f"{year}{month:02d}{last:02d}"


def _words(name: str) -> list[str]:
    return [w for w in fold_person_name(name).replace("^", " ").split() if w]


def queries(studies: list[StudyPlan], count: int, seed: int) -> dict[str, list[Query]]:
    """``count`` queries of each kind, values drawn from the corpus (some months empty)."""
    rng = random.Random(seed)
    by_patient: dict[str, int] = {}
    for s in studies:
        by_patient[s.patient_id] = by_patient.get(s.patient_id, 0) + 1
    out: dict[str, list[Query]] = {kind: [] for kind in QUERY_NAMES}
    full_series = [(st, se) for st in studies for se in st.series if se.count == SERIES_SIZE]
    words = [(_words(s.patient_name), s) for s in studies]
    for _ in range(count):
        study = rng.choice(studies)
        out["patient_id"].append(
            Query(
                "patient_id",
                {"PatientID": study.patient_id},
                False,
                _query_string({"PatientID": study.patient_id}),
                by_patient[study.patient_id],
            )
        )
        family, given = rng.choice(studies).patient_name.split("^")
        prefix = family[:4]
        wanted = [prefix.lower(), given.lower()]
        matches = sum(all(any(w.startswith(q) for w in ws) for q in wanted) for ws, _ in words)
        out["fuzzy_name"].append(
            Query(
                "fuzzy_name",
                {"PatientName": f"{prefix} {given}"},
                True,
                _query_string({"PatientName": f"{prefix}*^{given}*"}),
                matches,
            )
        )
        year, month = rng.randint(FIRST_DAY.year, LAST_DAY.year), rng.randint(1, 12)
        low, high = _month_range(year, month)
        in_month = [s for s in studies if low <= s.date <= high]
        out["month"].append(
            Query(
                "month",
                {"StudyDate": f"{low}-{high}"},
                False,
                _query_string({"StudyDate": f"{low}-{high}"}),
                len(in_month),
            )
        )
        modality = rng.choices([k[0] for k in _KINDS], [k[1] for k in _KINDS])[0]
        out["modality_month"].append(
            Query(
                "modality_month",
                {"ModalitiesInStudy": modality, "StudyDate": f"{low}-{high}"},
                False,
                _query_string({"ModalitiesInStudy": modality, "StudyDate": f"{low}-{high}"}),
                sum(modality in s.modalities for s in in_month),
            )
        )
        if full_series:
            st, se = rng.choice(full_series)
            out["series"].append(
                Query("series", {}, False, "", se.count, study=st.uid, series=se.uid)
            )
    return out


def ask_dicomrpc(client: Client, q: Query) -> int:
    """One query through the SDK; the number of results."""
    if q.kind == "series":
        result = client.search_instances(study=q.study, series=q.series, limit=LIMIT)
    else:
        result = client.search_studies(q.match, fuzzy=q.fuzzy, limit=LIMIT)
    return len(result.datasets)


def orthanc_path(q: Query) -> str:
    if q.kind == "series":
        return f"/dicom-web/studies/{q.study}/series/{q.series}/instances?limit={LIMIT}"
    return f"/dicom-web/studies?{q.orthanc}&limit={LIMIT}"


def ask_orthanc(connection: http.client.HTTPConnection, q: Query) -> bytes:
    """One QIDO-RS request; the body (read, parsed after the timing)."""
    connection.request("GET", orthanc_path(q), headers={"Accept": ACCEPT_JSON})
    response = connection.getresponse()
    body = response.read()
    if response.status not in (200, 204):
        raise RuntimeError(f"Orthanc {orthanc_path(q)}: HTTP {response.status}: {body[:200]!r}")
    return body


def ask_core(core: SearchCore, q: Query, limit: int = LIMIT) -> int:
    """One query straight on the engine, in-process; the number of results."""
    if q.kind == "series":
        request = SearchRequest("instance", limit=limit, study_uid=q.study, series_uid=q.series)
    else:
        request = SearchRequest("study", match=q.match, fuzzy=q.fuzzy, limit=limit)
    return len(core.search(request).results)


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Latencies of one query kind on one server at one size."""

    samples_ms: list[float] = field(default_factory=list)
    returned: list[int] = field(default_factory=list)
    matched: list[int] = field(default_factory=list)
    wrong: int = 0
    first_wrong: str = ""

    def percentile(self, p: float) -> float:
        if not self.samples_ms:
            return float("nan")
        ordered = sorted(self.samples_ms)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p95(self) -> float:
        return self.percentile(95)


Ask = Callable[["Query"], tuple[int, float]]


def _timed(ask: Callable[[Query], int]) -> Ask:
    """``ask`` returning the number of results, with the seconds the call took."""

    def timed(q: Query) -> tuple[int, float]:
        started = time.perf_counter()
        got = ask(q)
        return got, time.perf_counter() - started

    return timed


def measure(
    sides: dict[str, tuple[Ask, dict[str, list[Query]]]], warmup: int, rounds: int
) -> dict[str, dict[str, Timing]]:
    """Warm every side up, then time its queries in rounds; check every count.

    A side is a server (or the in-process engine) and its queries; the first ``warmup`` of
    each kind only warm up. Each round runs a slice of every kind's queries on every side, the
    side that goes first rotating, so that a drift of the shared machine touches all alike.
    ``ask`` returns the number of results and the seconds the request took (each side decides
    what belongs to the request: the SDK's answer is parsed, Orthanc's body only read).
    """
    for ask, sample in sides.values():
        for items in sample.values():
            for q in items[:warmup]:
                ask(q)
    out = {name: {kind: Timing() for kind in QUERY_NAMES} for name in sides}
    names = list(sides)
    for round_ in range(rounds):
        shift = round_ % len(names)
        for kind in QUERY_NAMES:
            for name in names[shift:] + names[:shift]:
                ask, sample = sides[name]
                timing = out[name][kind]
                for q in sample[kind][warmup:][round_::rounds]:
                    got, elapsed = ask(q)
                    timing.samples_ms.append(elapsed * 1000)
                    timing.returned.append(got)
                    timing.matched.append(q.matches)
                    if got != q.returned:
                        timing.wrong += 1
                        timing.first_wrong = timing.first_wrong or (
                            f"{q.match or q.series}: {got} != {q.returned}"
                        )
    return out


def verify_in_process(index_dir: Path, sample: dict[str, list[Query]], per_kind: int) -> int:
    """Counts of a sample through SearchCore with the maximum limit; raise on a difference."""
    index = _open_index(index_dir)
    checked = 0
    try:
        core = SearchCore(index, TermSearch(index))
        for items in sample.values():
            for q in items[:per_kind]:
                got = ask_core(core, q, MAX_LIMIT)
                if got != min(q.matches, MAX_LIMIT):
                    raise AssertionError(f"{q.kind} {q.match or q.series}: {got} != {q.matches}")
                checked += 1
    finally:
        index.close()
    return checked


@contextlib.contextmanager
def engine_side(index_dir: Path) -> Iterator[Ask]:
    """The search engine on the index, in this process (no gRPC)."""
    index = _open_index(index_dir)
    try:
        core = SearchCore(index, TermSearch(index))
        yield _timed(lambda q: ask_core(core, q))
    finally:
        index.close()


@contextlib.contextmanager
def dicomrpc_side(built: Built) -> Iterator[tuple[Ask, float]]:
    """``dicomrpc serve`` on the built index and an SDK client; (ask, start-up s)."""
    log = WORK / f"search-dicomrpc-{built.size}.log"
    started = time.perf_counter()
    with dicomrpc_server(built.data_dir, log) as (target, _pid):
        startup = time.perf_counter() - started
        client = connect_grpc(target)
        try:
            yield _timed(lambda q: ask_dicomrpc(client, q)), startup
        finally:
            client.close()


@dataclass
class OrthancRun:
    """Orthanc's load and timings."""

    size: int
    load_s: float | None
    timings: dict[str, Timing]


def orthanc_files(studies: list[StudyPlan], size: int) -> list[Path]:
    """Part 10 files of the first ``size`` instances, written once."""
    directory = WORK / f"search-files-{size}"
    marker = directory / "complete.json"
    expected = {"version": INDEX_VERSION, "size": size, "seed": SEED}
    if marker.exists() and json.loads(marker.read_text()) == expected:
        return sorted(directory.glob("*/*.dcm"))
    if directory.exists():
        shutil.rmtree(directory)
    print(f"writing {size} Part 10 files for Orthanc in {directory} ...", flush=True)
    files = []
    for study, series, number in iter_instances(studies):
        folder = directory / f"{study.index:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{series.number:02d}-{number:04d}.dcm"
        instance_dataset(study, series, number).save_as(path, enforce_file_format=True)
        files.append(path)
    marker.write_text(json.dumps(expected))
    return sorted(files)


@contextlib.contextmanager
def orthanc_side(studies: list[StudyPlan], size: int) -> Iterator[tuple[Ask, float]]:
    """Orthanc holding the first ``size`` instances, loaded once (its storage is kept);
    yields (ask, seconds the load took)."""
    files = orthanc_files(studies, size)
    run_dir = WORK / f"search-orthanc-{size}"
    marker = run_dir / "loaded.json"
    if not marker.exists() and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = WORK / f"search-orthanc-{size}.log"
    with orthanc_server(run_dir, log) as (port, _pid):
        if marker.exists():
            load_s = float(json.loads(marker.read_text())["load_s"])
        else:
            print(f"loading {len(files)} instances into Orthanc (STOW-RS) ...", flush=True)
            started = time.perf_counter()
            load_orthanc(port, files)
            load_s = time.perf_counter() - started
            marker.write_text(json.dumps({"load_s": load_s, "size": size}))
            print(f"  {len(files) / load_s:.0f} instances/s", flush=True)
        connection = [connect_http(port)]

        def ask(q: Query) -> tuple[int, float]:
            try:
                started = time.perf_counter()
                body = ask_orthanc(connection[0], q)
            except (ConnectionError, http.client.RemoteDisconnected):
                # Orthanc closes a connection idle for a second (KeepAliveTimeout), which the
                # rounds do while the other servers are measured: reconnect, time it again.
                connection[0].close()
                connection[0] = connect_http(port)
                started = time.perf_counter()
                body = ask_orthanc(connection[0], q)
            elapsed = time.perf_counter() - started
            return (len(json.loads(body)) if body else 0), elapsed

        try:
            yield ask, load_s
        finally:
            connection[0].close()


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def _size(n: int) -> str:
    exponent = len(str(n)) - 1
    if n == 10**exponent:
        return f"10^{exponent}"
    return f"{n:,}".replace(",", " ")


def _ms(t: Timing | None) -> str:
    return "—" if t is None or not t.samples_ms else f"{t.p50:.1f} / {t.p95:.1f}"


def _answer(t: Timing) -> str:
    matched = statistics.median(t.matched)
    lo, hi = min(t.returned), max(t.returned)
    return f"{statistics.median(t.returned):.0f} ({lo}-{hi}); {matched:.0f}"


@dataclass
class Results:
    sizes: list[int]
    built: dict[int, Built]
    ours: dict[int, dict[str, Timing]]
    startup: dict[int, float]
    engine: dict[str, Timing]
    orthanc: OrthancRun | None
    orthanc_missing: str | None
    checked: dict[int, int]
    queries_per_kind: int
    warmup: int
    rounds: int


def goals(r: Results) -> list[str]:
    big = max(r.sizes)
    ours = r.ours[big]
    out = []
    worst = max(ours, key=lambda k: ours[k].p95)
    met = all(t.p95 < GOAL_P95_MS for t in ours.values())
    out.append(
        f"- **Every query p95 < {GOAL_P95_MS:.0f} ms at {_size(big)} instances: "
        f"{'met' if met else 'NOT met'}** (slowest: {QUERY_NAMES[worst]}, p95 "
        f"{ours[worst].p95:.1f} ms)."
    )
    smaller = [s for s in r.sizes if s < big]
    if smaller:
        small = max(smaller)
        rows = []
        grows = True
        for kind, t in ours.items():
            before = r.ours[small][kind]
            latency = t.p50 / before.p50
            answer = max(statistics.median(t.returned), 1) / max(
                statistics.median(before.returned), 1
            )
            ok = t.p50 <= GROWTH_TOLERANCE * max(answer, 1.0) * before.p50 + GROWTH_SLACK_MS
            grows = grows and ok
            rows.append(
                f"{QUERY_NAMES[kind]} x{latency:.1f} (answer x{answer:.1f}){'' if ok else ' ✗'}"
            )
        out.append(
            f"- **Latency grows with the answer, not the archive "
            f"({_size(small)} → {_size(big)}, p50): {'met' if grows else 'NOT met'}** — "
            + "; ".join(rows)
            + f". (Met when p50 grows by at most {GROWTH_TOLERANCE}x the growth of the "
            f"median answer size, give or take {GROWTH_SLACK_MS:.0f} ms.)"
        )
    series = ours["series"]
    verdict = "met" if series.p50 < GOAL_SERIES_P50_MS else "NOT met"
    orthanc = r.orthanc.timings.get("series") if r.orthanc else None
    theirs = (
        f"; Orthanc here: {orthanc.p50:.1f} ms at {_size(r.orthanc.size)}"
        if orthanc and r.orthanc
        else ""
    )
    out.append(
        f"- **Instances of a {SERIES_SIZE}-instance series p50 < {GOAL_SERIES_P50_MS:.0f} ms at "
        f"{_size(big)}: {verdict}** ({series.p50:.1f} ms; Orthanc reference "
        f"{ORTHANC_SERIES_REFERENCE}{theirs})."
    )
    return out


def report(r: Results, args: argparse.Namespace) -> str:
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    versions = (
        f"Python {platform.python_version()}, grpcio {grpc.__version__}, "
        f"pydicom {pydicom.__version__}"
        + (f", {orthanc_version()} with DICOMweb plugin" if r.orthanc else "")
    )
    big = max(r.sizes)
    header = ["query"] + [f"dicomrpc {_size(n)} p50 / p95 ms" for n in r.sizes]
    header.append(f"engine in-process {_size(big)} p50 / p95 ms")
    if r.orthanc:
        header += [f"Orthanc {_size(r.orthanc.size)} p50 / p95 ms", "dicomrpc / Orthanc p50"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "--:|" * (len(header) - 1)]
    for kind, name in QUERY_NAMES.items():
        row = [name] + [_ms(r.ours[n].get(kind)) for n in r.sizes] + [_ms(r.engine.get(kind))]
        if r.orthanc:
            theirs = r.orthanc.timings.get(kind)
            ours_same = r.ours.get(r.orthanc.size, {}).get(kind)
            row.append(_ms(theirs))
            row.append(
                f"{ours_same.p50 / theirs.p50:.2f}x"
                if theirs and ours_same and theirs.samples_ms
                else "—"
            )
        lines.append("| " + " | ".join(row) + " |")
    counts = ["| query | " + " | ".join(_size(n) for n in r.sizes) + " |"]
    counts.append("|---|" + "--|" * len(r.sizes))
    for kind, name in QUERY_NAMES.items():
        counts.append(f"| {name} | " + " | ".join(_answer(r.ours[n][kind]) for n in r.sizes) + " |")
    builds = [
        "| instances | studies | series | build s | instances/s | on disk MiB | used MiB | "
        "server start s |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for n in r.sizes:
        b = r.built[n]
        builds.append(
            f"| {_size(n)} | {b.studies} | {b.series} | {b.build_s:.1f} | {b.per_second:.0f} "
            f"| {b.bytes_on_disk / 2**20:.0f} | {b.bytes_used / 2**20:.0f} "
            f"| {r.startup[n]:.1f} |"
        )
    problems = [
        f"- dicomrpc {_size(n)}, {QUERY_NAMES[k]}: {t.wrong} answers with a wrong count "
        f"(first: {t.first_wrong})"
        for n in r.sizes
        for k, t in r.ours[n].items()
        if t.wrong
    ]
    if r.orthanc:
        problems += [
            f"- Orthanc, {QUERY_NAMES[k]}: {t.wrong} answers with another count than the "
            f"corpus (first: {t.first_wrong})"
            for k, t in r.orthanc.timings.items()
            if t.wrong
        ]
    orthanc_line = (
        f"- Orthanc: the first {r.orthanc.size} instances of the same corpus as 16x16 Part 10 "
        f"files, STOW-RS (10 per request, one connection) "
        + (
            f"in {r.orthanc.load_s:.0f} s ({r.orthanc.size / r.orthanc.load_s:.0f} instances/s)"
            if r.orthanc.load_s
            else ""
        )
        + "; default settings (SQLite index). QIDO-RS `GET /dicom-web/studies?...&limit=100` "
        "(fuzzy: `PatientName=ABCD*^GIVEN*`), `.../series/{uid}/instances`, "
        "`Accept: application/dicom+json`, body read but not parsed inside the timing."
        if r.orthanc
        else f"- Orthanc: not measured — {r.orthanc_missing}."
    )
    body = [
        SECTION,
        "",
        "Written by `.venv/bin/python bench/search.py`; rerun it to refresh this section.",
        "",
        f"- Date: {now}{' (quick run)' if args.quick else ''}",
        f"- Machine: {machine()}; {platform.platform()}",
        f"- Software: {versions}",
        "- Corpus: generated archive (patients with 1 to 4 studies over 2015-2024; CR 30%, CT 20%, "
        "MR 15%, US 15%, DX 8%, MG 7% of studies; CT and MR studies hold 100-instance series; "
        "~3,000 syllable-built family names, 37 given names). The index is built directly "
        "(`LmdbIndex.add_instance` with "
        f"{BUILD_WINDOW} calls in flight, commits of up to {BUILD_BATCH}), records checked "
        "against `prepare()` of a written file, and a sample of "
        f"{next(iter(r.checked.values()), 0)} queries per size checked in-process against the "
        "generator's counts before timing.",
        "- dicomrpc: `dicomrpc serve` subprocess on the built data directory; SDK "
        "`Client.search_studies` (`search_instances(study=, series=)` for the series) on one "
        f"channel, sequential; {r.warmup} warm-up queries, then {r.queries_per_kind} timed "
        "queries of each kind, each with another value drawn from the corpus; default limit "
        f"{LIMIT}. Every answer's count was checked against the generator's. The engine column: "
        "the same queries on `SearchCore.search` in-process (no gRPC, no server).",
        orthanc_line,
        f"- Every server (one per size, and Orthanc) runs at once; after the warm-up the timed "
        f"queries run in {r.rounds} rounds, each round timing a slice of every kind on every "
        "server and on the engine, the first one rotating, so that the load of the shared "
        "machine touches all alike. p50 / p95 over all timed queries of a kind; client and "
        "servers share the machine's 2 CPUs (with other work running on it).",
        "",
        *lines,
        "",
        "Answer sizes: median returned (min-max); median matching records in the corpus "
        f"(the limit is {LIMIT}):",
        "",
        *counts,
        "",
        "Index build (direct, see above) and size: on disk = blocks allocated to the LMDB "
        "files; used = the pages LMDB has written.",
        "",
        *builds,
        "",
        f"Goals: every listed query p95 < {GOAL_P95_MS:.0f} ms at 10^6 instances; latency that "
        f"grows with the size of the answer, not of the archive; instances of a "
        f"{SERIES_SIZE}-instance series p50 < {GOAL_SERIES_P50_MS:.0f} ms.",
        "",
        *goals(r),
    ]
    if problems:
        body += ["", "Problems seen:", "", *problems]
    return "\n".join(body) + "\n"


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", type=lambda s: [int(x) for x in s.split(",")], help="instances, comma-separated"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--orthanc-count", type=int, help="instances loaded into Orthanc (50000)")
    parser.add_argument("--queries", type=int, help="timed queries per kind (300; quick 40)")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up queries per kind (20)")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds (5)")
    parser.add_argument("--no-orthanc", action="store_true", help="skip Orthanc")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.orthanc_count is None:
        args.orthanc_count = 2000 if args.quick else 50_000
    if args.sizes is None:
        args.sizes = [5000] if args.quick else [100_000, 1_000_000]
    if not args.no_orthanc and args.orthanc_count not in args.sizes:
        args.sizes = [args.orthanc_count, *args.sizes]
    args.sizes = sorted(set(args.sizes))
    if args.queries is None:
        args.queries = 40 if args.quick else 300
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    biggest = plan(max(args.sizes))
    frames = check_against_prepare(biggest)
    print("direct records match prepare() of the same instance", flush=True)
    orthanc_missing = "skipped (--no-orthanc)" if args.no_orthanc else ensure_orthanc()
    built: dict[int, Built] = {}
    checked: dict[int, int] = {}
    samples: dict[int, dict[str, list[Query]]] = {}
    for size in args.sizes:
        studies = plan(size)
        built[size] = build(size, studies, frames)
        samples[size] = queries(studies, args.queries + args.warmup, SEED + size)
        checked[size] = verify_in_process(built[size].data_dir / "index", samples[size], 10)
        print(f"{size}: {checked[size]} sample queries match the corpus in-process", flush=True)
    big = max(args.sizes)
    startup: dict[int, float] = {}
    load_s: float | None = None
    with contextlib.ExitStack() as stack:
        sides: dict[str, tuple[Ask, dict[str, list[Query]]]] = {}
        for size in args.sizes:
            ask, startup[size] = stack.enter_context(dicomrpc_side(built[size]))
            sides[f"dicomrpc {size}"] = (ask, samples[size])
        if orthanc_missing is None:
            size = args.orthanc_count
            try:
                ask, load_s = stack.enter_context(orthanc_side(plan(size), size))
                sides["orthanc"] = (ask, samples[size])
            except (ServerError, RuntimeError, OSError) as error:
                orthanc_missing = f"{type(error).__name__}: {error}"
        sides["engine"] = (
            stack.enter_context(engine_side(built[big].data_dir / "index")),
            samples[big],
        )
        print(f"timing {', '.join(sides)} in {args.rounds} rounds ...", flush=True)
        timings = measure(sides, args.warmup, args.rounds)
    for name, kinds in timings.items():
        for kind, t in kinds.items():
            print(f"  {name} {QUERY_NAMES[kind]}: {_ms(t)} ms, {_answer(t)}", flush=True)
    orthanc = (
        OrthancRun(args.orthanc_count, load_s, timings["orthanc"]) if "orthanc" in timings else None
    )
    results = Results(
        args.sizes,
        built,
        {size: timings[f"dicomrpc {size}"] for size in args.sizes},
        startup,
        timings["engine"],
        orthanc,
        orthanc_missing,
        checked,
        args.queries,
        args.warmup,
        args.rounds,
    )
    section = report(results, args)
    print()
    print(section)
    if not args.no_write:
        write_section(section, SECTION)
        print(f"wrote {(WORK.parent / 'RESULTS.md').relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
