"""The workitem records on PostgreSQL shared by several nodes: two backends, each with its own
pool and its own event loop, on one database, as two archive processes on two machines would
be. A claim race has one winner whichever node each performer calls; a commit on one node
wakes the other's listeners (by NOTIFY, and by the safety poll when a NOTIFY is lost); events
read on one node while both write come each once, in sequence order."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from dicomrpc.v1 import dataset_pb2
from dicomrpc.v1 import workitem_service_pb2 as pb
from dicomrpc_server.storage.postgres import PostgresBackend
from dicomrpc_server.ups.events import EventHub
from dicomrpc_server.ups.postgres_store import PostgresWorkitemStore
from dicomrpc_server.ups.records import Mutation
from dicomrpc_server.ups.values import set_text, text
from tests.postgres import PostgresCluster

T = TypeVar("T")
Decide = Callable[[dataset_pb2.Dataset | None], Mutation[T]]
STATE = "00741000"  # ProcedureStepState
LABEL = "00741204"  # ProcedureStepLabel


def _event(uid: str) -> pb.SubscribeWorkitemsResponse:
    return pb.SubscribeWorkitemsResponse(type=pb.WORKITEM_EVENT_TYPE_UPDATED, workitem_uid=uid)


def _scheduled() -> dataset_pb2.Dataset:
    ds = dataset_pb2.Dataset()
    set_text(ds, STATE, "CS", "SCHEDULED")
    set_text(ds, LABEL, "LO", "0")
    return ds


@pytest.fixture
def nodes(postgres_dsn: str) -> Iterator[tuple[PostgresWorkitemStore, PostgresWorkitemStore]]:
    backends = [PostgresBackend(postgres_dsn, pool_size=4) for _ in range(2)]
    try:
        yield PostgresWorkitemStore(backends[0]), PostgresWorkitemStore(backends[1])
    finally:
        for backend in backends:
            backend.close()


def _create(node: PostgresWorkitemStore, uid: str) -> None:
    asyncio.run(node.mutate(uid, lambda stored: Mutation(None, _scheduled(), (_event(uid),))))


def test_a_claim_race_over_two_nodes_has_one_winner_each_round(
    nodes: tuple[PostgresWorkitemStore, PostgresWorkitemStore],
) -> None:
    rounds, performers = 20, 16

    def claim(uid: str, performer: int) -> Decide[bool]:
        def decide(stored: dataset_pb2.Dataset | None) -> Mutation[bool]:
            assert stored is not None
            if text(stored, STATE) != "SCHEDULED":
                return Mutation(False)
            new = dataset_pb2.Dataset()
            new.CopyFrom(stored)
            set_text(new, STATE, "CS", "IN PROGRESS")
            set_text(new, LABEL, "LO", str(performer))
            return Mutation(True, new, (_event(uid),))

        return decide

    async def race(uid: str) -> list[bool]:
        claims = [
            nodes[performer % 2].mutate(uid, claim(uid, performer))
            for performer in range(performers)
        ]
        return list(await asyncio.gather(*claims))

    for n in range(rounds):
        uid = f"1.2.840.99.{n}"
        _create(nodes[n % 2], uid)
        results = asyncio.run(race(uid))
        assert results.count(True) == 1, f"round {n}: {results}"
        for node in nodes:
            stored = node.get(uid)
            assert stored is not None and text(stored, STATE) == "IN PROGRESS"
            assert text(stored, LABEL) == str(results.index(True))
    # A creation and one claim per round: every event, numbered 1, 2, 3 ... in commit order.
    for node in nodes:
        assert node.last_sequence() == 2 * rounds
        assert [e.sequence for e, _ in node.events_after(0, 1000)] == list(range(1, 2 * rounds + 1))


def test_a_commit_on_one_node_wakes_the_listeners_of_the_other(postgres_dsn: str) -> None:
    """By NOTIFY: the other node's safety poll is off, so nothing else could wake it."""
    writer = PostgresWorkitemStore(PostgresBackend(postgres_dsn, pool_size=2))
    reader = PostgresWorkitemStore(PostgresBackend(postgres_dsn, pool_size=2, poll_s=3600))
    try:
        heard: queue.Queue[int] = queue.Queue()
        # A listener reads through its node, as the event hub does: it runs off the loop.
        reader.on_commit(lambda: heard.put(reader.last_sequence()))
        with pytest.raises(queue.Empty):
            heard.get(timeout=0.3)
        _create(writer, "1.2.3")
        assert heard.get(timeout=10) == 1
    finally:
        writer.backend.close()
        reader.backend.close()


@pytest.mark.slow
def test_a_commit_no_one_notified_is_found_by_the_safety_poll(
    postgres: PostgresCluster, postgres_dsn: str
) -> None:
    reader = PostgresWorkitemStore(PostgresBackend(postgres_dsn, pool_size=2))
    try:
        heard = threading.Event()
        reader.on_commit(heard.set)
        event = _event("1.2.3").SerializeToString().hex()
        # Another writer's commit whose NOTIFY was lost (here: never sent).
        postgres.execute(
            "BEGIN; UPDATE workitem_event_counter SET last = last + 1; "
            f"INSERT INTO workitem_events VALUES (1, '\\x{event}', ''); COMMIT;",
            database=postgres_dsn.rsplit("/", 1)[1],
        )
        assert heard.wait(10)
        assert [e.workitem_uid for e, _ in reader.events_after(0, 10)] == ["1.2.3"]
    finally:
        reader.backend.close()


def test_events_read_during_writes_on_both_nodes_come_once_in_order(
    nodes: tuple[PostgresWorkitemStore, PostgresWorkitemStore],
) -> None:
    uids = [f"1.2.840.77.{n}" for n in range(4)]
    for uid in uids:
        _create(nodes[0], uid)
    written: dict[int, str] = {}  # sequence: workitem, of every event committed

    def increment(uid: str, events: list[pb.SubscribeWorkitemsResponse]) -> Decide[None]:
        def decide(stored: dataset_pb2.Dataset | None) -> Mutation[None]:
            assert stored is not None
            new = dataset_pb2.Dataset()
            new.CopyFrom(stored)
            set_text(new, LABEL, "LO", str(int(text(stored, LABEL)) + 1))
            events[:] = [_event(uid)]
            return Mutation(None, new, tuple(events))

        return decide

    async def write(node: PostgresWorkitemStore, offset: int) -> None:
        for n in range(40):
            uid = uids[(n + offset) % len(uids)]
            events: list[pb.SubscribeWorkitemsResponse] = []
            await node.mutate(uid, increment(uid, events))
            written[events[0].sequence] = uid

    async def writers() -> None:
        await asyncio.gather(*(write(nodes[n % 2], n) for n in range(6)))

    thread = threading.Thread(target=asyncio.run, args=(writers(),))
    thread.start()
    reader = nodes[1]
    read: list[tuple[int, str]] = []
    cursor = 0
    while True:
        done = not thread.is_alive()  # checked first: a last read after the writers finished
        for event, terms in reader.events_after(cursor, 7):
            read.append((event.sequence, event.workitem_uid))
            cursor = event.sequence
            assert terms
        if done and cursor == reader.last_sequence():
            break
    thread.join()
    total = len(uids) + 6 * 40
    assert [sequence for sequence, _ in read] == list(range(1, total + 1))
    assert dict(read) == {**{n + 1: uid for n, uid in enumerate(uids)}, **written}
    stored = [reader.get(uid) for uid in uids]
    assert sum(int(text(item, LABEL)) for item in stored if item is not None) == 6 * 40


def test_a_subscriber_on_one_node_gets_the_events_committed_on_the_other(
    nodes: tuple[PostgresWorkitemStore, PostgresWorkitemStore],
) -> None:
    """The event hub, unchanged, over the PostgreSQL records: wake-up, read, fan-out."""
    hub = EventHub(nodes[1], queue_size=64)
    uids = [f"1.2.840.55.{n}" for n in range(5)]

    async def follow() -> list[str]:
        received: list[str] = []
        stream = hub.follow("", {}, None)
        first = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.2)  # subscribed (the generator runs up to its first wait)
        await asyncio.to_thread(lambda: [_create(nodes[0], uid) for uid in uids])
        received.append((await asyncio.wait_for(first, 10)).workitem_uid)
        while len(received) < len(uids):
            received.append((await asyncio.wait_for(anext(stream), 10)).workitem_uid)
        await stream.aclose()
        return received

    assert asyncio.run(follow()) == uids
