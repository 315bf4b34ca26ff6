"""A real server on the S3 blob store (moto's emulator), held to the folder store as reference.

The same pydicom test files are stored in a server on the folder store and in one on S3; what
the S3 one returns (stored bytes, frames as stored and decoded, transcoded instances, rendered
images, bulk data) must equal the reference. Deleting removes the objects, and a server killed
mid-ingest restarts with every indexed instance readable and its leftovers removed.
"""

from __future__ import annotations

import io
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicomrpc import Client
from dicomrpc.errors import DicomRpcError
from dicomrpc_server.errors import StartupError
from dicomrpc_server.storage.lmdb_index import LmdbIndex
from tests.conftest import RunningServer, S3Emulator, spawn_server, start_server

pytestmark = pytest.mark.slow

FILES = [
    "CT_small.dcm",  # native, 16-bit
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "ExplVR_BigEnd.dcm",  # native, big endian
    "rtdose_1frame.dcm",
    "SC_rgb_rle_2frame.dcm",  # RLE, two frames
    "JPEG2000.dcm",
]
EXPLICIT = "1.2.840.10008.1.2.1"
PREFIX = "tenant/blobs"


def _paths() -> list[Path]:
    return [Path(str(get_testdata_file(name))) for name in FILES]


@pytest.fixture
def pair(tmp_path: Path, s3: S3Emulator) -> Iterator[tuple[RunningServer, RunningServer, str]]:
    """A reference server on the folder store, one on S3, both holding the test files."""
    bucket = s3.new_bucket()
    folder = start_server(tmp_path / "folder")
    on_s3 = start_server(tmp_path / "s3", blobs=f"s3://{bucket}/{PREFIX}", s3_endpoint=s3.endpoint)
    try:
        for running in (folder, on_s3):
            with Client(running.target) as client:
                result = client.store(_paths())
                outcomes = [i.outcome for i in result.instances]
                assert all(o.startswith("stored") for o in outcomes), result
        yield folder, on_s3, bucket
    finally:
        on_s3.stop()
        folder.stop()


def _uids(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def test_objects_are_the_stored_instances_and_read_back_as_the_folder_store_does(
    pair: tuple[RunningServer, RunningServer, str], s3: S3Emulator
) -> None:
    folder, on_s3, bucket = pair
    keys = s3.keys(bucket)
    assert len(keys) == len(FILES)
    assert all(k.startswith(PREFIX + "/") and k.endswith(".dcm") for k in keys)
    assert not any((on_s3.settings.data_dir / "s3-uploads").iterdir())  # markers all dropped
    with Client(folder.target) as ref, Client(on_s3.target) as client:
        for path in _paths():
            study, series, sop = _uids(path)
            (got,) = client.iter_instances(study, series, sop)
            original = path.read_bytes()
            assert got.data == bytes(128) + original[128:]  # byte-identical, preamble zeroed
            (want,) = ref.iter_instances(study, series, sop)
            assert got.data == want.data
            count = int(pydicom.dcmread(path, stop_before_pixels=True).get("NumberOfFrames", 1))
            numbers = list(range(1, count + 1))
            for syntax in ("*", EXPLICIT):
                frames = client.frames(study, series, sop, numbers, transfer_syntax=syntax)
                expected = ref.frames(study, series, sop, numbers, transfer_syntax=syntax)
                assert [f.data for f in frames] == [f.data for f in expected]
            assert client.rendered(study, series, sop, media_type="image/png") == ref.rendered(
                study, series, sop, media_type="image/png"
            )
            (transcoded,) = client.iter_instances(study, series, sop, transfer_syntax=EXPLICIT)
            (reference,) = ref.iter_instances(study, series, sop, transfer_syntax=EXPLICIT)
            assert transcoded.data == reference.data


def test_bulk_data_streams_from_the_object(
    pair: tuple[RunningServer, RunningServer, str],
) -> None:
    folder, on_s3, _ = pair
    study, series, sop = _uids(Path(str(get_testdata_file("CT_small.dcm"))))
    url = f"/studies/{study}/series/{series}/instances/{sop}/bulkdata/7FE00010"
    bodies = []
    for running in (folder, on_s3):
        with httpx.Client(base_url=running.dicomweb_url) as http:
            response = http.get(
                url, headers={"Accept": "multipart/related; type=application/octet-stream"}
            )
            assert response.status_code == 200, response.text
            part = response.content.split(b"\r\n\r\n", 1)[1]
            bodies.append(part.rsplit(b"\r\n--", 1)[0])  # without the closing boundary
    assert len(bodies[1]) > 32_000
    assert bodies[0] == bodies[1]


def test_delete_removes_the_objects(
    pair: tuple[RunningServer, RunningServer, str], s3: S3Emulator
) -> None:
    _, on_s3, bucket = pair
    study, series, sop = _uids(Path(str(get_testdata_file("CT_small.dcm"))))
    with Client(on_s3.target) as client:
        assert client.delete_instance(study, series, sop) == 1
        assert len(s3.keys(bucket)) == len(FILES) - 1
        for path in _paths()[1:]:
            client.delete_study(_uids(path)[0])
        with pytest.raises(DicomRpcError):
            list(client.iter_instances(study, series, sop))
    assert s3.keys(bucket) == set()


def test_a_missing_object_is_not_found(
    pair: tuple[RunningServer, RunningServer, str], s3: S3Emulator
) -> None:
    _, on_s3, bucket = pair
    study, series, sop = _uids(Path(str(get_testdata_file("MR_small_jp2klossless.dcm"))))
    record = on_s3.archive.index.get_instance(study, series, sop)
    assert record is not None
    s3.client().delete_object(Bucket=bucket, Key=f"{PREFIX}/{record.blob_id}.dcm")
    with Client(on_s3.target) as client, pytest.raises(DicomRpcError) as caught:
        list(client.iter_instances(study, series, sop))
    assert caught.value.code.name == "NOT_FOUND"


def test_a_folder_indexed_against_one_store_is_not_served_from_another(
    tmp_path: Path, s3: S3Emulator
) -> None:
    bucket = s3.new_bucket()
    url = f"s3://{bucket}/{PREFIX}"
    running = start_server(tmp_path / "data", blobs=url, s3_endpoint=s3.endpoint)
    running.stop()
    with pytest.raises(StartupError, match="stored in s3://"):
        start_server(tmp_path / "data")
    with pytest.raises(StartupError, match="not in s3://"):
        start_server(tmp_path / "data", blobs=url + "-other", s3_endpoint=s3.endpoint)
    with pytest.raises(StartupError, match="quarantine-unindexed"):
        start_server(
            tmp_path / "data", blobs=url, s3_endpoint=s3.endpoint, quarantine_unindexed=True
        )
    folder = start_server(tmp_path / "folder")
    folder.stop()
    with pytest.raises(StartupError, match="index of files kept in the folder"):
        start_server(tmp_path / "folder", blobs=url, s3_endpoint=s3.endpoint)
    assert not (tmp_path / "folder" / "s3-uploads").exists()  # nothing was changed


def test_start_up_removes_only_what_is_provably_garbage(tmp_path: Path, s3: S3Emulator) -> None:
    bucket = s3.new_bucket()
    url = f"s3://{bucket}/{PREFIX}"
    data = tmp_path / "data"
    running = start_server(data, blobs=url, s3_endpoint=s3.endpoint)
    with Client(running.target) as client:
        client.store(_paths()[:2])
    running.stop()
    named = s3.keys(bucket)
    uploads = data / "s3-uploads"
    client = s3.client()
    # An upload that reached its object but not the index (marker left): garbage.
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/{'a' * 32}.dcm", Body=b"unacknowledged")
    (uploads / f"{'a' * 32}.pending").write_bytes(b"")
    # A marker whose blob the index names (the commit happened): the marker goes, not the object.
    indexed = sorted(named)[0].rsplit("/", 1)[1].removesuffix(".dcm")
    (uploads / f"{indexed}.pending").write_bytes(b"")
    # A spool file never uploaded; an object of another node (no marker here): kept.
    (uploads / f"{'b' * 32}.part").write_bytes(b"partial")
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/{'c' * 32}.dcm", Body=b"another node's")
    running = start_server(data, blobs=url, s3_endpoint=s3.endpoint)
    try:
        report = running.archive.recovery
        assert (report.unfinished_commits, report.partial_uploads) == (1, 1)
        assert not any(uploads.iterdir())
        assert s3.keys(bucket) == named | {f"{PREFIX}/{'c' * 32}.dcm"}
    finally:
        running.stop()


def test_a_server_killed_mid_ingest_restarts_with_every_indexed_instance_readable(
    tmp_path: Path, s3: S3Emulator
) -> None:
    bucket = s3.new_bucket()
    args = ("--blobs", f"s3://{bucket}/{PREFIX}", "--s3-endpoint", s3.endpoint)
    data = tmp_path / "data"
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))

    def instances() -> Iterator[bytes]:
        for _ in range(400):
            ds = template.copy()
            ds.SOPInstanceUID = pydicom.uid.generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            yield buffer.getvalue()

    server = spawn_server(data, *args)
    errors: list[BaseException] = []

    def ingest() -> None:
        try:
            with Client(server.target) as client:
                for _ in range(4):  # several streams, so that some are always mid-commit
                    client.store(instances())
        except BaseException as exc:  # the kill ends the stream
            errors.append(exc)

    thread = threading.Thread(target=ingest)
    thread.start()
    deadline = time.monotonic() + 60
    while len(s3.keys(bucket)) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.stop(signal.SIGKILL)
    thread.join(60)
    assert errors, "the ingest finished before the kill"
    server = spawn_server(data, *args)
    try:
        with Client(server.target) as client:
            study = str(template.StudyInstanceUID)
            count = sum(1 for _ in client.iter_instances(study))  # every one readable
    finally:
        assert server.stop() == 0
    index = LmdbIndex(
        data / "index", map_size=1 << 30, max_readers=8, max_batch=8, before_commit=lambda: None
    )
    try:
        named = index.blob_ids()
    finally:
        index.close()
    assert count == len(named) >= 40
    assert s3.keys(bucket) == {f"{PREFIX}/{blob_id}.dcm" for blob_id in named}
    assert not any((data / "s3-uploads").iterdir())


def test_a_server_killed_during_an_upload_leaves_no_object_the_index_does_not_name(
    tmp_path: Path, s3: S3Emulator
) -> None:
    """Killed while a large instance uploads (its marker durable, its object unfinished)."""
    bucket = s3.new_bucket()
    args = ("--blobs", f"s3://{bucket}/{PREFIX}", "--s3-endpoint", s3.endpoint)
    data = tmp_path / "data"
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows = ds.Columns = 256
    ds.NumberOfFrames = 400  # 52 MB: a multipart upload
    ds.PixelData = np.zeros(400 * 256 * 256, dtype=np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    server = spawn_server(data, *args)

    def store() -> None:
        with Client(server.target) as client, pytest.raises(DicomRpcError):
            client.store([buffer.getvalue()])

    thread = threading.Thread(target=store)
    thread.start()
    uploads = data / "s3-uploads"
    deadline = time.monotonic() + 60
    while not (markers := [p for p in uploads.iterdir() if p.suffix == ".pending"]):
        assert time.monotonic() < deadline, "the upload never started"
        time.sleep(0.005)
    server.stop(signal.SIGKILL)
    thread.join(60)
    blob_id = markers[0].stem
    server = spawn_server(data, *args)
    assert server.stop() == 0
    assert not any(uploads.iterdir())
    index = LmdbIndex(
        data / "index", map_size=1 << 30, max_readers=8, max_batch=8, before_commit=lambda: None
    )
    try:
        named = index.blob_ids()
    finally:
        index.close()
    assert blob_id not in named  # killed before its commit
    assert s3.keys(bucket) == set()  # so its object, finished or not, is gone
