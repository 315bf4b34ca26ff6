"""Checks of audit output for tests: the PS3.15 A.5 structure of audit messages, and syslog.

Every message is validated against the RELAX NG schema of PS3.15 A.5.1 (``audit_message.rng``)
and then against the per-event tables of A.5.3 that the schema cannot express: the EventID and
EventActionCode of the event, the one requestor among the active participants, the roles the
event requires, and the participant objects it names.
"""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

from lxml import etree

SCHEMA = etree.RelaxNG(etree.parse(str(Path(__file__).with_name("audit_message.rng"))))

# PS3.15 A.5.3: event → (EventID code, allowed EventActionCodes).
EVENTS = {
    "transferred": ("110104", {"C", "R", "U"}),
    "accessed": ("110103", {"C", "R", "U", "D"}),
    "study-deleted": ("110105", {"D"}),
    "query": ("110112", {"E"}),
    "procedure": ("110111", {"C", "R", "U", "D"}),
}
SOURCE, DESTINATION = "110153", "110152"
STUDY_UID_TYPE, SOP_CLASS_TYPE = "110180", "110181"

# RFC 5424 §6: <PRI>VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP SD SP MSG
SYSLOG = re.compile(
    rb"<(?P<pri>\d{1,3})>1 (?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z) "
    rb"(?P<host>[!-~]{1,255}) (?P<app>[!-~]{1,48}) (?P<proc>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) "
    rb"- \xef\xbb\xbf(?P<msg>.*)\Z",
    re.DOTALL,
)


@dataclass
class Message:
    """One parsed audit message."""

    root: ET.Element
    pri: int

    @property
    def event_id(self) -> str:
        return self.root.find("EventIdentification/EventID").get("csd-code")  # type: ignore[union-attr]

    @property
    def action_code(self) -> str:
        return self.root.find("EventIdentification").get("EventActionCode", "")  # type: ignore[union-attr]

    @property
    def outcome(self) -> str:
        return self.root.find("EventIdentification").get("EventOutcomeIndicator", "")  # type: ignore[union-attr]

    @property
    def description(self) -> str:
        element = self.root.find("EventIdentification/EventOutcomeDescription")
        return "" if element is None else element.text or ""

    def participants(self) -> list[ET.Element]:
        return self.root.findall("ActiveParticipant")

    def requestor(self) -> ET.Element:
        requestors = [p for p in self.participants() if p.get("UserIsRequestor") == "true"]
        assert len(requestors) == 1, "PS3.15 A.5.2: exactly one participant is the requestor"
        return requestors[0]

    def objects(self, id_type: str) -> list[ET.Element]:
        return [
            o
            for o in self.root.findall("ParticipantObjectIdentification")
            if o.find("ParticipantObjectIDTypeCode").get("csd-code") == id_type  # type: ignore[union-attr]
        ]

    def patient(self) -> tuple[str, str] | None:
        """The patient participant object's ID and name (PS3.15 A.5.3.7), if there is one."""
        patients = self.objects("2")
        assert len(patients) <= 1, "these messages include a single patient"
        if not patients:
            return None
        patient = patients[0]
        assert patient.get("ParticipantObjectTypeCode") == "1"
        assert patient.get("ParticipantObjectTypeCodeRole") == "1"
        name = patient.find("ParticipantObjectName")
        return patient.get("ParticipantObjectID", ""), "" if name is None else name.text or ""

    def studies(self) -> list[str]:
        return [o.get("ParticipantObjectID", "") for o in self.objects(STUDY_UID_TYPE)]

    def sop_classes(self, study: str) -> dict[str, int]:
        for o in self.objects(STUDY_UID_TYPE):
            if o.get("ParticipantObjectID") == study:
                return {
                    c.get("UID", ""): int(c.get("NumberOfInstances", "0"))
                    for c in o.findall("ParticipantObjectDescription/SOPClass")
                }
        raise AssertionError(f"no participant object for study {study}")

    def query(self) -> dict[str, str]:
        objects = self.root.findall("ParticipantObjectIdentification")
        for o in objects:
            element = o.find("ParticipantObjectQuery")
            if element is not None:
                return dict(parse_qsl(base64.b64decode(element.text or "").decode()))
        raise AssertionError("no ParticipantObjectQuery")


def check_message(xml: bytes, event: str) -> Message:
    """Validate one audit message as PS3.15 A.5 asks, for the A.5.3 ``event``."""
    document = etree.fromstring(xml)
    assert SCHEMA.validate(document), SCHEMA.error_log.last_error
    root = ET.fromstring(xml)
    message = Message(root, 0)
    code, actions = EVENTS[event]
    event_id = root.find("EventIdentification/EventID")
    assert event_id is not None
    assert (event_id.get("csd-code"), event_id.get("codeSystemName")) == (code, "DCM")
    assert message.action_code in actions
    assert root.find("EventIdentification").get("EventDateTime", "").endswith("Z")  # type: ignore[union-attr]
    message.requestor()
    if message.outcome != "0":
        assert message.description, "a failure says what failed"
    roles = {r.get("csd-code") for p in message.participants() for r in p.findall("RoleIDCode")}
    if event in ("transferred", "query"):
        assert {SOURCE, DESTINATION} <= roles, "A.5.3.7 and A.5.3.10 name source and destination"
    if event in ("transferred", "accessed", "study-deleted"):
        assert message.studies(), "these events name the studies (110180)"
        message.patient()
    if event == "query":
        message.query()
    for study in message.objects(STUDY_UID_TYPE):
        assert study.get("ParticipantObjectTypeCode") == "2"
        assert study.get("ParticipantObjectTypeCodeRole") == "3"
    return message


def parse_syslog(data: bytes) -> tuple[int, bytes]:
    """The PRI and MSG of one RFC 5424 message (the MSG after its BOM)."""
    match = SYSLOG.match(data)
    assert match, f"not an RFC 5424 message: {data[:120]!r}"
    assert match.group("app") == b"dicomrpc"
    assert match.group("msgid") == b"IHE+RFC-3881"
    pri = int(match.group("pri"))
    assert pri // 8 == 10, "facility 10 (security/authorization), as IHE ATNA sends"
    return pri, match.group("msg")


def split_octet_counted(stream: bytes) -> tuple[list[bytes], bytes]:
    """The complete RFC 6587 octet-counted frames of a TCP stream, and what remains."""
    frames = []
    while True:
        length, space, rest = stream.partition(b" ")
        if not space or not length.isdigit() or len(rest) < int(length):
            return frames, stream
        frames.append(rest[: int(length)])
        stream = rest[int(length) :]
