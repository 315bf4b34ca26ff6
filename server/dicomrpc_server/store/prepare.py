"""Turning a received file into everything the index records about it.

Runs off the event loop (it parses): one call reads the file once and returns the index entry
to commit, or raises the failure to report.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from dicomrpc.datasets import from_pydicom
from dicomrpc.v1 import dataset_pb2
from dicomrpc_server.dicom.attributes import ATTRIBUTES_BY_LEVEL, Level
from dicomrpc_server.dicom.frames import frame_table, number_of_frames
from dicomrpc_server.dicom.part10 import parse_file
from dicomrpc_server.dicom.structure import DEFLATED_SYNTAXES
from dicomrpc_server.dicom.validation import AttributeProblem, ValidatedInstance, validate
from dicomrpc_server.storage import records_pb2
from dicomrpc_server.storage.protocols import NewInstance

BULK_DATA_THRESHOLD = 1024


@dataclass
class PreparedInstance:
    """A validated instance and its index entry (blob id still to be filled in)."""

    validated: ValidatedInstance
    new: NewInstance
    transfer_syntax_uid: str


def instance_path(study: str, series: str, sop: str) -> str:
    """The DICOMweb path of an instance, relative to the service root."""
    return f"studies/{study}/series/{series}/instances/{sop}"


def prepare(path: Path) -> PreparedInstance:
    """Parse, validate and describe the file at ``path`` (raises ``ServiceError``).

    What pydicom notices and works around (its warnings) is reported with the instance's
    warnings rather than lost in the server's log.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = _prepare(path)
    for message in dict.fromkeys(str(w.message) for w in caught):
        prepared.validated.problems.append(AttributeProblem("", "", message, 1))
    return prepared


def _prepare(path: Path) -> PreparedInstance:
    parsed = parse_file(path)
    validated = validate(parsed)
    base = instance_path(validated.study_uid, validated.series_uid, validated.sop_uid)
    metadata = from_pydicom(
        parsed.dataset,
        bulk_data_threshold=BULK_DATA_THRESHOLD,
        bulk_data_uri=lambda tag_path: f"{base}/bulkdata/{tag_path}",
    )
    pixel = parsed.structure.pixel_data
    frames = None
    if pixel is not None:
        metadata.attributes[f"{pixel.tag:08X}"].CopyFrom(
            dataset_pb2.Attribute(
                vr=pixel.vr or _pixel_vr(parsed.dataset, pixel.tag, pixel.length is None),
                bulk_data_uri=f"{base}/bulkdata/{pixel.tag:08X}",
            )
        )
        if parsed.structure.transfer_syntax_uid not in DEFLATED_SYNTAXES:
            with open(path, "rb") as fp:
                frames, why = frame_table(parsed.dataset, pixel, fp)
            if why:
                validated.problems.append(AttributeProblem("7FE00010", "PixelData", why, 1))
    unindexed = sorted(validated.unindexed_tags)
    record = records_pb2.InstanceRecord(
        size_bytes=parsed.size,
        transfer_syntax_uid=parsed.structure.transfer_syntax_uid,
        sop_class_uid=validated.sop_class_uid,
        number_of_frames=number_of_frames(parsed.dataset) if pixel is not None else 0,
        attributes=level_subset(metadata, Level.INSTANCE),
        modality=_first_string(metadata, "00080060"),
        unindexed_tags=unindexed,
    )
    new = NewInstance(
        study_uid=validated.study_uid,
        series_uid=validated.series_uid,
        sop_uid=validated.sop_uid,
        record=record,
        study_attributes=records_pb2.StudyRecord(
            attributes=level_subset(metadata, Level.STUDY), unindexed_tags=unindexed
        ),
        series_attributes=records_pb2.SeriesRecord(
            attributes=level_subset(metadata, Level.SERIES), unindexed_tags=unindexed
        ),
        metadata=metadata.SerializeToString(),
        frames=frames,
    )
    return PreparedInstance(validated, new, parsed.structure.transfer_syntax_uid)


def level_subset(metadata: dataset_pb2.Dataset, level: Level) -> dataset_pb2.Dataset:
    """The attributes of ``metadata`` that a level's record keeps."""
    out = dataset_pb2.Dataset()
    for attribute in ATTRIBUTES_BY_LEVEL[level]:
        if attribute.hex_tag in metadata.attributes:
            out.attributes[attribute.hex_tag].CopyFrom(metadata.attributes[attribute.hex_tag])
    return out


def _first_string(metadata: dataset_pb2.Dataset, tag: str) -> str:
    attribute = metadata.attributes.get(tag)
    if attribute is None or not attribute.strings.values:
        return ""
    return attribute.strings.values[0]


def _pixel_vr(dataset: Dataset, tag: int, encapsulated: bool) -> str:
    """The VR of a pixel data element written without one (implicit VR), as pydicom decides."""
    if tag == 0x7FE00008:
        return "OF"
    if tag == 0x7FE00009:
        return "OD"
    if encapsulated:
        return "OB"
    try:
        return "OW" if int(dataset.BitsAllocated) > 8 else "OB"
    except (AttributeError, TypeError, ValueError):
        return "OW"
