"""Which attributes each level of the index keeps, and which of them it can search.

Study, series and instance records hold the attributes a search returns (``includefield=all``);
the searchable subset also gets secondary index entries. The lists follow the README's search
section and the QIDO-RS defaults of PS3.18 Table 10.6.1-5.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, tag_for_keyword


class Level(enum.IntEnum):
    """The query/retrieve levels, in index key order, and the workitems (UPS) beside them.

    The value is the first byte of a record's secondary-index keys.
    """

    STUDY = 1
    SERIES = 2
    INSTANCE = 3
    WORKITEM = 4


@dataclass(frozen=True)
class IndexedAttribute:
    """An attribute kept at one level.

    Attributes
    ----------
    keyword
        The DICOM keyword.
    tag
        The tag as an integer.
    vr
        The value representation.
    level
        The level whose record holds it.
    searchable
        Whether it has secondary index entries (otherwise it is only returned).
    """

    keyword: str
    tag: int
    vr: str
    level: Level
    searchable: bool

    @property
    def hex_tag(self) -> str:
        """The tag as 8 upper-case hexadecimal digits."""
        return f"{self.tag:08X}"


def _attrs(level: Level, searchable: list[str], returned: list[str]) -> list[IndexedAttribute]:
    out = []
    for keyword in searchable + returned:
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        out.append(IndexedAttribute(keyword, tag, dictionary_VR(tag), level, keyword in searchable))
    return out


STUDY_ATTRIBUTES = _attrs(
    Level.STUDY,
    [
        "StudyInstanceUID",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyDate",
        "StudyTime",
        "StudyDescription",
        "StudyID",
    ],
    [
        "SpecificCharacterSet",
        "TimezoneOffsetFromUTC",
        "IssuerOfPatientID",
        "PatientSex",
        "PatientAge",
        "PatientSize",
        "PatientWeight",
        "NameOfPhysiciansReadingStudy",
        "OtherPatientIDs",
        "InstitutionName",
        "ReferencedRequestSequence",
    ],
)

SERIES_ATTRIBUTES = _attrs(
    Level.SERIES,
    [
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "PerformedProcedureStepStartDate",
        "ManufacturerModelName",
        "BodyPartExamined",
    ],
    [
        "SeriesDescription",
        "SeriesDate",
        "SeriesTime",
        "PerformedProcedureStepStartTime",
        "Laterality",
        "Manufacturer",
        "StationName",
        "ProtocolName",
        "RequestAttributesSequence",
    ],
)

INSTANCE_ATTRIBUTES = _attrs(
    Level.INSTANCE,
    ["SOPInstanceUID", "SOPClassUID", "InstanceNumber"],
    [
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
        "ContentDate",
        "ContentTime",
        "AcquisitionDateTime",
        "ImageType",
    ],
)

ATTRIBUTES_BY_LEVEL: dict[Level, list[IndexedAttribute]] = {
    Level.STUDY: STUDY_ATTRIBUTES,
    Level.SERIES: SERIES_ATTRIBUTES,
    Level.INSTANCE: INSTANCE_ATTRIBUTES,
}

ALL_ATTRIBUTES: list[IndexedAttribute] = STUDY_ATTRIBUTES + SERIES_ATTRIBUTES + INSTANCE_ATTRIBUTES


@dataclass(frozen=True)
class NestedAttribute:
    """A searchable attribute inside the items of a sequence kept at one level.

    Attributes
    ----------
    sequence
        The sequence attribute (returned by its level, not searchable itself).
    leaf
        The attribute matched inside its items (exact matching, PS3.18 §10.6.1.2).
    """

    sequence: IndexedAttribute
    leaf: IndexedAttribute

    @property
    def path(self) -> str:
        """``Sequence.Leaf`` by keyword."""
        return f"{self.sequence.keyword}.{self.leaf.keyword}"

    @property
    def term_kind(self) -> bytes:
        """The index term prefix that keeps these values apart from the leaf's own."""
        return b"S" + self.sequence.hex_tag.encode()


def _nested(level: Level, sequence: str, leaves: list[str]) -> list[NestedAttribute]:
    parent = next(a for a in ATTRIBUTES_BY_LEVEL[level] if a.keyword == sequence)
    out = []
    for keyword in leaves:
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        out.append(
            NestedAttribute(parent, IndexedAttribute(keyword, tag, dictionary_VR(tag), level, True))
        )
    return out


NESTED_ATTRIBUTES: list[NestedAttribute] = [
    *_nested(Level.STUDY, "ReferencedRequestSequence", ["AccessionNumber", "RequestedProcedureID"]),
    *_nested(
        Level.SERIES,
        "RequestAttributesSequence",
        ["RequestedProcedureID", "ScheduledProcedureStepID"],
    ),
]
