"""The attribute requirements of PS3.4 Table CC.2.5-3, as data, and the checks that read them.

Each :class:`Row` names an attribute, its VR, what a create (N-CREATE) and an update (N-SET)
require of it, what the final states require (PS3.4 CC.2.5.1.1), and for a sequence the rows of
its items. One table serves create, update and the final-state check; no rule is written twice.

The table keeps the requirement the caller must meet (the "SCU" half of the standard's pairs):
the server fills what it maintains itself (SOP Class/Instance UID, state, modification
date-time, cancellation date-time) before it checks a final state. Items of a sequence are held
to their rows' ``create`` rule in both a create and an update, because an update replaces a
sequence whole. Attributes the table does not name are kept as sent.

Besides the table, every UID of a workitem data set must be a safe key
(:mod:`dicomrpc_server.dicom.uids`), at any depth: the SOP Instance UID becomes the record's key
and its URL, the Transaction UID its lock, the Study Instance UID an index term, and a workitem
carries no other channel to warn about a UID that could not be used as one (see
:func:`uid_violations`), and every attribute must be a DICOM attribute: keyed by a tag, with a
VR the standard defines.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.datadict import tag_for_keyword
from pydicom.valuerep import VR

from dicomrpc.datasets import keyword
from dicomrpc.v1 import dataset_pb2
from dicomrpc_server.dicom.uids import uid_error
from dicomrpc_server.errors import FieldViolation
from dicomrpc_server.ups.values import has_value

_TAG_KEY = re.compile(r"[0-9A-Fa-f]{8}")
_VRS = frozenset(vr.value for vr in VR if len(vr.value) == 2)


class Rule(enum.Enum):
    """What an operation requires of an attribute (the Type of PS3.4 Table CC.2.5-3)."""

    VALUE = "1"
    """Present, with a value."""
    PRESENT = "2"
    """Present; it may be empty."""
    OPTIONAL = "3"
    """May be absent; any value when present."""
    NOT_EMPTY = "3/1"
    """May be absent; when present it needs a value (an update cannot empty a Type 1)."""
    EMPTY = "empty"
    """Absent or empty (the Transaction UID of a create)."""
    FORBIDDEN = "-"
    """Must be absent: the operation cannot set it."""


class Final(enum.Enum):
    """What the final states require of an attribute (PS3.4 CC.2.5.1.1)."""

    NONE = "O"
    BOTH = "R"
    """Needed to become COMPLETED or CANCELED."""
    COMPLETED = "P"
    """Needed to become COMPLETED."""
    CANCELED = "X"
    """Needed to become CANCELED."""


class Operation(enum.Enum):
    """The operations a data set is checked for."""

    CREATE = "create"
    UPDATE = "update"


@dataclass(frozen=True)
class Row:
    """One attribute of Table CC.2.5-3.

    Attributes
    ----------
    keyword
        The DICOM keyword.
    vr
        Its value representation.
    create
        The requirement of a create.
    update
        The requirement of an update.
    final
        The requirement of the final states.
    values
        The enumerated values, when the attribute has them.
    items
        The rows of each item, for a sequence.
    """

    keyword: str
    vr: str
    create: Rule
    update: Rule
    final: Final = Final.NONE
    values: tuple[str, ...] = ()
    items: tuple[Row, ...] = ()

    @functools.cached_property
    def tag(self) -> int:
        """The tag as an integer."""
        tag = tag_for_keyword(self.keyword)
        assert tag is not None, self.keyword
        return tag

    @functools.cached_property
    def hex_tag(self) -> str:
        """The tag as 8 upper-case hexadecimal digits."""
        return f"{self.tag:08X}"


# Short names for the table, read as the standard's Type column.
T1, T2, T3, T3_1 = Rule.VALUE, Rule.PRESENT, Rule.OPTIONAL, Rule.NOT_EMPTY
BLANK, NOT_SET = Rule.EMPTY, Rule.FORBIDDEN


def _code_item(value: Rule = T3) -> tuple[Row, ...]:
    """The rows of a code sequence item (the Code Sequence Macro)."""
    return (
        Row("CodeValue", "SH", value, value),
        Row("CodingSchemeDesignator", "SH", value, value),
        Row("CodeMeaning", "LO", T1, T1),
    )


CODE = _code_item()
STATE_VALUES = ("SCHEDULED", "IN PROGRESS", "COMPLETED", "CANCELED")

TABLE: tuple[Row, ...] = (
    # SOP Common Module: the server sets both UIDs; an update cannot change them.
    Row("SpecificCharacterSet", "CS", T3, T3),
    Row("SOPClassUID", "UI", T3, NOT_SET, Final.BOTH),
    Row("SOPInstanceUID", "UI", T3, NOT_SET, Final.BOTH),
    # Unified Procedure Step Scheduled Procedure Information Module.
    Row("ScheduledProcedureStepPriority", "CS", T1, T3_1, Final.BOTH, ("HIGH", "MEDIUM", "LOW")),
    Row("ScheduledProcedureStepModificationDateTime", "DT", T3, T3, Final.BOTH),
    Row("ProcedureStepLabel", "LO", T1, T3_1),
    Row("WorklistLabel", "LO", T2, T3_1),
    Row("ScheduledProcessingParametersSequence", "SQ", T2, T3),
    Row("ScheduledStationNameCodeSequence", "SQ", T2, T3, items=CODE),
    Row("ScheduledStationClassCodeSequence", "SQ", T2, T3, items=CODE),
    Row("ScheduledStationGeographicLocationCodeSequence", "SQ", T2, T3, items=CODE),
    Row(
        "ScheduledHumanPerformersSequence",
        "SQ",
        T3,
        T3,
        items=(
            Row("HumanPerformerCodeSequence", "SQ", T1, T1, items=CODE),
            Row("HumanPerformerName", "PN", T3, T3),
            Row("HumanPerformerOrganization", "LO", T3, T3),
        ),
    ),
    Row("ScheduledProcedureStepStartDateTime", "DT", T1, T3_1, Final.BOTH),
    Row("ExpectedCompletionDateTime", "DT", T3, T3),
    Row("ScheduledProcedureStepExpirationDateTime", "DT", T3, T3),
    Row("ScheduledWorkitemCodeSequence", "SQ", T2, T3, items=CODE),
    Row("CommentsOnTheScheduledProcedureStep", "LT", T2, T3),
    Row("InputReadinessState", "CS", T1, T3_1, Final.BOTH, ("READY", "UNAVAILABLE", "INCOMPLETE")),
    Row("InputInformationSequence", "SQ", T2, T3),
    Row("StudyInstanceUID", "UI", T3, T3),
    # Unified Procedure Step Relationship Module: the patient and the request, set at create.
    Row("PatientName", "PN", T2, NOT_SET),
    Row("PatientID", "LO", T2, NOT_SET),
    Row("IssuerOfPatientID", "LO", T3, NOT_SET),
    Row("OtherPatientIDsSequence", "SQ", T3, NOT_SET),
    Row("PatientBirthDate", "DA", T2, NOT_SET),
    Row("PatientSex", "CS", T2, NOT_SET),
    Row("AdmissionID", "LO", T2, NOT_SET),
    Row("IssuerOfAdmissionIDSequence", "SQ", T2, NOT_SET),
    Row("AdmittingDiagnosesDescription", "LO", T2, NOT_SET),
    Row("AdmittingDiagnosesCodeSequence", "SQ", T2, NOT_SET, items=CODE),
    Row(
        "ReferencedRequestSequence",
        "SQ",
        T2,
        NOT_SET,
        items=(
            Row("StudyInstanceUID", "UI", T1, T1),
            Row("AccessionNumber", "SH", T2, T2),
            Row("IssuerOfAccessionNumberSequence", "SQ", T2, T2),
            Row("RequestedProcedureID", "SH", T2, T2),
            Row("RequestedProcedureDescription", "LO", T2, T2),
            Row("RequestedProcedureCodeSequence", "SQ", T2, T2, items=CODE),
        ),
    ),
    Row(
        "ReplacedProcedureStepSequence",
        "SQ",
        T3,
        NOT_SET,
        items=(
            Row("ReferencedSOPClassUID", "UI", T1, T1),
            Row("ReferencedSOPInstanceUID", "UI", T1, T1),
        ),
    ),
    # Unified Procedure Step Progress Information Module: the server keeps state and lock.
    Row("ProcedureStepState", "CS", T3, NOT_SET, Final.BOTH, STATE_VALUES),
    Row("TransactionUID", "UI", BLANK, NOT_SET),
    Row(
        "ProcedureStepProgressInformationSequence",
        "SQ",
        T3,
        T3,
        Final.CANCELED,
        items=(
            Row("ProcedureStepProgress", "DS", T3, T3),
            Row("ProcedureStepProgressDescription", "ST", T3, T3),
            Row("ProcedureStepCancellationDateTime", "DT", T3, T3, Final.CANCELED),
            Row("ReasonForCancellation", "LT", T3, T3),
            Row(
                "ProcedureStepDiscontinuationReasonCodeSequence",
                "SQ",
                T3,
                T3,
                Final.CANCELED,
                items=CODE,
            ),
        ),
    ),
    # Unified Procedure Step Performed Procedure Information Module.
    Row(
        "UnifiedProcedureStepPerformedProcedureSequence",
        "SQ",
        T3,
        T3,
        Final.COMPLETED,
        items=(
            Row("ActualHumanPerformersSequence", "SQ", T3, T3),
            Row("PerformedStationNameCodeSequence", "SQ", T3, T3, Final.COMPLETED, items=CODE),
            Row("PerformedProcedureStepStartDateTime", "DT", T3, T3, Final.COMPLETED),
            Row("PerformedWorkitemCodeSequence", "SQ", T3, T3, Final.COMPLETED, items=CODE),
            Row("PerformedProcedureStepEndDateTime", "DT", T3, T3, Final.COMPLETED),
            Row("OutputInformationSequence", "SQ", T3, T3, Final.COMPLETED),
        ),
    ),
)

BY_KEYWORD: dict[str, Row] = {row.keyword: row for row in TABLE}


def check(dataset: dataset_pb2.Dataset, operation: Operation) -> list[FieldViolation]:
    """Every way ``dataset`` breaks the table for ``operation``, each naming its attribute."""
    return list(_check(dataset, TABLE, operation, ""))


def _check(
    dataset: dataset_pb2.Dataset, rows: Iterable[Row], operation: Operation, path: str
) -> Iterable[FieldViolation]:
    for row in rows:
        rule = row.create if operation is Operation.CREATE else row.update
        name = path + row.keyword
        attribute = dataset.attributes.get(row.hex_tag)
        if attribute is None:
            if rule is Rule.VALUE:
                yield FieldViolation(name, "is required (Type 1) and missing")
            elif rule is Rule.PRESENT:
                yield FieldViolation(name, "is required (Type 2) and missing; it may be empty")
            continue
        if rule is Rule.FORBIDDEN:
            verb = "created with" if operation is Operation.CREATE else "changed by an update"
            yield FieldViolation(name, f"cannot be {verb}")
            continue
        if attribute.vr and attribute.vr != row.vr:
            yield FieldViolation(name, f"has VR {attribute.vr}, expected {row.vr}")
            continue
        filled = has_value(attribute)
        if not filled and rule in (Rule.VALUE, Rule.NOT_EMPTY):
            yield FieldViolation(name, "needs a value (Type 1) and is empty")
        if filled and rule is Rule.EMPTY:
            yield FieldViolation(name, "must be absent or empty")
        if filled and row.values and attribute.WhichOneof("value") == "strings":
            for value in attribute.strings.values:
                if value.strip() not in row.values:
                    allowed = ", ".join(row.values)
                    yield FieldViolation(name, f"{value!r} is not one of {allowed}")
        if row.items and attribute.WhichOneof("value") == "sequence":
            for number, item in enumerate(attribute.sequence.items):
                yield from _check(item, row.items, Operation.CREATE, f"{name}[{number}].")


def final_state_missing(dataset: dataset_pb2.Dataset, final_state: str) -> list[str]:
    """The attributes (as paths) the final state ``final_state`` needs and ``dataset`` lacks."""
    needed = {Final.BOTH, Final.COMPLETED if final_state == "COMPLETED" else Final.CANCELED}
    return list(_missing(dataset, TABLE, needed, ""))


def _missing(
    dataset: dataset_pb2.Dataset, rows: Iterable[Row], needed: set[Final], path: str
) -> Iterable[str]:
    for row in rows:
        if row.final not in needed:
            continue
        name = path + row.keyword
        attribute = dataset.attributes.get(row.hex_tag)
        if row.vr != "SQ":
            if attribute is None or not has_value(attribute):
                yield name
            continue
        if attribute is None:
            yield name
            continue
        nested = [r for r in row.items if r.final in needed]
        if not nested:
            continue
        if not attribute.sequence.items:
            yield f"{name}[0]"
            continue
        for number, item in enumerate(attribute.sequence.items):
            yield from _missing(item, nested, needed, f"{name}[{number}].")


def uid_violations(dataset: dataset_pb2.Dataset) -> list[FieldViolation]:
    """Every attribute of ``dataset``, at any depth, that a workitem may not hold, by its path.

    That is a UI value that is not a safe key, and an attribute that is not a DICOM attribute
    at all: a key other than a tag's 8 hexadecimal digits (PS3.18 F.2.1.1), or a VR that
    PS3.5 Table 6.2-1 does not define. The JSON gateway refuses those when it reads a body;
    over gRPC a data set is a message whose map keys and VR strings could be anything.
    The data set's nesting is checked first (:mod:`dicomrpc_server.dicom.nesting`), so the
    recursion here is bounded.
    """
    return list(_uid_violations(dataset, ""))


def _uid_violations(dataset: dataset_pb2.Dataset, path: str) -> Iterable[FieldViolation]:
    for tag, attribute in sorted(dataset.attributes.items()):
        if not _TAG_KEY.fullmatch(tag):
            yield FieldViolation(
                path + repr(tag)[1:-1][:20],
                "is not a tag: attributes are keyed by 8 hexadecimal digits (PS3.18 F.2.1.1)",
            )
            continue
        name = path + (keyword(tag) or tag)
        if attribute.vr not in _VRS:
            yield FieldViolation(name, f"has VR {attribute.vr[:8]!r}, which DICOM does not define")
            continue
        kind = attribute.WhichOneof("value")
        if kind == "sequence":
            for number, item in enumerate(attribute.sequence.items):
                yield from _uid_violations(item, f"{name}[{number}].")
        elif attribute.vr == "UI" and kind == "strings":
            for value in attribute.strings.values:
                error = uid_error(name, value)
                if error is not None:
                    yield error.violations[0]
