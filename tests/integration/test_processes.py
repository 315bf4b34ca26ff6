"""``dicomrpc serve --processes 2``: one archive served by two processes on the same ports.

Each test pins clients to a process: a client's connection is matched to the process that
accepted it (psutil lists each process's connections), so that a change made through one
process and seen through the other is known to have crossed processes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from pydicom.uid import generate_uid

from dicomrpc import Client, ClientConfig
from dicomrpc.results import Change
from dicomrpc.retrieval import RetrievedInstance, SearchResult
from dicomrpc_server.archive import Archive
from dicomrpc_server.config import Settings
from dicomrpc_server.storage.recovery import INDEX_DIR
from tests import dcmtk
from tests.conftest import S3Emulator, ServerProcess, spawn_server
from tests.dcmtk import require_dcmtk
from tests.dicomgen import ct_instance
from tests.integration.test_startup_checks import serve
from tests.upsgen import workitem

pytestmark = pytest.mark.slow

HOLD = """
import sys
from pathlib import Path
from dicomrpc_server.storage.key_locks import KeyLocks
locks = KeyLocks(Path(sys.argv[1]))
assert locks.acquire(sys.argv[2])
print("ready", flush=True)
sys.stdin.read()
"""
OWN_CONNECTION = ClientConfig(options=(("grpc.use_local_subchannel_pool", 1),))


def study_uids(result: SearchResult) -> list[str]:
    return [d["0020000D"]["Value"][0] for d in result.as_json()]


def members(server: ServerProcess) -> list[psutil.Process]:
    """The group's server processes."""
    return psutil.Process(server.process.pid).children()


def server_port(server: ServerProcess) -> int:
    return int(server.target.rsplit(":", 1)[1])


def accepted(process: psutil.Process, port: int) -> set[int]:
    """The client ports of the connections a process accepted on ``port``."""
    return {
        c.raddr.port
        for c in process.net_connections("tcp")
        if c.laddr and c.laddr.port == port and c.raddr and c.status == psutil.CONN_ESTABLISHED
    }


def pinned(server: ServerProcess, per_process: int, limit: int = 64) -> dict[int, list[Client]]:
    """Clients by the pid of the process serving their connection, ``per_process`` each."""
    port = server_port(server)
    group = members(server)
    out: dict[int, list[Client]] = {p.pid: [] for p in group}
    spare: list[Client] = []
    for _ in range(limit):
        if all(len(c) >= per_process for c in out.values()):
            break
        before = {p.pid: accepted(p, port) for p in group}
        client = Client(server.target, OWN_CONNECTION)
        client.latest_change()  # connects
        grew = [p.pid for p in group if accepted(p, port) - before[p.pid]]
        assert len(grew) == 1, f"the new connection was found on {grew}"
        if len(out[grew[0]]) < per_process:
            out[grew[0]].append(client)
        else:
            spare.append(client)
    for client in spare:
        client.close()
    assert all(len(c) >= per_process for c in out.values()), "connections never spread"
    return out


@pytest.fixture
def group(tmp_path: Path) -> Iterator[ServerProcess]:
    server = spawn_server(tmp_path / "data", "--processes", "2")
    yield server
    assert server.stop() == 0


@pytest.fixture
def clients(group: ServerProcess) -> Iterator[tuple[list[Client], list[Client]]]:
    by_pid = pinned(group, 2)
    first, second = by_pid.values()
    yield first, second
    for c in [*first, *second]:
        c.close()


def test_two_processes_serve_one_archive_on_one_port(
    group: ServerProcess, clients: tuple[list[Client], list[Client]]
) -> None:
    a, b = clients[0][0], clients[1][0]
    assert len(members(group)) == 2
    data = ct_instance(seed=1)
    result = a.store([data])
    assert [r.outcome for r in result.instances] == ["stored"]
    stored = result.instances[0]
    # Through the other process: the same bytes, the same search, the same feed.
    back = b.retrieve_instance(
        stored.study_instance_uid, stored.series_instance_uid, stored.sop_instance_uid
    )
    assert isinstance(back, RetrievedInstance) and back.data[128:] == data[128:]
    assert study_uids(b.search_studies()) == [stored.study_instance_uid]
    latest = b.latest_change()
    assert latest is not None and latest.sop_instance_uid == stored.sop_instance_uid
    # And DICOMweb, on its shared port.
    with httpx.Client(base_url=group.dicomweb_url, timeout=30) as http:
        answer = http.get("/studies", headers={"Accept": "application/dicom+json"})
        assert answer.status_code == 200
        assert len(answer.json()) == 1


def test_a_feed_follower_wakes_on_a_commit_in_the_other_process(
    clients: tuple[list[Client], list[Client]],
) -> None:
    """The follower is woken by the other process's commit, not by its 5 s poll."""
    follower, writer = clients[0][0], clients[1][0]
    got: queue.Queue[Change] = queue.Queue()
    watch = follower.watch_changes(since=0)

    def read() -> None:
        with contextlib.suppress(Exception):  # ended when the client closes
            for change in watch:
                got.put(change)

    threading.Thread(target=read, daemon=True).start()
    time.sleep(0.5)  # the follower waits
    delays = []
    for seed in range(3):
        started = time.monotonic()
        writer.store([ct_instance(seed=10 + seed)])
        got.get(timeout=10)
        delays.append(time.monotonic() - started)
        time.sleep(0.3)
    # Each of three wake-ups within 2 s: a poll every 5 s would miss at least one.
    assert max(delays) < 2.0, delays


def test_a_workitem_subscriber_hears_the_other_process(
    clients: tuple[list[Client], list[Client]],
) -> None:
    """Workitem events are pushed, not polled: without cross-process wake-ups none arrive."""
    subscriber, actor = clients[0][0], clients[1][0]
    events: queue.Queue[object] = queue.Queue()
    watch = subscriber.workitems.watch()

    def read() -> None:
        with contextlib.suppress(Exception):  # ended when the watch closes
            for event in watch:
                events.put(event)

    threading.Thread(target=read, daemon=True).start()
    time.sleep(0.5)
    uids = [actor.workitems.create(workitem()).workitem_uid for _ in range(3)]
    txn = actor.workitems.claim(uids[0])
    assert txn
    seen = [events.get(timeout=10) for _ in range(4)]
    watch.close()
    assert [e.workitem_uid for e in seen] == [*uids, uids[0]]  # type: ignore[attr-defined]
    sequences = [e.sequence for e in seen]  # type: ignore[attr-defined]
    assert sequences == sorted(sequences) and len(set(sequences)) == 4


def test_a_claim_race_across_processes_has_one_winner(
    clients: tuple[list[Client], list[Client]],
) -> None:
    performers = [*clients[0], *clients[1]]
    for _ in range(5):
        uid = performers[0].workitems.create(workitem()).workitem_uid
        barrier = threading.Barrier(len(performers))

        def claim(client: Client, uid: str = uid, barrier: threading.Barrier = barrier) -> bool:
            barrier.wait()
            try:
                client.workitems.claim(uid)
            except Exception:
                return False
            return True

        with concurrent.futures.ThreadPoolExecutor(len(performers)) as pool:
            wins = list(pool.map(claim, performers))
        assert wins.count(True) == 1, wins


def test_one_instance_stored_through_both_processes_at_once_is_stored_once(
    clients: tuple[list[Client], list[Client]],
) -> None:
    """Concurrent stores of one instance answer as in one process: one stores it, each other
    finds it being stored (45071) or stored with the same bytes (already stored); none fails
    otherwise."""
    senders = [*clients[0], *clients[1]]
    for round_ in range(10):
        data = ct_instance(seed=100 + round_)
        barrier = threading.Barrier(len(senders))

        def send(client: Client, data: bytes = data, barrier: threading.Barrier = barrier) -> str:
            barrier.wait()
            result = client.store([data]).instances[0]
            return result.outcome if result.stored else str(result.failure_reason)

        with concurrent.futures.ThreadPoolExecutor(len(senders)) as pool:
            outcomes = list(pool.map(send, senders))
        assert outcomes.count("stored") == 1, outcomes
        assert set(outcomes) <= {"stored", "already_stored", "45071"}, outcomes
    assert len(study_uids(senders[0].search_studies())) == 10


def test_an_instance_another_process_is_storing_is_answered_45071(
    group: ServerProcess, tmp_path: Path
) -> None:
    """Deterministically: the lock a store holds in one process is seen by every other."""
    sop = generate_uid()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "data" / "run" / "locks"), f"store {sop}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
    try:
        with Client(group.target) as client:
            refused = client.store([ct_instance(sop=sop)]).instances[0]
            assert refused.failure_reason == 45071, refused
            holder.kill()
            holder.wait(10)
            assert client.store([ct_instance(sop=sop)]).instances[0].outcome == "stored"
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.communicate(timeout=30)


def test_a_killed_process_is_replaced_and_its_uploads_settled(
    group: ServerProcess, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    victim = members(group)[0]
    uploads = data_dir / "uploads"
    own = next(p for p in uploads.iterdir() if p.name.startswith(f"{victim.pid}-"))
    # What a store cut short leaves: a partial upload in the process's own folder.
    (own / "0123456789abcdef0123456789abcdef.part").write_bytes(b"partial")
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    deadline = time.monotonic() + 30
    while True:
        pids = {p.pid for p in members(group)}
        if len(pids) == 2 and victim.pid not in pids and not own.exists():
            break
        assert time.monotonic() < deadline, f"not replaced: {pids}, {list(uploads.iterdir())}"
        time.sleep(0.2)
    with Client(group.target) as client:
        assert client.store([ct_instance(seed=7)]).instances[0].stored


def test_the_group_shares_its_ports_with_nobody(group: ServerProcess, tmp_path: Path) -> None:
    port = server_port(group)
    # A server alone on the group's port is refused, not let in to share it.
    other = serve(tmp_path / "other", "--grpc-port", str(port), "--http-port", "-1")
    assert other.returncode == 1
    assert "PORT_IN_USE" in other.stderr or "in use" in other.stderr, other.stderr
    # And a second server on the group's folder is refused.
    second = serve(tmp_path / "data", "--http-port", "-1")
    assert second.returncode == 1, second.stderr
    assert f"is in use by dicomrpc serve pid {group.process.pid}" in second.stderr


def test_a_group_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = serve(
            tmp_path / "data", "--processes", "2", "--grpc-port", str(port), "--http-port", "-1"
        )
    assert result.returncode == 1
    assert "PORT_IN_USE" in result.stderr or "in use" in result.stderr, result.stderr


def test_the_processes_end_with_their_supervisor(tmp_path: Path) -> None:
    """A supervisor killed outright takes its processes with it, and frees the folder."""
    server = spawn_server(tmp_path / "data", "--processes", "2")
    group = members(server)
    assert len(group) == 2
    server.stop(signal.SIGKILL)
    _, alive = psutil.wait_procs(group, timeout=30)
    assert not alive
    again = spawn_server(tmp_path / "data")
    try:
        with Client(again.target) as client:
            assert client.latest_change() is None
    finally:
        assert again.stop() == 0


def test_the_map_grows_under_two_writing_processes(tmp_path: Path) -> None:
    """A map enlarged by one process is adopted by the other (MDB_MAP_RESIZED), with no
    write lost."""
    env = dict(os.environ, DICOMRPC_LMDB_MAP_SIZE=str(1 << 20))
    server = spawn_server_env(tmp_path / "data", env, "--processes", "2")
    try:
        by_pid = pinned(server, 1)
        first, second = (c[0] for c in by_pid.values())
        studies = set()

        def fill(client: Client, seed: int) -> None:
            for i in range(40):
                result = client.store([ct_instance(seed=seed + i, rows=64, columns=64)])
                assert result.instances[0].stored, result.instances[0].failure_message
                studies.add(result.instances[0].study_instance_uid)

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            list(pool.map(fill, [first, second], [1000, 2000]))
        assert set(study_uids(first.search_studies(limit=1000))) == studies
        assert set(study_uids(second.search_studies(limit=1000))) == studies
        for c in (first, second):
            c.close()
    finally:
        assert server.stop() == 0
    assert (tmp_path / "data" / INDEX_DIR / "data.mdb").stat().st_size > 1 << 20


def spawn_server_env(data_dir: Path, env: dict[str, str], *args: str) -> ServerProcess:
    """``spawn_server`` with an environment of its own."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return spawn_server(data_dir, *args)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_reindexing_is_walked_once_and_taken_over(group: ServerProcess) -> None:
    with Client(group.target) as client:
        client.store([ct_instance(seed=s) for s in range(30)])
        _, operation = client.add_query_tags(["ProtocolName"], level="series")
        deadline = time.monotonic() + 60
        while not client.reindex_status(operation).done:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert client.reindex_status(operation).processed_instances == 30


def _consistent(data_dir: Path) -> set[str]:
    """Reopen the folder alone (start-up recovery runs): files and index agree; the SOPs."""
    archive = Archive(Settings(data_dir=data_dir))
    try:
        assert archive.recovery.quarantined == 0 and archive.recovery.missing == 0
        assert archive.index.blob_ids() == set(archive.blobs.blob_ids())
        assert not any((data_dir / "uploads").iterdir())
        with archive.index.read() as txn:
            cursor = txn.cursor(db=archive.index.database("sops"))
            return {bytes(k).decode() for k in cursor.iternext(values=False)}
    finally:
        archive.close()


def test_killing_a_process_mid_ingest_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """One process killed outright while both ingest: what either acknowledged stays, the
    other goes on serving, and the folder is consistent once the group stops."""
    data_dir = tmp_path / "data"
    server = spawn_server(data_dir, "--processes", "2")
    try:
        by_pid = pinned(server, 2)
        acknowledged: set[str] = set()
        after_kill: set[str] = set()
        killed = threading.Event()
        stop = threading.Event()
        lock = threading.Lock()

        def write(client: Client, seed: int) -> None:
            for i in range(10_000):
                if stop.is_set():
                    return
                try:
                    result = client.store([ct_instance(seed=seed + i, rows=128, columns=128)])
                except Exception:  # its process was killed: the call fails, as expected
                    return
                r = result.instances[0]
                if r.stored:
                    with lock:
                        acknowledged.add(r.sop_instance_uid)
                        if killed.is_set():
                            after_kill.add(r.sop_instance_uid)

        threads = [
            threading.Thread(target=write, args=(client, 100_000 * n))
            for n, client in enumerate(c for clients in by_pid.values() for c in clients)
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        victim = psutil.Process(next(iter(by_pid)))
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        killed.set()
        deadline = time.monotonic() + 60
        while len(after_kill) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(60)
        assert len(after_kill) >= 10, "the other process stopped serving"
        for clients in by_pid.values():
            for c in clients:
                c.close()
    finally:
        assert server.stop() == 0
    assert acknowledged <= _consistent(data_dir)


def test_a_group_killed_outright_leaves_a_consistent_folder(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = spawn_server(data_dir, "--processes", "2")
    group = members(server)
    acknowledged: set[str] = set()
    stop = threading.Event()

    def write(seed: int) -> None:
        with Client(server.target, OWN_CONNECTION) as client:
            for i in range(10_000):
                if stop.is_set():
                    return
                try:
                    r = client.store([ct_instance(seed=seed + i, rows=128, columns=128)])
                except Exception:
                    return
                if r.instances[0].stored:
                    acknowledged.add(r.instances[0].sop_instance_uid)

    threads = [threading.Thread(target=write, args=(n * 100_000,)) for n in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 30 and time.monotonic() < deadline:
        time.sleep(0.01)
    for process in [psutil.Process(server.process.pid), *group]:
        process.send_signal(signal.SIGKILL)
    server.stop(None)
    stop.set()
    for t in threads:
        t.join(60)
    psutil.wait_procs(group, timeout=30)
    assert acknowledged and acknowledged <= _consistent(data_dir)


def test_a_group_serves_dimse_from_every_process(tmp_path: Path) -> None:
    """The DIMSE port is reserved by the supervisor and bound by both processes (a process
    that could not bind it would stop the group): C-STOREs on many associations are stored."""
    require_dcmtk()
    server = spawn_server(tmp_path / "data", "--processes", "2", "--dimse-port", "0")
    try:
        assert server.process.stdout is not None
        line = server.process.stdout.readline()
        match = re.search(r"serving DIMSE on \S+:(\d+) as DICOMRPC", line)
        assert match, line
        port = int(match.group(1))
        files = []
        for n in range(12):
            path = tmp_path / f"{n}.dcm"
            path.write_bytes(ct_instance(seed=500 + n))
            files.append(path)
        assert len(members(server)) == 2
        for path in files:  # an association each
            result = dcmtk.run("storescu", *dcmtk.peer(port), str(path))
            assert result.returncode == 0, result.stdout
        with Client(server.target) as client:
            assert len(client.search_instances(limit=100).datasets) == 12
        echo = dcmtk.run("echoscu", *dcmtk.peer(port))
        assert echo.returncode == 0, echo.stdout
    finally:
        assert server.stop() == 0


def test_a_group_on_s3_shares_the_bucket_and_settles_an_exited_process(
    tmp_path: Path, s3: S3Emulator
) -> None:
    """Two processes on one S3 store: an instance stored through one is read back through the
    other; a process killed outright is replaced, and what its folder held (an upload whose
    commit never came) is settled: its object removed, the index's objects kept."""
    bucket = s3.new_bucket()
    data = tmp_path / "data"
    server = spawn_server(
        data, "--processes", "2", "--blobs", f"s3://{bucket}/p", "--s3-endpoint", s3.endpoint
    )
    try:
        by_pid = pinned(server, 1)
        (victim_pid, (a,)), (_, (b,)) = by_pid.items()
        payload = ct_instance(seed=900)
        stored = a.store([payload]).instances[0]
        assert stored.outcome == "stored"
        back = b.retrieve_instance(
            stored.study_instance_uid, stored.series_instance_uid, stored.sop_instance_uid
        )
        assert isinstance(back, RetrievedInstance) and back.data[128:] == payload[128:]
        # What a process killed between its upload and its commit leaves in its folder.
        folder = next(
            p for p in (data / "s3-uploads").iterdir() if p.name.startswith(f"{victim_pid}-")
        )
        orphan = "0123456789abcdef0123456789abcdef"
        s3.client().put_object(Bucket=bucket, Key=f"p/{orphan}.dcm", Body=b"never indexed")
        (folder / f"{orphan}.pending").write_bytes(b"")
        psutil.Process(victim_pid).send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 30
        while folder.exists() or len(members(server)) < 2:
            assert time.monotonic() < deadline, "the exited process's folder was not settled"
            time.sleep(0.2)
        assert f"p/{orphan}.dcm" not in s3.keys(bucket)
        assert len(s3.keys(bucket)) == 1  # the stored instance stays
        for c in (a, b):
            c.close()
        with Client(server.target) as client:
            assert client.store([ct_instance(seed=901)]).instances[0].outcome == "stored"
    finally:
        assert server.stop() == 0
