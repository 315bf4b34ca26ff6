"""Crash safety and concurrent writers, on a real server process and a real LMDB directory."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from dicomrpc import Client, DicomRpcError
from dicomrpc.sources import Item, expand
from dicomrpc_server.archive import Archive
from dicomrpc_server.config import Settings
from tests.conftest import RunningServer, spawn_server
from tests.dicomgen import ct_instance

pytestmark = pytest.mark.slow


def _consistent(data_dir: Path) -> tuple[Archive, set[str]]:
    """Reopen the archive (start-up recovery runs) and check files and index agree.

    Start-up did not refuse: what the crash left was provably garbage or committed.
    """
    archive = Archive(Settings(data_dir=data_dir))
    assert archive.recovery.quarantined == 0 and archive.recovery.missing == 0
    assert not (data_dir / "quarantine").exists()
    referenced = archive.index.blob_ids()
    on_disk = set(archive.blobs.blob_ids())
    assert on_disk == referenced, "orphan files or index entries without a file"
    assert not any((data_dir / "uploads").iterdir())
    assert archive.index.counts().instances == len(referenced)
    sops = set()
    with archive.index.read() as txn:
        cursor = txn.cursor(db=archive.index._db["sops"])
        sops = {bytes(k).decode() for k in cursor.iternext(values=False)}
    return archive, sops


def test_sigkill_mid_stream_leaves_a_consistent_store(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    proc = spawn_server(data_dir)
    study = generate_uid()
    acknowledged: set[str] = set()
    stop = threading.Event()

    def acknowledged_writer() -> None:
        with Client(proc.target) as client:
            while not stop.is_set():
                try:
                    r = client.store(ct_instance(study=study, rows=64, columns=64)).instances[0]
                except DicomRpcError:
                    return
                if r.stored:
                    acknowledged.add(r.sop_instance_uid)

    sent = threading.Semaphore(0)

    def slow_items() -> Iterator[Item]:
        for i in range(200):
            yield from expand(ct_instance(study=study, rows=128, columns=128, number=i))
            sent.release()
            time.sleep(0.01)

    def long_stream() -> None:
        # The server is killed mid-stream: the call fails, which is expected.
        with Client(proc.target) as client, contextlib.suppress(DicomRpcError):
            client.store(slow_items())

    writers = [threading.Thread(target=acknowledged_writer), threading.Thread(target=long_stream)]
    writers[0].start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    writers[1].start()
    for _ in range(80):
        assert sent.acquire(timeout=30)
    proc.stop(signal.SIGKILL)
    stop.set()
    for w in writers:
        w.join(60)

    archive, sops = _consistent(data_dir)
    try:
        assert acknowledged, "no store was acknowledged before the kill"
        assert acknowledged <= sops
    finally:
        archive.close()


def _stat(pid: int) -> tuple[str, int]:
    """A process's state letter and parent ("Z" once it has exited; "", 0 when it is gone)."""
    try:
        # "pid (comm) state ppid ...", where comm may hold spaces and parentheses.
        state, ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
    except (OSError, ValueError):
        return "", 0
    return state, int(ppid)


def _running(pids: set[int]) -> set[int]:
    return {pid for pid in pids if _stat(pid)[0] not in ("", "Z")}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_a_killed_server_leaves_no_process_behind(tmp_path: Path) -> None:
    proc = spawn_server(tmp_path / "data")
    try:
        # Its worker process (and the resource tracker multiprocessing starts with it).
        everyone = {int(e.name) for e in os.scandir("/proc") if e.name.isdigit()}
        children = _running({pid for pid in everyone if _stat(pid)[1] == proc.process.pid})
        assert children
    finally:
        proc.stop(signal.SIGKILL)
    deadline = time.monotonic() + 15
    try:
        while _running(children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(children), "its worker processes outlived it"
    finally:
        for pid in _running(children):  # so that a failure leaves none behind either
            os.kill(pid, signal.SIGKILL)


def test_eight_clients_overlapping_sets_store_each_instance_once(server: RunningServer) -> None:
    study = generate_uid()
    corpus = [
        ct_instance(study=study, series=f"1.2.3.{i % 7}", rows=8, columns=8, number=i)
        for i in range(1000)
    ]
    rng = random.Random(7)
    plans = []
    for _ in range(8):
        picked = rng.sample(range(1000), 400)
        plans.append(picked)
    covered = {i for plan in plans for i in plan}
    outcomes: list[tuple[str, str, int]] = []
    lock = threading.Lock()

    def run(plan: list[int]) -> None:
        with Client(server.target) as client:
            for start in range(0, len(plan), 50):
                batch = [corpus[i] for i in plan[start : start + 50]]
                for r in client.store(batch).instances:
                    with lock:
                        outcomes.append((r.sop_instance_uid, r.outcome, r.failure_reason))

    threads = [threading.Thread(target=run, args=(plan,)) for plan in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)

    stored = Counter(sop for sop, outcome, _ in outcomes if outcome == "stored")
    assert len(stored) == len(covered)
    assert set(stored.values()) == {1}
    assert {code for _, outcome, code in outcomes if outcome == "failed"} <= {45070, 45071}
    counts = server.archive.index.counts()
    assert counts.instances == len(covered)
    assert len(list(server.archive.blobs.blob_ids())) == len(covered)
    assert counts.series == 7 and counts.studies == 1
    study_record = server.archive.index.get_study(study)
    assert study_record is not None
    assert study_record.instance_count == len(covered) and study_record.series_count == 7
    assert dict(study_record.modality_counts) == {"CT": len(covered)}
