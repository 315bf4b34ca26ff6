"""The generated CT corpus the benchmarks store and read, cached under ``bench/.work``.

Why this module exists: the ingest, retrieve, DICOMweb, DIMSE and scale benchmarks measure the
same instances (512x512 16-bit CT slices, explicit VR little endian), generated once with
pydicom; the studies and series they make up, and their attributes, are here, with the
studies the retrieve, auth, viewer and scale benchmarks read (:func:`small_study`,
:func:`big_study`).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from harness import MB, WORK
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

CORPUS_VERSION = 1
INSTANCES_PER_STUDY = 100
INSTANCES_PER_SERIES = 50
ROWS = COLUMNS = 512
_FAMILY = ["SMITH", "MUELLER", "GARCIA", "ROSSI", "DUBOIS", "TANAKA", "NOWAK", "SILVA", "KIM"]
_GIVEN = ["ANNA", "JOHN", "MARIA", "PETER", "LENA", "YUKI", "OMAR", "EVA", "LUCA", "SARA"]
_BODY = [
    ("CHEST", "CT THORAX W/O CONTRAST", "CHEST 1.0 B30f"),
    ("ABDOMEN", "CT ABDOMEN PELVIS W CONTRAST", "ABD 1.0 B31f"),
    ("HEAD", "CT HEAD W/O CONTRAST", "HEAD 1.0 H30s"),
]


@dataclass(frozen=True)
class Corpus:
    """The generated files and their total size."""

    directory: Path
    files: list[Path]
    total_bytes: int

    @property
    def megabytes(self) -> float:
        return self.total_bytes / MB


def corpus(count: int) -> Corpus:
    """The cached corpus of ``count`` instances, generated first when missing or stale."""
    directory = WORK / f"corpus-{count}"
    marker = directory / "complete.json"
    expected = {"version": CORPUS_VERSION, "count": count}
    if marker.exists():
        info = json.loads(marker.read_text())
        if {k: info.get(k) for k in expected} == expected:
            files = sorted(directory.glob("*/*.dcm"))
            if len(files) == count:
                return Corpus(directory, files, sum(f.stat().st_size for f in files))
    if directory.exists():
        shutil.rmtree(directory)
    started = time.perf_counter()
    print(f"generating a corpus of {count} CT instances in {directory} ...", flush=True)
    files = generate(directory, count)
    total = sum(f.stat().st_size for f in files)
    marker.write_text(json.dumps({**expected, "bytes": total}))
    print(
        f"  {count} files, {total / MB:.0f} MB in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return Corpus(directory, files, total)


def generate(directory: Path, count: int, seed: int = 1729) -> list[Path]:
    """Write ``count`` CT instances: studies of 100 slices, in series of 50."""
    rng = np.random.default_rng(seed)
    names = random.Random(seed)
    yy, xx = np.mgrid[0:ROWS, 0:COLUMNS]
    body = ((xx - 256) / 210.0) ** 2 + ((yy - 266) / 160.0) ** 2 <= 1.0
    # Hounsfield units: air outside the body, soft tissue (+40) inside.
    base_hu = np.where(body, 40, -1000).astype(np.int16)
    files: list[Path] = []
    study_index = 0
    while len(files) < count:
        in_study = min(INSTANCES_PER_STUDY, count - len(files))
        study = study_attributes(study_index, names)
        folder = directory / f"study-{study_index:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        signed = study_index % 2 == 1
        for number in range(in_study):
            series_number = number // INSTANCES_PER_SERIES + 1
            if number % INSTANCES_PER_SERIES == 0:
                series = series_attributes(
                    series_number, f"{9 + study_index % 8:02d}{10 + series_number:02d}00"
                )
            slice_number = number % INSTANCES_PER_SERIES + 1
            pixels = slice_pixels(rng, base_hu, xx, yy, slice_number, signed)
            ds = ct_instance(study, series, slice_number, pixels, signed)
            path = folder / f"{series_number:02d}-{slice_number:03d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
        study_index += 1
    return files


def study_attributes(index: int, names: random.Random) -> dict[str, object]:
    body_part, description, kernel = _BODY[index % len(_BODY)]
    birth = dt.date(1940, 1, 1) + dt.timedelta(days=names.randrange(0, 60 * 365))
    day = dt.date(2024, 1, 8) + dt.timedelta(days=index)
    return {
        "PatientName": f"{names.choice(_FAMILY)}^{names.choice(_GIVEN)}",
        "PatientID": f"PAT{100000 + index:06d}",
        "PatientBirthDate": birth.strftime("%Y%m%d"),
        "PatientSex": names.choice("MF"),
        "PatientAge": f"{min(day.year - birth.year, 999):03d}Y",
        "StudyInstanceUID": generate_uid(),
        "StudyDate": day.strftime("%Y%m%d"),
        "StudyTime": f"{8 + index % 10:02d}{index % 60:02d}00",
        "AccessionNumber": f"ACC{20240000 + index}",
        "StudyID": str(1000 + index),
        "StudyDescription": description,
        "BodyPartExamined": body_part,
        "ConvolutionKernel": kernel.split()[-1],
        "ProtocolName": kernel,
    }


def series_attributes(series_number: int, series_time: str) -> dict[str, object]:
    """The attributes of a new generated series."""
    return {
        "SeriesInstanceUID": generate_uid(),
        "FrameOfReferenceUID": generate_uid(),
        "SeriesNumber": series_number,
        "SeriesTime": series_time,
    }


def slice_pixels(
    rng: np.random.Generator,
    base_hu: np.ndarray,
    xx: np.ndarray,
    yy: np.ndarray,
    slice_number: int,
    signed: bool,
) -> np.ndarray:
    """A slice in stored values: body, a moving 'vertebra' of bone, and noise."""
    hu = base_hu.copy()
    cy = 330 + int(20 * np.sin(slice_number / 8.0))
    hu[(xx - 256) ** 2 + (yy - cy) ** 2 <= 30**2] = 700
    hu += rng.integers(-30, 30, size=hu.shape, dtype=np.int16)
    if signed:
        # Stored = HU (intercept 0), 12 bits signed: -2048 .. 2047.
        return np.clip(hu, -2048, 2047).astype(np.int16)
    # Stored = HU + 1024 (intercept -1024), 12 bits unsigned: 0 .. 4095.
    return np.clip(hu + 1024, 0, 4095).astype(np.uint16)


def ct_instance(
    study: dict[str, object],
    series: dict[str, object],
    slice_number: int,
    pixels: np.ndarray,
    signed: bool,
) -> Dataset:
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "DICOMRPC_BENCH"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        setattr(ds, keyword, study["StudyDate"])
    ds.StudyTime = study["StudyTime"]
    ds.SeriesTime = series["SeriesTime"]
    ds.AcquisitionTime = ds.ContentTime = f"{series['SeriesTime']}.{slice_number:03d}"
    ds.AccessionNumber = study["AccessionNumber"]
    ds.Modality = "CT"
    ds.Manufacturer = "ACME Medical"
    ds.InstitutionName = "General Hospital"
    ds.ReferringPhysicianName = "WHO^DOCTOR"
    ds.StationName = "CT01"
    ds.StudyDescription = study["StudyDescription"]
    ds.SeriesDescription = f"{study['BodyPartExamined']} 1.0mm {study['ConvolutionKernel']}"
    ds.ManufacturerModelName = "Tomograph 64"
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge"):
        setattr(ds, keyword, study[keyword])
    ds.BodyPartExamined = study["BodyPartExamined"]
    ds.SliceThickness = "1.0"
    ds.KVP = "120"
    ds.ProtocolName = study["ProtocolName"]
    ds.ConvolutionKernel = study["ConvolutionKernel"]
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study["StudyInstanceUID"]
    ds.SeriesInstanceUID = series["SeriesInstanceUID"]
    ds.StudyID = study["StudyID"]
    ds.SeriesNumber = series["SeriesNumber"]
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = slice_number
    z = -100.0 - slice_number * 1.0
    ds.ImagePositionPatient = ["-175.0", "-175.0", f"{z:.1f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = series["FrameOfReferenceUID"]
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{z:.1f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ROWS
    ds.Columns = COLUMNS
    ds.PixelSpacing = ["0.683594", "0.683594"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 1 if signed else 0
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = "0" if signed else "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.PixelData = pixels.tobytes()
    return ds


def warm_cache(files: list[Path]) -> None:
    """Read every file once so that no run pays for cold reads the others do not."""
    for path in files:
        path.read_bytes()


# --------------------------------------------------------------------------------------------
# Studies made of the corpus' slices
# --------------------------------------------------------------------------------------------


BIG_STUDY_VERSION = 1


@dataclass(frozen=True)
class Study:
    """A study's files and identity, as stored in both servers."""

    label: str
    uid: str
    files: list[Path]

    @property
    def total_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def study_of(label: str, files: list[Path]) -> Study:
    """A ``Study`` of files that share one StudyInstanceUID (checked)."""
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files}
    if len(uids) != 1:
        raise ValueError(f"{label}: the files belong to {len(uids)} studies")
    return Study(label, uids.pop(), files)


def small_study() -> Study:
    """The first 100-instance study of the ingest corpus (corpus-2000 if cached, else 200)."""
    cached = (WORK / "corpus-2000" / "complete.json").exists()
    data: Corpus = corpus(2000 if cached else 200)
    first = sorted(p for p in data.directory.iterdir() if p.is_dir())[0]
    return study_of("100 instances", sorted(first.glob("*.dcm")))


def big_study(count: int = 500, seed: int = 4242) -> Study:
    """One study of ``count`` CT slices (series of 50), like the corpus', generated once."""
    directory = WORK / f"retrieve-study-{count}"
    marker = directory / "complete.json"
    expected = {"version": BIG_STUDY_VERSION, "count": count}
    files = sorted(directory.glob("*.dcm"))
    if marker.exists() and json.loads(marker.read_text()) == expected and len(files) == count:
        return study_of(f"{count} instances", files)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    print(f"generating a {count}-instance study in {directory} ...", flush=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:ROWS, 0:COLUMNS]
    body = ((xx - 256) / 210.0) ** 2 + ((yy - 266) / 160.0) ** 2 <= 1.0
    base_hu = np.where(body, 40, -1000).astype(np.int16)
    study = study_attributes(500, random.Random(seed))
    series: dict[str, object] = {}
    files = []
    for number in range(count):
        series_number = number // INSTANCES_PER_SERIES + 1
        if number % INSTANCES_PER_SERIES == 0:
            series = series_attributes(series_number, f"{10 + series_number:02d}0000")
        slice_number = number % INSTANCES_PER_SERIES + 1
        pixels = slice_pixels(rng, base_hu, xx, yy, slice_number, signed=False)
        path = directory / f"{series_number:02d}-{slice_number:03d}.dcm"
        ct_instance(study, series, slice_number, pixels, signed=False).save_as(
            path, enforce_file_format=True
        )
        files.append(path)
    marker.write_text(json.dumps(expected))
    return Study(f"{count} instances", str(study["StudyInstanceUID"]), files)
