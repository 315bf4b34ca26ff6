"""DIMSE UPS subscriptions outlive their server process, and have one sender archive-wide.

A subscription lasts until the subscriber unsubscribes (PS3.4 CC.2.3): a server restarted on
its data folder goes on reporting to it; with ``--processes 2`` a subscription taken on one
process's association hears the changes made through the other, each report once and in
order; a sending process killed outright is taken over within the lease, nothing skipped; and
the same on two PostgreSQL nodes. Subscribers are pynetdicom UPS Event SCPs (dcmtk has no UPS
tool).
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import lmdb
import psutil
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association

from dicomrpc import Client
from dicomrpc_server.dimse.watch import LEASE_S, RENEW_S
from dicomrpc_server.storage.records_pb2 import UpsSubscriberRecord
from dicomrpc_server.storage.recovery import INDEX_DIR
from tests.conftest import ServerProcess, spawn_server, start_server
from tests.integration.test_dimse_ups import (
    GLOBAL,
    SUBSCRIBE,
    UNSUBSCRIBE,
    UPS_PULL,
    UPS_PUSH,
    UPS_WATCH,
    Watcher,
    final_ready,
    receiving,
    status_of,
)
from tests.integration.test_processes import OWN_CONNECTION, members, pinned
from tests.integration.test_workitems import LOCK
from tests.upsgen import workitem

pytestmark = pytest.mark.slow

# How long a takeover may take: the lease, a renewal period, and the reports' association.
TAKEOVER_S = LEASE_S + RENEW_S + 5
Received = tuple[int, str, str]


def associate(port: int) -> Association:
    ae = AE(ae_title="PERFORMER")
    for uid in (UPS_PUSH, UPS_PULL, UPS_WATCH):
        ae.add_requested_context(uid)
    association = ae.associate("127.0.0.1", port, ae_title="DICOMRPC")
    assert association.is_established
    return association


def subscribe(port: int, title: str, instance: str) -> int:
    """Subscribe ``title`` on a new association; the pid serving it, when psutil finds it."""
    association = associate(port)
    try:
        local = association.dul.socket.socket.getsockname()[1]  # type: ignore[union-attr]
        answer = association.send_n_action(
            receiving(title), SUBSCRIBE, UPS_PUSH, instance, meta_uid=UPS_WATCH
        )[0]
        assert status_of(answer) == 0x0000
        return serving_pid(port, local)
    finally:
        association.release()


def serving_pid(port: int, client_port: int) -> int:
    """The process that accepted the connection from ``client_port`` on ``port`` (0: none)."""
    for connection in psutil.net_connections("tcp"):
        if (
            connection.laddr
            and connection.laddr.port == port
            and connection.raddr
            and connection.raddr.port == client_port
            and connection.pid
        ):
            return int(connection.pid)
    return 0


def state_of(report: tuple[int, str, Dataset]) -> Received:
    event_type, uid, information = report
    return event_type, uid, str(information.get("ProcedureStepState", ""))


def receive(watcher: Watcher, count: int, timeout: float = 30) -> list[Received]:
    """``count`` reports (more if they come within a moment), as (type, workitem, state)."""
    out = [state_of(watcher.next(timeout)) for _ in range(count)]
    out.extend(state_of(report) for report in watcher.drain(1.0))
    return out


def first_occurrences(received: list[Received]) -> list[Received]:
    """The reports in the order each first came (a report may come again after a takeover)."""
    seen: set[Received] = set()
    out = []
    for report in received:
        if report not in seen:
            seen.add(report)
            out.append(report)
    return out


def workflow(client: Client, count: int) -> list[Received]:
    """Create and claim ``count`` workitems; the state reports a global subscriber is due."""
    expected: list[Received] = []
    for _ in range(count):
        uid = client.workitems.create(workitem()).workitem_uid
        client.workitems.claim(uid, LOCK)
        expected += [(1, uid, "SCHEDULED"), (1, uid, "IN PROGRESS")]
    return expected


@pytest.fixture()
def watcher() -> Iterator[Watcher]:
    scp = Watcher("DURABLE")
    yield scp
    scp.stop()


def test_a_subscription_outlives_a_restart(tmp_path: Path, watcher: Watcher) -> None:
    data = tmp_path / "data"
    server = start_server(data, dimse_port=0)
    try:
        with Client(server.target) as client:
            client.add_dimse_peer("durable", watcher.title, "127.0.0.1", watcher.port)
            uid = client.workitems.create(final_ready().to_json_dict()).workitem_uid
        subscribe(server.dimse_port, watcher.title, uid)
        assert state_of(watcher.next()) == (1, uid, "SCHEDULED")  # the initial report
    finally:
        server.stop()
    server = start_server(data, dimse_port=0)
    try:
        with Client(server.target) as client:
            client.workitems.claim(uid, LOCK)
            assert receive(watcher, 1) == [(1, uid, "IN PROGRESS")]
            client.workitems.request_cancel(uid, reason="stop")
            event_type, about, information = watcher.next()
            assert (event_type, about, information.ReasonForCancellation) == (2, uid, "stop")
            client.workitems.cancel(uid, LOCK)
            assert receive(watcher, 1) == [(1, uid, "CANCELED")]
            # Its final state report delivered, the subscription has nothing left to report.
            deadline = time.monotonic() + 10
            while server.archive.workitems.store.subscribers():
                assert time.monotonic() < deadline, "the finished subscription stayed"
                time.sleep(0.1)
    finally:
        server.stop()


def test_reports_wait_for_a_subscriber_that_cannot_be_reached(tmp_path: Path) -> None:
    """Delivered at least once: the reports of changes made while the subscriber was down
    come once it listens again, in order."""
    first = Watcher("DURABLE")
    server = start_server(tmp_path / "data", dimse_port=0)
    try:
        with Client(server.target) as client:
            client.add_dimse_peer("durable", first.title, "127.0.0.1", first.port)
            subscribe(server.dimse_port, first.title, GLOBAL)
            first.stop()
            expected = workflow(client, 2)
            time.sleep(8)  # past the first calls (1 s, then 5 s apart)
            again = Watcher("DURABLE", first.port)
            try:
                assert receive(again, len(expected), timeout=60) == expected
            finally:
                again.stop()
    finally:
        server.stop()


# -- several processes on one LMDB folder ------------------------------------------------------


def dimse_port(server: ServerProcess) -> int:
    assert server.process.stdout is not None
    line = server.process.stdout.readline()
    match = re.search(r"serving DIMSE on \S+:(\d+) as DICOMRPC", line)
    assert match, line
    return int(match.group(1))


def lmdb_subscribers(data: Path) -> list[UpsSubscriberRecord]:
    """The subscriber records, read from the folder's index beside the running processes."""
    env = lmdb.open(str(data / INDEX_DIR), readonly=True, max_dbs=64)
    try:
        with env.begin() as txn:
            db = env.open_db(b"ups_subscribers", txn=txn, create=False)
            return [UpsSubscriberRecord.FromString(bytes(v)) for _, v in txn.cursor(db=db)]
    finally:
        env.close()


def owner_pid(read: Callable[[], list[UpsSubscriberRecord]], ae_title: str) -> int:
    """The pid of the process holding the lease on ``ae_title``'s delivery."""
    deadline = time.monotonic() + 10
    while True:
        owners = [r.owner for r in read() if r.ae_title == ae_title and r.owner]
        if owners:
            return int(owners[0].split("/")[1])
        assert time.monotonic() < deadline, "nobody holds the lease"
        time.sleep(0.1)


@pytest.fixture
def group(tmp_path: Path) -> Iterator[tuple[ServerProcess, int]]:
    server = spawn_server(tmp_path / "data", "--processes", "2", "--dimse-port", "0")
    port = dimse_port(server)
    yield server, port
    assert server.stop() == 0


def associations_by_process(port: int, pids: list[int]) -> dict[int, Association]:
    """One association served by each process of ``pids`` (the kernel picks, so try again)."""
    out: dict[int, Association] = {}
    for _ in range(64):
        if len(out) == len(pids):
            return out
        association = associate(port)
        local = association.dul.socket.socket.getsockname()[1]  # type: ignore[union-attr]
        pid = serving_pid(port, local)
        if pid in pids and pid not in out:
            out[pid] = association
        else:
            association.release()
    raise AssertionError(f"associations never spread over {pids}")


def watch_on(association: Association, title: str, action: int, instance: str) -> int:
    answer = association.send_n_action(
        receiving(title), action, UPS_PUSH, instance, meta_uid=UPS_WATCH
    )[0]
    return status_of(answer)


def test_a_subscription_on_one_process_hears_the_changes_made_on_the_other(
    group: tuple[ServerProcess, int], watcher: Watcher
) -> None:
    """Subscribed on one process's association, subscribed again (as a subscriber reconnecting
    through a load balancer would) on the other's: one subscription, whose reports of the
    changes made through either come once each, in order, until it is ended on either."""
    server, port = group
    by_pid = pinned(server, 1)
    with Client(server.target, OWN_CONNECTION) as client:
        client.add_dimse_peer("durable", watcher.title, "127.0.0.1", watcher.port)
    associations = associations_by_process(port, list(by_pid))
    (first, a), (second, b) = associations.items()
    try:
        assert watch_on(a, watcher.title, SUBSCRIBE, GLOBAL) == 0x0000
        expected = workflow(by_pid[second][0], 3)
        assert receive(watcher, len(expected)) == expected
        assert watch_on(b, watcher.title, SUBSCRIBE, GLOBAL) == 0x0000  # replaces it
        expected = workflow(by_pid[second][0], 2) + workflow(by_pid[first][0], 2)
        assert receive(watcher, len(expected)) == expected  # each once, in order
        assert watch_on(b, watcher.title, UNSUBSCRIBE, GLOBAL) == 0x0000
        workflow(by_pid[first][0], 1)
        assert watcher.quiet(3)
    finally:
        for association in associations.values():
            association.release()
        for clients in by_pid.values():
            for c in clients:
                c.close()


def test_a_killed_sender_is_taken_over_within_the_lease(
    tmp_path: Path, group: tuple[ServerProcess, int], watcher: Watcher
) -> None:
    server, port = group
    by_pid = pinned(server, 1)
    with Client(server.target, OWN_CONNECTION) as client:
        client.add_dimse_peer("durable", watcher.title, "127.0.0.1", watcher.port)
    subscribe(port, watcher.title, GLOBAL)
    some_client = next(iter(by_pid.values()))[0]
    before = workflow(some_client, 2)
    assert receive(watcher, len(before)) == before
    victim = owner_pid(lambda: lmdb_subscribers(tmp_path / "data"), watcher.title)
    assert victim in by_pid
    (survivor,) = [clients[0] for pid, clients in by_pid.items() if pid != victim]
    psutil.Process(victim).send_signal(signal.SIGKILL)
    killed = time.monotonic()
    expected = workflow(survivor, 3)
    got = [state_of(watcher.next(TAKEOVER_S + 10))]
    assert time.monotonic() - killed < TAKEOVER_S + 5, "the lease was not taken over in time"
    while first_occurrences(got) != expected:
        got.append(state_of(watcher.next(30)))
    got.extend(state_of(report) for report in watcher.drain(1.0))
    # At least once and in order: nothing skipped; what came again came after a takeover.
    assert first_occurrences(got) == expected
    assert set(got) <= set(before) | set(expected)
    assert owner_pid(lambda: lmdb_subscribers(tmp_path / "data"), watcher.title) != victim
    assert len(members(server)) == 2  # the killed process was replaced
    for clients in by_pid.values():
        for c in clients:
            c.close()


# -- two PostgreSQL nodes -------------------------------------------------------------------------


def postgres_subscribers(dsn: str) -> list[UpsSubscriberRecord]:
    async def read() -> list[UpsSubscriberRecord]:
        connection = await asyncpg.connect(dsn)
        try:
            rows = await connection.fetch(
                "SELECT record FROM ups_subscribers WHERE record IS NOT NULL"
            )
        finally:
            await connection.close()
        return [UpsSubscriberRecord.FromString(row["record"]) for row in rows]

    return asyncio.run(read())


def test_two_postgresql_nodes_share_subscriptions_and_take_over_a_killed_sender(
    tmp_path: Path, postgres_dsn: str, watcher: Watcher
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    args = ("--index", postgres_dsn, "--blobs", str(shared), "--dimse-port", "0")
    nodes = [spawn_server(tmp_path / name, *args) for name in ("a", "b")]
    try:
        ports = {node.process.pid: dimse_port(node) for node in nodes}
        clients = {node.process.pid: Client(node.target) for node in nodes}
        first, second = nodes
        clients[first.process.pid].add_dimse_peer(
            "durable", watcher.title, "127.0.0.1", watcher.port
        )
        subscribe(ports[first.process.pid], watcher.title, GLOBAL)
        before = workflow(clients[second.process.pid], 2)
        assert receive(watcher, len(before)) == before  # taken on one node, changed on the other
        victim = owner_pid(lambda: postgres_subscribers(postgres_dsn), watcher.title)
        assert victim in clients
        (survivor,) = [c for pid, c in clients.items() if pid != victim]
        psutil.Process(victim).send_signal(signal.SIGKILL)
        killed = time.monotonic()
        expected = workflow(survivor, 3)
        got = [state_of(watcher.next(TAKEOVER_S + 10))]
        assert time.monotonic() - killed < TAKEOVER_S + 5, "the lease was not taken over in time"
        while first_occurrences(got) != expected:
            got.append(state_of(watcher.next(30)))
        assert first_occurrences(got) == expected
        assert set(got) <= set(before) | set(expected)
        for client in clients.values():
            client.close()
    finally:
        for node in nodes:
            node.stop(signal.SIGTERM if node.process.poll() is None else None)
