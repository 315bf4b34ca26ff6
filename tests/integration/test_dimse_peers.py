"""DIMSE peers changed at run time: ManagementService RPCs, the SDK and ``dicomrpc peers``;
a C-MOVE finds a peer added a moment before, and no longer one just removed; peers persist."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pydicom.data
import pytest

from dicomrpc import Client, DicomRpcError
from tests import dcmtk
from tests.conftest import RunningServer, start_server

CT_SMALL = Path(pydicom.data.__file__).parent / "test_files" / "CT_small.dcm"
MOVE_DESTINATION_UNKNOWN = 0xA801


@pytest.fixture
def destination(tmp_path: Path) -> Iterator[dcmtk.StoreScp]:
    dcmtk.require_dcmtk()
    scp = dcmtk.StoreScp(tmp_path / "destination", "LATER")
    yield scp
    scp.stop()


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[RunningServer]:
    server = start_server(
        tmp_path / "data", dimse_port=0, dimse_peers=(("fixed", "FIXED", "127.0.0.1", 104),)
    )
    with Client(server.target) as client:
        assert client.store([CT_SMALL]).status == "all_stored"
    yield server
    server.stop()


def _move(archive: RunningServer, to: str) -> list[int]:
    study = str(pydicom.dcmread(CT_SMALL, stop_before_pixels=True).StudyInstanceUID)
    result = dcmtk.run(
        "movescu",
        "-d",
        "-S",
        "-aem",
        to,
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study}",
        *dcmtk.peer(archive.dimse_port),
    )
    return dcmtk.statuses(result.stdout, "C-MOVE RSP")


@pytest.mark.slow
def test_a_peer_added_at_run_time_receives_a_move_until_it_is_removed(
    archive: RunningServer, destination: dcmtk.StoreScp
) -> None:
    assert _move(archive, "LATER")[-1] == MOVE_DESTINATION_UNKNOWN
    with Client(archive.target) as client:
        added = client.add_dimse_peer("reader", "LATER", "127.0.0.1", destination.port)
        assert (added.name, added.source) == ("reader", "registry")
        assert [(p.name, p.ae_title, p.source) for p in client.dimse_peers()] == [
            ("fixed", "FIXED", "settings"),
            ("reader", "LATER", "registry"),
        ]
        assert _move(archive, "LATER")[-1] == 0x0000
        assert len(list(destination.folder.iterdir())) == 1
        client.remove_dimse_peer("reader")
    assert _move(archive, "LATER")[-1] == MOVE_DESTINATION_UNKNOWN


def test_peers_are_checked_and_conflicts_refused(archive: RunningServer) -> None:
    with Client(archive.target) as client:
        bad = [
            ("", "AE", "h", 104, "name"),
            ("a b", "AE", "h", 104, "name"),
            ("x", "A" * 17, "h", 104, "ae_title"),
            ("x", "A\\B", "h", 104, "ae_title"),
            ("x", "AE", "", 104, "host"),
            ("x", "AE", "h", 0, "port"),
            ("x", "AE", "h", 70000, "port"),
        ]
        for name, title, host, port, field in bad:
            with pytest.raises(DicomRpcError) as caught:
                client.add_dimse_peer(name, title, host, port)
            assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT, (name, title)
            assert field in str(caught.value)
        with pytest.raises(DicomRpcError) as caught:
            client.add_dimse_peer("fixed", "OTHER", "127.0.0.1", 104)
        assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(DicomRpcError) as caught:
            client.add_dimse_peer("second", "FIXED", "127.0.0.1", 104)
        assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
        with pytest.raises(DicomRpcError) as caught:
            client.remove_dimse_peer("fixed")
        assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(DicomRpcError) as caught:
            client.remove_dimse_peer("nobody")
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
        # Adding a name again replaces that peer.
        client.add_dimse_peer("moving", "M1", "127.0.0.1", 1104)
        client.add_dimse_peer("moving", "M2", "127.0.0.1", 2104)
        assert [(p.ae_title, p.port) for p in client.dimse_peers() if p.name == "moving"] == [
            ("M2", 2104)
        ]


@pytest.mark.slow
def test_peers_outlive_a_restart_and_the_cli_manages_them(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data)
    try:

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "dicomrpc.cli", "peers", *args, "--server", server.target],
                capture_output=True,
                text=True,
                timeout=60,
            )

        added = cli("add", "viewer", "VIEWER@10.0.0.7:11112")
        assert added.returncode == 0, added.stderr
        assert added.stdout.strip() == "viewer VIEWER@10.0.0.7:11112 registry"
        assert cli("add", "broken", "VIEWER-10.0.0.7").returncode == 2
    finally:
        server.stop()
    server = start_server(data)
    try:
        listed = subprocess.run(
            [sys.executable, "-m", "dicomrpc.cli", "peers", "list", "--server", server.target],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.stdout.strip() == "viewer VIEWER@10.0.0.7:11112 registry"
        with Client(server.target) as client:
            client.remove_dimse_peer("viewer")
            assert client.dimse_peers() == []
    finally:
        server.stop()
