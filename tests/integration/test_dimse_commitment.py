"""Storage Commitment Push Model (PS3.4 Annex J) from a pynetdicom requester.

dcmtk has no storage commitment tool: a pynetdicom SCU sends the N-ACTION, and receives the
N-EVENT-REPORT on its own association, or, once it has released it, as a pynetdicom SCP
registered as a peer under the requester's AE title.
"""

from __future__ import annotations

import io
import json
import queue
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom.data
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import N_ACTION, N_EVENT_REPORT
from pynetdicom.dsutils import encode
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer

from dicomrpc import Client
from tests.conftest import RunningServer, start_server

DATA = Path(pydicom.data.__file__).parent / "test_files"
CT, MR = DATA / "CT_small.dcm", DATA / "MR_small.dcm"
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
VERIFICATION = "1.2.840.10008.1.1"
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUESTER = "MODALITY"
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
SOP_CLASS_NOT_SUPPORTED = 0x0122
REPORT_WAIT_S = 30


@dataclass(frozen=True)
class Report:
    """An N-EVENT-REPORT as received: on which association, its Event Type and data set."""

    assoc: Association
    event_type: int
    info: Dataset


class Reports:
    """An EVT_N_EVENT_REPORT handler that keeps what it receives, answering 0x0000."""

    def __init__(self) -> None:
        self.received: queue.Queue[Report] = queue.Queue()

    def __call__(self, event: Event) -> tuple[int, None]:
        request = event.request
        assert isinstance(request, N_EVENT_REPORT)
        event_type = int(request.EventTypeID or 0)
        self.received.put(Report(event.assoc, event_type, event.event_information))
        return 0x0000, None

    def next(self, timeout: float = REPORT_WAIT_S) -> Report:
        return self.received.get(timeout=timeout)


@dataclass(frozen=True)
class ReportScp:
    """A pynetdicom SCP taking reports on associations the archive requests."""

    reports: Reports
    server: ThreadedAssociationServer

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])


@pytest.fixture(scope="module")
def scp() -> Iterator[ReportScp]:
    ae = AE(ae_title=REQUESTER)
    # Accept the archive's proposal to act as the Storage Commitment SCP (PS3.4 J.3.3.1.3).
    ae.add_supported_context(STORAGE_COMMITMENT, scu_role=False, scp_role=True)
    reports = Reports()
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports)]
    )
    assert server is not None
    yield ReportScp(reports, server)
    server.shutdown()


@dataclass(frozen=True)
class Stored:
    """The two instances the archive holds: (SOP Class UID, SOP Instance UID) each."""

    ct: tuple[str, str]
    mr: tuple[str, str]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, scp: ReportScp) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("dimse_commitment")
    server = start_server(
        folder / "data",
        dimse_port=0,
        dimse_peers=(("modality", REQUESTER, "127.0.0.1", scp.port),),
        audit_log=folder / "audit.jsonl",
    )
    with Client(server.target) as client:
        assert client.store([CT, MR]).status == "all_stored"
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stored() -> Stored:
    ct, mr = dcmread(CT), dcmread(MR)
    return Stored(
        (str(ct.SOPClassUID), str(ct.SOPInstanceUID)),
        (str(mr.SOPClassUID), str(mr.SOPInstanceUID)),
    )


def associate(
    archive: RunningServer, title: str, reports: Reports | None, roles: bool = False
) -> Association:
    """A requester's association; ``roles`` proposes both roles for Storage Commitment."""
    ae = AE(ae_title=title)
    ae.add_requested_context(STORAGE_COMMITMENT)
    ae.add_requested_context(VERIFICATION)
    handlers: list[EventHandlerType] = []
    if reports is not None:
        handlers.append((evt.EVT_N_EVENT_REPORT, reports))
    ext_neg: list[Any] = [build_role(STORAGE_COMMITMENT, scu_role=True, scp_role=True)]
    assoc = ae.associate(
        "127.0.0.1",
        archive.dimse_port,
        ae_title="DICOMRPC",
        ext_neg=ext_neg if roles else None,
        evt_handlers=handlers,
    )
    assert assoc.is_established
    return assoc


def action(
    assoc: Association,
    transaction: str | None,
    references: list[tuple[str, str]],
    action_type: int = 1,
    instance: str = WELL_KNOWN_INSTANCE,
) -> int:
    """Send a Storage Commitment Request; the N-ACTION response's status."""
    info = Dataset()
    if transaction is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a malformed UID, sent on purpose
            info.TransactionUID = transaction
    items = []
    for sop_class, sop_instance in references:
        item = Dataset()
        if sop_class:
            item.ReferencedSOPClassUID = sop_class
        if sop_instance:
            item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    info.ReferencedSOPSequence = items
    status, _ = assoc.send_n_action(info, action_type, STORAGE_COMMITMENT, instance)
    return int(status.Status)


def request_and_leave(
    assoc: Association, transaction: str, references: list[tuple[str, str]]
) -> None:
    """Send a Storage Commitment Request and release at once, not waiting for the response.

    A requester that releases only once the response is in races the report the archive may
    send on the association right after it (pynetdicom's requester fails on a request that
    comes while it releases); one that leaves at once has its release read first.
    """
    (context,) = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == STORAGE_COMMITMENT]
    info = Dataset()
    info.TransactionUID = transaction
    items = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
        items.append(item)
    info.ReferencedSOPSequence = items
    request = N_ACTION()
    request.MessageID = 1
    request.RequestedSOPClassUID = STORAGE_COMMITMENT
    request.RequestedSOPInstanceUID = WELL_KNOWN_INSTANCE
    request.ActionTypeID = 1
    implicit = context.transfer_syntax[0] == ImplicitVRLittleEndian
    encoded = encode(info, implicit, True)
    assert encoded is not None
    request.ActionInformation = io.BytesIO(encoded)
    assoc.dimse.send_msg(request, int(context.context_id or 0))
    assoc.release()


def listed(info: Dataset, keyword: str) -> list[tuple[str, str, int | None]]:
    """A report's sequence as (class, instance, Failure Reason or None) items."""
    return [
        (
            str(item.ReferencedSOPClassUID),
            str(item.ReferencedSOPInstanceUID),
            int(item.FailureReason) if "FailureReason" in item else None,
        )
        for item in info.get(keyword, [])
    ]


def audit_records(archive: RunningServer, transaction: str) -> list[dict[str, Any]]:
    """The audit records of one transaction, once written (they are written off the call)."""
    path = archive.settings.audit_log
    assert path is not None
    deadline = time.monotonic() + 10
    while True:
        found = [
            record
            for line in path.read_text().splitlines()
            if (record := json.loads(line))["query"].get("TransactionUID") == transaction
        ]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.mark.parametrize("roles", [False, True], ids=["default-roles", "both-roles-proposed"])
def test_the_report_comes_on_the_requesters_association(
    archive: RunningServer, scp: ReportScp, stored: Stored, roles: bool
) -> None:
    reports = Reports()
    assoc = associate(archive, REQUESTER, reports, roles)
    unknown = (stored.ct[0], "1.2.826.0.1.3680043.2.1143.999999.1")
    wrong_class = (stored.mr[0], stored.ct[1])  # the CT instance, named as an MR
    unsupported = ("1.2.3.4.5.6", "1.2.826.0.1.3680043.2.1143.999999.2")
    transaction = f"1.2.826.0.1.3680043.2.1143.7.{int(roles)}"
    try:
        asked = [stored.ct, unknown, stored.mr, wrong_class, unsupported]
        assert action(assoc, transaction, asked) == 0x0000
        report = reports.next()
        assert report.assoc is assoc
        assert report.event_type == 2
        assert report.info.TransactionUID == transaction
        assert report.info.RetrieveAETitle == "DICOMRPC"
        assert listed(report.info, "ReferencedSOPSequence") == [
            (*stored.ct, None),
            (*stored.mr, None),
        ]
        assert listed(report.info, "FailedSOPSequence") == [
            (*unknown, NO_SUCH_OBJECT_INSTANCE),
            (*wrong_class, CLASS_INSTANCE_CONFLICT),
            (*unsupported, SOP_CLASS_NOT_SUPPORTED),
        ]
        # Every instance committed: Event Type 1, no Failed SOP Sequence.
        assert action(assoc, transaction + ".1", [stored.mr, stored.ct]) == 0x0000
        report = reports.next()
        assert (report.event_type, report.info.TransactionUID) == (1, transaction + ".1")
        assert listed(report.info, "ReferencedSOPSequence") == [
            (*stored.mr, None),
            (*stored.ct, None),
        ]
        assert "FailedSOPSequence" not in report.info
        # The association goes on after the reports.
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    # Delivered once: the registered peer of the same AE title got nothing.
    assert scp.reports.received.empty()
    (record,) = audit_records(archive, transaction)
    assert record["action"] == "commitment" and record["outcome"] == "success"
    assert record["identity"] == REQUESTER
    assert record["instances"] == [stored.ct[1], stored.mr[1]]
    assert [f["failure_reason"] for f in record["failed_instances"]] == [0x0112, 0x0119, 0x0122]


def test_a_released_requester_gets_the_report_on_a_new_association(
    archive: RunningServer, scp: ReportScp, stored: Stored
) -> None:
    assoc = associate(archive, REQUESTER, None)
    transaction = "1.2.826.0.1.3680043.2.1143.8"
    unknown = (stored.ct[0], "1.2.826.0.1.3680043.2.1143.999999.3")
    request_and_leave(assoc, transaction, [stored.ct, unknown])
    report = scp.reports.next()
    assert report.event_type == 2
    assert report.info.TransactionUID == transaction
    assert listed(report.info, "ReferencedSOPSequence") == [(*stored.ct, None)]
    assert listed(report.info, "FailedSOPSequence") == [(*unknown, NO_SUCH_OBJECT_INSTANCE)]
    # The archive called the registered AE title, from its own, as the Storage Commitment SCP.
    assert str(report.assoc.requestor.ae_title) == "DICOMRPC"
    (context,) = report.assoc.accepted_contexts
    assert context.abstract_syntax == STORAGE_COMMITMENT
    assert (context.as_scu, context.as_scp) == (True, False)  # the receiver's roles
    (record,) = audit_records(archive, transaction)
    assert record["outcome"] == "success"


def test_an_unknown_requester_that_left_gets_no_report_and_the_audit_says_so(
    archive: RunningServer, scp: ReportScp, stored: Stored
) -> None:
    assoc = associate(archive, "STRANGER", None)
    transaction = "1.2.826.0.1.3680043.2.1143.9"
    request_and_leave(assoc, transaction, [stored.ct])
    (record,) = audit_records(archive, transaction)
    assert record["identity"] == "STRANGER"
    assert record["outcome"] == "failure" and record["reason"] == "REPORT_NOT_DELIVERED"
    assert "STRANGER" in record["message"]
    assert scp.reports.received.empty()


def test_a_malformed_request_is_refused_and_the_association_goes_on(
    archive: RunningServer, stored: Stored
) -> None:
    reports = Reports()
    assoc = associate(archive, REQUESTER, reports)
    transaction = "1.2.826.0.1.3680043.2.1143.10"
    try:
        assert action(assoc, None, [stored.ct]) == 0x0115  # no Transaction UID
        assert action(assoc, "1.2..3", [stored.ct]) == 0x0115  # not a UID
        assert action(assoc, transaction, []) == 0x0115  # nothing referenced
        assert action(assoc, transaction, [("", stored.ct[1])]) == 0x0115  # no class
        assert action(assoc, transaction, [stored.ct], action_type=2) == 0x0123
        assert action(assoc, transaction, [stored.ct], instance="1.2.3") == 0x0112
        with pytest.raises(queue.Empty):
            reports.next(timeout=0.5)  # a refused request has no report
        assert action(assoc, transaction, [stored.ct]) == 0x0000
        report = reports.next()
        assert (report.event_type, report.info.TransactionUID) == (1, transaction)
    finally:
        assoc.release()
