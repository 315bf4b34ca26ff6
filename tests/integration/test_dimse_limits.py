"""DIMSE hygiene: association and PDU limits, idle associations, malformed input, the log."""

from __future__ import annotations

import io
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom.data
import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config

from dicomrpc import Client
from tests import dcmtk
from tests.conftest import RunningServer, start_server
from tests.dicomgen import ct_instance

CT_SMALL = Path(pydicom.data.__file__).parent / "test_files" / "CT_small.dcm"
MAX_PDU = 65536
VERIFICATION = "1.2.840.10008.1.1"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_server(
        tmp_path_factory.mktemp("dimse_limits") / "data",
        dimse_port=0,
        dimse_max_pdu_bytes=MAX_PDU,
        dimse_idle_timeout_s=1.0,
        # A connection that never sends an association request waits for it this long.
        dimse_timeout_s=2.0,
        max_instance_bytes=8192,
    )
    yield server
    server.stop()


@pytest.fixture
def crowded(tmp_path: Path) -> Iterator[RunningServer]:
    server = start_server(tmp_path / "data", dimse_port=0, dimse_max_associations=1)
    yield server
    server.stop()


def settle(archive: RunningServer) -> None:
    """Wait until the archive has seen every association of the test end."""
    assert archive.dimse is not None
    deadline = time.monotonic() + 10
    while archive.dimse.associations and time.monotonic() < deadline:
        time.sleep(0.02)
    assert archive.dimse.associations == 0


def _requester() -> AE:
    ae = AE(ae_title="LIMITS")
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    return ae


def echo(archive: RunningServer) -> str:
    return dcmtk.run("echoscu", "-d", *dcmtk.peer(archive.dimse_port)).stdout


def test_one_association_more_than_the_limit_is_rejected(crowded: RunningServer) -> None:
    dcmtk.require_dcmtk()
    held = _requester().associate("127.0.0.1", crowded.dimse_port, ae_title=dcmtk.AE_TITLE)
    assert held.is_established
    try:
        refused = echo(crowded)
        assert "Local Limit Exceeded" in refused, refused
    finally:
        held.release()
    settle(crowded)
    assert "Received Echo Response (Success)" in echo(crowded)


def test_silent_connections_do_not_take_a_requesters_place(crowded: RunningServer) -> None:
    """Connections that never request an association wait apart: with a limit of one
    association, eight of them open, a requester is still served (and then one more is
    refused as before: the limit counts requested associations)."""
    dcmtk.require_dcmtk()
    silent = [socket.create_connection(("127.0.0.1", crowded.dimse_port)) for _ in range(8)]
    try:
        time.sleep(0.3)  # accepted, each waiting for a request that never comes
        assert "Received Echo Response (Success)" in echo(crowded)
        held = _requester().associate("127.0.0.1", crowded.dimse_port, ae_title=dcmtk.AE_TITLE)
        assert held.is_established
        try:
            assert "Local Limit Exceeded" in echo(crowded)
        finally:
            held.release()
    finally:
        for connection in silent:
            connection.close()


def test_the_pdu_size_limit_is_announced(archive: RunningServer) -> None:
    dcmtk.require_dcmtk()
    answered = echo(archive)
    assert "Received Echo Response (Success)" in answered
    assert f"Their Max PDU Receive Size:  {MAX_PDU}" in answered


def test_an_idle_association_is_aborted(archive: RunningServer) -> None:
    assoc = _requester().associate("127.0.0.1", archive.dimse_port, ae_title=dcmtk.AE_TITLE)
    assert assoc.is_established
    deadline = time.monotonic() + 10
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.1)
    assert assoc.is_aborted
    settle(archive)


def test_a_corrupt_data_set_is_answered_cannot_understand(
    archive: RunningServer, tmp_path: Path
) -> None:
    dcmtk.require_dcmtk()
    # Valid File Meta Information, then bytes that are no data set: an element announcing
    # far more bytes than follow. pynetdicom sends a file's data set without parsing it.
    path = tmp_path / "corrupt.dcm"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    body = io.BytesIO()
    body.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(body, meta, enforce_standard=True)
    body.write(b"\x08\x00\x16\x00UI\xff\x7f" + b"1.2.3")
    path.write_bytes(body.getvalue())
    assoc = _requester().associate("127.0.0.1", archive.dimse_port, ae_title=dcmtk.AE_TITLE)
    assert assoc.is_established
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        status = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        assoc.release()
    assert status.Status == 0xC000
    assert status.ErrorComment
    settle(archive)
    assert "Received Echo Response (Success)" in echo(archive)


def test_bytes_that_are_no_pdu_end_the_connection_not_the_server(archive: RunningServer) -> None:
    dcmtk.require_dcmtk()
    with socket.create_connection(("127.0.0.1", archive.dimse_port), timeout=10) as raw:
        raw.sendall(b"\x07\x00\x00\x00\x00\x04GET / HTTP/1.1\r\n\r\n" + bytes(range(256)))
        try:
            while raw.recv(4096):
                pass
        except ConnectionResetError:
            pass
    settle(archive)
    assert "Received Echo Response (Success)" in echo(archive)


def test_an_instance_over_the_size_limit_is_refused_out_of_resources(
    archive: RunningServer,
) -> None:
    dcmtk.require_dcmtk()
    assert CT_SMALL.stat().st_size > archive.settings.max_instance_bytes
    result = dcmtk.run("storescu", "-d", "-R", *dcmtk.peer(archive.dimse_port), CT_SMALL)
    assert dcmtk.statuses(result.stdout) == [0xA700]


def test_one_log_line_per_association_and_operation(
    archive: RunningServer, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    dcmtk.require_dcmtk()
    small = tmp_path / "small.dcm"
    small.write_bytes(ct_instance(rows=8, columns=8))
    sop = str(dcmread(small).SOPInstanceUID)
    with caplog.at_level(logging.INFO, logger="dicomrpc.dimse"):
        result = dcmtk.run("storescu", "-d", "-R", *dcmtk.peer(archive.dimse_port), small)
        assert dcmtk.statuses(result.stdout) == [0x0000]
        settle(archive)
    lines = [r.getMessage() for r in caplog.records if r.name == "dicomrpc.dimse"]
    assert [line.split(":")[0] for line in lines] == [
        "association from STORESCU@127.0.0.1",
        f"C-STORE {sop} from STORESCU@127.0.0.1",
    ]
    assert lines[1].split(": ", 1)[1].startswith("0x0000 in ")
    with Client(archive.target) as client:
        assert [c.sop_instance_uid for c in client.read_changes()][-1] == sop
