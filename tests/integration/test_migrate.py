"""``dicomrpc migrate`` on real parts: an embedded archive moves to PostgreSQL and a shared
folder or S3, and a server on the new storage answers as the embedded one did; killed midway,
it resumes; run again, it has nothing to copy; it refuses a database holding another archive.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from dicomrpc import Client
from dicomrpc_server.errors import StartupError
from tests.conftest import RunningServer, S3Emulator, start_server
from tests.integration.test_rebuild_index import _answers, _corpus, _tiny_study
from tests.integration.test_startup_checks import dicomrpc
from tests.upsgen import workitem

pytestmark = pytest.mark.slow


def _folder_state(data_dir: Path) -> dict[str, str]:
    """Every file of a data folder and its digest, but the lock (which migrate takes)."""
    return {
        p.relative_to(data_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(data_dir.rglob("*"))
        if p.is_file() and p.name != "dicomrpc.lock"
    }


def _populated(data_dir: Path, instances: list[bytes], *, extras: bool) -> dict[str, Any]:
    """Store ``instances`` in a new embedded archive (and a workitem, a tag, a peer); answers."""
    server = start_server(data_dir)
    try:
        with Client(server.target) as client:
            result = client.store(instances)
            assert all(r.stored for r in result.instances), result.instances
            if extras:
                uid = client.workitems.create(workitem()).workitem_uid
                _, operation = client.add_query_tags(["Rows"], level="instance")
                client.wait_for_reindex(operation, timeout_s=60)
                client.add_dimse_peer("viewer", "VIEWER", "127.0.0.1", 11112)
        answers = _answers(server.target)
        if extras:
            answers["workitem"] = uid
            answers["Rows=16"] = _rows_16(server.target)
        return answers
    finally:
        server.stop()


def _rows_16(target: str) -> list[str]:
    """The SOP instances a search on the extended query tag Rows finds."""
    with Client(target) as client:
        found = client.search_instances({"Rows": "16"}, limit=1000).datasets
    return sorted(d.attributes["00080018"].strings.values[0] for d in found)


def _migrate(data_dir: Path, dsn: str, blobs: str, *more: str) -> subprocess.CompletedProcess[str]:
    return dicomrpc(
        "migrate",
        "--data",
        str(data_dir),
        "--to-index",
        dsn,
        "--to-blobs",
        blobs,
        "--quiet",
        *more,
        timeout=600,
    )


def _served(node: Path, dsn: str, blobs: str, **more: object) -> RunningServer:
    return start_server(node, index=dsn, blobs=blobs, **more)


def test_an_embedded_archive_moves_to_postgresql_and_a_shared_folder(
    tmp_path: Path, postgres_dsn: str
) -> None:
    data_dir, shared = tmp_path / "data", tmp_path / "shared"
    shared.mkdir()
    before = _populated(data_dir, _corpus(), extras=True)
    uid, rows_16 = before.pop("workitem"), before.pop("Rows=16")
    assert len(rows_16) >= 18  # the generated CT images (16 x 16) at least
    state = _folder_state(data_dir)
    instances = len(before["instances"])

    migrated = _migrate(data_dir, postgres_dsn, str(shared))
    assert migrated.returncode == 0, migrated.stderr
    out = migrated.stdout
    assert f"({instances} copied by this run" in out, out
    assert "carried over: 1 workitems with 1 events, 1 extended query tags, 1 DIMSE peers" in out
    assert "verified: studies, series, instances, bytes" in out
    assert "the change feed starts again from 1" in out
    assert f"dicomrpc serve --data NEW_DATA_FOLDER --index {postgres_dsn} --blobs {shared}" in out
    assert _folder_state(data_dir) == state, "migrate changed the embedded archive's folder"

    server = _served(tmp_path / "node", postgres_dsn, str(shared))
    try:
        assert _answers(server.target) == before
        with Client(server.target) as client:
            assert client.workitems.get(uid).state == "SCHEDULED"
            [tag] = client.query_tags()
            assert tag.ready
            assert [p.ae_title for p in client.dimse_peers()] == ["VIEWER"]
            feed = client.read_changes(0, 1000)
        assert [c.sequence for c in feed] == list(range(1, instances + 1))
        assert _rows_16(server.target) == rows_16
    finally:
        server.stop()

    again = _migrate(data_dir, postgres_dsn, str(shared))
    assert again.returncode == 0, again.stderr
    assert "(0 copied by this run in" in again.stdout
    assert f"{instances} there already)" in again.stdout
    assert "verified:" in again.stdout


def test_an_embedded_archive_moves_to_s3(tmp_path: Path, postgres_dsn: str, s3: S3Emulator) -> None:
    data_dir = tmp_path / "data"
    before = _populated(data_dir, _tiny_study(6) + _tiny_study(4), extras=False)
    bucket = s3.new_bucket()
    blobs = f"s3://{bucket}/archive"

    migrated = _migrate(data_dir, postgres_dsn, blobs, "--s3-endpoint", s3.endpoint)
    assert migrated.returncode == 0, migrated.stderr
    assert "10 instances in 2 studies and 2 series" in migrated.stdout
    assert f"--blobs {blobs} --s3-endpoint {s3.endpoint}" in migrated.stdout
    assert len(s3.keys(bucket)) == 10

    server = _served(tmp_path / "node", postgres_dsn, blobs, s3_endpoint=s3.endpoint)
    try:
        assert _answers(server.target) == before
    finally:
        server.stop()


async def _indexed(dsn: str) -> int:
    """How many instances a migration has indexed so far (0 before it made the tables)."""
    connection = await asyncpg.connect(dsn)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM instances"))
    except asyncpg.UndefinedTableError:
        return 0
    finally:
        await connection.close()


KILLED_SIZE = 400


def test_a_killed_migrate_resumes_and_ends_complete(tmp_path: Path, postgres_dsn: str) -> None:
    data_dir, shared = tmp_path / "data", tmp_path / "shared"
    shared.mkdir()
    before = _populated(data_dir, _tiny_study(KILLED_SIZE), extras=False)
    state = _folder_state(data_dir)

    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dicomrpc.cli",
            "migrate",
            "--data",
            str(data_dir),
            "--to-index",
            postgres_dsn,
            "--to-blobs",
            str(shared),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if asyncio.run(_indexed(postgres_dsn)) > 10:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(60)
    committed = asyncio.run(_indexed(postgres_dsn))
    assert 0 < committed < KILLED_SIZE, f"the kill did not land midway ({committed})"

    resumed = _migrate(data_dir, postgres_dsn, str(shared))
    assert resumed.returncode == 0, resumed.stderr
    assert f"{KILLED_SIZE} instances in 1 studies and 1 series" in resumed.stdout
    assert f"({KILLED_SIZE - committed} copied by this run" in resumed.stdout
    assert f"{committed} there already)" in resumed.stdout
    assert "verified:" in resumed.stdout
    assert _folder_state(data_dir) == state
    files = list((shared / "blobs").rglob("*.dcm"))
    assert len(files) == KILLED_SIZE
    assert not list((shared / "incoming").iterdir()), "a killed copy was left behind"

    server = _served(tmp_path / "node", postgres_dsn, str(shared))
    try:
        assert _answers(server.target) == before
    finally:
        server.stop()


def test_a_database_holding_another_archive_is_refused(tmp_path: Path, postgres_dsn: str) -> None:
    first, second, shared = tmp_path / "first", tmp_path / "second", tmp_path / "shared"
    shared.mkdir()
    _populated(first, _tiny_study(3), extras=False)
    _populated(second, _tiny_study(2), extras=False)
    with pytest.raises(StartupError) as caught:  # served as it is, it would lose its archive
        start_server(first, index=postgres_dsn, blobs=str(shared))
    assert caught.value.reason == "INDEX_CHANGED"
    assert f"dicomrpc migrate --data {first} --to-index" in caught.value.message
    assert _migrate(first, postgres_dsn, str(shared)).returncode == 0

    refused = _migrate(second, postgres_dsn, str(shared))
    assert refused.returncode == 1
    assert "holds data that is not this archive's" in refused.stderr
    assert "migrate into a new, empty database. Nothing was copied" in refused.stderr
    assert asyncio.run(_indexed(postgres_dsn)) == 3

    (second / "index" / "data.mdb").unlink()  # a lost index
    missing = _migrate(second, postgres_dsn, str(shared))
    assert missing.returncode == 1
    assert f"dicomrpc rebuild-index --data {second}" in missing.stderr
