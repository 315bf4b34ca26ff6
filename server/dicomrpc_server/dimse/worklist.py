"""Modality Worklist C-FIND (PS3.4 Annex K) answered from the SCHEDULED workitems.

A modality asks its worklist with the Modality Worklist Information Model - FIND
(1.2.840.10008.5.1.4.31); the archive keeps its worklist as UPS workitems (PS3.4 Annex CC).
Each worklist key is read as the workitem attribute that holds the same fact, matched with
the workitem search's rules, and each SCHEDULED workitem found is answered as a worklist item
(a Requested Procedure with one Scheduled Procedure Step). A workitem claimed, completed or
canceled is no longer scheduled, and no longer on the worklist.

==============================================  ==============================================
worklist key (PS3.4 Table K.6-1)                workitem attribute (PS3.4 Table CC.2.5-3)
==============================================  ==============================================
Patient's Name, Patient ID (matching), Birth    the same attributes
Date, Sex, Issuer of Patient ID, Other Patient
IDs, Admission ID
Study Instance UID (matching)                   Study Instance UID, else that of the first
                                                Referenced Request Sequence item
Accession Number, Requested Procedure ID        Referenced Request Sequence > Accession
(matching)                                      Number, > Requested Procedure ID
Requested Procedure Description and Code        Referenced Request Sequence > the same
Sequence, Issuer of Accession Number Sequence
Scheduled Procedure Step Sequence >
 Modality (matching)                            Scheduled Station Class Code Sequence > Code
                                                Value
 Scheduled Station AE Title (matching)          Scheduled Station Name Code Sequence > Code
                                                Value
 Scheduled Station Name                         Scheduled Station Name Code Sequence > Code
                                                Meaning (cut to 16 characters)
 Scheduled Procedure Step Location (matching)   Scheduled Station Geographic Location Code
                                                Sequence > Code Value
 Scheduled Procedure Step Start Date and Time   Scheduled Procedure Step Start DateTime
 (matching)                                     (0040,4005): the date and time keys make one
                                                date-time match (PS3.4 C.2.2.2.5)
 Scheduled Procedure Step Description           Procedure Step Label
 Scheduled Procedure Step ID                    Procedure Step Label, cut to 16 characters
 Scheduled Protocol Code Sequence               Scheduled Workitem Code Sequence
 Scheduled Performing Physician's Name          Scheduled Human Performers Sequence > Human
                                                Performer's Name
 Scheduled Procedure Step Status (matching)     SCHEDULED: asking for another status matches
                                                nothing
 Comments on the Scheduled Procedure Step       the same attribute
==============================================  ==============================================

A worklist key with no workitem counterpart is a return key only, answered empty.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.events import Event

from dicomrpc_server.audit.records import Action
from dicomrpc_server.dimse import statuses
from dicomrpc_server.dimse.audit import DimseAudit
from dicomrpc_server.dimse.find import Answer, failure, logged_find
from dicomrpc_server.dimse.identifiers import FindQuery, match_value, response
from dicomrpc_server.dimse.pacing import make_way
from dicomrpc_server.dimse.requesters import describe_requester
from dicomrpc_server.dimse.workitems import as_pydicom, searched_pages
from dicomrpc_server.errors import ServiceError
from dicomrpc_server.ups.service import WorkitemCore
from dicomrpc_server.ups.states import State

log = logging.getLogger("dicomrpc.dimse")


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return int(tag)


def _hex(keyword: str) -> str:
    return f"{_tag(keyword):08X}"


def _path(sequence: str, leaf: str) -> str:
    return f"{_hex(sequence)}.{_hex(leaf)}"


SPS = _tag("ScheduledProcedureStepSequence")
START_DATE = _tag("ScheduledProcedureStepStartDate")
START_TIME = _tag("ScheduledProcedureStepStartTime")
STEP_STATUS = _tag("ScheduledProcedureStepStatus")
STATE_KEY = _hex("ProcedureStepState")
START_KEY = _hex("ScheduledProcedureStepStartDateTime")

# Top-level worklist matching keys -> the workitem search's key.
TOP_KEYS: dict[int, str] = {
    _tag("PatientName"): _hex("PatientName"),
    _tag("PatientID"): _hex("PatientID"),
    _tag("StudyInstanceUID"): _hex("StudyInstanceUID"),
    _tag("AccessionNumber"): _path("ReferencedRequestSequence", "AccessionNumber"),
    _tag("RequestedProcedureID"): _path("ReferencedRequestSequence", "RequestedProcedureID"),
}
# Scheduled Procedure Step Sequence matching keys -> the workitem search's key.
STEP_KEYS: dict[int, str] = {
    _tag("Modality"): _path("ScheduledStationClassCodeSequence", "CodeValue"),
    _tag("ScheduledStationAETitle"): _path("ScheduledStationNameCodeSequence", "CodeValue"),
    _tag("ScheduledProcedureStepLocation"): _path(
        "ScheduledStationGeographicLocationCodeSequence", "CodeValue"
    ),
}
_PATIENT = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDsSequence",
    "PatientBirthDate",
    "PatientSex",
    "AdmissionID",
)
_REQUEST = (
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
    "RequestedProcedureCodeSequence",
)


def start_match(date: str, time_: str) -> str:
    """One Scheduled Procedure Step Start DateTime match of the date and time keys.

    Combined as PS3.4 C.2.2.2.5.1 combines a date and a time range: ``D1-D2`` with ``T1-T2``
    is ``D1T1-D2T2``. A time without a date cannot be matched on a date-time and is a return
    key only.
    """
    date, time_ = date.strip(), time_.replace(":", "").strip()
    if not date:
        return ""
    if "-" not in date and "-" not in time_:
        return date + time_
    low_date, high_date = date.split("-", 1) if "-" in date else (date, date)
    low_time, high_time = time_.split("-", 1) if "-" in time_ else (time_, time_)
    low = low_date + low_time if low_date else ""
    high = high_date + high_time if high_date else ""
    return f"{low}-{high}"


def worklist_match(identifier: Dataset) -> dict[str, str] | None:
    """The workitem search's terms of a worklist identifier; ``None`` when nothing can match.

    Only SCHEDULED workitems are on the worklist.
    """
    match = {STATE_KEY: State.SCHEDULED.value}
    for element in identifier:
        key = TOP_KEYS.get(int(element.tag))
        if key is not None and (value := match_value(element)):
            match[key] = value
    step = identifier.get(SPS)
    items = step.value if step is not None and step.VR == "SQ" else None
    if items is not None and len(items) == 1:
        item = items[0]
        for element in item:
            key = STEP_KEYS.get(int(element.tag))
            if key is not None and (value := match_value(element)):
                match[key] = value
        status = item.get(STEP_STATUS)
        wanted = match_value(status) if status is not None else ""
        if wanted and wanted.upper() != State.SCHEDULED.value:
            return None
        date = item.get(START_DATE)
        time_ = item.get(START_TIME)
        start = start_match(
            match_value(date) if date is not None else "",
            match_value(time_) if time_ is not None else "",
        )
        if start:
            match[START_KEY] = start
    return match


def _first(ds: Dataset, keyword: str) -> Dataset:
    """The first item of a sequence (an empty data set when there is none)."""
    element = ds.get(_tag(keyword))
    if element is None or element.VR != "SQ" or not element.value:
        return Dataset()
    item: Dataset = element.value[0]
    return item


def _set(out: Dataset, keyword: str, source: Dataset, source_keyword: str, cut: int = 0) -> None:
    element = source.get(_tag(source_keyword))
    if element is None or element.value in (None, ""):
        return
    value = element.value
    if cut and isinstance(value, str):
        value = value[:cut]
    out.add_new(_tag(keyword), dictionary_VR(_tag(keyword)), value)


def worklist_item(workitem: Dataset) -> Dataset:
    """A SCHEDULED workitem as a worklist item (see the table in this module's docstring)."""
    out = Dataset()
    for keyword in _PATIENT:
        _set(out, keyword, workitem, keyword)
    request = _first(workitem, "ReferencedRequestSequence")
    for keyword in _REQUEST:
        _set(out, keyword, request, keyword)
    _set(out, "StudyInstanceUID", request, "StudyInstanceUID")
    _set(out, "StudyInstanceUID", workitem, "StudyInstanceUID")
    step = Dataset()
    station = _first(workitem, "ScheduledStationNameCodeSequence")
    _set(step, "Modality", _first(workitem, "ScheduledStationClassCodeSequence"), "CodeValue")
    _set(step, "ScheduledStationAETitle", station, "CodeValue")
    _set(step, "ScheduledStationName", station, "CodeMeaning", cut=16)
    _set(
        step,
        "ScheduledProcedureStepLocation",
        _first(workitem, "ScheduledStationGeographicLocationCodeSequence"),
        "CodeValue",
    )
    start = workitem.get(_tag("ScheduledProcedureStepStartDateTime"))
    if start is not None and start.value:
        text = str(start.value)
        step.ScheduledProcedureStepStartDate = text[:8]
        clock = text[8:].split("+")[0].split("-")[0]
        if clock:
            step.ScheduledProcedureStepStartTime = clock
    _set(step, "ScheduledProcedureStepDescription", workitem, "ProcedureStepLabel")
    _set(step, "ScheduledProcedureStepID", workitem, "ProcedureStepLabel", cut=16)
    codes = workitem.get(_tag("ScheduledWorkitemCodeSequence"))
    if codes is not None and codes.value:
        step.ScheduledProtocolCodeSequence = codes.value
    _set(
        step,
        "ScheduledPerformingPhysicianName",
        _first(workitem, "ScheduledHumanPerformersSequence"),
        "HumanPerformerName",
    )
    _set(
        step,
        "CommentsOnTheScheduledProcedureStep",
        workitem,
        "CommentsOnTheScheduledProcedureStep",
    )
    step.ScheduledProcedureStepStatus = State.SCHEDULED.value
    out.ScheduledProcedureStepSequence = Sequence([step])
    return out


def _with_every_key(answer: Dataset, identifier: Dataset) -> Dataset:
    """Every key of the Scheduled Procedure Step item asked for, empty when unknown.

    PS3.4 K.4.1.1.3.2: each return key is returned, with zero length when the SCP has no value.
    """
    asked = identifier.get(SPS)
    returned = answer.get(SPS)
    if asked is None or returned is None or not asked.value or not returned.value:
        return answer
    for item in returned.value:
        for element in asked.value[0]:
            tag = int(element.tag)
            if tag not in item:
                item[tag] = DataElement(tag, element.VR, [] if element.VR == "SQ" else None)
    return answer


class WorklistFindHandler:
    """The C-FIND handler of the Modality Worklist Information Model - FIND.

    Parameters
    ----------
    core
        The workitem core, searched for the SCHEDULED workitems.
    audit
        The audit hook: one record per query.
    ae_title
        The archive's AE title.
    """

    def __init__(self, core: WorkitemCore, audit: DimseAudit, ae_title: str) -> None:
        self._core = core
        self._audit = audit
        self._ae_title = ae_title

    def __call__(self, event: Event) -> Iterator[Answer]:
        """Yield a pending response per worklist item, then the final status."""
        return logged_find("C-FIND (worklist)", event, self._answers(event))

    def _answers(self, event: Event) -> Iterator[Answer]:
        endpoint = f"C-FIND {event.request.AffectedSOPClassUID}"
        try:
            identifier = event.identifier
            match = worklist_match(identifier)
            if match is None:
                self._audit.workitem(event.assoc, Action.WORKITEM_SEARCH, endpoint, "", None)
                yield statuses.SUCCESS, None
                return
            query = FindQuery("", match, identifier)
            first, pages = searched_pages(self._core, self._audit, event, endpoint, match)
            found = first
            while found is not None:
                item = worklist_item(as_pydicom(found))
                yield (
                    statuses.PENDING,
                    _with_every_key(response(query, item, self._ae_title), identifier),
                )
                found = next(pages, None)
                make_way(event.assoc)
                if found is not None and event.is_cancelled:
                    yield statuses.CANCEL, None
                    return
        except ServiceError as error:
            self._audit.workitem(event.assoc, Action.WORKITEM_SEARCH, endpoint, "", error)
            yield failure(statuses.query_failure_status(error), error.message), None
            return
        except Exception as exc:  # an identifier (or a value in it) pydicom cannot decode
            log.warning("C-FIND from %s failed", describe_requester(event.assoc), exc_info=True)
            yield failure(statuses.CANNOT_UNDERSTAND, f"the query cannot be answered: {exc}"), None
            return
        yield statuses.SUCCESS, None
