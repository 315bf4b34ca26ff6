"""``dicomrpc serve`` with DIMSE: its start-up line, its port, its stop, and who may associate."""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE

from dicomrpc_server.config import Settings, add_serve_arguments, parse_allow, parse_peer
from dicomrpc_server.main import settings_from_args
from tests import dcmtk
from tests.conftest import RunningServer, spawn_server, start_server


@pytest.mark.slow
def test_serve_prints_the_dimse_line_after_the_others_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    dcmtk.require_dcmtk()
    server = spawn_server(tmp_path / "data", "--dimse-port", "0", "--ae-title", "ARCHIVE1")
    try:
        assert server.process.stdout is not None
        line = server.process.stdout.readline()
        match = re.search(r"serving DIMSE on 127\.0\.0\.1:(\d+) as ARCHIVE1$", line.strip())
        assert match, line
        port = int(match.group(1))
        echo = dcmtk.run("echoscu", "-v", "-aec", "ARCHIVE1", "127.0.0.1", str(port))
        assert "Received Echo Response (Success)" in echo.stdout, echo.stdout
        # The called AE title must be the archive's.
        wrong = dcmtk.run("echoscu", "-aec", "OTHER", "127.0.0.1", str(port))
        assert wrong.returncode != 0
        assert "Called AE Title Not Recognized" in wrong.stdout, wrong.stdout
    finally:
        assert server.stop(signal.SIGTERM) == 0
    with socket.socket() as probe:  # the port is free again (but for lingering connections)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


def test_dimse_is_off_with_port_minus_one(tmp_path: Path) -> None:
    server = spawn_server(tmp_path / "data")  # spawn_server passes --dimse-port -1
    try:
        assert server.process.stdout is not None
        server.process.send_signal(signal.SIGTERM)
        rest = server.process.stdout.read()
        assert "DIMSE" not in rest
    finally:
        assert server.stop(None) == 0


def test_a_used_dimse_port_fails_naming_the_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                *(sys.executable, "-m", "dicomrpc.cli", "serve", "--data", str(tmp_path)),
                *("--grpc-port", "0", "--http-port", "0", "--dimse-port", str(port)),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    assert result.returncode == 1
    assert (
        f"dicomrpc: cannot serve DIMSE on 127.0.0.1:{port}: the port is in use by another "
        "process; stop it or choose another --dimse-port" in result.stderr
    )
    assert "serving gRPC" not in result.stdout


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_serve_arguments(sub.add_parser("serve"))
    return parser


def test_the_dimse_flags_and_variables_make_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().dimse_port == 11112 and Settings().ae_title == "DICOMRPC"
    args = build_parser().parse_args(
        [
            *("serve", "--dimse-port", "104", "--ae-title", " PACS "),
            *("--dimse-allow", "CT1@10.0.0.5", "--dimse-allow", "MR@mr.example"),
            *("--dimse-max-associations", "3", "--dimse-timeout", "5"),
            *("--dimse-peer", "ws=WS1@10.0.0.9:104", "--dimse-peer", "pacs=OLD@[::1]:11113"),
        ]
    )
    settings = settings_from_args(args)
    assert settings.dimse_port == 104 and settings.ae_title == "PACS"
    assert settings.dimse_allow == (("CT1", "10.0.0.5"), ("MR", "mr.example"))
    assert settings.dimse_max_associations == 3 and settings.dimse_timeout_s == 5
    assert settings.dimse_peers == (("ws", "WS1", "10.0.0.9", 104), ("pacs", "OLD", "::1", 11113))
    for bad in ("WS1@host:104", "ws=WS1@host", "ws=WS1@host:0", "ws=@host:104", "ws=WS1@:104"):
        with pytest.raises(ValueError):
            parse_peer(bad)
    monkeypatch.setenv("DICOMRPC_DIMSE_ALLOW", "A@127.0.0.1, B@::1")
    assert Settings.from_env().dimse_allow == (("A", "127.0.0.1"), ("B", "::1"))
    for bad in ("CT1", "@host", "ABCDEFGHIJKLMNOPQ@host", "A\\B@host"):
        with pytest.raises(ValueError):
            parse_allow(bad)
    with pytest.raises(ValueError, match="AE title"):
        Settings(ae_title="")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--ae-title", "X" * 17])


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_server(
        tmp_path_factory.mktemp("dimse_guarded") / "data",
        dimse_port=0,
        dimse_allow=(("MODALITY", "127.0.0.1"), ("ELSEWHERE", "192.0.2.1")),
    )
    yield server
    server.stop()


def test_only_an_allowed_ae_from_its_host_may_associate(guarded: RunningServer) -> None:
    dcmtk.require_dcmtk()
    port = str(guarded.dimse_port)
    allowed = dcmtk.run("echoscu", "-v", "-aet", "MODALITY", "-aec", "DICOMRPC", "127.0.0.1", port)
    assert "Received Echo Response (Success)" in allowed.stdout, allowed.stdout
    for title in ("STRANGER", "ELSEWHERE"):  # unknown; known but from another host
        refused = dcmtk.run("echoscu", "-aet", title, "-aec", "DICOMRPC", "127.0.0.1", port)
        assert refused.returncode != 0
        assert "Calling AE Title Not Recognized" in refused.stdout, refused.stdout


@pytest.mark.slow
def test_sigterm_lets_an_open_association_finish_then_aborts_it(tmp_path: Path) -> None:
    server = spawn_server(tmp_path / "data", "--dimse-port", "0", "--shutdown-grace", "2")
    assert server.process.stdout is not None
    port = int(server.process.stdout.readline().split(" as ")[0].rsplit(":", 1)[1])
    ae = AE(ae_title="LINGER")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMRPC")
    assert assoc.is_established
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000  # still served during the grace period
    assert server.stop(None) == 0
    assert 2 <= time.monotonic() - started < 20
    deadline = time.monotonic() + 5
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert assoc.is_aborted
