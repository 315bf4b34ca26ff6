"""Generated DICOM instances for tests: real Part 10 files written by pydicom."""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
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


def gradient_pixels(rows: int, columns: int) -> np.ndarray[Any, np.dtype[np.uint16]]:
    """A left-to-right ramp of stored values 1000..4000 with a disc of 0 at the centre.

    A picture whose shape survives any viewer's scaling and smoothing: tests that look at what a
    viewer drew check the ramp's brightness growing left to right and the dark disc inside it.
    """
    ramp = np.linspace(1000, 4000, columns)[np.newaxis, :].repeat(rows, axis=0)
    y, x = np.mgrid[0:rows, 0:columns]
    disc = (y - rows / 2) ** 2 + (x - columns / 2) ** 2 < (min(rows, columns) / 6) ** 2
    ramp[disc] = 0
    return ramp.astype(np.uint16)


def gradient_ct_series(
    count: int,
    *,
    study: str | None = None,
    series: str | None = None,
    rows: int = 256,
    columns: int = 256,
    patient_id: str = "VIEW-1",
    patient_name: str = "Viewer^Gradient",
) -> list[bytes]:
    """``count`` axial CT slices of one series (Part 10, explicit VR little endian) as a viewer
    needs them: geometry (position, orientation, spacing, frame of reference), rescale and a
    window (stored 0..4000 shown black to white), each with :func:`gradient_pixels`."""
    study = study or generate_uid()
    series = series or generate_uid()
    frame_of_reference = generate_uid()
    out = []
    for number in range(1, count + 1):
        ds = dcmread(
            io.BytesIO(
                ct_instance(
                    study,
                    series,
                    number=number,
                    rows=rows,
                    columns=columns,
                    patient_id=patient_id,
                    patient_name=patient_name,
                )
            )
        )
        ds.SeriesDescription = "Gradient"
        ds.StudyDescription = "Viewer check"
        ds.FrameOfReferenceUID = frame_of_reference
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [0.0, 0.0, 2.0 * number]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = 2.0
        ds.BitsStored, ds.HighBit = 12, 11
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 976, 4000
        ds.PixelData = gradient_pixels(rows, columns).tobytes()
        out.append(_part10(ds))
    return out


def multiframe_instance(
    frames: int,
    *,
    study: str | None = None,
    rows: int = 128,
    columns: int = 128,
    patient_id: str = "VIEW-MF",
    patient_name: str = "Viewer^Multiframe",
) -> bytes:
    """A multi-frame grayscale (16-bit) secondary capture: ``frames`` frames of
    :func:`gradient_pixels`, the disc shrinking a little from frame to frame."""
    ds = Dataset()
    ds.SOPClassUID = MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID = patient_name, patient_id
    ds.StudyDate, ds.StudyTime = "20240102", "101112"
    ds.StudyDescription, ds.SeriesDescription = "Viewer check", "Multi-frame"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "OT", 1, 1
    ds.ConversionType = "WSD"
    ds.Rows, ds.Columns = rows, columns
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = Tag("FrameTime")
    ds.FrameTime = 100.0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2000, 4000
    stack = np.stack([gradient_pixels(rows, columns) for _ in range(frames)])
    for index in range(frames):
        margin = index * 2
        stack[index, :margin, :] = stack[index, rows - margin :, :] = 4000
    ds.PixelData = stack.tobytes()
    return _part10(ds)


def recoded_instance(source: bytes, *, study: str | None = None, **attributes: object) -> bytes:
    """``source`` (Part 10) under new study, series and instance UIDs and ``attributes``, its
    pixel data and transfer syntax untouched (a compressed file stays compressed)."""
    ds = dcmread(io.BytesIO(source))
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return _part10(ds)


def _part10(ds: Dataset) -> bytes:
    """``ds`` as Part 10 bytes, its file meta information brought in line with it."""
    if not hasattr(ds, "file_meta"):
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
