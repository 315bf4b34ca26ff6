"""The workitem role's contract (:class:`~dicomrpc_server.ups.records.WorkitemRecords`), run
against every implementation: a change is atomic, one at a time per workitem, and its event is
logged in order; a refused change writes nothing; search pages its matches; a DIMSE
subscription starts after the newest event with its initial reports, and its AE's lease has
one holder at a time."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dicomrpc.v1 import dataset_pb2
from dicomrpc.v1 import workitem_service_pb2 as pb
from dicomrpc_server.errors import ServiceError, invalid_argument
from dicomrpc_server.storage.lmdb_index import LmdbIndex
from dicomrpc_server.storage.postgres import PostgresBackend
from dicomrpc_server.storage.records_pb2 import UpsSubscriptionRecord
from dicomrpc_server.ups.index import match_terms
from dicomrpc_server.ups.postgres_store import PostgresWorkitemStore
from dicomrpc_server.ups.records import Mutation, SubscriberState, WorkitemRecords
from dicomrpc_server.ups.store import WorkitemStore
from dicomrpc_server.ups.values import set_text, text

PATIENT_ID = "00100020"
LABEL = "00741204"  # ProcedureStepLabel


Opened = tuple[WorkitemRecords, Callable[[], None]]


def _lmdb(request: pytest.FixtureRequest, path: Path) -> Opened:
    index = LmdbIndex(
        path / "index", map_size=1 << 24, max_readers=64, max_batch=64, before_commit=lambda: None
    )
    return WorkitemStore(index), index.close


def _postgresql(request: pytest.FixtureRequest, path: Path) -> Opened:
    backend = PostgresBackend(request.getfixturevalue("postgres_dsn"), pool_size=4)
    return PostgresWorkitemStore(backend), backend.close


@pytest.fixture(params=[_lmdb, _postgresql], ids=["lmdb", "postgresql"])
def records(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[WorkitemRecords]:
    store, close = request.param(request, tmp_path)
    yield store
    close()


def _item(patient: str, label: str = "0") -> dataset_pb2.Dataset:
    ds = dataset_pb2.Dataset()
    set_text(ds, PATIENT_ID, "LO", patient)
    set_text(ds, LABEL, "LO", label)
    return ds


def _event(uid: str) -> pb.SubscribeWorkitemsResponse:
    return pb.SubscribeWorkitemsResponse(type=pb.WORKITEM_EVENT_TYPE_UPDATED, workitem_uid=uid)


def _create(records: WorkitemRecords, uid: str, patient: str) -> None:
    def decide(stored: dataset_pb2.Dataset | None) -> Mutation[None]:
        assert stored is None
        return Mutation(None, _item(patient), (_event(uid),))

    asyncio.run(records.mutate(uid, decide))


def test_a_change_is_written_with_its_event(records: WorkitemRecords) -> None:
    heard = threading.Event()
    records.on_commit(heard.set)
    _create(records, "1.2.1", "A")
    stored = records.get("1.2.1")
    assert stored is not None and text(stored, PATIENT_ID) == "A"
    assert records.last_sequence() == 1
    ((event, terms),) = records.events_after(0, 10)
    assert event.sequence == 1 and event.workitem_uid == "1.2.1" and terms
    assert heard.wait(5)


def test_a_refused_change_writes_nothing(records: WorkitemRecords) -> None:
    _create(records, "1.2.1", "A")

    def refuse(stored: dataset_pb2.Dataset | None) -> Mutation[None]:
        assert stored is not None
        set_text(stored, PATIENT_ID, "LO", "changed before refusing")
        raise invalid_argument("dataset", "refused")

    with pytest.raises(ServiceError):
        asyncio.run(records.mutate("1.2.1", refuse))
    stored = records.get("1.2.1")
    assert stored is not None and text(stored, PATIENT_ID) == "A"
    assert records.last_sequence() == 1


def test_a_decision_to_change_nothing_returns_its_result(records: WorkitemRecords) -> None:
    _create(records, "1.2.1", "A")
    assert asyncio.run(records.mutate("1.2.1", lambda stored: Mutation("as asked"))) == "as asked"
    assert records.last_sequence() == 1


def test_changes_of_one_workitem_never_lose_one_another(records: WorkitemRecords) -> None:
    """Each decision sees the data set the previous one wrote: 200 concurrent increments."""
    _create(records, "1.2.1", "A")

    def increment(stored: dataset_pb2.Dataset | None) -> Mutation[int]:
        assert stored is not None
        count = int(text(stored, LABEL)) + 1
        new = dataset_pb2.Dataset()
        new.CopyFrom(stored)
        set_text(new, LABEL, "LO", str(count))
        return Mutation(count, new, (_event("1.2.1"),))

    async def race() -> list[int]:
        return list(await asyncio.gather(*(records.mutate("1.2.1", increment) for _ in range(200))))

    results = asyncio.run(race())
    assert sorted(results) == list(range(1, 201))
    stored = records.get("1.2.1")
    assert stored is not None and text(stored, LABEL) == "200"
    sequences = [e.sequence for e, _ in records.events_after(0, 1000)]
    assert sequences == list(range(1, 202))


def test_an_empty_uid_names_no_workitem(records: WorkitemRecords) -> None:
    seen: list[dataset_pb2.Dataset | None] = []

    def look(stored: dataset_pb2.Dataset | None) -> Mutation[None]:
        seen.append(stored)
        return Mutation(None)

    asyncio.run(records.mutate("", look))
    assert seen == [None]


def test_search_pages_its_matches(records: WorkitemRecords) -> None:
    for n in range(9):
        _create(records, f"1.2.{n}", "A" if n % 3 else "B")
    everything = records.search([], False, 0, 100)
    assert [text(d, PATIENT_ID) for d in everything].count("B") == 3
    terms = match_terms({"PatientID": "A"})
    first = records.search(terms, False, 0, 4)
    rest = records.search(terms, False, 4, 4)
    assert len(first) == 4 and len(rest) == 2
    assert all(text(d, PATIENT_ID) == "A" for d in first + rest)
    assert records.events_after(3, 2)[0][0].sequence == 4


NAME = "00100010"  # PatientName
START = "00404005"  # ScheduledProcedureStepStartDateTime
STATIONS = "00404025"  # ScheduledStationNameCodeSequence
CODE_VALUE = "00080100"


def _full_item(name: str, label: str, start: str, station: str) -> dataset_pb2.Dataset:
    ds = _item("P", label)
    person = ds.attributes[NAME]
    person.vr = "PN"
    person.person_names.values.add(alphabetic=name)
    set_text(ds, START, "DT", start)
    sequence = ds.attributes[STATIONS]
    sequence.vr = "SQ"
    set_text(sequence.sequence.items.add(), CODE_VALUE, "SH", station)
    return ds


def _uids(found: list[dataset_pb2.Dataset]) -> list[str]:
    return [text(d, "00080018") for d in found]


def test_search_matches_as_the_query_rules_say(records: WorkitemRecords) -> None:
    """Exact, wildcard, fuzzy, range and sequence matching, in UID (byte) order."""
    items = {
        "1.2.1": _full_item("Doe^John", "CT abdomen", "20240115093000", "ST1"),
        "1.2.2": _full_item("Doe^Jane", "CT chest", "20240220101500", "ST2"),
        "1.2.10": _full_item("Smith^Johnny", "MR knee", "20231231235959", "ST1"),
    }
    for uid, item in items.items():
        set_text(item, "00080018", "UI", uid)
        asyncio.run(records.mutate(uid, lambda stored, item=item: Mutation(None, item)))

    def search(fuzzy: bool = False, **match: str) -> list[str]:
        return _uids(records.search(match_terms(match), fuzzy, 0, 100))

    assert _uids(records.search([], False, 0, 100)) == ["1.2.1", "1.2.10", "1.2.2"]
    assert _uids(records.search([], False, 1, 1)) == ["1.2.10"]
    assert search(PatientName="Doe^John") == ["1.2.1"]
    assert search(PatientName="doe^*") == ["1.2.1", "1.2.2"]
    assert search(True, PatientName="joh") == ["1.2.1", "1.2.10"]
    assert search(ProcedureStepLabel="CT*") == ["1.2.1", "1.2.2"]
    assert search(ProcedureStepLabel="?R kn*") == ["1.2.10"]
    assert search(ProcedureStepLabel="CT") == []
    assert search(ScheduledProcedureStepStartDateTime="20240101-20241231") == ["1.2.1", "1.2.2"]
    assert search(ScheduledProcedureStepStartDateTime="-2023") == ["1.2.10"]
    assert search(**{"ScheduledStationNameCodeSequence.CodeValue": "ST1"}) == ["1.2.1", "1.2.10"]
    assert search(PatientName="Doe*", **{"ScheduledStationNameCodeSequence.CodeValue": "ST1"}) == [
        "1.2.1"
    ]

    def relabel(stored: dataset_pb2.Dataset | None) -> Mutation[None]:
        assert stored is not None
        new = dataset_pb2.Dataset()
        new.CopyFrom(stored)
        set_text(new, LABEL, "LO", "MR chest")
        return Mutation(None, new)

    asyncio.run(records.mutate("1.2.2", relabel))
    assert search(ProcedureStepLabel="CT*") == ["1.2.1"]
    assert search(ProcedureStepLabel="MR*") == ["1.2.10", "1.2.2"]
    assert search(PatientName="Doe^Jane") == ["1.2.2"]  # untouched keys keep their entries


# -- DIMSE UPS subscriptions (PS3.4 CC.2.3) -------------------------------------------------------

STATE = "00741000"  # ProcedureStepState
SOP_INSTANCE = "00080018"


def _create_stored(records: WorkitemRecords, uid: str, patient: str, state: str) -> None:
    """A workitem as the core stores it: with its UID and state."""

    def decide(stored: dataset_pb2.Dataset | None) -> Mutation[None]:
        item = _item(patient)
        set_text(item, SOP_INSTANCE, "UI", uid)
        set_text(item, STATE, "CS", state)
        return Mutation(None, item, (_event(uid),))

    asyncio.run(records.mutate(uid, decide))


def _state_only(dataset: dataset_pb2.Dataset) -> dataset_pb2.Dataset:
    out = dataset_pb2.Dataset()
    out.attributes[STATE].CopyFrom(dataset.attributes[STATE])
    return out


def _subscription(ae: str, workitem_uid: str = "", **match: str) -> UpsSubscriptionRecord:
    return UpsSubscriptionRecord(ae_title=ae, workitem_uid=workitem_uid, match=match, id=ae + "1")


def test_a_subscription_starts_after_the_newest_event_with_its_initial_report(
    records: WorkitemRecords,
) -> None:
    _create_stored(records, "1.2.1", "A", "SCHEDULED")
    _create_stored(records, "1.2.2", "B", "IN PROGRESS")
    taken = asyncio.run(records.subscribe(_subscription("WATCHER", "1.2.2"), _state_only))
    assert taken.since == 2
    assert [
        (i.workitem_uid, text(dataset_pb2.Dataset.FromString(i.information), STATE))
        for i in taken.initial
    ] == [("1.2.2", "IN PROGRESS")]
    (kept,) = records.subscriptions("WATCHER")
    assert kept == taken
    (subscriber,) = records.subscribers()
    assert (subscriber.ae_title, subscriber.delivered, subscriber.owner) == ("WATCHER", 2, "")
    # A filtered global subscription with the Deletion Lock: a report of each workitem its
    # filter matches; the AE's delivery stays where it was.
    _create_stored(records, "1.2.3", "B", "SCHEDULED")
    lock = _subscription("WATCHER", PatientID="B")
    lock.deletion_lock = True
    taken = asyncio.run(records.subscribe(lock, _state_only))
    assert taken.since == 3 and [i.workitem_uid for i in taken.initial] == ["1.2.2", "1.2.3"]
    assert [s.workitem_uid for s in records.subscriptions("WATCHER")] == ["", "1.2.2"]
    assert records.subscribers()[0].delivered == 2
    # Without initial reports (a global subscription without the lock): none.
    assert not asyncio.run(records.subscribe(_subscription("OTHER"), None)).initial
    assert [s.ae_title for s in records.subscribers()] == ["OTHER", "WATCHER"]


def _claim(owner: str, lease_ms: int = 60_000) -> Callable[[SubscriberState], bool]:
    def claim(state: SubscriberState) -> bool:
        record = state.subscriber
        if record is None:
            return False
        if record.owner not in ("", owner) and record.lease_expires_ms > state.now_ms:
            return False
        record.owner, record.lease_expires_ms = owner, state.now_ms + lease_ms
        return True

    return claim


def test_a_lease_has_one_holder_until_it_expires(records: WorkitemRecords) -> None:
    asyncio.run(records.subscribe(_subscription("WATCHER"), None))

    async def race() -> list[bool]:
        claims = [records.change_subscriber("WATCHER", _claim(f"p{n}")) for n in range(8)]
        return list(await asyncio.gather(*claims))

    won = asyncio.run(race())
    assert won.count(True) == 1
    winner = f"p{won.index(True)}"
    assert records.subscribers()[0].owner == winner
    assert asyncio.run(records.change_subscriber("WATCHER", _claim(winner)))  # renewed
    assert not asyncio.run(records.change_subscriber("WATCHER", _claim("late")))
    # Once it expires (by the index's clock), another takes it.
    asyncio.run(records.change_subscriber("WATCHER", _claim(winner, lease_ms=-1)))
    assert asyncio.run(records.change_subscriber("WATCHER", _claim("late")))
    assert records.subscribers()[0].owner == "late"


def test_a_failed_change_writes_nothing_and_the_last_subscription_takes_the_rest(
    records: WorkitemRecords,
) -> None:
    _create_stored(records, "1.2.1", "A", "SCHEDULED")
    asyncio.run(records.subscribe(_subscription("WATCHER", "1.2.1"), _state_only))
    asyncio.run(records.subscribe(_subscription("WATCHER"), None))

    def advance_then_fail(state: SubscriberState) -> None:
        assert state.subscriber is not None
        state.subscriber.delivered = 99
        state.subscriptions.clear()
        raise invalid_argument("change", "refused")

    with pytest.raises(ServiceError):
        asyncio.run(records.change_subscriber("WATCHER", advance_then_fail))
    assert len(records.subscriptions("WATCHER")) == 2
    assert records.subscribers()[0].delivered == 1

    def end(workitem_uid: str) -> Callable[[SubscriberState], bool]:
        def change(state: SubscriberState) -> bool:
            return state.subscriptions.pop(workitem_uid, None) is not None

        return change

    assert asyncio.run(records.change_subscriber("WATCHER", end("1.2.1")))
    assert not asyncio.run(records.change_subscriber("WATCHER", end("1.2.1")))
    assert [s.workitem_uid for s in records.subscriptions("WATCHER")] == [""]
    assert asyncio.run(records.change_subscriber("WATCHER", end("")))
    assert records.subscriptions("WATCHER") == [] and records.subscribers() == []
    # An AE with no records: a change sees none, and writes none.
    assert not asyncio.run(records.change_subscriber("NOBODY", _claim("p")))
    assert records.subscribers() == []


def test_subscriptions_carried_to_postgresql_keep_their_delivery(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """``migrate`` copies an embedded archive's subscriptions: each AE's delivered sequence
    means the same event in the copied log, and nobody holds its lease."""
    index = LmdbIndex(
        tmp_path / "index",
        map_size=1 << 24,
        max_readers=64,
        max_batch=64,
        before_commit=lambda: None,
    )
    backend = PostgresBackend(postgres_dsn, pool_size=2)
    try:
        source, target = WorkitemStore(index), PostgresWorkitemStore(backend)
        _create_stored(source, "1.2.1", "A", "SCHEDULED")
        asyncio.run(source.subscribe(_subscription("WATCHER", "1.2.1"), _state_only))
        asyncio.run(source.subscribe(_subscription("WATCHER"), None))
        asyncio.run(source.change_subscriber("WATCHER", _claim("a process")))
        for _ in range(2):  # a second run finds them there, and keeps them
            asyncio.run(
                target.carry_subscriptions(source.subscribers(), source.subscriptions("WATCHER"))
            )
        assert target.subscriptions("WATCHER") == source.subscriptions("WATCHER")
        (carried,) = target.subscribers()
        assert (carried.delivered, carried.owner, carried.lease_expires_ms) == (1, "", 0)
    finally:
        backend.close()
        index.close()
