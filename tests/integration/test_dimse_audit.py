"""DIMSE operations in the audit trail: the records the gRPC and DICOMweb adapters write."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom.data
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from tests import dcmtk
from tests.conftest import RunningServer, start_server
from tests.integration.test_audit import UdpReceiver, atna, event_of, wait_for
from tests.upsgen import workitem

DATA = Path(pydicom.data.__file__).parent / "test_files"
CT, MR = DATA / "CT_small.dcm", DATA / "MR_small.dcm"
UPS_PUSH, UPS_PULL = "1.2.840.10008.5.1.4.34.6.1", "1.2.840.10008.5.1.4.34.6.3"
MWL = "1.2.840.10008.5.1.4.31"


@pytest.fixture
def audited(tmp_path: Path) -> Iterator[RunningServer]:
    server = start_server(tmp_path / "data", dimse_port=0, audit_log=tmp_path / "audit.jsonl")
    yield server
    server.stop()


def records(server: RunningServer, count: int) -> list[dict[str, Any]]:
    """The audit log's records, once it holds ``count`` (they are written off the call)."""
    path = server.settings.audit_log
    assert path is not None
    deadline = time.monotonic() + 10
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.05)


def test_an_association_store_a_query_and_a_retrieve_are_audited(
    audited: RunningServer, tmp_path: Path
) -> None:
    dcmtk.require_dcmtk()
    port = audited.dimse_port
    ct = dcmread(CT)
    changed = tmp_path / "changed.dcm"  # CT's SOP Instance UID with other content: 45070
    ct.PatientWeight = 99
    ct.save_as(changed)
    ct = dcmread(CT)
    stored = dcmtk.run("storescu", "-d", "-R", *dcmtk.peer(port), CT, MR, changed)
    assert dcmtk.statuses(stored.stdout) == [0x0000, 0x0000, 0x0111]
    dcmtk.run(
        "findscu",
        *("-S", "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID={ct.PatientID}"),
        *dcmtk.peer(port),
    )
    (tmp_path / "got").mkdir()
    dcmtk.run(
        "getscu",
        *("-od", str(tmp_path / "got"), "-k", "QueryRetrieveLevel=STUDY"),
        *("-k", f"StudyInstanceUID={ct.StudyInstanceUID}"),
        *dcmtk.peer(port),
    )
    store, search, retrieve = records(audited, 3)
    for record in (store, search, retrieve):
        assert record["adapter"] == "dimse"
        assert record["kind"] == "anonymous" and record["address"].startswith("127.0.0.1:")
    # One record for the association's stores: two stored, the repeated one failed.
    assert store["action"] == "store" and store["identity"] == "STORESCU"
    assert store["outcome"] == "success"
    assert sorted(store["instances"]) == sorted(
        [str(ct.SOPInstanceUID), str(dcmread(MR).SOPInstanceUID)]
    )
    assert store["failed_instances"] == [
        {"sop_instance_uid": str(ct.SOPInstanceUID), "failure_reason": 45070}
    ]
    assert str(ct.PatientID) in store["patients"]
    assert search["action"] == "search" and search["identity"] == "FINDSCU"
    assert search["query"] == {"QueryRetrieveLevel": "STUDY", "00100020": str(ct.PatientID)}
    assert retrieve["action"] == "retrieve" and retrieve["identity"] == "GETSCU"
    assert retrieve["studies"] == [str(ct.StudyInstanceUID)]
    assert retrieve["instances"] == [str(ct.SOPInstanceUID)]
    assert retrieve["patients"] == [str(ct.PatientID)]


def test_dimse_records_are_valid_dicom_audit_messages(tmp_path: Path) -> None:
    dcmtk.require_dcmtk()
    receiver = UdpReceiver()
    server = start_server(
        tmp_path / "data",
        dimse_port=0,
        audit_syslog=f"127.0.0.1:{receiver.port}",
        audit_syslog_protocol="udp",
    )
    try:
        dcmtk.run("storescu", "-R", *dcmtk.peer(server.dimse_port), CT)
        dcmtk.run("findscu", "-S", "-k", "QueryRetrieveLevel=STUDY", *dcmtk.peer(server.dimse_port))
        wait_for(lambda: len(receiver.messages()) == 2, "two datagrams")
    finally:
        server.stop()
        receiver.close()
    messages = atna(receiver.messages())
    stored = event_of(messages, "transferred")  # validated against PS3.15 A.5.1 and A.5.3
    assert stored.studies() == [str(dcmread(CT).StudyInstanceUID)]
    assert stored.requestor().get("UserName") == "STORESCU"
    event_of(messages, "query")


def test_ups_and_worklist_operations_are_audited(audited: RunningServer) -> None:
    uid, lock = str(generate_uid()), str(generate_uid())
    ae = AE(ae_title="PERFORMER")
    for sop_class in (UPS_PUSH, UPS_PULL, MWL):
        ae.add_requested_context(sop_class)
    assoc = ae.associate("127.0.0.1", audited.dimse_port, ae_title="DICOMRPC")
    assert assoc.is_established
    try:
        created = assoc.send_n_create(Dataset.from_json(workitem()), UPS_PUSH, uid)[0]
        assert created.Status == 0x0000
        claim = Dataset()
        claim.ProcedureStepState = "IN PROGRESS"
        claim.TransactionUID = lock
        assert assoc.send_n_action(claim, 1, UPS_PULL, uid)[0].Status == 0x0000
        claim.TransactionUID = str(generate_uid())
        assert assoc.send_n_action(claim, 1, UPS_PULL, uid)[0].Status == 0xC302
        query = Dataset()
        query.PatientID = "P-1"
        assert [s.Status for s, _ in assoc.send_c_find(query, UPS_PULL)][-1] == 0x0000
        assert [s.Status for s, _ in assoc.send_c_find(query, MWL)][-1] == 0x0000
    finally:
        assoc.release()
    create, state, refused, search, worklist = records(audited, 5)
    for record in (create, state, refused, search, worklist):
        assert record["adapter"] == "dimse" and record["identity"] == "PERFORMER"
    assert (create["action"], create["workitem"], create["outcome"]) == (
        "workitem-create",
        uid,
        "success",
    )
    assert (state["action"], state["workitem"], state["outcome"]) == (
        "workitem-state",
        uid,
        "success",
    )
    assert refused["action"] == "workitem-state" and refused["outcome"] != "success"
    assert refused["reason"] == "WORKITEM_STATE_CONFLICT"
    assert search["action"] == "workitem-search" and search["query"] == {"00100020": "P-1"}
    assert worklist["action"] == "workitem-search"
    assert worklist["query"] == {"00100020": "P-1", "00741000": "SCHEDULED"}


def test_ups_records_are_valid_dicom_audit_messages(tmp_path: Path) -> None:
    receiver = UdpReceiver()
    server = start_server(
        tmp_path / "data",
        dimse_port=0,
        audit_syslog=f"127.0.0.1:{receiver.port}",
        audit_syslog_protocol="udp",
    )
    uid = str(generate_uid())
    try:
        ae = AE(ae_title="PERFORMER")
        ae.add_requested_context(UPS_PUSH)
        ae.add_requested_context(UPS_PULL)
        assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="DICOMRPC")
        assert assoc.is_established
        try:
            assert assoc.send_n_create(Dataset.from_json(workitem()), UPS_PUSH, uid)[0].Status == 0
            query = Dataset()
            query.PatientID = "P-1"
            assert [s.Status for s, _ in assoc.send_c_find(query, UPS_PULL)][-1] == 0
        finally:
            assoc.release()
        wait_for(lambda: len(receiver.messages()) == 2, "two datagrams")
    finally:
        server.stop()
        receiver.close()
    messages = atna(receiver.messages())
    created = event_of(messages, "procedure", workitem=uid)  # validated (PS3.15 A.5.3.15)
    assert created.requestor().get("UserName") == "PERFORMER"
    event_of(messages, "query")
