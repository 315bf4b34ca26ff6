"""DICOM audit messages (PS3.15 Annex A.5, the RFC 3881 XML form) from audit records.

Each action maps to the PS3.15 A.5.3 event that describes it:

- store → DICOM Instances Transferred (A.5.3.7, 110104), action C, the caller as the Source
  (110153) and the archive as the Destination (110152), a participant object per study with
  its SOP Classes and their instance counts;
- retrieve → DICOM Instances Transferred, action R, the archive as the Source and the caller as
  the Destination;
- metadata, frames, rendered images, bulk data → DICOM Instances Accessed (A.5.3.6, 110103),
  action R;
- delete of a study → DICOM Study Deleted (A.5.3.8, 110105), action D; of a series or an
  instance → DICOM Instances Accessed, action D;
- searches, workitem searches and subscriptions, change feed reads → Query (A.5.3.10, 110112),
  action E, the query as a participant object: the SOP Class it is the web or RPC form of
  (Study Root Query/Retrieve FIND, UPS Pull, UPS Watch; 110181) with the query base64-encoded
  in ParticipantObjectQuery;
- workitem changes and retrievals → Procedure Record (A.5.3.15, 110111), action C, U or R, the
  workitem as a participant object.

Administrative calls (extended query tags) touch no patient data and have no A.5.3 event: they
are written to the JSON lines only.

The events that name studies also name their patient (Person, Patient, its Patient ID), as
A.5.3.6 to A.5.3.8 ask, when the index knows it; they may only include a single patient, so a
record touching several patients' studies is one message per patient. A store that stored some
instances and failed others is two messages, one per outcome, as the EventOutcomeIndicator of
A.5.2 requires ("not a single message with mixed results").
"""

from __future__ import annotations

import base64
import os
import re
import socket
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlencode
from xml.sax.saxutils import escape, quoteattr

from dicomrpc_server.audit.records import (
    SUCCESS,
    Action,
    AuditRecord,
    InstanceRef,
    Outcome,
    Patient,
)

# Coded values: (code, coding scheme, meaning), PS3.16 DCM unless named otherwise.
Code = tuple[str, str, str]
INSTANCES_TRANSFERRED: Code = ("110104", "DCM", "DICOM Instances Transferred")
INSTANCES_ACCESSED: Code = ("110103", "DCM", "DICOM Instances Accessed")
STUDY_DELETED: Code = ("110105", "DCM", "DICOM Study Deleted")
QUERY: Code = ("110112", "DCM", "Query")
PROCEDURE_RECORD: Code = ("110111", "DCM", "Procedure Record")
SOURCE_ROLE: Code = ("110153", "DCM", "Source Role ID")
DESTINATION_ROLE: Code = ("110152", "DCM", "Destination Role ID")
STUDY_INSTANCE_UID: Code = ("110180", "DCM", "Study Instance UID")
SOP_CLASS_UID: Code = ("110181", "DCM", "SOP Class UID")
# PS3.15 A.5.1.2.4 Participant Object ID Type Codes: 2, Patient Number; 12, URI.
PATIENT_NUMBER: Code = ("2", "RFC-3881", "Patient Number")
URI: Code = ("12", "RFC-3881", "URI")

# The SOP Classes whose web and RPC forms the searches are (PS3.4 Annex C and CC).
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
UPS_PULL = "1.2.840.10008.5.1.4.34.6.3"
UPS_WATCH = "1.2.840.10008.5.1.4.34.6.2"

# PS3.15 A.5.1 AuditSourceTypeCode 4: application server process tier.
APPLICATION_SERVER = "4"
# ParticipantObjectTypeCode and ParticipantObjectTypeCodeRole (PS3.15 A.5.1.2.2).
PERSON = "1"
SYSTEM_OBJECT = "2"
ROLE_PATIENT = "1"
ROLE_REPORT = "3"
ROLE_JOB = "20"
ROLE_QUERY = "24"
# ParticipantObjectDataLifeCycle (PS3.15 A.5.1.2.3).
LIFE_ORIGINATION = "1"
LIFE_ERASURE = "15"

# EventOutcomeIndicator (PS3.15 A.5.1): 0 success, 4 minor failure (the request was refused or
# wrong; the archive is fine), 8 serious failure (the archive failed the request).
SUCCESS_INDICATOR = "0"
MINOR_FAILURE = "4"
SERIOUS_FAILURE = "8"
_SERIOUS = frozenset(
    {"INTERNAL", "UNKNOWN", "UNAVAILABLE", "DATA_LOSS", "DEADLINE_EXCEEDED", "UNIMPLEMENTED"}
)

# The most failed instances named in one EventOutcomeDescription.
_FAILED_NAMED = 20


@dataclass(frozen=True)
class AuditSource:
    """The archive, as the messages name it.

    Parameters
    ----------
    source_id
        The AuditSourceID (``--audit-source-id``; the host name by default).
    host
        The host name, the archive's NetworkAccessPointID.
    pid
        The process ID, the archive participant's AlternativeUserID (PS3.15 A.5.2.2).
    """

    source_id: str
    host: str
    pid: int

    @classmethod
    def local(cls, source_id: str = "") -> AuditSource:
        """The current process and host; an empty ``source_id`` means the host name."""
        host = socket.gethostname()
        return cls(source_id or host, host, os.getpid())


@dataclass(frozen=True)
class _Event:
    event_id: Code
    action_code: str
    caller_role: Code | None
    archive_role: Code | None


_CALLER_SENDS = (SOURCE_ROLE, DESTINATION_ROLE)
_CALLER_RECEIVES = (DESTINATION_ROLE, SOURCE_ROLE)
_EVENTS: dict[Action, _Event] = {
    Action.STORE: _Event(INSTANCES_TRANSFERRED, "C", *_CALLER_SENDS),
    Action.RETRIEVE: _Event(INSTANCES_TRANSFERRED, "R", *_CALLER_RECEIVES),
    Action.METADATA: _Event(INSTANCES_ACCESSED, "R", None, None),
    Action.FRAMES: _Event(INSTANCES_ACCESSED, "R", None, None),
    Action.RENDERED: _Event(INSTANCES_ACCESSED, "R", None, None),
    Action.BULKDATA: _Event(INSTANCES_ACCESSED, "R", None, None),
    # The archive read its records of the instances a storage commitment named.
    Action.COMMITMENT: _Event(INSTANCES_ACCESSED, "R", None, None),
    Action.SEARCH: _Event(QUERY, "E", *_CALLER_SENDS),
    Action.WORKITEM_SEARCH: _Event(QUERY, "E", *_CALLER_SENDS),
    Action.WORKITEM_SUBSCRIBE: _Event(QUERY, "E", *_CALLER_SENDS),
    Action.FEED_READ: _Event(QUERY, "E", *_CALLER_SENDS),
    Action.WORKITEM_CREATE: _Event(PROCEDURE_RECORD, "C", None, None),
    Action.WORKITEM_UPDATE: _Event(PROCEDURE_RECORD, "U", None, None),
    Action.WORKITEM_STATE: _Event(PROCEDURE_RECORD, "U", None, None),
    Action.WORKITEM_CANCEL_REQUEST: _Event(PROCEDURE_RECORD, "U", None, None),
    Action.WORKITEM_RETRIEVE: _Event(PROCEDURE_RECORD, "R", None, None),
}
_DELETE_STUDY = _Event(STUDY_DELETED, "D", None, None)
_DELETE_PART = _Event(INSTANCES_ACCESSED, "D", None, None)
_QUERY_SOP_CLASSES = {
    Action.SEARCH: STUDY_ROOT_FIND,
    Action.WORKITEM_SEARCH: UPS_PULL,
    Action.WORKITEM_SUBSCRIBE: UPS_WATCH,
}


def outcome_indicator(outcome: Outcome) -> str:
    """The EventOutcomeIndicator of an outcome."""
    if outcome.success:
        return SUCCESS_INDICATOR
    if outcome.code in _SERIOUS or outcome.reason == "STORAGE_FULL":
        return SERIOUS_FAILURE
    return MINOR_FAILURE


def messages(record: AuditRecord, source: AuditSource) -> list[bytes]:
    """The audit messages of ``record`` (none for an action without an A.5.3 event).

    A storage commitment that found none of its instances stored has none either: it read no
    study, and A.5.3.6 names at least one. The events that name studies name their patient
    too, and "shall only include information about a single patient" (PS3.15 A.5.3.6 to
    A.5.3.8): a record whose studies belong to several patients is one message per patient.
    """
    if record.action is Action.COMMITMENT and not record.instances:
        # Nothing stored was read: A.5.3.6 names at least one study (the JSON record remains).
        return []
    if record.action is Action.DELETE:
        whole_study = all(not i.series for i in record.instances)
        event = _DELETE_STUDY if whole_study else _DELETE_PART
    elif record.action in _EVENTS:
        event = _EVENTS[record.action]
    else:
        return []
    parts: list[tuple[Outcome, tuple[InstanceRef, ...]]] = [(record.outcome, record.instances)]
    if record.action is Action.STORE and record.failed:
        # The stored instances in one message, the failed in another (A.5.2).
        parts = [(SUCCESS, record.instances)] if record.instances else []
        parts.append((_store_failure(record), _failed_refs(record)))
    if event.event_id in (QUERY, PROCEDURE_RECORD):
        return [_message(record, o, refs, None, event, source) for o, refs in parts]
    patients = dict(record.patients)
    return [
        _message(record, outcome, group, patient, event, source)
        for outcome, refs in parts
        for patient, group in _by_patient(refs, patients)
    ]


def _failed_refs(record: AuditRecord) -> tuple[InstanceRef, ...]:
    return tuple(InstanceRef(f.study, "", f.sop, f.sop_class) for f in record.failed if f.study)


def _store_failure(record: AuditRecord) -> Outcome:
    """The outcome of a store's failed instances, naming them (the first few) and why."""
    named = ", ".join(
        f"{f.sop or '(unreadable)'} (0x{f.failure_reason:04X})"
        for f in record.failed[:_FAILED_NAMED]
    )
    more = len(record.failed) - _FAILED_NAMED
    text = f"{len(record.failed)} instances were not stored: {named}" + (
        f" and {more} more" if more > 0 else ""
    )
    return Outcome(code="FAILED_PRECONDITION", reason="INSTANCES_NOT_STORED", message=text)


def _by_patient(
    refs: tuple[InstanceRef, ...], patients: dict[str, Patient]
) -> list[tuple[Patient | None, tuple[InstanceRef, ...]]]:
    """``refs`` grouped by the patient of their study (None: not known), in first-seen order."""
    groups: dict[str, tuple[Patient | None, list[InstanceRef]]] = {}
    for ref in refs:
        patient = patients.get(ref.study)
        key = "" if patient is None else f"id:{patient.id}"
        groups.setdefault(key, (patient, []))[1].append(ref)
    if not groups:
        return [(None, ())]
    return [(patient, tuple(group)) for patient, group in groups.values()]


# Characters XML 1.0 cannot carry (§2.2): replaced, so that a UID or a message read from a
# request can never make a message unreadable.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _clean(text: str) -> str:
    return _NOT_XML.sub("?", text)


def _element(tag: str, attributes: dict[str, str], *children: str, text: str = "") -> str:
    """One XML element, its attributes quoted and its text escaped.

    Messages are built as text: on the audit threads, ElementTree's cost was the largest part
    of writing a record, and it competes with the calls for the interpreter.
    """
    opened = tag + "".join(f" {k}={quoteattr(_clean(v))}" for k, v in attributes.items())
    inner = "".join(children) + escape(_clean(text))
    return f"<{opened}>{inner}</{tag}>" if inner else f"<{opened}/>"


def _coded(tag: str, code: Code) -> str:
    value, scheme, meaning = code
    return _element(tag, {"csd-code": value, "codeSystemName": scheme, "originalText": meaning})


def _host(address: str) -> str:
    """The IP address of an ``ip:port`` address (``[v6]:port`` included)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return address
    return host[1:-1] if host.startswith("[") else host


def _message(
    record: AuditRecord,
    outcome: Outcome,
    instances: tuple[InstanceRef, ...],
    patient: Patient | None,
    event: _Event,
    source: AuditSource,
) -> bytes:
    description = ""
    if not outcome.success:
        text = " ".join(part for part in (outcome.code, outcome.reason, outcome.message) if part)
        description = _element("EventOutcomeDescription", {}, text=text)
    parts = [
        _element(
            "EventIdentification",
            {
                "EventActionCode": event.action_code,
                "EventDateTime": record.time.isoformat(timespec="milliseconds").replace(
                    "+00:00", "Z"
                ),
                "EventOutcomeIndicator": outcome_indicator(outcome),
            },
            _coded("EventID", event.event_id),
            description,
        ),
        _caller(record, event),
        _archive(record, event, source),
        _element(
            "AuditSourceIdentification",
            {"AuditSourceID": source.source_id},
            _element("AuditSourceTypeCode", {"csd-code": APPLICATION_SERVER}),
        ),
    ]
    if event.event_id != QUERY:
        parts += [_study(record.action, s, refs) for s, refs in _by_study(instances).items()]
    if patient is not None:
        parts.append(_patient(patient))
    if record.workitem:
        parts.append(_workitem(record.workitem))
    if event.event_id == QUERY:
        parts.append(_query(record))
    xml = '<?xml version="1.0" encoding="UTF-8"?>' + _element("AuditMessage", {}, *parts)
    return xml.encode()


def _caller(record: AuditRecord, event: _Event) -> str:
    """The requestor: the caller's identity (its address when anonymous), from its address.

    PS3.15 A.5.2.1: the UserID identifies the user on this system; an anonymous caller is
    known only by its network access point, which is then its UserID too.
    """
    caller = record.caller
    host = _host(caller.address)
    attributes = {
        "UserID": host if caller.kind == "anonymous" else caller.identity,
        "UserName": caller.identity,
        "UserIsRequestor": "true",
    }
    if host:
        attributes |= {"NetworkAccessPointID": host, "NetworkAccessPointTypeCode": "2"}
    role = "" if event.caller_role is None else _coded("RoleIDCode", event.caller_role)
    return _element("ActiveParticipant", attributes, role)


def _archive(record: AuditRecord, event: _Event, source: AuditSource) -> str:
    """The archive: the endpoint called, this process, this host; never the requestor."""
    role = "" if event.archive_role is None else _coded("RoleIDCode", event.archive_role)
    return _element(
        "ActiveParticipant",
        {
            "UserID": record.endpoint,
            "AlternativeUserID": str(source.pid),
            "UserIsRequestor": "false",
            "NetworkAccessPointID": source.host,
            "NetworkAccessPointTypeCode": "1",
        },
        role,
    )


def _by_study(instances: Iterable[InstanceRef]) -> dict[str, list[InstanceRef]]:
    grouped: dict[str, list[InstanceRef]] = defaultdict(list)
    for ref in instances:
        if ref.study:
            grouped[ref.study].append(ref)
    return grouped


def _study(action: Action, study: str, refs: list[InstanceRef]) -> str:
    """A study participant object (ParticipantObjectIDTypeCode 110180).

    Its ParticipantObjectDescription lists the SOP Classes with their instance counts where
    they are known (a store), and names the instances a request named (PS3.15 A.5.2, SOPClass).
    """
    attributes = {
        "ParticipantObjectID": study,
        "ParticipantObjectTypeCode": SYSTEM_OBJECT,
        "ParticipantObjectTypeCodeRole": ROLE_REPORT,
    }
    if action is Action.STORE:
        attributes["ParticipantObjectDataLifeCycle"] = LIFE_ORIGINATION
    elif action is Action.DELETE:
        attributes["ParticipantObjectDataLifeCycle"] = LIFE_ERASURE
    by_class: dict[str, list[str]] = defaultdict(list)
    for ref in refs:
        if ref.sop:
            by_class[ref.sop_class].append(ref.sop)
    classes = []
    for sop_class, sops in by_class.items():
        counted = {"NumberOfInstances": str(len(sops))}
        if sop_class:
            counted["UID"] = sop_class
        # A request names few instances, each listed; a store may hold thousands, counted.
        listed = [] if action is Action.STORE else [_element("Instance", {"UID": s}) for s in sops]
        classes.append(_element("SOPClass", counted, *listed))
    description = _element("ParticipantObjectDescription", {}, *classes) if classes else ""
    return _element(
        "ParticipantObjectIdentification",
        attributes,
        _coded("ParticipantObjectIDTypeCode", STUDY_INSTANCE_UID),
        _element("ParticipantObjectName", {}, text=study),
        description,
    )


def _patient(patient: Patient) -> str:
    """The patient participant object: Person, Patient, its Patient ID (PS3.15 A.5.3.7)."""
    return _element(
        "ParticipantObjectIdentification",
        {
            "ParticipantObjectID": patient.id,
            "ParticipantObjectTypeCode": PERSON,
            "ParticipantObjectTypeCodeRole": ROLE_PATIENT,
        },
        _coded("ParticipantObjectIDTypeCode", PATIENT_NUMBER),
        _element("ParticipantObjectName", {}, text=patient.name or patient.id),
    )


def _workitem(uid: str) -> str:
    """The workitem (a UPS instance) as a participant object: its URI, named by its UID."""
    return _element(
        "ParticipantObjectIdentification",
        {
            "ParticipantObjectID": f"workitems/{uid}",
            "ParticipantObjectTypeCode": SYSTEM_OBJECT,
            "ParticipantObjectTypeCodeRole": ROLE_JOB,
        },
        _coded("ParticipantObjectIDTypeCode", URI),
        _element("ParticipantObjectName", {}, text=uid),
    )


def _query(record: AuditRecord) -> str:
    """The query (PS3.15 A.5.3.10): the SOP Class queried, the query itself in base64.

    A change feed read is a query of no SOP Class (A.5.3.10 note 2): it is identified by the
    endpoint's URI instead.
    """
    sop_class = _QUERY_SOP_CLASSES.get(record.action)
    terms = list(record.query)
    terms += [("StudyInstanceUID", s) for s in record.studies]
    terms += [("SeriesInstanceUID", i.series) for i in record.instances if i.series]
    text = base64.b64encode(urlencode(terms).encode()).decode()
    return _element(
        "ParticipantObjectIdentification",
        {
            "ParticipantObjectID": sop_class or record.endpoint,
            "ParticipantObjectTypeCode": SYSTEM_OBJECT,
            "ParticipantObjectTypeCodeRole": ROLE_REPORT if sop_class else ROLE_QUERY,
        },
        _coded("ParticipantObjectIDTypeCode", SOP_CLASS_UID if sop_class else URI),
        _element("ParticipantObjectQuery", {}, text=text),
    )
