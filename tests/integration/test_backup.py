"""Backup and restore of an embedded archive: taken while it serves, restored, served again."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from dicomrpc import Client
from dicomrpc_server.lifecycle.backup import MANIFEST, PARTIAL_MARKER, Manifest, backup
from dicomrpc_server.storage.spooled_startup import INDEX_FILE
from tests.conftest import RunningServer, spawn_server, start_server
from tests.dicomgen import ct_instance

pytestmark = [pytest.mark.embedded_index, pytest.mark.slow]

PYDICOM_FILES = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_small_odd.dcm")
Key = tuple[str, str, str]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomrpc.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _corpus(studies: int, per_study: int, tag: str) -> list[bytes]:
    return [
        ct_instance(
            f"1.2.826.0.1.3680043.10.{tag}.{s}",
            f"1.2.826.0.1.3680043.10.{tag}.{s}.1",
            f"1.2.826.0.1.3680043.10.{tag}.{s}.1.{n}",
            number=n,
            patient_id=f"PAT-{tag}-{s}",
            seed=s * 1000 + n,
        )
        for s in range(studies)
        for n in range(1, per_study + 1)
    ]


def _store(client: Client, items: list[bytes] | list[str]) -> set[Key]:
    result = client.store(items)
    assert not result.failed, result.failed
    return {
        (r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid) for r in result.stored
    }


def _digests(client: Client, studies: set[str]) -> dict[Key, str]:
    out: dict[Key, str] = {}
    for study in studies:
        for item in client.iter_instances(study):
            key = (item.study_instance_uid, item.series_instance_uid, item.sop_instance_uid)
            out[key] = hashlib.sha256(item.data).hexdigest()
    return out


def _all_studies(client: Client) -> list[dict[str, object]]:
    rows = client.search_studies({}, include=["all"], limit=1000).as_json()
    return sorted(rows, key=lambda row: json.dumps(row["0020000D"]))


def _instance_rows(client: Client, studies: set[str]) -> dict[str, list[dict[str, object]]]:
    return {
        study: client.search_instances({}, study=study, include=["all"], limit=1000).as_json()
        for study in sorted(studies)
    }


def test_a_backup_taken_while_a_writer_stores_restores_every_acknowledged_instance(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    server = start_server(data)
    try:
        with Client(server.target) as client:
            files = [str(get_testdata_file(name)) for name in PYDICOM_FILES]
            before = _store(client, files)
            corpus = _corpus(studies=12, per_study=25, tag="1")
            for start in range(0, len(corpus), 50):
                before |= _store(client, corpus[start : start + 50])
            assert len(before) == len(PYDICOM_FILES) + 300
            stop = threading.Event()
            during: set[Key] = set()
            errors: list[BaseException] = []

            def write() -> None:
                try:
                    round_ = 0
                    while not stop.is_set():
                        round_ += 1
                        during.update(_store(client, _corpus(1, 10, f"2.{round_}")))
                except BaseException as exc:  # reported by the test below
                    errors.append(exc)

            writer = threading.Thread(target=write)
            writer.start()
            try:
                made = _cli("backup", "--data", str(data), "--to", str(tmp_path / "bk"))
            finally:
                stop.set()
                writer.join(60)
            assert not errors, errors
            assert made.returncode == 0, made.stderr
            assert "restore with: dicomrpc restore" in made.stdout
            assert during, "the writer stored nothing while the backup ran"
            original = _digests(client, {key[0] for key in before | during})
            studies_before = {key[0] for key in before}
            original_rows = [
                row
                for row in _all_studies(client)
                if row["0020000D"]["Value"][0] in studies_before  # type: ignore[index]
            ]
            original_instances = _instance_rows(client, studies_before)
    finally:
        server.stop()
    manifest = Manifest.read(tmp_path / "bk")
    restored_dir = tmp_path / "restored"
    done = _cli("restore", "--from", str(tmp_path / "bk"), "--data", str(restored_dir))
    assert done.returncode == 0, done.stderr
    restored_server = start_server(restored_dir)
    try:
        with Client(restored_server.target) as client:
            rows = _all_studies(client)
            restored = _digests(client, {row["0020000D"]["Value"][0] for row in rows})  # type: ignore[index]
            latest = client.latest_change()
            restored_instances = _instance_rows(client, studies_before)
    finally:
        restored_server.stop()
    # Everything acknowledged before the backup began is there, byte for byte.
    assert before <= set(restored)
    assert all(restored[key] == original[key] for key in restored)
    # Of what was stored meanwhile, some may be in it; nothing else is.
    assert set(restored) <= before | during
    assert manifest.instances == len(restored)
    assert manifest.studies == len(rows)
    assert sum(1 for name in manifest.files if name.startswith("blobs/")) == len(restored)
    assert latest is not None and latest.sequence == manifest.change_sequence
    # The studies complete before the backup are found as the original found them.
    assert [r for r in rows if r["0020000D"]["Value"][0] in studies_before] == original_rows  # type: ignore[index]
    assert restored_instances == original_instances


def test_an_instance_deleted_between_the_snapshot_and_its_copy_is_left_out(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    process = spawn_server(data)
    try:
        with Client(process.target) as client:
            stored = sorted(_store(client, _corpus(studies=2, per_study=10, tag="3")))
            victim = stored[-1]  # the last instance key: its file is copied last

            def delete_once(done: int, total: int) -> None:
                if done == 0:
                    assert client.delete_instance(*victim) == 1

            manifest = backup(data, tmp_path / "bk", progress=delete_once)
    finally:
        assert process.stop() == 0
    assert manifest.deleted_during_backup == ["/".join(victim)]
    assert manifest.instances == len(stored) - 1
    assert (
        _cli("restore", "--from", str(tmp_path / "bk"), "--data", str(tmp_path / "r")).returncode
        == 0
    )
    restored = start_server(tmp_path / "r")
    try:
        with Client(restored.target) as client:
            kept = _digests(client, {key[0] for key in stored})
            series = client.search_series({}, study=victim[0]).as_json()
    finally:
        restored.stop()
    assert set(kept) == set(stored) - {victim}
    assert series[0]["00201209"]["Value"] == [9]  # NumberOfSeriesRelatedInstances


def _backup_killed_midway(data: Path, dest: Path) -> None:
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from dicomrpc_server.lifecycle.backup import backup\n"
        "def stop(done, total):\n"
        "    if done == 40:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "backup(Path(sys.argv[1]), Path(sys.argv[2]), progress=stop)\n"
    )
    killed = subprocess.run([sys.executable, "-c", code, str(data), str(dest)], timeout=300)
    assert killed.returncode == -signal.SIGKILL


def test_a_killed_backup_leaves_nothing_restore_accepts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server: RunningServer = start_server(data)
    try:
        with Client(server.target) as client:
            stored = _store(client, _corpus(studies=4, per_study=25, tag="4"))
    finally:
        server.stop()
    dest = tmp_path / "bk"
    _backup_killed_midway(data, dest)
    partial = tmp_path / "bk.partial"
    assert not dest.exists() and (partial / PARTIAL_MARKER).is_file()
    for source in (dest, partial):
        refused = _cli("restore", "--from", str(source), "--data", str(tmp_path / "r"))
        assert refused.returncode == 1
        assert ("interrupted" if source == partial else "not a backup") in refused.stderr
        assert not (tmp_path / "r").exists() and not (tmp_path / "r.restoring").exists()
    # The next backup replaces what the killed one left, and restores.
    assert _cli("backup", "--data", str(data), "--to", str(dest)).returncode == 0
    assert not partial.exists()
    (tmp_path / "r").mkdir()  # an empty folder is a valid target
    done = _cli("restore", "--from", str(dest), "--data", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    restored = start_server(tmp_path / "r")
    try:
        with Client(restored.target) as client:
            assert set(_digests(client, {key[0] for key in stored})) == stored
    finally:
        restored.stop()


def test_bad_backups_and_targets_are_refused_by_name(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data)
    try:
        with Client(server.target) as client:
            _store(client, _corpus(studies=1, per_study=3, tag="5"))
    finally:
        server.stop()
    dest = tmp_path / "bk"
    assert _cli("backup", "--data", str(data), "--to", str(dest)).returncode == 0
    again = _cli("backup", "--data", str(data), "--to", str(dest))
    assert again.returncode == 1 and f"{dest} exists" in again.stderr
    inside = _cli("backup", "--data", str(data), "--to", str(data / "backup"))
    assert inside.returncode == 1 and "inside the data folder" in inside.stderr
    assert not (data / "backup").exists() and not (data / "backup.partial").exists()
    empty = _cli("backup", "--data", str(tmp_path / "nothing"), "--to", str(tmp_path / "b2"))
    assert empty.returncode == 1 and "holds no archive index" in empty.stderr
    # A restore never writes over a folder that holds anything.
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    full = _cli("restore", "--from", str(dest), "--data", str(tmp_path / "full"))
    assert full.returncode == 1 and "is not an empty folder" in full.stderr
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    # A damaged file is found by its digest, and nothing is restored.
    manifest = json.loads((dest / MANIFEST).read_text())
    blob = next(name for name in manifest["files"] if name.startswith("blobs/"))
    raw = bytearray((dest / blob).read_bytes())
    raw[-1] ^= 0xFF
    (dest / blob).write_bytes(bytes(raw))
    damaged = _cli("restore", "--from", str(dest), "--data", str(tmp_path / "r"))
    assert damaged.returncode == 1 and "SHA-256" in damaged.stderr and blob in damaged.stderr
    assert not (tmp_path / "r").exists()
    # A data folder of a PostgreSQL index is for pg_dump.
    (data / INDEX_FILE).write_text("postgresql://db.example/archive\n")
    shared = _cli("backup", "--data", str(data), "--to", str(tmp_path / "b3"))
    assert shared.returncode == 1 and "pg_dump" in shared.stderr
    assert not (tmp_path / "b3").exists() and not (tmp_path / "b3.partial").exists()
    os.remove(data / INDEX_FILE)
    # The config file of serve names the data folder, and what it says is shared is refused.
    config = tmp_path / "dicomrpc.toml"
    config.write_text(f'data_dir = "{data}"\n')
    by_config = _cli("backup", "--config", str(config), "--to", str(tmp_path / "b4"))
    assert by_config.returncode == 0, by_config.stderr
    assert Manifest.read(tmp_path / "b4").instances == 3
    config.write_text(
        f'data_dir = "{data}"\nindex = "postgresql://u:secret@db.example/a"\n'
        'blobs = "/srv/shared"\n'
    )
    refused = _cli("backup", "--config", str(config), "--to", str(tmp_path / "b5"))
    assert refused.returncode == 1 and "pg_dump" in refused.stderr
    assert "postgresql://u@db.example/a" in refused.stderr and "secret" not in refused.stderr
    config.write_text(f'data_dir = "{data}"\nbackup_to = "/backups"\n')
    unknown = _cli("backup", "--config", str(config), "--to", str(tmp_path / "b5"))
    assert unknown.returncode == 2 and "unknown setting 'backup_to'" in unknown.stderr
