"""A real server keeping its instance files in a shared folder (``--blobs /mounted/folder``).

Two servers with data folders of their own stand for two nodes mounting one folder: each
writes its objects there under names no other can choose, reads back what it stored as the
folder store does, and, killed mid-ingest, restarts with every indexed instance readable and
only its own leftovers removed: the other node's files are never touched.
"""

from __future__ import annotations

import io
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicomrpc import Client
from dicomrpc_server.errors import StartupError
from dicomrpc_server.storage.lmdb_index import LmdbIndex
from tests.conftest import spawn_server, start_server

pytestmark = pytest.mark.slow

FILES = ["CT_small.dcm", "MR_small_jp2klossless.dcm", "SC_rgb_rle_2frame.dcm", "JPEG2000.dcm"]


def _paths() -> list[Path]:
    return [Path(str(get_testdata_file(name))) for name in FILES]


def _uids(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def _files(shared: Path) -> set[str]:
    """The blob ids of the files under the shared folder's ``blobs/``."""
    return {p.name.removesuffix(".dcm") for p in (shared / "blobs").glob("*/*.dcm")}


def _named(data: Path) -> set[str]:
    index = LmdbIndex(
        data / "index", map_size=1 << 30, max_readers=8, max_batch=8, before_commit=lambda: None
    )
    try:
        return index.blob_ids()
    finally:
        index.close()


def _copies(count: int) -> Iterator[bytes]:
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for _ in range(count):
        ds = template.copy()
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        yield buffer.getvalue()


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    folder = tmp_path / "mnt" / "archive"
    folder.mkdir(parents=True)
    return folder


def test_files_go_to_the_shared_folder_and_read_back_as_the_folder_store_does(
    tmp_path: Path, shared: Path
) -> None:
    reference = start_server(tmp_path / "folder")
    node = start_server(tmp_path / "data", blobs=str(shared))
    try:
        with Client(reference.target) as ref, Client(node.target) as client:
            for running in (ref, client):
                result = running.store(_paths())
                assert all(i.outcome.startswith("stored") for i in result.instances), result
            assert len(_files(shared)) == len(FILES)
            for path in _paths():
                study, series, sop = _uids(path)
                (got,) = client.iter_instances(study, series, sop)
                (want,) = ref.iter_instances(study, series, sop)
                assert got.data == want.data  # (versions follow each archive's commit order)
                assert client.frames(study, series, sop, [1]) == ref.frames(study, series, sop, [1])
            # Nothing in the data folder's own blob folder; every marker dropped.
            assert not list((tmp_path / "data" / "blobs").glob("*/*"))
            assert not any((tmp_path / "data" / "shared-uploads").iterdir())
            assert not any((shared / "incoming").iterdir())
            study, series, sop = _uids(_paths()[0])
            assert client.delete_instance(study, series, sop) == 1
            assert len(_files(shared)) == len(FILES) - 1
    finally:
        node.stop()
        reference.stop()
    assert _files(shared) == _named(tmp_path / "data")


def test_a_missing_or_misplaced_shared_folder_is_refused(tmp_path: Path, shared: Path) -> None:
    with pytest.raises(StartupError, match="is it mounted") as caught:
        start_server(tmp_path / "data", blobs=str(tmp_path / "not-mounted"))
    assert caught.value.reason == "BLOB_STORE_UNAVAILABLE"
    assert not (tmp_path / "not-mounted").exists()  # never made a local folder in its place
    with pytest.raises(StartupError, match="inside it") as caught:
        start_server(tmp_path / "data", blobs=str(tmp_path / "data" / "shared"))
    assert caught.value.reason == "BLOB_STORE_INVALID"
    start_server(tmp_path / "data", blobs=str(shared)).stop()
    with pytest.raises(StartupError, match=f"stored in {shared}"):
        start_server(tmp_path / "data")
    with pytest.raises(StartupError, match="not in"):
        start_server(tmp_path / "data", blobs=str(tmp_path))


def test_a_node_killed_mid_ingest_removes_only_its_own_leftovers(
    tmp_path: Path, shared: Path
) -> None:
    # Node B stores first; its files must survive everything node A's crash and restart do.
    node_b = start_server(tmp_path / "b", blobs=str(shared))
    try:
        with Client(node_b.target) as client:
            client.store(_copies(30))
    finally:
        node_b.stop()
    files_b = _named(tmp_path / "b")
    assert len(files_b) == 30 and files_b <= _files(shared)

    data = tmp_path / "a"
    args = ("--blobs", str(shared))
    server = spawn_server(data, *args)
    errors: list[BaseException] = []

    def ingest() -> None:
        try:
            with Client(server.target) as client:
                for _ in range(4):  # several streams, so that some are always mid-commit
                    client.store(_copies(400))
        except BaseException as exc:  # the kill ends the stream
            errors.append(exc)

    thread = threading.Thread(target=ingest)
    thread.start()
    deadline = time.monotonic() + 60
    while len(_files(shared)) < 30 + 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.stop(signal.SIGKILL)
    thread.join(60)
    assert errors, "the ingest finished before the kill"
    # What a kill can leave: a copy half-made in incoming/ (its marker names it), and a
    # marker whose object was renamed into place but never indexed.
    spool = data / "shared-uploads"
    (spool / f"{'a' * 32}.pending").write_bytes(b"")
    (shared / "incoming" / f"{'a' * 32}.tmp").write_bytes(b"half a copy")
    (spool / f"{'b' * 32}.pending").write_bytes(b"")
    (shared / "blobs" / "bbbbbbbb").mkdir(exist_ok=True)
    (shared / "blobs" / "bbbbbbbb" / f"{'b' * 32}.dcm").write_bytes(b"never indexed")
    server = spawn_server(data, *args)
    try:
        with Client(server.target) as client:
            study = str(pydicom.dcmread(get_testdata_file("CT_small.dcm")).StudyInstanceUID)
            count = sum(1 for _ in client.iter_instances(study))  # every one readable
    finally:
        assert server.stop() == 0
    named = _named(data)
    # Files reach the shared folder before their commit: of the 40 seen there at the kill, the
    # ones whose commit had not happened are gone again.
    assert count == len(named) >= 20
    assert _files(shared) == named | files_b  # A's leftovers gone, B's files all there
    assert not any(spool.iterdir())
    assert not any((shared / "incoming").iterdir())
