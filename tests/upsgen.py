"""Workitem data sets for tests: DICOM JSON built from keywords, valid unless told otherwise."""

from __future__ import annotations

from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword


def tag(keyword: str) -> str:
    """The 8-hex-digit tag of a keyword."""
    number = tag_for_keyword(keyword)
    assert number is not None, keyword
    return f"{number:08X}"


def element(keyword: str, *values: Any) -> tuple[str, dict[str, Any]]:
    """A DICOM JSON element: (tag, {"vr", "Value"}); no values gives an empty element."""
    number = tag_for_keyword(keyword)
    assert number is not None, keyword
    vr = dictionary_VR(number)
    body: dict[str, Any] = {"vr": vr}
    if values:
        if vr == "PN":
            body["Value"] = [{"Alphabetic": v} for v in values]
        else:
            body["Value"] = list(values)
    return f"{number:08X}", body


def dataset(**elements: Any) -> dict[str, Any]:
    """A DICOM JSON data set from ``Keyword=value`` (a list for several values, None empty)."""
    out: dict[str, Any] = {}
    for keyword, value in elements.items():
        if value is None:
            key, body = element(keyword)
        elif isinstance(value, list):
            key, body = element(keyword, *value)
        else:
            key, body = element(keyword, value)
        out[key] = body
    return out


def code(value: str, meaning: str, scheme: str = "DCM") -> dict[str, Any]:
    """A code sequence item."""
    return dataset(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def workitem(**overrides: Any) -> dict[str, Any]:
    """A workitem meeting the create requirements of PS3.4 Table CC.2.5-3."""
    elements: dict[str, Any] = {
        "ScheduledProcedureStepPriority": "MEDIUM",
        "ProcedureStepLabel": "CT abdomen review",
        "WorklistLabel": "Radiology",
        "ScheduledProcessingParametersSequence": None,
        "ScheduledStationNameCodeSequence": [code("ST1", "Station 1")],
        "ScheduledStationClassCodeSequence": None,
        "ScheduledStationGeographicLocationCodeSequence": None,
        "ScheduledProcedureStepStartDateTime": "20240115093000",
        "ScheduledWorkitemCodeSequence": [code("110005", "Interpretation")],
        "CommentsOnTheScheduledProcedureStep": None,
        "InputReadinessState": "READY",
        "InputInformationSequence": None,
        "PatientName": "Doe^John",
        "PatientID": "P-1",
        "PatientBirthDate": None,
        "PatientSex": None,
        "AdmissionID": None,
        "IssuerOfAdmissionIDSequence": None,
        "AdmittingDiagnosesDescription": None,
        "AdmittingDiagnosesCodeSequence": None,
        "ReferencedRequestSequence": None,
    }
    elements.update(overrides)
    return dataset(**{k: v for k, v in elements.items() if v != "<absent>"})


def performed() -> dict[str, Any]:
    """What a performer sets before COMPLETED: the performed procedure."""
    item = dataset(
        PerformedStationNameCodeSequence=[code("ST1", "Station 1")],
        PerformedProcedureStepStartDateTime="20240115094000",
        PerformedWorkitemCodeSequence=[code("110005", "Interpretation")],
        PerformedProcedureStepEndDateTime="20240115101500",
        OutputInformationSequence=None,
    )
    return dataset(UnifiedProcedureStepPerformedProcedureSequence=[item])


def discontinued() -> dict[str, Any]:
    """What a performer sets before CANCELED: why the step was discontinued."""
    item = dataset(
        ProcedureStepDiscontinuationReasonCodeSequence=[
            code("110513", "Discontinued for unspecified reason")
        ],
    )
    return dataset(ProcedureStepProgressInformationSequence=[item])


def nested_items(depth: int, marker: str = "deep") -> list[dict[str, Any]]:
    """The items of a top-level sequence nesting ``depth`` levels in all (the top one included):
    ContentSequence below it, the innermost item holding a TextValue ``marker``."""
    item: dict[str, Any] = dataset(TextValue=marker)
    for _ in range(depth - 1):
        item = dataset(ContentSequence=[item])
    return [item]
