"""What ``dicomrpc serve`` refuses at start-up, on real processes: a data folder in use, a port in
use."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from dicomrpc import Client
from dicomrpc_server.storage.folder_lock import DataFolderLock
from tests.conftest import spawn_server
from tests.dicomgen import ct_instance


def dicomrpc(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the command line to its end (a server that starts would time the test out)."""
    return subprocess.run(
        [sys.executable, "-m", "dicomrpc.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


def serve(data_dir: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """``dicomrpc serve`` expected to refuse (it would otherwise run until the timeout)."""
    defaults = {"--grpc-port": "0", "--http-port": "0"}
    for flag in flags:
        defaults.pop(flag, None)
    args = [arg for pair in defaults.items() for arg in pair]
    return dicomrpc("serve", "--data", str(data_dir), *args, *flags, timeout=60)


def _port(target: str) -> int:
    return int(target.rsplit(":", 1)[1])


def test_a_second_server_on_the_data_folder_fails_naming_the_first(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = spawn_server(data_dir)
    try:
        second = serve(data_dir)
        assert second.returncode == 1
        assert (
            f"dicomrpc: data folder {data_dir} is in use by dicomrpc serve "
            f"pid {first.process.pid} on host" in second.stderr
        )
        assert "stop it or choose another --data" in second.stderr
        with Client(first.target) as client:  # the first one serves on, undisturbed
            assert len(client.store(ct_instance()).stored) == 1
    finally:
        assert first.stop() == 0


def test_a_second_server_on_a_used_port_fails_naming_the_port(tmp_path: Path) -> None:
    first = spawn_server(tmp_path / "one")
    try:
        grpc_port = _port(first.target)
        second = serve(tmp_path / "two", "--grpc-port", str(grpc_port))
        assert second.returncode == 1
        assert (
            f"dicomrpc: cannot serve gRPC on 127.0.0.1:{grpc_port}: the port is in use by "
            "another process; stop it or choose another --grpc-port" in second.stderr
        )
        match = re.search(r":(\d+)/dicomweb", first.dicomweb_url)
        assert match
        http_port = int(match.group(1))
        third = serve(tmp_path / "three", "--http-port", str(http_port))
        assert third.returncode == 1
        assert (
            f"dicomrpc: cannot serve DICOMweb on 127.0.0.1:{http_port}: the port is in use by "
            "another process; stop it or choose another --http-port" in third.stderr
        )
        # Each refused before serving, and let go of its data folder.
        DataFolderLock(tmp_path / "two", "a test").release()
        with Client(first.target) as client:
            assert len(client.store(ct_instance()).stored) == 1
    finally:
        assert first.stop() == 0
