"""Workitems over gRPC: the state machine cell by cell, locking under races, create rules,
updates, search, and persistence across a restart."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from pydicom.uid import generate_uid

from dicomrpc import Client, DicomRpcError
from dicomrpc.datasets import from_json, to_json
from dicomrpc.v1 import workitem_service_pb2 as pb
from dicomrpc_server.dicom.attributes import Level
from dicomrpc_server.query.terms import EXACT
from tests.conftest import RunningServer, start_server
from tests.upsgen import code, dataset, discontinued, performed, tag, workitem

TRANSACTION_UID = tag("TransactionUID")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """One server for the many cells of the state table (each cell has its own workitem)."""
    running = start_server(tmp_path_factory.mktemp("ups") / "data")
    with Client(running.target) as client:
        yield client
    running.stop()


# -- the state table ---------------------------------------------------------------------------

LOCK = "1.2.826.0.1.3680043.10.1.1"
OTHER = "1.2.826.0.1.3680043.10.1.2"


def in_state(client: Client, state: str) -> str:
    """A fresh workitem in ``state``, locked by LOCK once claimed; final requirements met."""
    uid = client.workitems.create(workitem(**_final_ready())).workitem_uid
    if state == "SCHEDULED":
        return uid
    client.workitems.claim(uid, LOCK)
    if state == "COMPLETED":
        client.workitems.complete(uid, LOCK)
    elif state == "CANCELED":
        client.workitems.cancel(uid, LOCK)
    return uid


def _final_ready() -> dict[str, object]:
    """Create attributes that already meet both final states' requirements."""
    progress = discontinued()[tag("ProcedureStepProgressInformationSequence")]["Value"]
    done = performed()[tag("UnifiedProcedureStepPerformedProcedureSequence")]["Value"]
    return {
        "ProcedureStepProgressInformationSequence": [progress[0]],
        "UnifiedProcedureStepPerformedProcedureSequence": [done[0]],
    }


@dataclass(frozen=True)
class Cell:
    """One cell: in ``state``, do ``operation`` with the Transaction UID ``txn``; expect."""

    state: str
    operation: str
    txn: str  # "lock" (the workitem's own; a new one when SCHEDULED), "missing", "other"
    status: int  # the DICOM status of the failure, or the warning, or 0
    after: str  # the state after the call


def _cells() -> list[Cell]:
    rows = {
        # operation: {state: {txn: (status, after)}}
        "claim": {
            "SCHEDULED": {"lock": (0, "IN PROGRESS"), "missing": (0xC301, "SCHEDULED"),
                          "other": (0, "IN PROGRESS")},
            "IN PROGRESS": dict.fromkeys(("lock", "missing", "other"), (0xC302, "IN PROGRESS")),
            "COMPLETED": dict.fromkeys(("lock", "missing", "other"), (0xC300, "COMPLETED")),
            "CANCELED": dict.fromkeys(("lock", "missing", "other"), (0xC300, "CANCELED")),
        },
        "complete": {
            "SCHEDULED": dict.fromkeys(("lock", "missing", "other"), (0xC310, "SCHEDULED")),
            "IN PROGRESS": {"lock": (0, "COMPLETED"), "missing": (0xC301, "IN PROGRESS"),
                            "other": (0xC301, "IN PROGRESS")},
            "COMPLETED": dict.fromkeys(("lock", "missing", "other"), (0xB306, "COMPLETED")),
            "CANCELED": dict.fromkeys(("lock", "missing", "other"), (0xC300, "CANCELED")),
        },
        "cancel": {
            "SCHEDULED": dict.fromkeys(("lock", "missing", "other"), (0xC310, "SCHEDULED")),
            "IN PROGRESS": {"lock": (0, "CANCELED"), "missing": (0xC301, "IN PROGRESS"),
                            "other": (0xC301, "IN PROGRESS")},
            "COMPLETED": dict.fromkeys(("lock", "missing", "other"), (0xC311, "COMPLETED")),
            "CANCELED": dict.fromkeys(("lock", "missing", "other"), (0xB304, "CANCELED")),
        },
        "schedule": {
            state: dict.fromkeys(("lock", "missing", "other"), (0xC303, state))
            for state in ("SCHEDULED", "IN PROGRESS", "COMPLETED", "CANCELED")
        },
        "update": {
            "SCHEDULED": dict.fromkeys(("lock", "missing", "other"), (0, "SCHEDULED")),
            "IN PROGRESS": {"lock": (0, "IN PROGRESS"), "missing": (0xC301, "IN PROGRESS"),
                            "other": (0xC301, "IN PROGRESS")},
            "COMPLETED": dict.fromkeys(("lock", "missing", "other"), (0xC300, "COMPLETED")),
            "CANCELED": dict.fromkeys(("lock", "missing", "other"), (0xC300, "CANCELED")),
        },
    }  # fmt: skip
    return [
        Cell(state, operation, txn, status, after)
        for operation, by_state in rows.items()
        for state, by_txn in by_state.items()
        for txn, (status, after) in by_txn.items()
    ]


_TARGETS = {"claim": "IN PROGRESS", "complete": "COMPLETED", "cancel": "CANCELED",
            "schedule": "SCHEDULED"}  # fmt: skip


@pytest.mark.parametrize("cell", _cells(), ids=lambda c: f"{c.state}-{c.operation}-{c.txn}")
def test_state_table(shared: Client, cell: Cell) -> None:
    uid = in_state(shared, cell.state)
    txn = {"lock": LOCK, "missing": "", "other": OTHER}[cell.txn]
    if cell.state == "SCHEDULED" and cell.txn == "lock":
        txn = str(generate_uid())  # no lock yet: a performer's new Transaction UID
    call: Callable[[], object]
    if cell.operation == "update":
        changes = dataset(ProcedureStepLabel="relabelled")
        call = lambda: shared.workitems.update(uid, changes, txn)  # noqa: E731
    else:
        target = _TARGETS[cell.operation]
        call = lambda: shared.workitems.change_state(uid, target, txn)  # noqa: E731
    if cell.status and cell.status < 0xC000:  # a warning: the call succeeds
        result = call()
        assert getattr(result, "warning_status") == cell.status  # noqa: B009
    elif cell.status:
        with pytest.raises(DicomRpcError) as caught:
            call()
        assert caught.value.dicom_status == cell.status, caught.value
        assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
        if cell.status == 0xC301:
            problem = "missing" if cell.txn == "missing" else "wrong"
            assert caught.value.metadata["transaction_uid_problem"] == problem
            assert caught.value.reason == "WORKITEM_TRANSACTION_UID_INVALID"
        else:
            assert caught.value.reason == "WORKITEM_STATE_CONFLICT"
    else:
        result = call()
        assert getattr(result, "warning_status") == 0  # noqa: B009
    item = shared.workitems.get(uid)
    assert item.state == cell.after
    assert TRANSACTION_UID not in item.dataset.attributes
    if cell.operation == "update" and not cell.status:
        assert to_json(item.dataset)[tag("ProcedureStepLabel")]["Value"] == ["relabelled"]


@pytest.mark.parametrize(
    ("state", "status", "after"),
    [
        ("SCHEDULED", 0, "CANCELED"),
        ("IN PROGRESS", 0, "IN PROGRESS"),
        ("COMPLETED", 0xC311, "COMPLETED"),
        ("CANCELED", 0xB304, "CANCELED"),
    ],
)
def test_request_cancellation_table(shared: Client, state: str, status: int, after: str) -> None:
    uid = in_state(shared, state)
    if status >= 0xC000:
        with pytest.raises(DicomRpcError) as caught:
            shared.workitems.request_cancel(uid, reason="wrong patient")
        assert caught.value.dicom_status == status
        assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    else:
        result = shared.workitems.request_cancel(uid, reason="wrong patient")
        assert result.warning_status == status
        assert result.state == after
    assert shared.workitems.get(uid).state == after


def test_request_cancellation_records_the_request(shared: Client) -> None:
    uid = shared.workitems.create(workitem()).workitem_uid
    shared.workitems.request_cancel(uid, "wrong patient", "Dr Who", "mailto:who@example.org")
    item = to_json(shared.workitems.get(uid).dataset)
    progress = item[tag("ProcedureStepProgressInformationSequence")]["Value"][0]
    assert progress[tag("ReasonForCancellation")]["Value"] == ["wrong patient"]
    assert tag("ProcedureStepCancellationDateTime") in progress
    contact = progress[tag("ProcedureStepCommunicationsURISequence")]["Value"][0]
    assert contact[tag("ContactURI")]["Value"] == ["mailto:who@example.org"]
    assert contact[tag("ContactDisplayName")]["Value"] == ["Dr Who"]


def test_unknown_workitem_is_0xC307(shared: Client) -> None:
    for call in (
        lambda: shared.workitems.get("1.2.3.404"),
        lambda: shared.workitems.claim("1.2.3.404"),
        lambda: shared.workitems.update("1.2.3.404", dataset(ProcedureStepLabel="x")),
        lambda: shared.workitems.request_cancel("1.2.3.404"),
    ):
        with pytest.raises(DicomRpcError) as caught:
            call()
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
        assert caught.value.dicom_status == 0xC307


# -- final states ------------------------------------------------------------------------------


def test_completed_needs_the_performed_procedure(shared: Client) -> None:
    uid = shared.workitems.create(workitem()).workitem_uid
    txn = shared.workitems.claim(uid)
    with pytest.raises(DicomRpcError) as caught:
        shared.workitems.complete(uid, txn)
    assert caught.value.dicom_status == 0xC304
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "UnifiedProcedureStepPerformedProcedureSequence" in caught.value.metadata["missing"]
    assert shared.workitems.get(uid).state == "IN PROGRESS"
    # An item that lacks one required attribute names it.
    partial = performed()
    item = partial[tag("UnifiedProcedureStepPerformedProcedureSequence")]["Value"][0]
    del item[tag("PerformedProcedureStepEndDateTime")]
    with pytest.raises(DicomRpcError) as caught:
        shared.workitems.complete(uid, txn, partial)
    assert caught.value.dicom_status == 0xC304
    assert caught.value.metadata["missing"] == (
        "UnifiedProcedureStepPerformedProcedureSequence[0].PerformedProcedureStepEndDateTime"
    )
    assert shared.workitems.complete(uid, txn, performed()).state == "COMPLETED"


def test_a_refused_completion_changes_nothing(server: RunningServer, client: Client) -> None:
    """The performed procedure and the state change are one change: refused, the attributes
    it carried are not set and no event is recorded; accepted, the update's event comes first,
    then the state report."""
    w = client.workitems
    uid = w.create(workitem()).workitem_uid
    txn = w.claim(uid)
    store = server.archive.workitems.store
    before = store.events_after(0, 100)
    partial = performed()
    item = partial[tag("UnifiedProcedureStepPerformedProcedureSequence")]["Value"][0]
    del item[tag("PerformedProcedureStepEndDateTime")]
    with pytest.raises(DicomRpcError) as caught:
        w.complete(uid, txn, partial)
    assert caught.value.dicom_status == 0xC304
    stored = to_json(w.get(uid).dataset)
    assert tag("UnifiedProcedureStepPerformedProcedureSequence") not in stored
    assert store.events_after(0, 100) == before
    with pytest.raises(DicomRpcError) as caught:  # attributes belong to finishing, not claiming
        w.change_state(uid, "IN PROGRESS", generate_uid(), performed())
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert w.complete(uid, txn, performed()).state == "COMPLETED"
    stored = to_json(w.get(uid).dataset)
    assert tag("UnifiedProcedureStepPerformedProcedureSequence") in stored
    new = [event for event, _ in store.events_after(before[-1][0].sequence, 100)]
    assert [e.type for e in new] == [
        pb.WORKITEM_EVENT_TYPE_UPDATED,
        pb.WORKITEM_EVENT_TYPE_STATE_REPORT,
    ]


def test_canceled_needs_a_discontinuation_reason(shared: Client) -> None:
    uid = shared.workitems.create(workitem()).workitem_uid
    txn = shared.workitems.claim(uid)
    with pytest.raises(DicomRpcError) as caught:
        shared.workitems.cancel(uid, txn)
    assert caught.value.dicom_status == 0xC304
    missing = caught.value.metadata["missing"]
    assert "ProcedureStepDiscontinuationReasonCodeSequence" in missing
    assert "ProcedureStepCancellationDateTime" not in missing  # the server stamps it
    assert shared.workitems.get(uid).state == "IN PROGRESS"
    assert shared.workitems.cancel(uid, txn, discontinued()).state == "CANCELED"
    progress = to_json(shared.workitems.get(uid).dataset)[
        tag("ProcedureStepProgressInformationSequence")
    ]["Value"][0]
    assert tag("ProcedureStepCancellationDateTime") in progress


# -- locking under races ---------------------------------------------------------------------


@pytest.mark.slow
def test_sixteen_performers_racing_one_wins_fifty_times(shared: Client) -> None:
    performers = 16
    with ThreadPoolExecutor(performers) as pool:
        for _ in range(50):
            uid = shared.workitems.create(workitem()).workitem_uid
            barrier = threading.Barrier(performers)

            def claim(uid: str = uid, barrier: threading.Barrier = barrier) -> int:
                txn = str(generate_uid())
                barrier.wait()
                try:
                    shared.workitems.claim(uid, txn)
                except DicomRpcError as error:
                    return error.dicom_status or -1
                return 0

            outcomes = sorted(pool.map(lambda _: claim(), range(performers)))
            assert outcomes == [0] + [0xC302] * (performers - 1)
            assert shared.workitems.get(uid).state == "IN PROGRESS"


def test_concurrent_updates_lose_nothing(shared: Client) -> None:
    uid = shared.workitems.create(workitem()).workitem_uid
    txn = shared.workitems.claim(uid)
    changes = {
        "ProcedureStepLabel": "label",
        "WorklistLabel": "worklist",
        "CommentsOnTheScheduledProcedureStep": "comment",
        "ExpectedCompletionDateTime": "20240115120000",
        "ScheduledProcedureStepExpirationDateTime": "20240116120000",
        "ScheduledProcedureStepPriority": "HIGH",
        "InputReadinessState": "INCOMPLETE",
        "StudyInstanceUID": "1.2.826.0.1.3680043.10.1.77",
    }
    for _ in range(3):
        with ThreadPoolExecutor(len(changes)) as pool:
            list(
                pool.map(
                    lambda kv: shared.workitems.update(uid, dataset(**{kv[0]: kv[1]}), txn),
                    changes.items(),
                )
            )
    stored = to_json(shared.workitems.get(uid).dataset)
    for keyword, value in changes.items():
        assert stored[tag(keyword)]["Value"] == [value], keyword


# -- create and update rules -------------------------------------------------------------------


def test_create_with_given_and_generated_uids(shared: Client) -> None:
    given = str(generate_uid())
    result = shared.workitems.create(workitem(), given)
    assert result.workitem_uid == given
    assert result.warning_status == 0
    generated = shared.workitems.create(workitem()).workitem_uid
    assert generated and generated != given
    item = shared.workitems.get(given)
    stored = to_json(item.dataset)
    assert item.state == "SCHEDULED"
    assert stored[tag("SOPInstanceUID")]["Value"] == [given]
    assert stored[tag("SOPClassUID")]["Value"] == ["1.2.840.10008.5.1.4.34.6.1"]
    assert stored[tag("ProcedureStepState")]["Value"] == ["SCHEDULED"]
    assert tag("ScheduledProcedureStepModificationDateTime") in stored
    with pytest.raises(DicomRpcError) as caught:
        shared.workitems.create(workitem(), given)
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert caught.value.dicom_status == 0x0111
    assert caught.value.reason == "WORKITEM_ALREADY_EXISTS"


def test_create_coerces_a_foreign_sop_class_with_a_warning(shared: Client) -> None:
    result = shared.workitems.create(workitem(SOPClassUID="1.2.840.10008.5.1.4.1.1.2"))
    assert result.warning_status == 0xB300
    assert "1.2.840.10008.5.1.4.1.1.2" in result.warning_message
    stored = to_json(shared.workitems.get(result.workitem_uid).dataset)
    assert stored[tag("SOPClassUID")]["Value"] == ["1.2.840.10008.5.1.4.34.6.1"]


def test_create_requirement_failures_name_each_attribute(shared: Client) -> None:
    bad = workitem(
        ProcedureStepLabel="<absent>",
        PatientName="<absent>",
        ScheduledProcedureStepPriority=None,
        InputReadinessState="MAYBE",
        ScheduledProcedureStepStartDateTime="<absent>",
        TransactionUID="1.2.3",
        ReferencedRequestSequence=[dataset(AccessionNumber="A1")],
    )
    with pytest.raises(DicomRpcError) as caught:
        shared.workitems.create(bad)
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "WORKITEM_ATTRIBUTES_INVALID"
    violations = dict(error.field_violations)
    assert violations == {
        "ProcedureStepLabel": "is required (Type 1) and missing",
        "PatientName": "is required (Type 2) and missing; it may be empty",
        "ScheduledProcedureStepPriority": "needs a value (Type 1) and is empty",
        "InputReadinessState": "'MAYBE' is not one of READY, UNAVAILABLE, INCOMPLETE",
        "ScheduledProcedureStepStartDateTime": "is required (Type 1) and missing",
        "TransactionUID": "must be absent or empty",
        "ReferencedRequestSequence[0].StudyInstanceUID": "is required (Type 1) and missing",
        "ReferencedRequestSequence[0].IssuerOfAccessionNumberSequence": (
            "is required (Type 2) and missing; it may be empty"
        ),
        "ReferencedRequestSequence[0].RequestedProcedureID": (
            "is required (Type 2) and missing; it may be empty"
        ),
        "ReferencedRequestSequence[0].RequestedProcedureDescription": (
            "is required (Type 2) and missing; it may be empty"
        ),
        "ReferencedRequestSequence[0].RequestedProcedureCodeSequence": (
            "is required (Type 2) and missing; it may be empty"
        ),
    }
    assert error.dicom_status == 0x0120
    assert shared.workitems.search(PatientID="P-bad").datasets == []


def test_create_state_must_be_scheduled(shared: Client) -> None:
    with pytest.raises(DicomRpcError) as caught:
        shared.workitems.create(workitem(ProcedureStepState="IN PROGRESS"))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.dicom_status == 0xC309
    assert dict(caught.value.field_violations) == {
        "ProcedureStepState": "must be absent or SCHEDULED"
    }
    explicit = shared.workitems.create(workitem(ProcedureStepState="SCHEDULED"))
    assert shared.workitems.get(explicit.workitem_uid).state == "SCHEDULED"


def test_create_refuses_a_bad_uid(shared: Client) -> None:
    with pytest.raises(DicomRpcError) as caught:
        shared.workitems.create(workitem(), "1.2/3")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field_violations[0][0] == "workitem_uid"
    with pytest.raises(DicomRpcError) as caught:
        shared.workitems.create(workitem(SOPInstanceUID="1.2.3.4"), "1.2.3.5")
    assert caught.value.field_violations[0][0] == "SOPInstanceUID"


def test_update_replaces_sequences_whole_and_keeps_fixed_attributes(shared: Client) -> None:
    uid = shared.workitems.create(
        workitem(ScheduledStationNameCodeSequence=[code("ST1", "One"), code("ST2", "Two")])
    ).workitem_uid
    shared.workitems.update(uid, dataset(ScheduledStationNameCodeSequence=[code("ST9", "Nine")]))
    stored = to_json(shared.workitems.get(uid).dataset)
    items = stored[tag("ScheduledStationNameCodeSequence")]["Value"]
    assert [i[tag("CodeValue")]["Value"] for i in items] == [["ST9"]]
    assert stored[tag("PatientID")]["Value"] == ["P-1"]  # untouched attributes stay
    for forbidden, value in (
        ("ProcedureStepState", "COMPLETED"),
        ("TransactionUID", "1.2.3"),
        ("PatientID", "other"),
        ("SOPInstanceUID", "1.2.3"),
    ):
        with pytest.raises(DicomRpcError) as caught:
            shared.workitems.update(uid, dataset(**{forbidden: value}))
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.field_violations == [(forbidden, "cannot be changed by an update")]
    with pytest.raises(DicomRpcError) as caught:
        shared.workitems.update(uid, dataset(ProcedureStepLabel=None))
    assert caught.value.field_violations == [
        ("ProcedureStepLabel", "needs a value (Type 1) and is empty")
    ]
    assert shared.workitems.get(uid).state == "SCHEDULED"


# -- search ------------------------------------------------------------------------------------


def test_search_matching_keys(client: Client) -> None:
    w = client.workitems
    a = w.create(workitem(PatientName="Müller^Anna", PatientID="A")).workitem_uid
    b = w.create(
        workitem(
            PatientName="Doe^John",
            PatientID="B",
            ScheduledProcedureStepStartDateTime="20240301080000",
            InputReadinessState="INCOMPLETE",
            ScheduledStationNameCodeSequence=[code("ST2", "Station 2")],
        )
    ).workitem_uid
    c = w.create(workitem(PatientName="Doe^Jane", PatientID="C")).workitem_uid
    w.claim(c)

    def found(**terms: str) -> list[str]:
        results = w.search(fuzzy=terms.pop("fuzzy", "") == "yes", **terms)
        return sorted(to_json(r)[tag("SOPInstanceUID")]["Value"][0] for r in results)

    assert found(ProcedureStepState="SCHEDULED") == sorted([a, b])
    assert found(ProcedureStepState="IN PROGRESS") == [c]
    assert found(PatientID="B") == [b]
    assert found(PatientName="doe", fuzzy="yes") == sorted([b, c])
    assert found(PatientName="mull", fuzzy="yes") == [a]
    assert found(PatientName="Doe^J*") == sorted([b, c])
    assert found(ScheduledProcedureStepStartDateTime="20240201-20240331") == [b]
    assert found(ScheduledProcedureStepStartDateTime="-20240131") == sorted([a, c])
    assert found(ScheduledProcedureStepStartDateTime="20240115") == sorted([a, c])
    assert found(InputReadinessState="INCOMPLETE") == [b]
    assert found(**{"ScheduledStationNameCodeSequence.CodeValue": "ST1"}) == sorted([a, c])
    assert found(ProcedureStepState="SCHEDULED", PatientName="doe", fuzzy="yes") == [b]
    assert found(SOPInstanceUID=f"{a},{c}") == sorted([a, c])
    assert len(w.search()) == 3
    assert len(w.search(limit=2)) == 2
    assert len(w.search(limit=2, offset=2)) == 1
    assert w.search(offset=3).datasets == []


def test_search_returns_defaults_or_all_but_never_the_lock(client: Client) -> None:
    uid = client.workitems.create(workitem(CommentsOnTheScheduledProcedureStep="note")).workitem_uid
    client.workitems.claim(uid)
    (default,) = client.workitems.search(ProcedureStepState="IN PROGRESS")
    assert tag("ProcedureStepState") in default.attributes
    assert tag("CommentsOnTheScheduledProcedureStep") not in default.attributes
    assert TRANSACTION_UID not in default.attributes
    (everything,) = client.workitems.search(include=["all"])
    assert tag("CommentsOnTheScheduledProcedureStep") in everything.attributes
    assert TRANSACTION_UID not in everything.attributes
    (included,) = client.workitems.search(include=["CommentsOnTheScheduledProcedureStep"])
    assert tag("CommentsOnTheScheduledProcedureStep") in included.attributes
    (asked,) = client.workitems.search(include=["TransactionUID"])
    assert TRANSACTION_UID not in asked.attributes


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"limit": 1001}, "limit"),
        ({"limit": -1}, "limit"),
        ({"offset": -1}, "offset"),
        ({"match": {"StudyDescription": "x"}}, "StudyDescription"),
        ({"match": {"ScheduledProcedureStepStartDateTime": "2024-01-01"}}, None),
        ({"include": ["NotAKeyword"]}, "include_fields"),
    ],
)
def test_search_rejects_bad_requests(
    client: Client, kwargs: dict[str, object], field: str | None
) -> None:
    with pytest.raises(DicomRpcError) as caught:
        client.workitems.search(**kwargs)  # type: ignore[arg-type]
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    if field:
        assert caught.value.field_violations[0][0] == field


@pytest.mark.embedded_index
def test_search_uses_the_state_index(server: RunningServer, client: Client) -> None:
    uid = client.workitems.create(workitem()).workitem_uid
    index = server.archive.index
    state_tag = 0x00741000
    assert index.term_entries(Level.WORKITEM, state_tag, EXACT + b"SCHEDULED") == [uid.encode()]
    client.workitems.claim(uid)
    assert index.term_entries(Level.WORKITEM, state_tag, EXACT + b"SCHEDULED") == []
    assert index.term_entries(Level.WORKITEM, state_tag, EXACT + b"IN PROGRESS") == [uid.encode()]


# -- persistence -------------------------------------------------------------------------------


def test_workitems_survive_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = start_server(data)
    try:
        with Client(first.target) as client:
            uid = client.workitems.create(workitem(PatientID="kept")).workitem_uid
            txn = client.workitems.claim(uid)
        before = first.archive.workitems.store.events_after(0, 1000)
    finally:
        first.stop()
    second = start_server(data)
    try:
        with Client(second.target) as client:
            assert client.workitems.get(uid).state == "IN PROGRESS"
            (found,) = client.workitems.search(PatientID="kept")
            assert to_json(found)[tag("SOPInstanceUID")]["Value"] == [uid]
            with pytest.raises(DicomRpcError) as caught:
                client.workitems.claim(uid)
            assert caught.value.dicom_status == 0xC302
            assert client.workitems.complete(uid, txn, performed()).state == "COMPLETED"
        after = second.archive.workitems.store.events_after(0, 1000)
    finally:
        second.stop()
    assert [e.sequence for e, _ in before] == [1, 2]
    assert [e.sequence for e, _ in after] == [1, 2, 3, 4]  # the update, then COMPLETED
    assert [e.type for e, _ in after[:2]] == [e.type for e, _ in before]


def test_a_value_too_long_for_an_index_key_is_kept_but_not_indexed(shared: Client) -> None:
    """LMDB keys hold at most 511 bytes: a 600-character label is stored and read back, the
    workitem found by its other keys, claimed and updated; a search for that label finds none."""
    label = "x" * 600
    patient = generate_uid()[-20:]
    created = shared.workitems.create(workitem(ProcedureStepLabel=label, PatientID=patient))
    uid = created.workitem_uid
    assert to_json(shared.workitems.get(uid).dataset)[tag("ProcedureStepLabel")]["Value"] == [label]
    found = shared.workitems.search({"PatientID": patient}, include=["ProcedureStepLabel"])
    assert [to_json(d)[tag("ProcedureStepLabel")]["Value"] for d in found] == [[label]]
    assert shared.workitems.search({"ProcedureStepLabel": label}).datasets == []
    shared.workitems.claim(uid, LOCK)
    shared.workitems.update(uid, dataset(ProcedureStepLabel=label + "y"), LOCK)
    assert shared.workitems.get(uid).state == "IN PROGRESS"


def test_a_data_set_keyed_by_what_is_not_a_tag_is_refused(shared: Client) -> None:
    """Over gRPC a data set is a message: its keys and VRs are checked as the JSON reader's."""
    ds = from_json(workitem())
    ds.attributes["zz"].vr = "LO"
    ds.attributes["zz"].strings.values.append("x")
    with pytest.raises(DicomRpcError) as caught:
        shared.workitems.create(ds)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == "WORKITEM_ATTRIBUTES_INVALID"
    assert "zz" in str(caught.value)
