"""What an instance must have to be stored, and what is only worth a warning.

Strict where it must be: the four UIDs that place an instance in the archive (study, series,
SOP instance, SOP class) must be present and safe keys (:mod:`.uids`), and the Image Pixel
module must agree with the Pixel Data it describes (frames that fit in it, of a size the server
decodes), or the instance fails with 43264 naming the attribute; its sequences may nest no
deeper than the server's limit (:mod:`.nesting`), or it fails with 272.
Lenient where it can be: any other problem (a malformed date, a value too long for its VR, a
file meta that disagrees with the data set) is stored as sent and reported as a warning naming
the attribute; an invalid searchable value is left out of the index so that no search is
answered from a value that does not mean what it says.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from pydicom import config
from pydicom.uid import UID
from pydicom.valuerep import validate_value

from dicomrpc_server.config import Settings
from dicomrpc_server.dicom.attributes import ALL_ATTRIBUTES
from dicomrpc_server.dicom.elements import ElementValues
from dicomrpc_server.dicom.part10 import ParsedInstance
from dicomrpc_server.dicom.pixeldata import (
    GeometryError,
    declared_frames,
    frame_geometry,
    offset_table_entries,
    too_many_pixels,
)
from dicomrpc_server.dicom.uids import UidCheck, check_uid, shown
from dicomrpc_server.errors import Code, ServiceError

WARNING_SOP_CLASS_MISMATCH = 45063
WARNING_ATTRIBUTES = 1

# VRs whose values are text in the file; binary numbers need no syntax check.
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR"}
)

_REQUIRED = (
    ("StudyInstanceUID", 0x0020000D),
    ("SeriesInstanceUID", 0x0020000E),
    ("SOPInstanceUID", 0x00080018),
    ("SOPClassUID", 0x00080016),
)


@dataclass(frozen=True)
class AttributeProblem:
    """A warning about one attribute (or the data set as a whole, with an empty tag)."""

    tag: str
    keyword: str
    comment: str
    reason: int


@dataclass
class ValidatedInstance:
    """The identity of a valid instance and the warnings it is stored with."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    problems: list[AttributeProblem] = field(default_factory=list)
    unindexed_tags: set[str] = field(default_factory=set)

    @property
    def warning_reason(self) -> int:
        """45063 when any problem is a SOP class mismatch, 1 for other problems, else 0."""
        reasons = {p.reason for p in self.problems}
        if WARNING_SOP_CLASS_MISMATCH in reasons:
            return WARNING_SOP_CLASS_MISMATCH
        return WARNING_ATTRIBUTES if reasons else 0


class ValidationFailed(ServiceError):
    """A required attribute is missing or invalid (DICOM status 43264)."""

    def __init__(self, message: str, keyword: str, **metadata: str) -> None:
        super().__init__(
            Code.INVALID_ARGUMENT,
            "INSTANCE_VALIDATION_FAILED",
            message,
            dicom_status=43264,
            metadata={"attribute": keyword, **metadata},
        )


# Checked (strictly) by validate() itself.
_REQUIRED_KEYWORDS = frozenset(keyword for keyword, _ in _REQUIRED)
_CHECKED_ATTRIBUTES = [a for a in ALL_ATTRIBUTES if a.keyword not in _REQUIRED_KEYWORDS]


def validate(
    parsed: ParsedInstance,
    elements: ElementValues,
    *,
    max_frame_pixels: int = Settings.max_frame_pixels,
) -> ValidatedInstance:
    """Check a parsed instance; raise :class:`ValidationFailed` or return its warnings.

    ``elements`` are the values of ``parsed.dataset``; a frame may have at most
    ``max_frame_pixels`` pixels.
    """
    problems: list[AttributeProblem] = []
    uids: dict[str, str] = {}
    for keyword, tag in _REQUIRED:
        try:
            value = elements.text(tag)
        except Exception as exc:  # an undecodable value
            raise ValidationFailed(f"{keyword} ({tag:08X}) cannot be read: {exc}", keyword) from exc
        if value is None:
            raise ValidationFailed(f"{keyword} ({tag:08X}) is missing", keyword)
        verdict, why = check_uid(value)
        if verdict is UidCheck.INVALID:
            raise ValidationFailed(f"{keyword} ({tag:08X}) {shown(value)} {why}", keyword)
        if verdict is UidCheck.NONCONFORMANT:
            problems.append(
                AttributeProblem(f"{tag:08X}", keyword, f"{shown(value)} {why}", WARNING_ATTRIBUTES)
            )
        uids[keyword] = value

    if 0x00100020 not in elements:
        problems.append(AttributeProblem("00100020", "PatientID", "is absent", WARNING_ATTRIBUTES))
    _check_pixel_data(parsed, elements, max_frame_pixels, problems)
    unindexed = _check_searchable(elements, problems)
    _check_sop_class(parsed, uids, problems)
    if parsed.structure.encoding_mismatch:
        problems.append(
            AttributeProblem("", "", parsed.structure.encoding_mismatch, WARNING_ATTRIBUTES)
        )
    return ValidatedInstance(
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        sop_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        problems=problems,
        unindexed_tags=unindexed,
    )


def _check_pixel_data(
    parsed: ParsedInstance,
    elements: ElementValues,
    max_frame_pixels: int,
    problems: list[AttributeProblem],
) -> None:
    """Refuse pixel data its Image Pixel module does not describe, or frames too large.

    Every frame served, decoded or rendered is sized by Rows, Columns, Samples per Pixel,
    Bits Allocated and Number of Frames: values that do not agree with the Pixel Data would
    have the archive index millions of empty frames, or decode gigapixels from a few bytes.
    Native data must hold exactly the frames declared (PS3.5 8.1.1), give or take the
    padding to an even length; more is kept but ignored (a warning). Encapsulated data must
    have a fragment for every frame, unless an offset table lists them (PS3.5 A.4).
    """
    pixel = parsed.structure.pixel_data
    if pixel is None:
        return
    try:
        geometry = frame_geometry(elements, pixel.tag)
    except GeometryError as exc:
        raise ValidationFailed(str(exc), exc.keyword) from None
    why = too_many_pixels(geometry, max_frame_pixels)
    if why:
        raise ValidationFailed(
            why,
            "Rows" if geometry.rows >= geometry.columns else "Columns",
            limit="max_frame_pixels",
            value=str(max_frame_pixels),
        )
    frames, frames_problem = declared_frames(elements)
    if frames_problem:
        problems.append(
            AttributeProblem("00280008", "NumberOfFrames", frames_problem, WARNING_ATTRIBUTES)
        )
    if pixel.length is None:
        _check_fragments(elements, pixel.fragments, pixel.basic_offset_table, frames)
        return
    frame_bits = geometry.frame_bits
    needed = (frames * frame_bits + 7) // 8
    if pixel.length < needed:
        described = (
            f"{_count(frames, 'frame')} of {geometry.rows} x {geometry.columns} pixels, "
            f"{_count(geometry.samples_per_pixel, 'sample')} of {geometry.bits_allocated} bits"
        )
        raise ValidationFailed(
            f"Pixel Data ({pixel.tag:08X}) holds {pixel.length} bytes, less than the {needed} "
            f"bytes of the {described} that NumberOfFrames, Rows, Columns, SamplesPerPixel and "
            "BitsAllocated declare",
            "NumberOfFrames" if frames > 1 and pixel.length * 8 >= frame_bits else "PixelData",
        )
    if pixel.length > needed + needed % 2:
        problems.append(
            AttributeProblem(
                f"{pixel.tag:08X}",
                "PixelData",
                f"holds {pixel.length} bytes, more than the {needed} bytes of its "
                f"{_count(frames, 'frame')}: the rest is kept but never served as a frame",
                WARNING_ATTRIBUTES,
            )
        )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _check_fragments(
    elements: ElementValues, fragments: list[tuple[int, int]], offset_table: bytes, frames: int
) -> None:
    """Refuse more frames than encapsulated pixel data can hold (PS3.5 A.4)."""
    if not fragments:
        raise ValidationFailed(
            "the encapsulated Pixel Data (7FE00010) has no fragment, so no frame", "PixelData"
        )
    listed = offset_table_entries(elements, offset_table)
    if frames > len(fragments) and frames != listed:
        table = f"its offset table lists {listed}" if listed else "it has no offset table"
        raise ValidationFailed(
            f"NumberOfFrames (00280008) is {frames}, but the encapsulated Pixel Data has "
            f"{len(fragments)} fragments and {table}: every frame needs at least one "
            "fragment (PS3.5 A.4)",
            "NumberOfFrames",
        )


def _check_searchable(elements: ElementValues, problems: list[AttributeProblem]) -> set[str]:
    """Validate every value the index would hold; return the tags to leave out of it."""
    unindexed: set[str] = set()
    for attribute in _CHECKED_ATTRIBUTES:
        try:
            values = elements.values(attribute.tag)
            if values is None:
                continue
            for v in values:
                if v is not None and v != "" and attribute.vr in _TEXT_VRS:
                    # IS, DS and PN values are objects whose str() is the text as stored.
                    why = _invalid(attribute.vr, str(v))
                    if why is not None:
                        raise ValueError(why)
        except Exception as exc:
            unindexed.add(attribute.hex_tag)
            problems.append(
                AttributeProblem(
                    attribute.hex_tag,
                    attribute.keyword,
                    f"invalid value, not searchable: {exc}",
                    WARNING_ATTRIBUTES,
                )
            )
    return unindexed


@functools.lru_cache(maxsize=4096)
def _invalid(vr: str, text: str) -> str | None:
    """Why pydicom finds ``text`` an invalid value of ``vr``, ``None`` if it is valid.

    The verdicts are kept: searchable values repeat from one instance to the next (the study
    date, the patient's name, the modality), and pydicom's checks depend on nothing else.
    """
    try:
        validate_value(vr, text, config.RAISE)
    except ValueError as exc:
        return str(exc)
    return None


def _check_sop_class(
    parsed: ParsedInstance, uids: dict[str, str], problems: list[AttributeProblem]
) -> None:
    """Warn (45063) when the data set does not match its SOP class or its file meta."""
    meta = ElementValues(parsed.dataset.file_meta)
    sop_class = uids["SOPClassUID"]
    for meta_keyword, meta_tag, keyword in (
        ("MediaStorageSOPClassUID", 0x00020002, "SOPClassUID"),
        ("MediaStorageSOPInstanceUID", 0x00020003, "SOPInstanceUID"),
    ):
        meta_value = meta.text(meta_tag)
        if meta_value and meta_value != uids[keyword]:
            problems.append(
                AttributeProblem(
                    "00020003" if keyword == "SOPInstanceUID" else "00020002",
                    meta_keyword,
                    f"the file meta says {meta_value}, the data set's {keyword} is {uids[keyword]}",
                    WARNING_SOP_CLASS_MISMATCH,
                )
            )
    uid = UID(sop_class)
    if not uid.is_valid or uid.name == sop_class:
        problems.append(
            AttributeProblem(
                "00080016",
                "SOPClassUID",
                f"{sop_class} is not a SOP class of the DICOM standard",
                WARNING_SOP_CLASS_MISMATCH,
            )
        )
    elif "Image Storage" in uid.name and parsed.structure.pixel_data is None:
        problems.append(
            AttributeProblem(
                "7FE00010",
                "PixelData",
                f"is absent, but {uid.name} requires it",
                WARNING_SOP_CLASS_MISMATCH,
            )
        )
