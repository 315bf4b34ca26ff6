"""C-ECHO and C-STORE driven by dcmtk's echoscu and storescu, against the gRPC outcomes.

Every file pydicom ships is sent with storescu, one association each, in sorted path order (so
a SOP Instance UID shipped twice is stored once and then found existing, as in one gRPC
stream), and its DIMSE status must be the one the README's mapping gives for what the same
file gets over gRPC.
"""

from __future__ import annotations

import io
import os
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom.data
import pytest
from pydicom import dcmread

from dicomrpc import Client
from tests import dcmtk
from tests.conftest import RunningServer, spawn_server, start_server
from tests.dicomgen import ct_instance
from tests.integration.test_storage_full import SmallDisk, _fill, small_disk

__all__ = ["small_disk"]  # the fixture, shared with the gRPC full-disk tests

ROOT = Path(pydicom.data.__file__).parent / "test_files"

# What a gRPC outcome is over DIMSE (README, DIMSE: statuses).
STATUS_OF = {
    ("stored", 0): 0x0000,
    ("stored_with_warnings", 1): 0xB000,
    ("stored_with_warnings", 45063): 0xB007,
    ("failed", 272): 0xC000,
    ("failed", 43264): 0xA900,
    ("failed", 45070): 0x0111,
    ("already_stored", 0): 0x0000,  # the same bytes again: success, as a re-send should be
}

# Files storescu does not send, and gRPC fails too (272 or 43264): files that are not DICOM
# or have no transfer syntax in their file meta; media directories (DICOMDIR's SOP class is
# not a storage SOP class, so no presentation context exists for it); data sets storescu
# finds no SOP Class UID in (none, or one written as UN); files cut short.
NOT_SENT = {
    "README.txt",
    "crayons.icc",
    "dicomdirtests/README.txt",
    "dicomdirtests/TINY_ALPHA/README",
    "meta_missing_tsyntax.dcm",
    "no_meta.dcm",
    "rtplan.dump",
    "rtstruct.dump",
    "test1.json",
    "test_PN.json",
    "zipMR.gz",
    "dicomdirtests/DICOMDIR",
    "dicomdirtests/DICOMDIR-bigEnd",
    "dicomdirtests/DICOMDIR-empty.dcm",
    "dicomdirtests/DICOMDIR-implicit",
    "dicomdirtests/DICOMDIR-nooffset",
    "dicomdirtests/DICOMDIR-nopatient",
    "dicomdirtests/DICOMDIR-reordered",
    "dicomdirtests/TINY_ALPHA/DICOMDIR",
    "UN_sequence.dcm",
    "empty_charset_LEI.dcm",
    "nested_priv_SQ.dcm",
    "no_meta_group_length.dcm",
    "priv_SQ.dcm",
    "rtdose_rle.dcm",
    "rtdose_rle_1frame.dcm",
    "MR_truncated.dcm",
    "rtplan_truncated.dcm",
}
# Stored over gRPC with warnings, but a data set in implicit VR under an explicit transfer
# syntax, which dcmtk cannot read.
NOT_SENT_THOUGH_STORED = {"SC_rgb_jpeg.dcm"}

# Files whose status over DIMSE is not the one of their gRPC outcome, and why. DIMSE carries a
# data set, not a file: the File Meta Information is rebuilt from the C-STORE request.
DIFFERENT: dict[str, tuple[int, str]] = {
    "ExplVR_BigEndNoMeta.dcm": (0xB000, "a bare data set: storescu sends it, gRPC wants Part 10"),
    "ExplVR_LitEndNoMeta.dcm": (0x0000, "a bare data set, the same bytes as one stored before"),
    "rtstruct.dcm": (0x0000, "a bare data set: storescu sends it, gRPC wants Part 10"),
    "badVR.dcm": (0xB000, "only its file meta named another SOP instance (0xB007 over gRPC)"),
    "rtplan.dcm": (0x0000, "only its file meta named another SOP instance (0xB007 over gRPC)"),
    "SC_rgb_jpeg_dcmd.dcm": (0x0000, "SC_rgb_jpeg.dcm, the same instance, was not sent before"),
    # Sent by storescu in explicit VR little endian: the same data set, byte for byte, as the
    # little endian file of the same instance sent before, so already stored (success).
    "MR_small_bigendian.dcm": (0x0000, "MR_small.dcm's bytes once storescu converts it"),
    "MR_small_expb.dcm": (0x0000, "MR_small.dcm's bytes once storescu converts it"),
    "SC_rgb_small_odd_big_endian.dcm": (0x0000, "SC_rgb_small_odd.dcm's bytes, converted"),
    "liver_expb_1frame.dcm": (0x0000, "liver_1frame.dcm's bytes once storescu converts it"),
}
# Of those, the ones that stored nothing new (already stored with the same bytes).
ALREADY_STORED = {
    "ExplVR_LitEndNoMeta.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "SC_rgb_small_odd_big_endian.dcm",
    "liver_expb_1frame.dcm",
}


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[RunningServer]:
    server = start_server(tmp_path / "data", dimse_port=0)
    yield server
    server.stop()


def _syntax(path: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            meta = dcmread(path, stop_before_pixels=True, force=True).file_meta
        except Exception:
            return ""
    return str(getattr(meta, "TransferSyntaxUID", ""))


def store(port: int, path: Path) -> list[int]:
    """Send one file with storescu, proposing its own transfer syntax; its statuses."""
    option = dcmtk.PROPOSE.get(_syntax(path))
    args = ["-d", "-R", *([option] if option else []), *dcmtk.peer(port), path]
    return dcmtk.statuses(dcmtk.run("storescu", *args).stdout)


def test_echoscu_is_answered(archive: RunningServer) -> None:
    dcmtk.require_dcmtk()
    result = dcmtk.run("echoscu", "-v", *dcmtk.peer(archive.dimse_port))
    assert result.returncode == 0, result.stdout
    assert "Received Echo Response (Success)" in result.stdout


@pytest.mark.slow
def test_every_pydicom_file_gets_the_status_of_its_grpc_outcome(
    archive: RunningServer, tmp_path: Path
) -> None:
    dcmtk.require_dcmtk()
    files = sorted(p for p in ROOT.rglob("*") if p.is_file())
    names = [p.relative_to(ROOT).as_posix() for p in files]
    reference = start_server(tmp_path / "reference")
    try:
        with Client(reference.target) as client:
            grpc = client.store(files)
    finally:
        reference.stop()
    expected: dict[str, int | None] = {}
    again = set(ALREADY_STORED)
    for name, result in zip(names, grpc.instances, strict=True):
        if result.outcome == "already_stored":
            again.add(name)
        reason = result.failure_reason if result.outcome == "failed" else result.warning_reason
        expected[name] = STATUS_OF[(result.outcome, reason)]
        if name in NOT_SENT:
            assert result.outcome == "failed", name
            expected[name] = None
        elif name in NOT_SENT_THOUGH_STORED:
            expected[name] = None
        elif name in DIFFERENT:
            expected[name] = DIFFERENT[name][0]

    got: dict[str, int | None] = {}
    for name, path in zip(names, files, strict=True):
        answers = store(archive.dimse_port, path)
        assert len(answers) <= 1, (name, answers)
        got[name] = answers[0] if answers else None
    assert got == expected

    # Stored through the store core: indexed, in the change feed, once each.
    stored = {
        n
        for n, status in got.items()
        if status is not None and status in (0, 0xB000, 0xB007) and n not in again
    }
    counts = archive.archive.index.counts()
    assert counts.instances == len(stored)
    with Client(archive.target) as client:
        changes = client.read_changes(limit=1000)
    assert [c.action for c in changes] == ["created"] * len(stored)


@pytest.mark.slow
def test_associations_store_side_by_side(archive: RunningServer, tmp_path: Path) -> None:
    dcmtk.require_dcmtk()
    study = "1.2.826.0.1.3680043.8.498.77"
    folders = []
    for worker in range(4):
        folder = tmp_path / f"w{worker}"
        folder.mkdir()
        for n in range(15):
            data = ct_instance(study=study, number=worker * 100 + n, rows=32, columns=32)
            (folder / f"{n}.dcm").write_bytes(data)
        folders.append(folder)
    before = archive.archive.index.counts().instances
    processes = [
        subprocess.Popen(
            ["storescu", "-d", "+sd", *dcmtk.peer(archive.dimse_port), str(folder)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ, TCP_NODELAY="1"),
        )
        for folder in folders
    ]
    outputs = [p.communicate(timeout=dcmtk.TIMEOUT_S)[0] for p in processes]
    for output in outputs:
        assert dcmtk.statuses(output) == [0x0000] * 15, output[-2000:]
    assert archive.archive.index.counts().instances == before + 60
    with Client(archive.target) as client:
        assert len(client.retrieve_study(study)) == 60


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_full_disk_is_refused_out_of_resources(small_disk: SmallDisk) -> None:
    dcmtk.require_dcmtk()
    proc = spawn_server(small_disk.mount / "data", "--dimse-port", "0", prefix=small_disk.prefix)
    try:
        assert proc.process.stdout is not None
        port = int(proc.process.stdout.readline().split(" as ")[0].rsplit(":", 1)[1])
        instance = small_disk.mount.parent / "instance.dcm"
        instance.write_bytes(ct_instance(rows=256, columns=256))
        _fill(small_disk.view(proc) / "filler")
        result = dcmtk.run("storescu", "-d", "-R", *dcmtk.peer(port), instance)
        assert dcmtk.statuses(result.stdout) == [0xA700], result.stdout[-2000:]
        assert "ErrorComment" in result.stdout and "storage is full" in result.stdout
        (small_disk.view(proc) / "filler").unlink()
        result = dcmtk.run("storescu", "-d", "-R", *dcmtk.peer(port), instance)
        assert dcmtk.statuses(result.stdout) == [0x0000]
    finally:
        assert proc.stop() == 0


def test_a_large_instance_is_stored_byte_for_byte(archive: RunningServer, tmp_path: Path) -> None:
    dcmtk.require_dcmtk()
    path = tmp_path / "large.dcm"
    path.write_bytes(ct_instance(rows=1024, columns=1536))  # 3 MiB: several chunks
    assert path.stat().st_size > 3 * archive.settings.chunk_bytes
    result = dcmtk.run("storescu", "-d", "-R", *dcmtk.peer(archive.dimse_port), path)
    assert dcmtk.statuses(result.stdout) == [0x0000]
    sent = dcmread(path)
    with Client(archive.target) as client:
        got = client.retrieve_instance(
            str(sent.StudyInstanceUID), str(sent.SeriesInstanceUID), str(sent.SOPInstanceUID)
        )
    # Everything after the File Meta Information is what storescu read from the file.
    offset = 132 + 12 + int(sent.file_meta.FileMetaInformationGroupLength)
    received = dcmread(io.BytesIO(got.data))
    assert got.data[128:132] == b"DICM"
    assert (
        got.data[132 + 12 + int(received.file_meta.FileMetaInformationGroupLength) :]
        == (path.read_bytes()[offset:])
    )
