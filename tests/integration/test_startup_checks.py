"""What ``dicomrpc serve`` refuses at start-up, on real processes: a data folder in use, a port in
use, instance files the index does not name."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from dicomrpc import Client
from dicomrpc_server.storage.folder_lock import DataFolderLock
from tests.conftest import spawn_server
from tests.dicomgen import ct_instance

pytestmark = pytest.mark.slow


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
    defaults = {"--grpc-port": "0", "--http-port": "0", "--dimse-port": "-1"}
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
        rebuild = dicomrpc("rebuild-index", "--data", str(data_dir))
        assert rebuild.returncode == 1
        assert f"in use by dicomrpc serve pid {first.process.pid}" in rebuild.stderr
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


def test_a_file_the_index_does_not_name_is_kept_until_quarantined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    study = generate_uid()
    sent = [ct_instance(study=study, number=i) for i in range(3)]
    first = spawn_server(data_dir)
    try:
        with Client(first.target) as client:
            assert len(client.store(sent).stored) == 3
    finally:
        assert first.stop() == 0
    # A file copied in (or left by an index restored from an older backup).
    sop = generate_uid()
    planted = ct_instance(sop=sop)
    shard = next((data_dir / "blobs").iterdir())
    blob_id = shard.name + "ab" * 12
    (shard / f"{blob_id}.dcm").write_bytes(planted)
    digests = {
        p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (data_dir / "blobs").rglob("*.dcm")
    }

    refused = serve(data_dir)
    assert refused.returncode == 1
    assert (
        f"data folder {data_dir} holds 1 instance files that its index does not name"
        in refused.stderr
    )
    assert f"dicomrpc rebuild-index --data {data_dir}" in refused.stderr
    assert f"dicomrpc serve --data {data_dir} --quarantine-unindexed" in refused.stderr
    assert {
        p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (data_dir / "blobs").rglob("*.dcm")
    } == digests, "a refused start changed the instance files"

    monkeypatch.setenv("DICOMRPC_QUARANTINE_UNINDEXED", "1")  # --quarantine-unindexed
    server = spawn_server(data_dir)
    try:
        [folder] = (data_dir / "quarantine").iterdir()
        assert (folder / f"{blob_id}.dcm").read_bytes() == planted
        manifest = json.loads((folder / "manifest.json").read_text())
        assert [(f["blob_id"], f["sop_instance_uid"]) for f in manifest["files"]] == [
            (blob_id, sop)
        ]
        assert not (shard / f"{blob_id}.dcm").exists()
        with Client(server.target) as client:
            kept = client.retrieve_study(study)
            assert sorted(i.data[128:] for i in kept) == sorted(d[128:] for d in sent)
    finally:
        assert server.stop() == 0


def test_the_quarantine_flag_and_variable_reach_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dicomrpc.cli import _parser
    from dicomrpc_server.main import settings_from_args

    parse = _parser().parse_args
    assert settings_from_args(parse(["serve", "--quarantine-unindexed"])).quarantine_unindexed
    assert not settings_from_args(parse(["serve"])).quarantine_unindexed
    monkeypatch.setenv("DICOMRPC_QUARANTINE_UNINDEXED", "yes")
    assert settings_from_args(parse(["serve"])).quarantine_unindexed
    monkeypatch.setenv("DICOMRPC_QUARANTINE_UNINDEXED", "maybe")
    with pytest.raises(ValueError, match="'maybe' is not a yes/no value"):
        settings_from_args(parse(["serve"]))
