"""Two nodes, one archive: a PostgreSQL index and a shared folder (or S3) behind two servers.

Each node has a data folder of its own (its spooled uploads, markers and locks) and serves the
same archive: what one stores the other reads back byte for byte and finds by searching, what
one deletes is gone for the other, a claim race spread over both has one winner, a workitem
subscriber and a change-feed follower on one node hear every change made through either, once
and in order, and a node killed mid-ingest loses nothing it acknowledged while the other keeps
serving.
"""

from __future__ import annotations

import io
import json
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from dicomrpc import Client, DicomRpcError
from dicomrpc.retrieval import SearchResult
from dicomrpc_server.errors import StartupError
from dicomrpc_server.rebuild import rebuild_index
from tests.conftest import RunningServer, S3Emulator, spawn_server, start_server
from tests.integration.test_dicomweb_http import stow
from tests.integration.test_workitem_events import Watcher, wait_subscribed
from tests.upsgen import dataset, performed, workitem

pytestmark = pytest.mark.slow

STUDY_UID, SOP_UID = "0020000D", "00080018"
FILES = ["CT_small.dcm", "MR_small_jp2klossless.dcm", "SC_rgb_rle_2frame.dcm", "JPEG2000.dcm"]


def _paths() -> list[Path]:
    return [Path(str(get_testdata_file(name))) for name in FILES]


def _uids(result: SearchResult, tag: str = SOP_UID) -> list[str]:
    """The values of ``tag`` (a UID) in a page of search results, in their order."""
    return [match[tag]["Value"][0] for match in result.as_json()]


def _all_instances(client: Client) -> set[str]:
    """The SOP instance UIDs of every instance the archive holds, page by page."""
    uids: set[str] = set()
    while True:
        page = _uids(client.search_instances(limit=1000, offset=len(uids)))
        uids |= set(page)
        if len(page) < 1000:
            return uids


def _copies(count: int, study: str = "", patient: str = "") -> Iterator[bytes]:
    """``count`` copies of CT_small with new SOP instance UIDs (in ``study`` when given)."""
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for _ in range(count):
        ds = template.copy()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if study:
            ds.StudyInstanceUID = study
        if patient:
            ds.PatientID = patient
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        yield buffer.getvalue()


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    folder = tmp_path / "mnt" / "archive"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def nodes(tmp_path: Path, postgres_dsn: str, shared: Path) -> Iterator[list[RunningServer]]:
    """Two servers on one PostgreSQL database and one shared folder."""
    first = start_server(tmp_path / "a", index=postgres_dsn, blobs=str(shared))
    try:
        second = start_server(tmp_path / "b", index=postgres_dsn, blobs=str(shared))
    except BaseException:
        first.stop()
        raise
    yield [first, second]
    second.stop()
    first.stop()


def test_what_one_node_stores_the_other_reads_finds_and_deletes(
    nodes: list[RunningServer],
) -> None:
    a, b = nodes
    with Client(a.target) as on_a, Client(b.target) as on_b:
        result = on_a.store(_paths())
        assert all(r.outcome == "stored" for r in result.instances), result
        for path, r in zip(_paths(), result.instances, strict=True):
            instance = on_b.retrieve_instance(
                r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid
            )
            assert instance.data == bytes(128) + path.read_bytes()[128:], path.name
        # A re-send of the same bytes to the other node is 'already stored' there too.
        again = on_b.store(_paths()[:1])
        assert again.instances[0].outcome == "already_stored"
        ct = pydicom.dcmread(_paths()[0], stop_before_pixels=True)
        studies = on_b.search_studies(PatientID=str(ct.PatientID))
        assert _uids(studies, STUDY_UID) == [str(ct.StudyInstanceUID)]
        series = on_b.search_series(study=str(ct.StudyInstanceUID), Modality="CT")
        assert _uids(series, "0020000E") == [str(ct.SeriesInstanceUID)]
        wildcard = on_b.search_studies(PatientName="CompressedSamples^C*")
        assert _uids(wildcard, STUDY_UID) == [str(ct.StudyInstanceUID)]
        fuzzy = on_b.search_studies(PatientName="ct1", fuzzy=True)
        assert _uids(fuzzy, STUDY_UID) == [str(ct.StudyInstanceUID)]
        assert len(_uids(on_b.search_instances())) == len(FILES)
        # Delete through B: gone for A too, and its file gone from the shared folder.
        assert on_b.delete_study(str(ct.StudyInstanceUID)) == 1
        assert not _uids(on_a.search_studies(PatientID=str(ct.PatientID)), STUDY_UID)
        with pytest.raises(DicomRpcError) as caught:
            list(on_a.iter_instances(str(ct.StudyInstanceUID)))
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
        assert len(_uids(on_a.search_instances())) == len(FILES) - 1
        # Peers added on one node are known to the other; the change feed is one.
        on_a.add_dimse_peer("ws", "WS1", "127.0.0.1", 4242)
        assert [p.name for p in on_b.dimse_peers()] == ["ws"]
        on_b.remove_dimse_peer("ws")
        assert on_a.dimse_peers() == []
        assert [c.sequence for c in on_a.read_changes()] == [
            c.sequence for c in on_b.read_changes()
        ]


def test_one_instance_stored_through_both_nodes_at_once_is_stored_once(
    nodes: list[RunningServer], shared: Path
) -> None:
    """Nodes share no lock file: the index's commit finds the winner, and the others answer
    as one node answers an overlapping store (45071) or a re-send (already stored); the
    losers' objects are removed, so the shared folder holds one file per instance."""
    clients = [Client(node.target) for node in nodes for _ in range(3)]
    try:
        for round_ in range(8):
            (data,) = _copies(1)
            barrier = threading.Barrier(len(clients))

            def send(client: Client, data: bytes = data, barrier: Any = barrier) -> str:
                barrier.wait()
                result = client.store([data]).instances[0]
                return result.outcome if result.stored else str(result.failure_reason)

            with ThreadPoolExecutor(len(clients)) as pool:
                outcomes = list(pool.map(send, clients))
            assert outcomes.count("stored") == 1, (round_, outcomes)
            assert set(outcomes) <= {"stored", "already_stored", "45071"}, outcomes
        assert len(_all_instances(clients[0])) == 8
        assert len([p for p in (shared / "blobs").rglob("*") if p.is_file()]) == 8
    finally:
        for client in clients:
            client.close()


def test_extended_query_tags_added_on_one_node_serve_on_both(nodes: list[RunningServer]) -> None:
    a, b = nodes
    with Client(a.target) as on_a, Client(b.target) as on_b:
        on_a.store(_copies(20))
        _, operation = on_b.add_query_tags(["StationName"])
        on_b.wait_for_reindex(operation, timeout_s=60)
        assert {t.tag for t in on_a.query_tags()} == {t.tag for t in on_b.query_tags()}
        station = str(pydicom.dcmread(get_testdata_file("CT_small.dcm")).StationName)
        assert len(_uids(on_a.search_instances(StationName=station))) == 20


def test_a_claim_race_over_two_nodes_has_one_winner(nodes: list[RunningServer]) -> None:
    performers = 16
    clients = [Client(node.target) for node in nodes]
    try:
        with ThreadPoolExecutor(performers) as pool:
            for _ in range(10):
                uid = clients[0].workitems.create(workitem()).workitem_uid
                barrier = threading.Barrier(performers)

                def claim(i: int, uid: str = uid, barrier: threading.Barrier = barrier) -> int:
                    barrier.wait()
                    try:
                        clients[i % 2].workitems.claim(uid, str(generate_uid()))
                    except DicomRpcError as error:
                        return error.dicom_status or -1
                    return 0

                outcomes = sorted(pool.map(claim, range(performers)))
                assert outcomes == [0] + [0xC302] * (performers - 1)
                assert clients[1].workitems.get(uid).state == "IN PROGRESS"
    finally:
        for client in clients:
            client.close()


def test_a_subscriber_on_one_node_hears_every_change_made_on_the_other(
    nodes: list[RunningServer],
) -> None:
    a, b = nodes
    with Client(a.target) as on_a, Client(b.target) as on_b:
        watcher = Watcher(on_b)
        wait_subscribed(b, 1)
        uids = []
        for _ in range(5):
            uid = on_a.workitems.create(workitem()).workitem_uid
            on_a.workitems.update(uid, dataset(ProcedureStepLabel="first look"))
            txn = on_a.workitems.claim(uid)
            on_a.workitems.complete(uid, txn, performed())
            uids.append(uid)
        events = watcher.take(5 * 5)
        assert watcher.quiet(1.0)
        watcher.close()
    sequences = [e.sequence for e in events]
    assert sequences == list(range(sequences[0], sequences[0] + len(events)))
    for i, uid in enumerate(uids):
        mine = events[i * 5 : (i + 1) * 5]
        assert {e.workitem_uid for e in mine} == {uid}
        assert [(e.type, e.state) for e in mine] == [
            ("state_report", "SCHEDULED"),
            ("updated", "SCHEDULED"),
            ("state_report", "IN PROGRESS"),
            ("updated", "COMPLETED"),
            ("state_report", "COMPLETED"),
        ]


def test_the_change_feed_on_one_node_has_every_change_of_both_once(
    nodes: list[RunningServer],
) -> None:
    a, b = nodes
    per_stream, streams = 40, 3
    total = 2 * streams * per_stream
    seen: list[tuple[int, str]] = []
    done = threading.Event()

    def follow() -> None:
        with Client(b.target) as client:
            for change in client.watch_changes(0):
                seen.append((change.sequence, change.sop_instance_uid))
                if len(seen) >= total:
                    done.set()
                    return

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()

    def ingest(node: RunningServer) -> list[str]:
        with Client(node.target) as client:
            result = client.store(_copies(per_stream))
            assert all(r.outcome == "stored" for r in result.instances)
            return [r.sop_instance_uid for r in result.instances]

    with ThreadPoolExecutor(2 * streams) as pool:
        stored = [uid for uids in pool.map(ingest, [a, b] * streams) for uid in uids]
    assert done.wait(60), f"the follower saw {len(seen)} of {total} changes"
    sequences = [sequence for sequence, _ in seen]
    assert sequences == list(range(1, total + 1))  # every entry once, in order, no gap
    assert sorted(uid for _, uid in seen) == sorted(stored)


def test_a_node_killed_mid_ingest_loses_nothing_acknowledged(
    tmp_path: Path, postgres_dsn: str, shared: Path
) -> None:
    survivor = start_server(tmp_path / "b", index=postgres_dsn, blobs=str(shared))
    args = ("--index", postgres_dsn, "--blobs", str(shared))
    victim = spawn_server(tmp_path / "a", *args)
    acknowledged: list[str] = []
    survivor_stored: list[str] = []
    errors: list[BaseException] = []
    survivor_errors: list[BaseException] = []
    stop = threading.Event()

    def ingest(target: str, into: list[str], until_error: bool) -> None:
        try:
            with Client(target) as client:
                while not stop.is_set():
                    result = client.store(_copies(5))
                    assert all(r.outcome == "stored" for r in result.instances), result
                    into.extend(r.sop_instance_uid for r in result.instances)
        except BaseException as exc:  # the kill ends the victim's streams
            (errors if until_error else survivor_errors).append(exc)

    threads = [
        threading.Thread(target=ingest, args=(victim.target, acknowledged, True)) for _ in range(3)
    ]
    survivor_thread = threading.Thread(
        target=ingest, args=(survivor.target, survivor_stored, False)
    )
    for thread in [*threads, survivor_thread]:
        thread.start()
    try:
        deadline = time.monotonic() + 60
        while len(acknowledged) < 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        victim.stop(signal.SIGKILL)
        for thread in threads:
            thread.join(60)
        assert len(errors) == len(threads), "the ingest finished before the kill"
        time.sleep(0.5)  # the survivor keeps storing meanwhile
        stop.set()
        survivor_thread.join(60)
        assert not survivor_thread.is_alive() and not survivor_errors
        assert len(survivor_stored) > 0
        with Client(survivor.target) as client:
            stored = _all_instances(client)
            assert set(acknowledged) <= stored and set(survivor_stored) <= stored
            study = str(pydicom.dcmread(get_testdata_file("CT_small.dcm")).StudyInstanceUID)
            readable = {i.sop_instance_uid for i in client.iter_instances(study)}
            assert readable == stored  # every indexed instance's file is there
        # The killed node restarts on its folder and settles only its own leftovers.
        victim = spawn_server(tmp_path / "a", *args)
        try:
            with Client(victim.target) as client:
                assert len(list(client.iter_instances(study))) == len(stored)
        finally:
            assert victim.stop() == 0
    finally:
        stop.set()
        survivor.stop()


def test_a_data_folder_stays_with_its_index(
    tmp_path: Path, postgres_dsn: str, shared: Path
) -> None:
    data = tmp_path / "node"
    with pytest.raises(StartupError) as caught:
        start_server(data, index=postgres_dsn)
    assert caught.value.reason == "BLOB_STORE_REQUIRED"
    start_server(data, index=postgres_dsn, blobs=str(shared)).stop()
    assert "password" not in (data / "index-store").read_text()
    with pytest.raises(StartupError) as caught:
        start_server(data, blobs=str(shared))  # the embedded index
    assert caught.value.reason == "INDEX_CHANGED" and "--index" in caught.value.message
    other = postgres_dsn.rsplit("/", 1)[0] + "/postgres"
    with pytest.raises(StartupError) as caught:
        start_server(data, index=other, blobs=str(shared))
    assert caught.value.reason == "INDEX_CHANGED"
    with pytest.raises(StartupError) as caught:
        rebuild_index(data, workers=1, progress=False)
    assert caught.value.reason == "REBUILD_UNSUPPORTED" and "PostgreSQL" in caught.value.message
    # A data folder with an embedded index is not taken into PostgreSQL.
    embedded = tmp_path / "embedded"
    start_server(embedded, blobs=str(shared)).stop()
    with pytest.raises(StartupError) as caught:
        start_server(embedded, index=postgres_dsn, blobs=str(shared))
    assert caught.value.reason == "INDEX_CHANGED"


def test_two_nodes_on_s3(tmp_path: Path, postgres_dsn: str, s3: S3Emulator) -> None:
    bucket = s3.new_bucket()
    blobs = f"s3://{bucket}/archive"
    a = start_server(tmp_path / "a", index=postgres_dsn, blobs=blobs, s3_endpoint=s3.endpoint)
    b = start_server(tmp_path / "b", index=postgres_dsn, blobs=blobs, s3_endpoint=s3.endpoint)
    try:
        with Client(a.target) as on_a, Client(b.target) as on_b:
            result = on_a.store(_paths())
            assert all(r.outcome == "stored" for r in result.instances), result
            for path, r in zip(_paths(), result.instances, strict=True):
                instance = on_b.retrieve_instance(
                    r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid
                )
                assert instance.data == bytes(128) + path.read_bytes()[128:]
            first = result.instances[0]
            assert on_b.delete_study(first.study_instance_uid) == 1
            assert len(s3.keys(bucket)) == len(FILES) - 1
    finally:
        b.stop()
        a.stop()


def test_transactions_that_keep_conflicting_answer_unavailable(
    nodes: list[RunningServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write PostgreSQL keeps aborting (serialization failures) is UNAVAILABLE, HTTP 503."""
    a, _ = nodes
    backend = a.archive.index.backend  # type: ignore[union-attr]
    with Client(a.target) as client:
        stored = client.store(_paths()[:1]).instances[0]
        original = backend.transact

        async def conflicting(work: Any, **kwargs: Any) -> Any:
            async def abort(connection: asyncpg.Connection) -> None:
                raise asyncpg.exceptions.SerializationError("could not serialize access")

            return await original(abort, **kwargs)

        monkeypatch.setattr(backend, "retries", 1)
        monkeypatch.setattr(backend, "transact", conflicting)
        with pytest.raises(DicomRpcError) as caught:
            client.delete_study(stored.study_instance_uid)
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        with httpx.Client(base_url=a.dicomweb_url, timeout=60) as http:
            response = http.post(
                "/workitems",
                content=json.dumps(workitem()),
                headers={"Content-Type": "application/dicom+json"},
            )
        assert response.status_code == 503, response.text
        monkeypatch.undo()
        assert client.delete_study(stored.study_instance_uid) == 1


def test_a_node_of_several_processes(tmp_path: Path, postgres_dsn: str, shared: Path) -> None:
    """``--processes 2`` on a PostgreSQL index: each process is one more client of the index."""
    args = ("--index", postgres_dsn, "--blobs", str(shared), "--processes", "2")
    group = spawn_server(tmp_path / "a", *args)
    other = start_server(tmp_path / "b", index=postgres_dsn, blobs=str(shared))
    try:

        def ingest(_: int) -> list[str]:
            with Client(group.target) as client:  # a new connection: either process
                result = client.store(_copies(10))
                assert all(r.outcome == "stored" for r in result.instances), result
                return [r.sop_instance_uid for r in result.instances]

        with ThreadPoolExecutor(4) as pool:
            stored = {uid for uids in pool.map(ingest, range(8)) for uid in uids}
        with Client(other.target) as client:
            assert _all_instances(client) == stored
    finally:
        other.stop()
        assert group.stop() == 0


def test_dicomweb_stow_on_one_node_qido_and_wado_on_the_other(
    nodes: list[RunningServer],
) -> None:
    a, b = nodes
    path = _paths()[0]
    ct = pydicom.dcmread(path, stop_before_pixels=True)
    study, series, sop = (
        str(ct.StudyInstanceUID),
        str(ct.SeriesInstanceUID),
        str(ct.SOPInstanceUID),
    )
    with (
        httpx.Client(base_url=a.dicomweb_url, timeout=60) as on_a,
        httpx.Client(base_url=b.dicomweb_url, timeout=60) as on_b,
    ):
        assert stow(on_a, [path.read_bytes()]).status_code == 200
        found = on_b.get("/studies", params={"PatientID": str(ct.PatientID)})
        assert found.status_code == 200
        assert [m[STUDY_UID]["Value"][0] for m in found.json()] == [study]
        instances = on_b.get(f"/studies/{study}/instances")
        assert [m[SOP_UID]["Value"][0] for m in instances.json()] == [sop]
        url = f"/studies/{study}/series/{series}/instances/{sop}"
        single = on_b.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"})
        assert single.status_code == 200
        assert single.content == bytes(128) + path.read_bytes()[128:]
        metadata = on_b.get(f"{url}/metadata")
        assert metadata.json()[0]["00100020"]["Value"] == [str(ct.PatientID)]
        assert on_b.delete(f"/studies/{study}").status_code in (200, 202, 204)
        assert on_a.get(url).status_code == 404
