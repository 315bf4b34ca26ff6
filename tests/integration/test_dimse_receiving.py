"""The DIMSE receive path: data sets go to upload files as they arrive; PDUs are bounded.

Each test drives a real association from pynetdicom's requester, writing some PDUs by hand on
its socket, against a server on loopback.
"""

from __future__ import annotations

import io
import os
import resource
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA

from dicomrpc import Client
from tests import dcmtk
from tests.conftest import RunningServer, start_server
from tests.descriptors import open_files_under
from tests.dicomgen import ct_instance
from tests.fuzz.dimse import AE_TITLE, pdus

MAX_PDU = 65536
PDU_PDATA = 0x04
WAIT_S = 10.0


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(
        tmp_path / "data", dimse_port=0, ae_title=AE_TITLE, dimse_max_pdu_bytes=MAX_PDU
    )
    yield running
    running.stop()


def _associate(archive: RunningServer) -> Association:
    ae = AE(ae_title="RECEIVING")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", archive.dimse_port, ae_title=AE_TITLE)
    assert assoc.is_established
    return assoc


def _store_command(sop_uid: str) -> bytes:
    command = Dataset()
    command.AffectedSOPClassUID = CTImageStorage
    command.CommandField = 0x0001
    command.MessageID = 7
    command.Priority = 0
    command.CommandDataSetType = 0x0000
    command.AffectedSOPInstanceUID = sop_uid
    encoded = encode(command, True, True)
    assert encoded is not None
    group = Dataset()
    group.CommandGroupLength = len(encoded)
    head = encode(group, True, True)
    assert head is not None
    return head + encoded


def _pdv(context_id: int, data: bytes, *, command: bool, last: bool) -> bytes:
    """One presentation data value item (PS3.8 E.2)."""
    header = (1 if command else 0) | (2 if last else 0)
    return struct.pack(">LBB", len(data) + 2, context_id, header) + data


def _context(assoc: Association) -> int:
    (context,) = [c for c in assoc.accepted_contexts if c.abstract_syntax == CTImageStorage]
    return int(context.context_id or 0)


def _raw(assoc: Association) -> socket.socket:
    transport = assoc.dul.socket
    assert transport is not None and transport.socket is not None
    return transport.socket


def _uploads(archive: RunningServer) -> list[Path]:
    return [p for p in (archive.settings.data_dir / "uploads").rglob("*") if p.is_file()]


def _upload_descriptors(archive: RunningServer) -> list[str]:
    """The server process's (this process's) open descriptors on upload files."""
    return open_files_under(archive.settings.data_dir / "uploads")


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _send(assoc: Association, *values: tuple[int, bytes, bool, bool]) -> None:
    """Send one P-DATA-TF PDU of the given (context, bytes, command?, last?) values."""
    primitive = P_DATA()
    for context_id, data, command, last in values:
        header = (1 if command else 0) | (2 if last else 0)
        primitive.presentation_data_value_list.append((context_id, bytes([header]) + data))
    assoc.dul.send_pdu(primitive)


def _data_set(part10: bytes) -> bytes:
    """A Part 10 file's data set, after its File Meta Information."""
    (group_length,) = struct.unpack_from("<L", part10, 132 + 8)
    return part10[132 + 12 + group_length :]


def test_a_data_set_is_written_to_its_upload_as_it_arrives_and_removed_on_abort(
    archive: RunningServer,
) -> None:
    assoc = _associate(archive)
    context_id = _context(assoc)
    sop_uid = generate_uid()
    data_set = _data_set(
        ct_instance(generate_uid(), generate_uid(), sop_uid, rows=256, columns=256)
    )
    # The command, then the first 30,000 bytes of the data set; the rest never comes.
    _send(assoc, (context_id, _store_command(sop_uid), True, True))
    _send(assoc, (context_id, data_set[:30000], False, False))
    # The fragment is on disk, in the upload the archive parses once the data set is whole.
    _wait_for(lambda: any(p.stat().st_size > 30000 for p in _uploads(archive)), "no upload")
    assert _upload_descriptors(archive)
    assoc.abort()
    _wait_for(lambda: not _uploads(archive), "the upload outlived its association")
    _wait_for(lambda: not _upload_descriptors(archive), "an upload stayed open")
    with Client(archive.target) as client:
        assert len(client.search_studies()) == 0


def test_a_command_and_its_data_set_in_one_pdu_are_stored(archive: RunningServer) -> None:
    assoc = _associate(archive)
    context_id = _context(assoc)
    study, sop_uid = generate_uid(), generate_uid()
    instance = ct_instance(study, generate_uid(), sop_uid)
    data_set = _data_set(instance)
    # The requester's reactor parked, as pynetdicom's send_* methods park it, so that the
    # response is read here rather than taken by the reactor.
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.001)
    _send(
        assoc,
        (context_id, _store_command(sop_uid), True, True),
        (context_id, data_set[:100], False, False),
        (context_id, data_set[100:], False, True),
    )
    _, response = assoc.dimse.get_msg(block=True)
    assoc._reactor_checkpoint.set()
    assert response is not None and response.Status == 0x0000
    assoc.release()
    with Client(archive.target) as client:
        (stored,) = client.retrieve_study(study)
    assert dcmread(io.BytesIO(stored.data)).SOPInstanceUID == sop_uid
    assert dcmread(io.BytesIO(stored.data)).PixelData == dcmread(io.BytesIO(instance)).PixelData


def test_a_pdu_longer_than_announced_aborts_the_association_before_it_is_read(
    archive: RunningServer,
) -> None:
    assoc = _associate(archive)
    sock = _raw(assoc)
    # A P-DATA-TF announcing 16 MiB on an association whose maximum is 64 KiB; only its
    # header and a few bytes are ever sent.
    sock.sendall(struct.pack(">BBL", PDU_PDATA, 0, 16 << 20) + bytes(64))
    _wait_for(lambda: not assoc.is_established, "the association outlived the PDU")
    assert assoc.is_aborted
    sock.close()  # the requester's own, which pynetdicom leaves open after an A-ABORT
    # The archive goes on.
    again = _associate(archive)
    assert again.send_c_echo().Status == 0x0000
    again.release()


@pytest.mark.parametrize("announced", [(1 << 32) - 1, 2 << 20])
def test_an_association_request_of_gigabytes_is_refused_unread(
    archive: RunningServer, announced: int
) -> None:
    with socket.create_connection(("127.0.0.1", archive.dimse_port), timeout=WAIT_S) as sock:
        sock.sendall(struct.pack(">BBL", 0x01, 0, announced) + bytes(1024))
        answer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    # An A-ABORT, then the connection closed; not a wait for gigabytes that never come.
    assert pdus(answer)[0] and pdus(answer)[0][0][0] == 0x07


def _thread_ticks(native_id: int | None) -> int:
    """The CPU time (user + system, in clock ticks) of one thread of this process."""
    with open(f"/proc/self/task/{native_id}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_an_idle_association_does_not_spin(archive: RunningServer) -> None:
    assoc = _associate(archive)
    (served,) = archive.served(assoc)
    threads = (served.native_id, served.dul.native_id)
    before = [_thread_ticks(tid) for tid in threads]
    time.sleep(2.0)
    used = [_thread_ticks(tid) - was for tid, was in zip(threads, before, strict=True)]
    # Polling every millisecond, as pynetdicom's reactors do, costs each thread some 60-120 ms
    # of CPU in these 2 s; waiting for work costs well under one 10 ms tick.
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    assert sum(used) <= 0.02 * ticks_per_s, used
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_associations_on_descriptors_past_1024_are_served(
    archive: RunningServer, tmp_path: Path
) -> None:
    """select() fails on a descriptor past 1024, which pynetdicom took for a closed connection."""
    dcmtk.require_dcmtk()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"this machine allows {hard} descriptors")
    path = tmp_path / "ct.dcm"
    path.write_bytes(ct_instance(generate_uid(), generate_uid(), generate_uid()))
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))
    held: list[int] = []
    try:
        # Every descriptor up to 1100 taken: the server's next ones (the connection accepted,
        # the upload) lie past select's limit. The requester is another process.
        while not held or held[-1] < 1100:
            held.append(os.open(os.devnull, os.O_RDONLY))
        answered = dcmtk.run("storescu", "-d", "-R", *dcmtk.peer(archive.dimse_port), path)
        assert dcmtk.statuses(answered.stdout) == [0x0000], answered.stdout[-2000:]
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
