"""UPS over DIMSE (PS3.4 Annex CC) with pynetdicom requesters, against the gRPC workitem API.

One worklist, one state machine, one set of status codes: what a DIMSE performer creates a
gRPC one reads and claims, and the reverse; a claim race between the two has one winner; each
refusal carries the status the gRPC API puts in its ErrorInfo; a watcher AE subscribed over
DIMSE receives the N-EVENT-REPORT of a change made over gRPC.
"""

from __future__ import annotations

import itertools
import queue
import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event

from dicomrpc import Client, DicomRpcError
from tests.conftest import RunningServer, start_server
from tests.integration.test_workitems import LOCK, OTHER
from tests.upsgen import discontinued, performed, workitem

UPS_PUSH = "1.2.840.10008.5.1.4.34.6.1"
UPS_WATCH = "1.2.840.10008.5.1.4.34.6.2"
UPS_PULL = "1.2.840.10008.5.1.4.34.6.3"
UPS_EVENT = "1.2.840.10008.5.1.4.34.6.4"
GLOBAL = "1.2.840.10008.5.1.4.34.5"
FILTERED_GLOBAL = "1.2.840.10008.5.1.4.34.5.1"
CHANGE_STATE, REQUEST_CANCEL, SUBSCRIBE, UNSUBSCRIBE, SUSPEND = 1, 2, 3, 4, 5


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_server(tmp_path_factory.mktemp("dimse_ups") / "data", dimse_port=0)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(archive: RunningServer) -> Iterator[Client]:
    with Client(archive.target) as c:
        yield c


@pytest.fixture()
def assoc(archive: RunningServer) -> Iterator[Association]:
    association = open_association(archive, "PERFORMER")
    yield association
    association.release()


def open_association(archive: RunningServer, title: str) -> Association:
    ae = AE(ae_title=title)
    for uid in (UPS_PUSH, UPS_PULL, UPS_WATCH):
        ae.add_requested_context(uid)
    association = ae.associate("127.0.0.1", archive.dimse_port, ae_title="DICOMRPC")
    assert association.is_established
    return association


def as_pydicom(body: dict[str, Any]) -> Dataset:
    return Dataset.from_json(body)


def status_of(answer: Dataset) -> int:
    return int(answer.Status)


def grpc_status(call: Callable[[], object]) -> int:
    """The DICOM status a gRPC call answers: 0, or the ErrorInfo's dicom_status."""
    try:
        call()
    except DicomRpcError as error:
        assert error.dicom_status is not None, error
        return error.dicom_status
    return 0


def action(state: str, transaction: str) -> Dataset:
    ds = Dataset()
    ds.ProcedureStepState = state
    ds.TransactionUID = transaction
    return ds


def final_ready(**overrides: Any) -> Dataset:
    """A workitem meeting the create rules and both final states' requirements."""
    body = workitem(**overrides)
    body.update(performed())
    body.update(discontinued())
    return as_pydicom(body)


# -- create and read across the adapters ----------------------------------------------------------


def test_created_over_dimse_is_read_over_grpc(assoc: Association, client: Client) -> None:
    uid = str(generate_uid())
    answer, _ = assoc.send_n_create(as_pydicom(workitem(PatientID="D-1")), UPS_PUSH, uid)
    assert status_of(answer) == 0x0000
    got = client.workitems.get(uid)
    assert got.state == "SCHEDULED"
    assert client.workitems.search(PatientID="D-1", include=["all"]).datasets == [got.dataset]

    # Without an Affected SOP Instance UID the archive makes one and answers it.
    answered: list[str] = []

    def received(event: Event) -> None:
        command = event.message.command_set
        if "AffectedSOPInstanceUID" in command:
            answered.append(str(command.AffectedSOPInstanceUID))

    assoc.bind(evt.EVT_DIMSE_RECV, received)
    answer, _ = assoc.send_n_create(as_pydicom(workitem(PatientID="D-2")), UPS_PUSH)
    assoc.unbind(evt.EVT_DIMSE_RECV, received)
    assert status_of(answer) == 0x0000
    (made,) = client.workitems.search(PatientID="D-2")
    assert answered == [made.attributes["00080018"].strings.values[0]]


def test_created_over_grpc_is_read_over_dimse(assoc: Association, client: Client) -> None:
    uid = client.workitems.create(workitem(PatientID="G-1")).workitem_uid
    client.workitems.claim(uid, LOCK)
    answer, attributes = assoc.send_n_get([], UPS_PUSH, uid, meta_uid=UPS_PULL)
    assert status_of(answer) == 0x0000
    assert attributes is not None
    assert attributes.PatientID == "G-1"
    assert attributes.ProcedureStepState == "IN PROGRESS"
    assert "TransactionUID" not in attributes  # the lock never leaves the archive

    wanted = [Tag("PatientID"), Tag("TransactionUID"), Tag("ExpectedCompletionDateTime")]
    answer, attributes = assoc.send_n_get(wanted, UPS_PUSH, uid)
    assert status_of(answer) == 0x0000
    assert attributes is not None
    assert sorted(e.keyword for e in attributes) == ["ExpectedCompletionDateTime", "PatientID"]
    assert attributes.ExpectedCompletionDateTime in ("", None)

    answer, _ = assoc.send_n_get([], UPS_PULL, str(generate_uid()))
    assert status_of(answer) == 0xC307


def test_create_refusals_have_the_grpc_statuses(assoc: Association, client: Client) -> None:
    uid = client.workitems.create(workitem()).workitem_uid
    cases = [
        (uid, workitem()),  # taken: 0x0111
        (str(generate_uid()), workitem(ProcedureStepState="IN PROGRESS")),  # 0xC309
        (str(generate_uid()), workitem(ProcedureStepLabel="<absent>")),  # 0x0120
        (str(generate_uid()), workitem(ScheduledProcedureStepPriority="URGENT")),  # 0x0106
    ]
    expected = [0x0111, 0xC309, 0x0120, 0x0106]
    for (workitem_uid, body), status in zip(cases, expected, strict=True):
        answer, _ = assoc.send_n_create(as_pydicom(body), UPS_PUSH, workitem_uid)
        assert status_of(answer) == status, (body, answer)
        assert answer.ErrorComment
        over_grpc = grpc_status(lambda b=body, u=workitem_uid: client.workitems.create(b, u))
        assert over_grpc == status


# -- the state machine over DIMSE ------------------------------------------------------------------


def test_workflow_over_dimse(assoc: Association, client: Client) -> None:
    uid = str(generate_uid())
    assert status_of(assoc.send_n_create(final_ready(), UPS_PUSH, uid)[0]) == 0x0000
    label = Dataset()
    label.ProcedureStepLabel = "set while scheduled"
    assert status_of(assoc.send_n_set(label, UPS_PUSH, uid, meta_uid=UPS_PULL)[0]) == 0x0000

    # Claimed over DIMSE: IN PROGRESS for the gRPC API, locked by the DIMSE performer's UID.
    claimed, _ = assoc.send_n_action(
        action("IN PROGRESS", LOCK), CHANGE_STATE, UPS_PUSH, uid, meta_uid=UPS_PULL
    )
    assert status_of(claimed) == 0x0000
    assert client.workitems.get(uid).state == "IN PROGRESS"
    again = assoc.send_n_action(
        action("IN PROGRESS", OTHER), CHANGE_STATE, UPS_PUSH, uid, meta_uid=UPS_PULL
    )[0]
    assert status_of(again) == 0xC302

    label.ProcedureStepLabel = "set while in progress"
    label.TransactionUID = LOCK
    assert status_of(assoc.send_n_set(label, UPS_PUSH, uid, meta_uid=UPS_PULL)[0]) == 0x0000
    assert client.workitems.get(uid).dataset.attributes["00741204"].strings.values == [
        "set while in progress"
    ]

    done = assoc.send_n_action(
        action("COMPLETED", LOCK), CHANGE_STATE, UPS_PUSH, uid, meta_uid=UPS_PULL
    )[0]
    assert status_of(done) == 0x0000
    assert client.workitems.get(uid).state == "COMPLETED"
    twice = assoc.send_n_action(
        action("COMPLETED", LOCK), CHANGE_STATE, UPS_PUSH, uid, meta_uid=UPS_PULL
    )[0]
    assert status_of(twice) == 0xB306  # already COMPLETED: a warning
    late = assoc.send_n_set(label, UPS_PUSH, uid, meta_uid=UPS_PULL)[0]
    assert status_of(late) == 0xC300


def test_wrong_transaction_uid_is_refused(assoc: Association, client: Client) -> None:
    uid = client.workitems.create(final_ready().to_json_dict()).workitem_uid
    client.workitems.claim(uid, LOCK)  # a gRPC performer holds it
    change = Dataset()
    change.ProcedureStepLabel = "not mine"
    for transaction in (OTHER, ""):
        if transaction:
            change.TransactionUID = transaction
        elif "TransactionUID" in change:
            del change.TransactionUID
        assert status_of(assoc.send_n_set(change, UPS_PUSH, uid, meta_uid=UPS_PULL)[0]) == 0xC301
        finish = assoc.send_n_action(
            action("COMPLETED", transaction), CHANGE_STATE, UPS_PUSH, uid, meta_uid=UPS_PULL
        )
        assert status_of(finish[0]) == 0xC301
        over_grpc = grpc_status(lambda t=transaction: client.workitems.complete(uid, t))
        assert over_grpc == 0xC301
    assert client.workitems.get(uid).state == "IN PROGRESS"
    assert client.workitems.get(uid).dataset.attributes["00741204"].strings.values != ["not mine"]
    # The performer's own lock completes it over DIMSE.
    finish = assoc.send_n_action(
        action("COMPLETED", LOCK), CHANGE_STATE, UPS_PUSH, uid, meta_uid=UPS_PULL
    )
    assert status_of(finish[0]) == 0x0000


def race(association: Association, client: Client, uid: str) -> dict[str, int]:
    """A DIMSE and a gRPC performer claim ``uid`` at once; each one's status, and its lock."""
    barrier = threading.Barrier(2)
    results: dict[str, int] = {}
    locks = {"dimse": str(generate_uid()), "grpc": str(generate_uid())}

    def over_dimse() -> None:
        barrier.wait()
        change = action("IN PROGRESS", locks["dimse"])
        results["dimse"] = status_of(
            association.send_n_action(change, CHANGE_STATE, UPS_PUSH, uid, meta_uid=UPS_PULL)[0]
        )

    def over_grpc() -> None:
        barrier.wait()
        results["grpc"] = grpc_status(lambda: client.workitems.claim(uid, locks["grpc"]))

    threads = [threading.Thread(target=over_dimse), threading.Thread(target=over_grpc)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results.values()) == [0x0000, 0xC302], results
    winner = min(results, key=lambda name: results[name])
    loser = max(results, key=lambda name: results[name])
    # The winner's Transaction UID is the workitem's lock; the loser's is refused.
    assert grpc_status(lambda: client.workitems.complete(uid, locks[loser])) == 0xC301
    assert grpc_status(lambda: client.workitems.cancel(uid, locks[winner])) == 0
    return results


def test_claim_race_between_dimse_and_grpc_has_one_winner(
    archive: RunningServer, client: Client
) -> None:
    association = open_association(archive, "RACER")
    try:
        for _ in range(10):
            uid = client.workitems.create(final_ready().to_json_dict()).workitem_uid
            race(association, client, uid)
    finally:
        association.release()


def test_request_cancel(assoc: Association, client: Client) -> None:
    scheduled = client.workitems.create(workitem()).workitem_uid
    reason = Dataset()
    reason.ReasonForCancellation = "patient left"
    answer = assoc.send_n_action(reason, REQUEST_CANCEL, UPS_PUSH, scheduled)[0]
    assert status_of(answer) == 0x0000
    assert client.workitems.get(scheduled).state == "CANCELED"
    assert status_of(assoc.send_n_action(reason, REQUEST_CANCEL, UPS_PUSH, scheduled)[0]) == 0xB304

    completed = client.workitems.create(final_ready().to_json_dict()).workitem_uid
    client.workitems.claim(completed, LOCK)
    client.workitems.complete(completed, LOCK)
    answer = assoc.send_n_action(reason, REQUEST_CANCEL, UPS_PUSH, completed, meta_uid=UPS_WATCH)[0]
    assert status_of(answer) == 0xC311
    assert grpc_status(lambda: client.workitems.request_cancel(completed)) == 0xC311

    # Change UPS State is a UPS Pull action: UPS Push has no such action.
    wrong = assoc.send_n_action(action("IN PROGRESS", LOCK), CHANGE_STATE, UPS_PUSH, scheduled)
    assert status_of(wrong[0]) == 0x0123


# -- C-FIND -------------------------------------------------------------------------------------


def test_find_matches_the_grpc_search(assoc: Association, client: Client) -> None:
    mine = [client.workitems.create(workitem(PatientID="FIND-1")).workitem_uid for _ in range(3)]
    client.workitems.claim(mine[0], LOCK)
    client.workitems.create(workitem(PatientID="FIND-2"))
    identifier = Dataset()
    identifier.PatientID = "FIND-1"
    identifier.ProcedureStepState = "SCHEDULED"
    identifier.SOPInstanceUID = ""
    identifier.PatientName = ""
    identifier.TransactionUID = ""
    found = [
        ds for status, ds in assoc.send_c_find(identifier, UPS_PULL) if status.Status == 0xFF00
    ]
    assert ds_uids(found) == sorted(mine[1:])
    expected = client.workitems.search(PatientID="FIND-1", ProcedureStepState="SCHEDULED")
    assert len(expected) == 2
    for ds in found:
        assert str(ds.PatientName) == "Doe^John"
        assert ds.ProcedureStepState == "SCHEDULED"
        assert ds.TransactionUID in ("", None)

    with warnings.catch_warnings():  # pydicom says so too, and sends it
        warnings.simplefilter("ignore")
        bad = Dataset()
        bad.ScheduledProcedureStepStartDateTime = "2024-01-01-2024"
        statuses = [int(status.Status) for status, _ in assoc.send_c_find(bad, UPS_WATCH)]
    assert statuses == [0xA900]


def ds_uids(found: list[Dataset | None]) -> list[str]:
    return sorted(str(ds.SOPInstanceUID) for ds in found if ds is not None)


# -- UPS Watch and UPS Event ---------------------------------------------------------------------


_WATCHERS = itertools.count(1)


class Watcher:
    """A pynetdicom SCP of the UPS Event SOP class, recording each N-EVENT-REPORT."""

    def __init__(self, title: str, port: int = 0) -> None:
        """Listen as ``title`` on ``port`` (0: a free one)."""
        if not port:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
        self.port = port
        self.title = title
        self.reports: queue.Queue[tuple[int, str, Dataset]] = queue.Queue()
        ae = AE(ae_title=title)
        # The archive calls as the UPS Event SCP (SCP/SCU role selection): accepted.
        ae.add_supported_context(UPS_EVENT, scu_role=False, scp_role=True)
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._received)],
        )

    def _received(self, event: Event) -> tuple[int, None]:
        request = event.request
        self.reports.put(
            (
                int(request.EventTypeID),
                str(request.AffectedSOPInstanceUID),
                event.event_information,
            )
        )
        return 0x0000, None

    def next(self, timeout: float = 20) -> tuple[int, str, Dataset]:
        return self.reports.get(timeout=timeout)

    def drain(self, seconds: float = 1.5) -> list[tuple[int, str, Dataset]]:
        """Every report received until none comes for ``seconds``."""
        out = []
        while True:
            try:
                out.append(self.reports.get(timeout=seconds))
            except queue.Empty:
                return out

    def quiet(self, seconds: float = 1.5) -> bool:
        try:
            self.reports.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture()
def watcher(client: Client) -> Iterator[Watcher]:
    scp = Watcher(f"WATCHER{next(_WATCHERS)}")
    title = scp.title
    client.add_dimse_peer(f"watcher-{scp.port}", title, "127.0.0.1", scp.port)
    yield scp
    scp.stop()
    client.remove_dimse_peer(f"watcher-{scp.port}")


def receiving(title: str, lock: bool = False) -> Dataset:
    ds = Dataset()
    ds.ReceivingAE = title
    ds.DeletionLock = "TRUE" if lock else "FALSE"
    return ds


@pytest.mark.slow
def test_watcher_receives_the_report_of_a_grpc_change(
    assoc: Association, client: Client, watcher: Watcher
) -> None:
    uid = client.workitems.create(final_ready().to_json_dict()).workitem_uid
    answer = assoc.send_n_action(
        receiving(watcher.title), SUBSCRIBE, UPS_PUSH, uid, meta_uid=UPS_WATCH
    )[0]
    assert status_of(answer) == 0x0000
    # The initial state report (PS3.4 CC.2.3), then the claim made over gRPC.
    assert watcher.next()[:2] == (1, uid)
    client.workitems.claim(uid, LOCK)
    event_type, about, information = watcher.next()
    assert (event_type, about) == (1, uid)
    assert information.ProcedureStepState == "IN PROGRESS"
    assert "TransactionUID" not in information

    client.workitems.request_cancel(uid, reason="stop it")
    event_type, about, information = watcher.next()
    assert (event_type, about) == (2, uid)
    assert information.ReasonForCancellation == "stop it"
    assert information.RequestingAE == "DICOMRPC"  # who asked is not recorded: the relay

    answer = assoc.send_n_action(
        receiving(watcher.title), UNSUBSCRIBE, UPS_PUSH, uid, meta_uid=UPS_WATCH
    )[0]
    assert status_of(answer) == 0x0000
    client.workitems.cancel(uid, LOCK)
    assert watcher.quiet()


def watch(
    assoc: Association, title: str, action_type: int, instance: str, lock: bool = False
) -> int:
    """A UPS Watch N-ACTION for the Receiving AE ``title``; its status."""
    answer = assoc.send_n_action(
        receiving(title, lock), action_type, UPS_PUSH, instance, meta_uid=UPS_WATCH
    )[0]
    return status_of(answer)


@pytest.mark.slow
def test_global_subscription(assoc: Association, client: Client, watcher: Watcher) -> None:
    existing = {
        ds.attributes["00080018"].strings.values[0] for ds in client.workitems.search(limit=1000)
    }
    # Without the Deletion Lock: no report of the existing workitems (PS3.4 CC.2.3).
    assert watch(assoc, watcher.title, SUBSCRIBE, GLOBAL) == 0x0000
    assert watcher.quiet()
    # With it: a state report of every existing workitem first (PS3.4 CC.2.4.3).
    assert watch(assoc, watcher.title, SUBSCRIBE, GLOBAL, lock=True) == 0x0000
    initial = watcher.drain()
    assert {about for _, about, _ in initial} == existing
    assert {event_type for event_type, _, _ in initial} == {1}
    uid = client.workitems.create(workitem()).workitem_uid
    event_type, about, information = watcher.next()
    assert (event_type, about) == (1, uid)
    assert information.ProcedureStepState == "SCHEDULED"
    assert watch(assoc, watcher.title, UNSUBSCRIBE, GLOBAL) == 0x0000
    client.workitems.create(workitem())
    assert watcher.quiet()


@pytest.mark.slow
def test_suspended_global_subscription_keeps_the_workitems_it_covered(
    assoc: Association, client: Client, watcher: Watcher
) -> None:
    assert watch(assoc, watcher.title, SUBSCRIBE, GLOBAL) == 0x0000
    covered = client.workitems.create(workitem()).workitem_uid
    assert watcher.next()[:2] == (1, covered)
    assert watch(assoc, watcher.title, SUSPEND, GLOBAL) == 0x0000
    new = client.workitems.create(workitem()).workitem_uid
    assert watcher.quiet()  # a new workitem is not subscribed to any more
    client.workitems.request_cancel(new)
    client.workitems.request_cancel(covered)
    event_type, about, information = watcher.next()
    assert (event_type, about) == (1, covered)
    assert information.ProcedureStepState == "CANCELED"
    # The reason of a canceled workitem is at the report's top level (PS3.4 CC.2.4.1).
    (reason,) = information.ProcedureStepDiscontinuationReasonCodeSequence
    assert reason.CodeValue == "110513"
    assert watcher.quiet()
    assert watch(assoc, watcher.title, UNSUBSCRIBE, GLOBAL) == 0x0000


@pytest.mark.slow
def test_filtered_global_subscription(assoc: Association, client: Client, watcher: Watcher) -> None:
    keys = receiving(watcher.title)
    keys.PatientID = "WATCHED"
    answer = assoc.send_n_action(keys, SUBSCRIBE, UPS_PUSH, FILTERED_GLOBAL, meta_uid=UPS_WATCH)[0]
    assert status_of(answer) == 0x0000
    client.workitems.create(workitem(PatientID="NOT-WATCHED"))
    watched = client.workitems.create(workitem(PatientID="WATCHED")).workitem_uid
    assert watcher.next()[:2] == (1, watched)
    assert watcher.quiet()
    assoc.send_n_action(receiving(watcher.title), UNSUBSCRIBE, UPS_PUSH, GLOBAL, meta_uid=UPS_WATCH)


def test_subscribing_an_unknown_ae_is_refused(assoc: Association, client: Client) -> None:
    uid = client.workitems.create(workitem()).workitem_uid
    answer = assoc.send_n_action(receiving("NOBODY"), SUBSCRIBE, UPS_PUSH, uid, meta_uid=UPS_WATCH)[
        0
    ]
    assert status_of(answer) == 0xC308
    missing = assoc.send_n_action(None, SUBSCRIBE, UPS_PUSH, uid, meta_uid=UPS_WATCH)[0]
    assert status_of(missing) == 0x0115
