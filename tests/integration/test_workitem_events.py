"""Workitem subscriptions over gRPC: ordered, filtered, resumable with ``since``, and a stalled
subscriber is ended (RESOURCE_EXHAUSTED) without holding up changes."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import grpc
import pytest

from dicomrpc import Client, DicomRpcError, WorkitemEvent
from dicomrpc.datasets import to_json
from dicomrpc.v1 import workitem_service_pb2 as pb
from dicomrpc.v1 import workitem_service_pb2_grpc
from dicomrpc.workitems import as_dataset
from dicomrpc_server.ups.index import TermSet, match_terms, workitem_terms
from tests.conftest import RunningServer, start_server
from tests.upsgen import code, dataset, discontinued, performed, tag, workitem

TRANSACTION_UID = tag("TransactionUID")


class Watcher:
    """Reads a watch on a thread, so a test can wait for events with a deadline."""

    def __init__(self, client: Client, **kwargs: object) -> None:
        self.events: queue.Queue[WorkitemEvent | BaseException] = queue.Queue()
        self._stream = client.workitems.watch(**kwargs)  # type: ignore[arg-type]
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self._stream:
                self.events.put(event)
        except BaseException as error:
            self.events.put(error)

    def take(self, count: int, timeout: float = 20) -> list[WorkitemEvent]:
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            item = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            assert isinstance(item, WorkitemEvent), item
            out.append(item)
        return out

    def quiet(self, seconds: float = 0.3) -> bool:
        """Whether nothing more arrives for ``seconds``."""
        try:
            self.events.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        self._stream.close()


def wait_subscribed(server: RunningServer, count: int) -> None:
    """Wait until ``count`` subscriptions are registered (a subscription starts lazily)."""
    deadline = time.monotonic() + 10
    while server.archive.workitems.events.subscriber_count < count:
        assert time.monotonic() < deadline, "subscription did not start"
        time.sleep(0.01)


def test_a_subscriber_sees_a_workflow_in_order(server: RunningServer, client: Client) -> None:
    watcher = Watcher(client)
    wait_subscribed(server, 1)
    w = client.workitems
    uid = w.create(workitem()).workitem_uid
    w.update(uid, dataset(ProcedureStepLabel="first look"))
    performer = dataset(HumanPerformerCodeSequence=[code("D1", "Doctor One", "99LOCAL")])
    w.update(uid, dataset(ScheduledHumanPerformersSequence=[performer]))
    txn = w.claim(uid)
    w.request_cancel(uid, reason="patient left", contact_name="Desk")
    w.complete(uid, txn, performed())
    events = watcher.take(7)
    watcher.close()
    assert [(e.type, e.state) for e in events] == [
        ("state_report", "SCHEDULED"),
        ("updated", "SCHEDULED"),
        ("assigned", "SCHEDULED"),
        ("state_report", "IN PROGRESS"),
        ("cancel_requested", "IN PROGRESS"),
        # The performed procedure and COMPLETED are one change, both events of its result.
        ("updated", "COMPLETED"),
        ("state_report", "COMPLETED"),
    ]
    assert {e.workitem_uid for e in events} == {uid}
    sequences = [e.sequence for e in events]
    assert sequences == list(range(sequences[0], sequences[0] + 7))
    assert all(TRANSACTION_UID not in e.dataset.attributes for e in events)
    assert to_json(events[1].dataset) == dataset(ProcedureStepLabel="first look")
    cancel = to_json(events[4].dataset)
    assert cancel[tag("ReasonForCancellation")]["Value"] == ["patient left"]
    assert cancel[tag("ContactDisplayName")]["Value"] == ["Desk"]
    assert to_json(events[6].dataset)[tag("ProcedureStepState")]["Value"] == ["COMPLETED"]


def test_one_workitem_or_a_filter(server: RunningServer, client: Client) -> None:
    w = client.workitems
    followed = w.create(workitem()).workitem_uid
    one = Watcher(client, workitem_uid=followed)
    station = Watcher(client, filter={"ScheduledStationNameCodeSequence.CodeValue": "ST2"})
    wait_subscribed(server, 2)
    other = w.create(
        workitem(ScheduledStationNameCodeSequence=[code("ST2", "Station 2")])
    ).workitem_uid
    w.update(followed, dataset(ProcedureStepLabel="x"))
    w.claim(other)
    w.claim(followed)
    assert [(e.workitem_uid, e.type) for e in one.take(2)] == [
        (followed, "updated"),
        (followed, "state_report"),
    ]
    assert [(e.workitem_uid, e.state) for e in station.take(2)] == [
        (other, "SCHEDULED"),
        (other, "IN PROGRESS"),
    ]
    assert one.quiet() and station.quiet()
    one.close()
    station.close()
    with pytest.raises(DicomRpcError) as caught:
        next(iter(w.watch("1.2.3.404")))
    assert caught.value.dicom_status == 0xC307
    with pytest.raises(DicomRpcError) as caught:
        next(iter(w.watch(filter={"NotAKey": "x"})))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_filter_on_state_follows_the_state_after_each_event(
    server: RunningServer, client: Client
) -> None:
    watcher = Watcher(client, filter={"ProcedureStepState": "IN PROGRESS"})
    wait_subscribed(server, 1)
    uid = client.workitems.create(workitem()).workitem_uid
    txn = client.workitems.claim(uid)
    client.workitems.cancel(uid, txn, discontinued())
    (claimed,) = watcher.take(1)
    assert (claimed.type, claimed.state) == ("state_report", "IN PROGRESS")
    # The discontinuation reason and CANCELED are one change: its events are of a CANCELED
    # workitem, which the filter does not follow.
    assert watcher.quiet()
    watcher.close()


def test_a_resumed_subscriber_gets_what_it_missed(server: RunningServer, client: Client) -> None:
    w = client.workitems
    watcher = Watcher(client)
    wait_subscribed(server, 1)
    uid = w.create(workitem()).workitem_uid
    w.update(uid, dataset(ProcedureStepLabel="one"))
    seen = watcher.take(2)
    watcher.close()
    # Missed while disconnected:
    txn = w.claim(uid)
    w.update(uid, dataset(ProcedureStepLabel="two"), txn)
    w.complete(uid, txn, performed())
    resumed = Watcher(client, since=seen[-1].sequence)
    missed = resumed.take(4)
    assert [e.sequence for e in missed] == [seen[-1].sequence + n for n in range(1, 5)]
    assert [(e.type, e.state) for e in missed] == [
        ("state_report", "IN PROGRESS"),
        ("updated", "IN PROGRESS"),
        ("updated", "COMPLETED"),
        ("state_report", "COMPLETED"),
    ]
    # ...then live events, without a gap or a repeat.
    wait_subscribed(server, 1)
    second = w.create(workitem()).workitem_uid
    (live,) = resumed.take(1)
    assert (live.workitem_uid, live.sequence) == (second, missed[-1].sequence + 1)
    assert resumed.quiet()
    resumed.close()


def test_since_zero_replays_every_event_as_the_change_feed_does(
    server: RunningServer, client: Client
) -> None:
    w = client.workitems
    uid = w.create(workitem()).workitem_uid
    w.update(uid, dataset(ProcedureStepLabel="before anyone watched"))
    everything = Watcher(client, since=0)  # as watch_changes(since=0): the whole log
    replayed = everything.take(2)
    assert [(e.sequence, e.workitem_uid) for e in replayed] == [(1, uid), (2, uid)]
    assert [c.sequence for c in client.read_changes(0)] == []  # (no instance stored)
    live = Watcher(client)  # no since: new events only
    wait_subscribed(server, 2)
    second = w.create(workitem()).workitem_uid
    (event,) = live.take(1)
    assert (event.sequence, event.workitem_uid) == (3, second)
    assert everything.take(1)[0].sequence == 3
    assert live.quiet()
    live.close()
    everything.close()


@pytest.mark.slow
def test_a_stalled_subscriber_is_ended_and_holds_nothing_up(tmp_path: Path) -> None:
    running = start_server(tmp_path / "data", subscriber_queue=64)
    try:
        _stalled(running)
    finally:
        running.stop()


def _stalled(server: RunningServer) -> None:
    # A subscriber that reads nothing: a small window, so the server's sends block early.
    stalled_channel = grpc.insecure_channel(
        server.target,
        options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.max_frame_size", 16384)],
    )
    stub = workitem_service_pb2_grpc.WorkitemServiceStub(stalled_channel)
    stalled = stub.SubscribeWorkitems(pb.SubscribeWorkitemsRequest())
    with Client(server.target) as client:
        active = Watcher(client)
        wait_subscribed(server, 2)
        uid = client.workitems.create(workitem()).workitem_uid
        changes = 800
        # Each event carries the update (about 2.5 KB): far more than any transport buffer.
        label = as_dataset(dataset(CommentsOnTheScheduledProcedureStep="x" * 2500))
        latencies = []
        for _ in range(changes):
            start = time.perf_counter()
            client.workitems.update(uid, label)
            latencies.append(time.perf_counter() - start)
        client.workitems.claim(uid)
        # Every change went through while one subscriber read nothing, and none waited on it:
        # a change blocked by the stalled subscriber would wait for ever (this bound only
        # guards against that, it is not a speed test).
        assert max(latencies[-200:]) < 2.0
        assert client.workitems.get(uid).state == "IN PROGRESS"
        # The active subscriber saw everything, in order.
        events = active.take(changes + 2, timeout=60)
        assert [e.sequence for e in events] == list(range(1, changes + 3))
        active.close()
        # The stalled one gets what was buffered and queued, then the clear status.
        received = []
        with pytest.raises(grpc.RpcError) as caught:
            received.extend(event.sequence for event in stalled)
        error = DicomRpcError.from_rpc_error(caught.value)
        assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.reason == "SUBSCRIBER_TOO_SLOW"
        since = int(error.metadata["since"])
        assert received == list(range(1, since + 1))
        assert "since=" in error.message
        assert since < changes + 2
        # Resuming with since loses nothing.
        rest = Watcher(client, since=since)
        tail = rest.take(changes + 2 - since, timeout=60)
        assert [e.sequence for e in tail] == list(range(since + 1, changes + 3))
        rest.close()
    stalled_channel.close()


QUERIES = [
    {"ProcedureStepState": "SCHEDULED"},
    {"ProcedureStepState": "IN PROGRESS"},
    {"PatientName": "doe"},
    {"PatientName": "Doe^J*"},
    {"PatientName": "müller^anna"},
    {"PatientID": "B"},
    {"PatientID": "?"},
    {"ScheduledProcedureStepStartDateTime": "20240201-20240331"},
    {"ScheduledProcedureStepStartDateTime": "-20240115"},
    {"ScheduledProcedureStepStartDateTime": "2024011509"},
    {"InputReadinessState": "READY", "ProcedureStepState": "SCHEDULED"},
    {"ScheduledStationNameCodeSequence.CodeValue": "ST2"},
    {"ScheduledProcedureStepPriority": "HIGH,LOW"},
    {"ProcedureStepLabel": "*review"},
]


@pytest.mark.parametrize("fuzzy", [False, True])
def test_a_filter_matches_exactly_what_a_search_finds(
    server: RunningServer, client: Client, fuzzy: bool
) -> None:
    w = client.workitems
    uids = [
        w.create(workitem(PatientName="Müller^Anna", PatientID="A")).workitem_uid,
        w.create(
            workitem(
                PatientName="Doe^John",
                PatientID="B",
                ScheduledProcedureStepStartDateTime="20240301080000",
                InputReadinessState="INCOMPLETE",
                ScheduledProcedureStepPriority="HIGH",
                ScheduledStationNameCodeSequence=[code("ST2", "Station 2")],
            )
        ).workitem_uid,
        w.create(workitem(PatientName="Doe^Jane", PatientID="C")).workitem_uid,
    ]
    w.claim(uids[2])
    store = server.archive.workitems.store
    for query in QUERIES:
        found = {
            to_json(r)[tag("SOPInstanceUID")]["Value"][0] for r in w.search(query, fuzzy=fuzzy)
        }
        for uid in uids:
            stored = store.get(uid)
            assert stored is not None
            terms = TermSet(uid.encode(), workitem_terms(stored))
            assert terms.matches(match_terms(query), fuzzy) == (uid in found), (query, uid)
    assert {to_json(r)[tag("PatientID")]["Value"][0] for r in w.search(QUERIES[2], fuzzy=True)} == {
        "B",
        "C",
    }


def test_a_value_holding_a_nul_is_matched_by_neither_search_nor_filter(
    server: RunningServer, client: Client
) -> None:
    """NUL separates an index key's parts: ``P<NUL>X`` is not indexed, so a search and an event
    filter (which matches the same terms) agree that ``P*`` does not find it."""
    watcher = Watcher(client, filter={"PatientID": "P*"})
    wait_subscribed(server, 1)
    nul = client.workitems.create(workitem(PatientID="P\x00X")).workitem_uid
    sentinel = client.workitems.create(workitem(PatientID="PZ")).workitem_uid
    (event,) = watcher.take(1)
    assert event.workitem_uid == sentinel
    assert watcher.quiet()
    found = client.workitems.search({"PatientID": "P*"})
    assert [to_json(d)[tag("SOPInstanceUID")]["Value"] for d in found] == [[sentinel]]
    assert to_json(client.workitems.get(nul).dataset)[tag("PatientID")]["Value"] == ["P\x00X"]
    watcher.close()
