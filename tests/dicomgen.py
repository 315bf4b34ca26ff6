"""Generated DICOM instances for tests: real Part 10 files written by pydicom."""

from __future__ import annotations

import io
import warnings

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)


def ct_instance(
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    *,
    rows: int = 16,
    columns: int = 16,
    number: int = 1,
    patient_id: str = "PAT-1",
    patient_name: str = "Doe^John",
    preamble: bytes = b"\x00" * 128,
    seed: int = 0,
) -> bytes:
    """A small CT image as Part 10 bytes (explicit VR little endian).

    Invalid values (UIDs that break PS3.5, say) are written as given: tests send them on purpose.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _ct_instance(
            study, series, sop, rows, columns, number, patient_id, patient_name, preamble, seed
        )


def _ct_instance(
    study: str | None,
    series: str | None,
    sop: str | None,
    rows: int,
    columns: int,
    number: int,
    patient_id: str,
    patient_name: str,
    preamble: bytes,
    seed: int,
) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop or generate_uid()
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101112"
    ds.AccessionNumber = "ACC1"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.StudyDescription = "Chest"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    pixels = np.random.default_rng(seed).integers(0, 4096, (rows, columns), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.preamble = preamble
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def big_image(study: str, series: str, number: int, side: int, pixels: bytes) -> Dataset:
    """A ``side`` x ``side`` 16-bit secondary capture image (memory tests: 8 MiB at 2048)."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.Modality, ds.InstanceNumber = "BIG", "OT", number
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def nested_instance(
    depth: int,
    study: str | None = None,
    series: str | None = None,
    *,
    top: str = "ContentSequence",
    implicit: bool = False,
    undefined_length: bool = False,
    marker: str = "Deep^Leaf",
) -> bytes:
    """A CT image whose ``top`` sequence nests ``depth`` levels (ContentSequence below the first),
    the innermost item holding PatientName ``marker``; ``depth`` 0 puts the name at the top."""
    ds = dcmread(io.BytesIO(ct_instance(study, series)))
    if depth:
        innermost = Dataset()
        innermost.PatientName = marker
        item = innermost
        for level in range(depth, 0, -1):
            parent = Dataset()
            keyword = top if level == 1 else "ContentSequence"
            setattr(parent, keyword, Sequence([item]))
            if undefined_length:
                parent[keyword].is_undefined_length = True
                item.is_undefined_length_sequence_item = True
            item = parent
        for element in item:
            ds.add(element)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
