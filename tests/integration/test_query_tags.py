"""Extended query tags over gRPC: add, re-index in the background, search, resume, remove."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

from dicomrpc import Client, DicomRpcError
from dicomrpc_server.dicom.attributes import Level
from dicomrpc_server.query.terms import EXACT
from dicomrpc_server.storage import records_pb2
from dicomrpc_server.storage.index_records import MAX_QUERY_TAGS
from tests.conftest import RunningServer, start_server
from tests.dicomgen import ct_instance


def _instance(
    study: str | None = None,
    series: str | None = None,
    *,
    edit: Callable[[pydicom.Dataset], None],
    number: int = 1,
    implicit: bool = False,
) -> bytes:
    """A CT instance with attributes set by ``edit``."""
    ds = pydicom.dcmread(io.BytesIO(ct_instance(study=study, series=series, number=number)))
    edit(ds)
    out = io.BytesIO()
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(out, implicit_vr=True, little_endian=True, enforce_file_format=True)
    else:
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _described(text: str, thickness: str = "1.5") -> Callable[[pydicom.Dataset], None]:
    def edit(ds: pydicom.Dataset) -> None:
        ds.SeriesDescription = text
        ds.SliceThickness = thickness

    return edit


def _private(creator: str, block: int, value: str) -> Callable[[pydicom.Dataset], None]:
    def edit(ds: pydicom.Dataset) -> None:
        if block > 0x10:  # occupy the blocks before it with another creator
            ds.add_new(0x00090010, "LO", "OTHER")
        ds.add_new(0x00090000 | block, "LO", creator)
        ds.add_new(0x00090000 | (block << 8) | 0x01, "LO", value)

    return edit


def _series_uids(client: Client, match: dict[str, str]) -> set[str]:
    result = client.search_series(match, include=["SeriesDescription"])
    return {d["0020000E"]["Value"][0] for d in result.as_json()}


def _run(server: RunningServer, coroutine: object) -> object:
    """Run a coroutine of the archive on the server's event loop."""
    future = asyncio.run_coroutine_threadsafe(coroutine, server.loop)  # type: ignore[arg-type]
    return future.result(30)


@pytest.mark.slow
def test_added_tags_index_what_was_stored_before_and_after(
    server: RunningServer, client: Client
) -> None:
    study = generate_uid()
    chest, head = generate_uid(), generate_uid()
    client.store(
        [
            _instance(study, chest, edit=_described("Chest routine", "1.5"), number=1),
            _instance(study, chest, edit=_described("Chest routine", "1.5"), number=2),
            _instance(study, head, edit=_described("Head spiral", "5"), number=1),
        ]
    )
    with pytest.raises(DicomRpcError) as caught:
        client.search_series({"SeriesDescription": "Chest*"})
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT

    added, operation = client.add_query_tags(
        ["SeriesDescription", {"tag": "00180050", "level": "instance"}]
    )
    assert [(t.tag, t.vr, t.level) for t in added] == [
        ("0008103E", "LO", "series"),
        ("00180050", "DS", "instance"),
    ]
    status = client.wait_for_reindex(operation, timeout_s=30)
    assert status.done and status.processed_instances == status.total_instances == 3
    assert all(t.ready for t in client.query_tags())

    assert _series_uids(client, {"SeriesDescription": "Chest*"}) == {chest}
    assert _series_uids(client, {"SeriesDescription": "Head spiral"}) == {head}
    assert _series_uids(client, {"0008103E": "?ead*"}) == {head}
    thin = client.search_instances({"SliceThickness": "1.50"}, study=study)
    assert len(thin.as_json()) == 2
    assert thin.as_json()[0]["00180050"]["Value"] == [1.5]
    thick = client.search_instances({"SliceThickness": "5.0"})
    assert len(thick.as_json()) == 1

    late = generate_uid()
    client.store([_instance(study, late, edit=_described("Chest late"))])
    assert _series_uids(client, {"SeriesDescription": "Chest*"}) == {chest, late}
    everything = client.search_series({}, study=study, include=["all"]).as_json()
    assert {d["0008103E"]["Value"][0] for d in everything} == {
        "Chest routine",
        "Head spiral",
        "Chest late",
    }


@pytest.mark.slow
def test_private_tags_are_found_in_whichever_block_their_creator_holds(
    server: RunningServer, client: Client
) -> None:
    first, second, third, other = (generate_uid() for _ in range(4))
    client.store(
        [
            _instance(first, edit=_private("ACME 1.0", 0x10, "lung")),
            _instance(second, edit=_private("ACME 1.0", 0x11, "lung")),
            _instance(third, edit=_private("ACME 1.0", 0x10, "lung"), implicit=True),
            _instance(other, edit=_private("OTHER", 0x10, "lung")),
        ]
    )
    added, operation = client.add_query_tags(
        [{"tag": "00091001", "vr": "LO", "private_creator": "ACME 1.0", "level": "study"}]
    )
    assert added[0].private_creator == "ACME 1.0"
    client.wait_for_reindex(operation, timeout_s=30)
    found = client.search_studies({"00091001": "lung"}).as_json()
    assert {d["0020000D"]["Value"][0] for d in found} == {first, second, third}


@pytest.mark.slow
def test_a_tag_still_reindexing_cannot_be_searched(server: RunningServer, client: Client) -> None:
    client.store([_instance(edit=_described("Chest"))])
    tag = records_pb2.QueryTagRecord(hex_tag="0008103E", keyword="SeriesDescription", vr="LO")
    tag.level = Level.SERIES
    operation = records_pb2.ReindexOperation(operation_id="held", hex_tags=["0008103E"])
    # Registered without starting its walk: the state a busy or restarted server is in.
    _run(server, server.archive.index.add_query_tags([tag], operation))
    assert [t.ready for t in client.query_tags()] == [False]
    with pytest.raises(DicomRpcError) as caught:
        client.search_series({"SeriesDescription": "Chest"})
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.reason == "TAG_REINDEXING"
    assert "held" in str(caught.value)
    status = client.reindex_status("held")
    assert not status.done and status.total_instances == 1


@pytest.mark.slow
def test_an_unfinished_reindexing_resumes_after_a_restart(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    try:
        with Client(server.target) as client:
            series = generate_uid()
            client.store([_instance(series=series, edit=_described("Chest"))])
        tag = records_pb2.QueryTagRecord(hex_tag="0008103E", keyword="SeriesDescription", vr="LO")
        tag.level = Level.SERIES
        operation = records_pb2.ReindexOperation(operation_id="cut", hex_tags=["0008103E"])
        _run(server, server.archive.index.add_query_tags([tag], operation))
    finally:
        server.stop()
    server = start_server(tmp_path / "data")
    try:
        with Client(server.target) as client:
            status = client.wait_for_reindex("cut", timeout_s=30)
            assert status.processed_instances == 1
            assert _series_uids(client, {"SeriesDescription": "Chest"}) == {series}
    finally:
        server.stop()


@pytest.mark.slow
def test_stores_during_reindexing_are_all_indexed(server: RunningServer, client: Client) -> None:
    study = generate_uid()
    client.store([_instance(study, edit=_described(f"Before {i}"), number=i) for i in range(1, 41)])
    server.archive.query_tags.batch = 3  # many small batches, interleaved with the stores
    errors: list[BaseException] = []

    def store_more() -> None:
        try:
            with Client(server.target) as other:
                for i in range(20):
                    other.store([_instance(study, edit=_described(f"During {i}"), number=i)])
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    thread = threading.Thread(target=store_more)
    thread.start()
    _, operation = client.add_query_tags(["SeriesDescription"])
    client.wait_for_reindex(operation, timeout_s=60)
    thread.join(60)
    assert not errors
    assert len(_series_uids(client, {"SeriesDescription": "Before*"})) == 40
    assert len(_series_uids(client, {"SeriesDescription": "During*"})) == 20


@pytest.mark.slow
def test_deleting_a_tag_removes_its_index_entries(server: RunningServer, client: Client) -> None:
    client.store([_instance(edit=_private("ACME 1.0", 0x10, "lung"))])
    _, operation = client.add_query_tags(
        [{"tag": "00091001", "vr": "LO", "private_creator": "ACME 1.0", "level": "series"}]
    )
    client.wait_for_reindex(operation, timeout_s=30)
    index = server.archive.index
    start = EXACT + b"lung"
    assert index.scan_terms(Level.SERIES, 0x00091001, start, prefix=start)
    client.delete_query_tag("00091001")
    assert client.query_tags() == []
    assert not index.scan_terms(Level.SERIES, 0x00091001, start, prefix=start)
    for raw in index.record_map(Level.SERIES, index.record_keys(Level.SERIES)).values():
        assert "00091001" not in records_pb2.SeriesRecord.FromString(raw).attributes.attributes
    with pytest.raises(DicomRpcError) as caught:
        client.search_series({"00091001": "lung"})
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(DicomRpcError) as caught:
        client.delete_query_tag("00091001")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.slow
def test_deleting_instances_removes_their_extended_entries(
    server: RunningServer, client: Client
) -> None:
    study = generate_uid()
    client.store([_instance(study, edit=_described("Chest", "2"))])
    _, operation = client.add_query_tags(["SliceThickness"], level="instance")
    client.wait_for_reindex(operation, timeout_s=30)
    assert len(client.search_instances({"SliceThickness": "2"}).as_json()) == 1
    client.delete_study(study)
    assert client.search_instances({"SliceThickness": "2"}).as_json() == []
    index = server.archive.index
    assert not index.scan_terms(Level.INSTANCE, 0x00180050, b"", prefix=b"")


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ({"tag": "NoSuchKeyword"}, "neither a keyword"),
        ({"tag": "PatientID"}, "searchable already"),
        ({"tag": "SeriesDescription", "level": "study"}, "kept at series level"),
        ({"tag": "PixelData", "level": "instance"}, "cannot be indexed"),
        ({"tag": "ReferencedImageSequence", "level": "instance"}, "cannot be indexed"),
        ({"tag": "SliceThickness"}, "level must be"),
        ({"tag": "SliceThickness", "vr": "LO", "level": "instance"}, "has VR DS"),
        ({"tag": "00091001", "vr": "LO", "level": "study"}, "needs its private_creator"),
        ({"tag": "00091001", "private_creator": "X", "level": "study"}, "needs its vr"),
        ({"tag": "00090010", "vr": "LO", "private_creator": "X", "level": "study"}, "creator"),
        (
            {"tag": "00091001", "vr": "LO", "private_creator": "X" * 65, "level": "study"},
            "64 characters",
        ),
    ],
)
def test_bad_tags_are_refused_naming_why(client: Client, spec: dict[str, str], why: str) -> None:
    with pytest.raises(DicomRpcError) as caught:
        client.add_query_tags([spec])
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert why in str(caught.value)
    assert client.query_tags() == []


def test_a_tag_is_added_once(client: Client) -> None:
    client.add_query_tags(["SeriesDescription"])
    with pytest.raises(DicomRpcError) as caught:
        client.add_query_tags(["0008103E"])
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(DicomRpcError) as caught:
        client.add_query_tags(["StationName", "StationName"])
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [t.tag for t in client.query_tags()] == ["0008103E"]


@pytest.mark.slow
def test_cli_adds_lists_and_deletes_with_progress(server: RunningServer, client: Client) -> None:
    client.store([_instance(edit=_described("Chest"))])

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dicomrpc.cli", "query-tags", *args, "--server", server.target],
            capture_output=True,
            text=True,
            timeout=60,
        )

    added = cli("add", "SeriesDescription", "StationName:SH")
    assert added.returncode == 0, added.stderr
    assert "done, 1 of 1 instances" in added.stdout
    listed = cli("list")
    assert "0008103E LO series   ready" in listed.stdout
    assert "00081010 SH series   ready" in listed.stdout
    assert cli("delete", "StationName").returncode == 0
    assert "00081010" not in cli("list").stdout
    bad = cli("add", "PixelData", "--level", "instance")
    assert bad.returncode == 1 and "cannot be indexed" in bad.stderr


def test_a_tag_added_again_waits_for_its_own_reindexing(
    server: RunningServer, client: Client
) -> None:
    client.store([_instance(edit=_described("Chest"))])
    index = server.archive.index

    def register(operation_id: str) -> None:
        tag = records_pb2.QueryTagRecord(hex_tag="0008103E", keyword="SeriesDescription", vr="LO")
        tag.level = Level.SERIES
        operation = records_pb2.ReindexOperation(operation_id=operation_id, hex_tags=[tag.hex_tag])
        _run(server, index.add_query_tags([tag], operation))

    register("first")
    client.delete_query_tag("SeriesDescription")
    register("second")
    finished = _run(server, index.reindex_batch("first", 500))
    assert finished.done  # type: ignore[attr-defined]
    assert [t.ready for t in client.query_tags()] == [False]
    _run(server, index.reindex_batch("second", 500))
    assert [t.ready for t in client.query_tags()] == [True]


def test_the_number_of_tags_is_bounded(client: Client) -> None:
    many = [
        {"tag": f"0009{0x1000 + i:04X}", "vr": "LO", "private_creator": "ACME", "level": "study"}
        for i in range(MAX_QUERY_TAGS)
    ]
    client.add_query_tags(many)
    with pytest.raises(DicomRpcError) as caught:
        client.add_query_tags(["SeriesDescription"])
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(client.query_tags()) == MAX_QUERY_TAGS


@pytest.mark.slow
def test_a_removal_cut_short_is_finished_at_the_next_start(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    try:
        with Client(server.target) as client:
            client.store([_instance(edit=_described(f"Chest {i}"), number=i) for i in range(5)])
            _, operation = client.add_query_tags(["SeriesDescription"])
            client.wait_for_reindex(operation, timeout_s=30)
        index = server.archive.index
        # One entry removed, then the server stops: the state a crash mid-removal leaves.
        assert _run(server, index.drop_query_tag("0008103E", 1)) is False
        with Client(server.target) as client:
            assert client.query_tags() == []
            with pytest.raises(DicomRpcError) as caught:
                client.add_query_tags(["SeriesDescription"])
            assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        server.stop()
    server = start_server(tmp_path / "data")
    try:
        index = server.archive.index
        deadline = time.monotonic() + 30
        while index.pending_drops() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert index.pending_drops() == []
        assert not index.scan_terms(Level.SERIES, 0x0008103E, b"", prefix=b"")
        with Client(server.target) as client:
            _, operation = client.add_query_tags(["SeriesDescription"])
            client.wait_for_reindex(operation, timeout_s=30)
            assert len(_series_uids(client, {"SeriesDescription": "Chest*"})) == 5
    finally:
        server.stop()


@pytest.mark.parametrize("operation_id", ["", "x" * 600, "\x00"])
def test_an_operation_id_that_cannot_be_a_key_is_not_found(
    client: Client, operation_id: str
) -> None:
    with pytest.raises(DicomRpcError) as caught:
        client.reindex_status(operation_id)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
