"""Delete and change feed: atomic for readers, files gone, counts right, every change logged."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomrpc import Change, Client, DicomRpcError
from dicomrpc.v1 import retrieve_service_pb2, retrieve_service_pb2_grpc
from dicomrpc_server.archive import Archive
from dicomrpc_server.config import Settings
from dicomrpc_server.dicom.attributes import Level
from dicomrpc_server.query.terms import EXACT
from dicomrpc_server.store.ingest import StoreStream
from tests.conftest import RunningServer
from tests.dicomgen import ct_instance


def _study(client: Client, series_count: int = 2, per_series: int = 3) -> tuple[str, list[str]]:
    study = generate_uid()
    series = [generate_uid() for _ in range(series_count)]
    sent = [ct_instance(study=study, series=s, number=i) for s in series for i in range(per_series)]
    assert len(client.store(sent).stored) == len(sent)
    return study, series


def _files(server: RunningServer) -> int:
    return len(list(server.archive.blobs.blob_ids()))


def test_delete_instance_series_study(server: RunningServer, client: Client) -> None:
    study, (s1, _s2) = _study(client)
    index = server.archive.index
    sops = [sop for _, _, sop, _ in index.list_instances(study, s1)]

    assert client.delete_instance(study, s1, sops[0]) == 1
    record = index.get_study(study)
    assert record is not None
    assert (record.instance_count, record.series_count) == (5, 2)
    assert dict(record.modality_counts) == {"CT": 5}
    with pytest.raises(DicomRpcError) as caught:
        client.retrieve(study, s1, sops[0])
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert index.term_entries(Level.INSTANCE, 0x00080018, EXACT + sops[0].encode()) == []

    assert client.delete_series(study, s1) == 2
    record = index.get_study(study)
    assert record is not None and (record.instance_count, record.series_count) == (3, 1)
    assert index.get_series(study, s1) is None
    assert index.term_entries(Level.SERIES, 0x0020000E, EXACT + s1.encode()) == []
    assert len(client.metadata(study).datasets) == 3
    assert _files(server) == 3

    assert client.delete_study(study) == 3
    assert index.get_study(study) is None
    assert index.term_entries(Level.STUDY, 0x0020000D, EXACT + study.encode()) == []
    assert index.term_entries(Level.STUDY, 0x00080061, EXACT + b"CT") == []
    assert index.counts().instances == 0 and _files(server) == 0
    for call in (lambda: client.retrieve(study), lambda: client.metadata(study)):
        with pytest.raises(DicomRpcError) as caught:
            call()
        assert caught.value.code == grpc.StatusCode.NOT_FOUND


def test_deleting_something_missing_is_not_found(client: Client) -> None:
    study, (s1, _) = _study(client, 2, 1)
    for call in (
        lambda: client.delete_study(generate_uid()),
        lambda: client.delete_series(study, generate_uid()),
        lambda: client.delete_instance(study, s1, generate_uid()),
    ):
        with pytest.raises(DicomRpcError) as caught:
            call()
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
        assert caught.value.reason == "RESOURCE_NOT_FOUND"
    with pytest.raises(DicomRpcError) as caught:
        client.delete_study("")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_stream_started_before_a_delete_finishes_intact(
    server: RunningServer, client: Client
) -> None:
    study = generate_uid()
    sent = [ct_instance(study=study, rows=256, columns=256, number=i) for i in range(12)]
    client.store(sent)
    # Sizes differ by a byte or two (UIDs vary in length), so compare instance by instance.
    expected = {pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID: data[128:] for data in sent}
    with grpc.insecure_channel(server.target) as channel:
        stub = retrieve_service_pb2_grpc.RetrieveServiceStub(channel)
        request = retrieve_service_pb2.RetrieveStudyRequest(
            study_instance_uid=study,
            options=retrieve_service_pb2.TransferOptions(chunk_size=64 * 1024),
        )
        received: dict[str, bytearray] = {}
        current = ""
        outcome = "complete"
        try:
            for i, message in enumerate(stub.RetrieveStudy(request)):
                if message.WhichOneof("payload") == "instance":
                    current = message.instance.sop_instance_uid
                    received[current] = bytearray()
                else:
                    received[current] += message.data
                if i == 3:
                    assert client.delete_study(study) == 12
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND  # ended cleanly, saying why
            outcome = "ended"
    complete = [uid for uid, data in received.items() if len(data) == len(expected[uid]) + 128]
    assert all(received[uid][128:] == expected[uid] for uid in complete)
    if outcome == "complete":
        assert len(complete) == 12
    else:
        assert len(complete) >= 1 and len(received) - len(complete) <= 1


def test_crash_between_commit_and_file_removal_leaves_no_orphan(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    archive = Archive(settings)
    study = generate_uid()

    async def store_then_unindex() -> list[str]:
        for i in range(4):
            ingest = archive.store.begin(StoreStream())
            ingest.write(ct_instance(study=study, number=i))
            assert (await ingest.finish()).failure is None
        # The index commit of a delete, and then the process dies before removing files.
        return await archive.index.delete(study)

    blob_ids = asyncio.run(store_then_unindex())
    archive.close()
    assert all(archive.blobs.path(b).exists() for b in blob_ids)

    restarted = Archive(settings)
    try:
        assert not any(restarted.blobs.path(b).exists() for b in blob_ids)
        assert list(restarted.blobs.blob_ids()) == []
        assert restarted.index.counts().instances == 0
    finally:
        restarted.close()


def test_feed_replays_to_the_present(server: RunningServer, client: Client) -> None:
    study, (s1, _) = _study(client)
    other, _ = _study(client, 1, 2)
    sop = next(sop for _, _, sop, _ in server.archive.index.list_instances(study, s1))
    client.delete_instance(study, s1, sop)
    client.delete_study(other)
    client.store(ct_instance(study=study, series=s1, sop=sop))  # stored again: a new version

    present: set[str] = set()
    offset = 0
    while batch := client.read_changes(offset, 3):
        for change in batch:
            if change.action == "created":
                present.add(change.sop_instance_uid)
            else:
                present.discard(change.sop_instance_uid)
        offset = batch[-1].sequence
    stored = {sop for _, _, sop, _ in server.archive.index.list_instances(study)}
    assert present == stored and len(stored) == 6

    changes = client.read_changes(0, 1000)
    assert [c.sequence for c in changes] == list(range(1, len(changes) + 1))
    first_of_sop = next(c for c in changes if c.sop_instance_uid == sop)
    assert first_of_sop.state == "replaced"
    assert {c.state for c in changes if c.study_instance_uid == other} == {"deleted"}
    latest = client.latest_change()
    assert latest is not None and latest.sequence == changes[-1].sequence
    assert latest.action == "created" and latest.state == "current"


def test_follower_sees_every_change_once_in_order_across_a_reconnect(
    server: RunningServer, client: Client
) -> None:
    seen: list[Change] = []
    got_three = threading.Event()

    def follow(since: int, stop_after: int) -> None:
        with Client(server.target) as follower:
            for change in follower.watch_changes(since):
                seen.append(change)
                if len(seen) >= 3:
                    got_three.set()
                if len(seen) >= stop_after:
                    return

    first = threading.Thread(target=follow, args=(0, 3))
    first.start()
    study, _ = _study(client, 1, 3)
    assert got_three.wait(30)
    first.join(30)
    # Disconnected: more changes happen, then the follower resumes from the last it saw.
    client.delete_study(study)
    client.store([ct_instance() for _ in range(2)])
    resumed = threading.Thread(target=follow, args=(seen[-1].sequence, 8))
    resumed.start()
    resumed.join(30)
    assert [c.sequence for c in seen] == list(range(1, 9))
    assert [c.action for c in seen] == ["created"] * 3 + ["deleted"] * 3 + ["created"] * 2


def test_follower_wakes_on_a_new_change(server: RunningServer, client: Client) -> None:
    arrived: list[float] = []

    def follow() -> None:
        with Client(server.target) as follower:
            for _ in follower.watch_changes(0):
                arrived.append(time.monotonic())
                return

    thread = threading.Thread(target=follow)
    thread.start()
    time.sleep(0.3)
    stored_at = time.monotonic()
    client.store(ct_instance())
    thread.join(10)
    assert arrived and arrived[0] - stored_at < 2  # woken by the commit, not a poll


def test_cli_delete_and_feed(server: RunningServer, client: Client) -> None:
    study, _ = _study(client, 1, 2)
    base = [sys.executable, "-m", "dicomrpc.cli"]
    where = ["--server", server.target]
    refused = subprocess.run(
        [*base, "delete", "study", study, *where], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 1 and "not deleted" in refused.stderr
    assert server.archive.index.counts().instances == 2
    done = subprocess.run(
        [*base, "delete", "study", study, "--yes", *where],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "2 instances" in done.stdout
    feed = subprocess.run(
        [*base, "feed", *where], capture_output=True, text=True, timeout=60, check=True
    )
    lines = feed.stdout.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("1 created deleted ") and lines[3].startswith("4 deleted deleted ")
