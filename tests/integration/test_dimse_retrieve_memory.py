"""C-GET and C-MOVE send a large stored instance from its file, a PDU at a time.

The server holds a few PDUs of it, not the instance: before, it read the file whole, parsed it
and encoded it again (five times the instance's size at the peak), and sent it to a peer
announcing no maximum PDU length as one PDU.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_preamble
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

from dicomrpc import Client
from dicomrpc_server.dimse.outgoing import MAX_SENT_PDU_BYTES
from tests import dcmtk
from tests.conftest import spawn_server
from tests.descriptors import open_files_under
from tests.dicomgen import big_image
from tests.integration.test_retrieve_memory import _PeakRss

pytestmark = pytest.mark.slow

MB = 1024 * 1024
SIDE = 8192  # 8192 x 8192 x 16 bit: 128 MiB of pixel data
# What the server may grow by while it sends the instance three times.
GROWTH_LIMIT = 48 * MB


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _data_set(path: Path) -> bytes:
    """The bytes after a Part 10 file's File Meta Information (each writer writes its own)."""
    with open(path, "rb") as fp:
        read_preamble(fp, False)
        meta = dcmread(path, stop_before_pixels=True).file_meta
        fp.seek(132 + 12 + int(meta.FileMetaInformationGroupLength))
        return fp.read()


def _get_without_pdu_limit(port: int, study: str) -> tuple[list[bytes], int]:
    """A C-GET by pynetdicom announcing no maximum PDU length (0).

    Returns the data sets received (encoded) and the longest P-DATA-TF PDU that came.
    """
    received: list[bytes] = []
    longest = 0

    def on_store(event: evt.Event) -> int:
        received.append(bytes(event.request.DataSet.getvalue()))
        return 0x0000

    def on_pdu(event: evt.Event) -> None:
        nonlocal longest
        if isinstance(event.pdu, P_DATA_TF):
            longest = max(longest, len(event.pdu.encode()))

    ae = AE(ae_title="BIGGET")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    role = build_role(SecondaryCaptureImageStorage, scp_role=True)
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title=dcmtk.AE_TITLE,
        max_pdu=0,
        ext_neg=[role],
        evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_PDU_RECV, on_pdu)],
    )
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    try:
        statuses = [
            status.Status
            for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)
        ]
    finally:
        assoc.release()
    assert statuses[-1] == 0x0000
    return received, longest


@pytest.mark.timeout(600)
def test_a_large_instance_goes_out_of_its_file_a_pdu_at_a_time(tmp_path: Path) -> None:
    dcmtk.require_dcmtk()
    study = generate_uid()
    source = tmp_path / "large.dcm"
    pixels = bytes(range(256)) * (SIDE * SIDE * 2 // 256)
    big_image(study, generate_uid(), 1, SIDE, pixels).save_as(source, enforce_file_format=True)
    expected = _data_set(source)
    destination = dcmtk.StoreScp(tmp_path / "moved", "BIGDEST")
    port = _free_port()
    proc = spawn_server(
        tmp_path / "data",
        "--dimse-port",
        str(port),
        "--dimse-peer",
        f"BIGDEST=BIGDEST@127.0.0.1:{destination.port}",
        "--max-instance-bytes",
        str(512 * MB),
    )
    try:
        with Client(proc.target) as client:
            assert len(client.store(source).stored) == 1
        server = psutil.Process(proc.process.pid)
        before = server.memory_info().rss
        peak = _PeakRss(proc.process.pid)
        keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
        got = tmp_path / "got"
        got.mkdir()
        result = dcmtk.run("getscu", "-S", "-od", got, *keys, *dcmtk.peer(port))
        assert result.returncode == 0, result.stdout[-2000:]
        result = dcmtk.run("movescu", "-S", "-aem", "BIGDEST", *keys, *dcmtk.peer(port))
        assert result.returncode == 0, result.stdout[-2000:]
        unlimited, longest = _get_without_pdu_limit(port, study)
        grown = peak.stop() - before
    finally:
        proc.stop()
        destination.stop()
    assert grown < GROWTH_LIMIT, f"the server grew by {grown // MB} MiB"
    # A peer that takes PDUs of any length still gets them in pieces.
    assert 0 < longest <= MAX_SENT_PDU_BYTES + 6
    assert len(unlimited) == 1 and unlimited[0] == expected
    for folder in (got, destination.folder):
        (written,) = list(folder.iterdir())
        assert _data_set(written) == expected


@pytest.mark.timeout(300)
def test_a_requester_gone_mid_instance_leaves_no_file_open(tmp_path: Path) -> None:
    dcmtk.require_dcmtk()
    study = generate_uid()
    source = tmp_path / "large.dcm"
    big_image(study, generate_uid(), 1, SIDE, bytes(SIDE * SIDE * 2)).save_as(
        source, enforce_file_format=True
    )
    port = _free_port()
    data = tmp_path / "data"
    proc = spawn_server(data, "--dimse-port", str(port), "--max-instance-bytes", str(512 * MB))
    pid = proc.process.pid
    try:
        with Client(proc.target) as client:
            assert len(client.store(source).stored) == 1
        keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
        out = tmp_path / "got"
        out.mkdir()
        # 4 KiB PDUs, the fewest getscu takes: 32,000 of them, time to be killed among them.
        getscu = subprocess.Popen(
            ["getscu", "-S", "--max-pdu", "4096", "-od", str(out), *keys, *dcmtk.peer(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(os.environ, TCP_NODELAY="1"),
        )
        deadline = time.monotonic() + 30
        while not open_files_under(data / "blobs", pid):  # the server is sending the file
            assert time.monotonic() < deadline, "the server never opened the stored file"
            assert getscu.poll() is None, "getscu ended before the instance was sent"
            time.sleep(0.005)
        getscu.send_signal(signal.SIGKILL)
        getscu.wait(10)
        assert list(out.iterdir()) == []  # it was killed mid-instance
        deadline = time.monotonic() + 15
        while open_files_under(data / "blobs", pid):
            assert time.monotonic() < deadline, open_files_under(data / "blobs", pid)
            time.sleep(0.05)
        # The archive serves the next requester, the same instance whole.
        result = dcmtk.run("getscu", "-S", "-od", out, *keys, *dcmtk.peer(port))
        assert result.returncode == 0, result.stdout[-2000:]
        (written,) = list(out.iterdir())
        assert _data_set(written) == _data_set(source)
    finally:
        proc.stop()
