"""Turning a received file into everything the index records about it.

Runs off the event loop (it parses): one call reads the file once and returns the index entry
to commit, or raises the failure to report.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from dicomrpc.datasets import MAX_SEQUENCE_DEPTH, NestingTooDeep, from_pydicom
from dicomrpc.v1 import dataset_pb2
from dicomrpc_server.config import Settings
from dicomrpc_server.dicom.attributes import ATTRIBUTES_BY_LEVEL, Level
from dicomrpc_server.dicom.elements import ElementValues, UnreadableValue
from dicomrpc_server.dicom.frames import BITS_ALLOCATED, frame_table, number_of_frames
from dicomrpc_server.dicom.nesting import too_deep
from dicomrpc_server.dicom.part10 import ParsedInstance, parse_file
from dicomrpc_server.dicom.structure import DEFLATED_SYNTAXES, MalformedFileError
from dicomrpc_server.dicom.validation import AttributeProblem, ValidatedInstance, validate
from dicomrpc_server.paths import bulk_data_path, instance_path
from dicomrpc_server.storage import records_pb2
from dicomrpc_server.storage.protocols import NewInstance

BULK_DATA_THRESHOLD = 1024
_HEX_TAGS_BY_LEVEL = {
    level: tuple(attribute.hex_tag for attribute in attributes)
    for level, attributes in ATTRIBUTES_BY_LEVEL.items()
}


@dataclass
class PreparedInstance:
    """A validated instance and its index entry (blob id still to be filled in)."""

    validated: ValidatedInstance
    new: NewInstance
    transfer_syntax_uid: str


def prepare(
    path: Path,
    max_depth: int = MAX_SEQUENCE_DEPTH,
    *,
    max_inflated: int = Settings.max_instance_bytes,
    max_frame_pixels: int = Settings.max_frame_pixels,
) -> PreparedInstance:
    """Parse, validate and describe the file at ``path`` (raises ``ServiceError``).

    A deflated data set may inflate to at most ``max_inflated`` bytes, a frame have at most
    ``max_frame_pixels`` pixels. Sequences nested more than ``max_depth`` levels deep fail the
    instance (``LIMIT_EXCEEDED``, 272): its metadata could not be read back. What pydicom
    notices and works around (its warnings) is reported with the instance's warnings rather
    than lost in the server's log.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parsed = parse_file(path, max_depth, max_inflated=max_inflated)
        try:
            prepared = _prepare(path, parsed, max_depth, max_frame_pixels)
        except UnreadableValue as exc:
            # A value that validation or the records read and pydicom cannot decode (and that
            # no check named more precisely): the file is not readable DICOM (272).
            raise MalformedFileError(f"the data set could not be read: {exc}") from None
        finally:
            parsed.close()
    for message in dict.fromkeys(str(w.message) for w in caught):
        prepared.validated.problems.append(AttributeProblem("", "", message, 1))
    return prepared


def _prepare(
    path: Path, parsed: ParsedInstance, max_depth: int, max_frame_pixels: int
) -> PreparedInstance:
    elements = ElementValues(parsed.dataset)
    validated = validate(parsed, elements, max_frame_pixels=max_frame_pixels)
    base = instance_path(validated.study_uid, validated.series_uid, validated.sop_uid)
    try:
        metadata = from_pydicom(
            parsed.dataset,
            bulk_data_threshold=BULK_DATA_THRESHOLD,
            bulk_data_uri=lambda tag_path: bulk_data_path(base, tag_path),
            max_depth=max_depth,
        )
    except NestingTooDeep as exc:
        raise too_deep(exc) from None
    except (ValueError, NotImplementedError) as exc:
        # An element pydicom cannot decode (an unknown VR inside a sequence of defined length,
        # which the structural walk skips): the file is not readable DICOM (272).
        raise MalformedFileError(f"the data set could not be read: {exc}") from None
    pixel = parsed.structure.pixel_data
    frames = None
    if pixel is not None:
        metadata.attributes[f"{pixel.tag:08X}"].CopyFrom(
            dataset_pb2.Attribute(
                vr=pixel.vr or _pixel_vr(elements, pixel.tag, pixel.length is None),
                bulk_data_uri=bulk_data_path(base, f"{pixel.tag:08X}"),
            )
        )
        if parsed.structure.transfer_syntax_uid not in DEFLATED_SYNTAXES:
            frames, why = frame_table(elements, pixel, path)
            if why:
                validated.problems.append(AttributeProblem("7FE00010", "PixelData", why, 1))
    unindexed = sorted(validated.unindexed_tags)
    record = records_pb2.InstanceRecord(
        size_bytes=parsed.size,
        transfer_syntax_uid=parsed.structure.transfer_syntax_uid,
        sop_class_uid=validated.sop_class_uid,
        number_of_frames=number_of_frames(elements) if pixel is not None else 0,
        modality=_first_string(metadata, "00080060"),
        unindexed_tags=unindexed,
    )
    study = records_pb2.StudyRecord(unindexed_tags=unindexed)
    series = records_pb2.SeriesRecord(unindexed_tags=unindexed)
    # Filled in place: a subset passed to the constructor would be copied once more.
    _copy_level(metadata, Level.INSTANCE, record.attributes)
    _copy_level(metadata, Level.STUDY, study.attributes)
    _copy_level(metadata, Level.SERIES, series.attributes)
    new = NewInstance(
        study_uid=validated.study_uid,
        series_uid=validated.series_uid,
        sop_uid=validated.sop_uid,
        record=record,
        study_attributes=study,
        series_attributes=series,
        metadata=metadata.SerializeToString(),
        frames=frames,
    )
    return PreparedInstance(validated, new, parsed.structure.transfer_syntax_uid)


def level_subset(metadata: dataset_pb2.Dataset, level: Level) -> dataset_pb2.Dataset:
    """The attributes of ``metadata`` that a level's record keeps."""
    out = dataset_pb2.Dataset()
    _copy_level(metadata, level, out)
    return out


def _copy_level(metadata: dataset_pb2.Dataset, level: Level, target: dataset_pb2.Dataset) -> None:
    """Copy the attributes of ``metadata`` that a level's record keeps into ``target``.

    ``target`` is set (present) even when none of them is there, as a subset passed to a
    record's constructor would be.
    """
    target.SetInParent()
    source = metadata.attributes
    attributes = target.attributes
    for hex_tag in _HEX_TAGS_BY_LEVEL[level]:
        attribute = source.get(hex_tag)
        if attribute is not None:
            attributes[hex_tag].CopyFrom(attribute)


def _first_string(metadata: dataset_pb2.Dataset, tag: str) -> str:
    attribute = metadata.attributes.get(tag)
    if attribute is None or not attribute.strings.values:
        return ""
    return attribute.strings.values[0]


def _pixel_vr(elements: ElementValues, tag: int, encapsulated: bool) -> str:
    """The VR of a pixel data element written without one (implicit VR), as pydicom decides."""
    if tag == 0x7FE00008:
        return "OF"
    if tag == 0x7FE00009:
        return "OD"
    if encapsulated:
        return "OB"
    try:  # a missing BitsAllocated gives None, which int() refuses
        return "OW" if int(elements.value(BITS_ALLOCATED, None)) > 8 else "OB"
    except (TypeError, ValueError):
        return "OW"
