"""Start-up recovery on a real data folder: only provable garbage goes, everything else stays."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from dicomrpc_server.archive import Archive
from dicomrpc_server.config import Settings
from dicomrpc_server.errors import StartupError
from dicomrpc_server.store.ingest import InstanceResult, StoreStream
from tests.dicomgen import ct_instance


def _store(archive: Archive, instances: list[bytes]) -> list[InstanceResult]:
    async def run() -> list[InstanceResult]:
        results = []
        for data in instances:
            ingest = archive.store.begin(StoreStream())
            ingest.write(data)
            result = await ingest.finish()
            assert result.failure is None, result.failure
            results.append(result)
        return results

    return asyncio.run(run())


def _files(data_dir: Path) -> dict[str, str]:
    """Every instance file (stored, uploaded, quarantined), with a digest of its bytes."""
    return {
        path.relative_to(data_dir).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in ("blobs", "uploads", "quarantine")
        for path in sorted((data_dir / folder).rglob("*"))
        if path.is_file()
    }


def _populated(data_dir: Path, count: int = 3) -> tuple[Settings, list[InstanceResult]]:
    settings = Settings(data_dir=data_dir)
    archive = Archive(settings)
    try:
        study = generate_uid()
        return settings, _store(archive, [ct_instance(study=study, number=i) for i in range(count)])
    finally:
        archive.close()


def _blob_id(archive: Archive, result: InstanceResult) -> str:
    record = archive.index.get_instance(result.study_uid, result.series_uid, result.sop_uid)
    assert record is not None
    return record.blob_id


def test_a_store_cut_before_its_commit_is_removed(tmp_path: Path) -> None:
    settings, stored = _populated(tmp_path / "data")
    archive = Archive(settings)
    # Persisted and given its final name, as the index writer does just before a commit; then
    # the process dies before the commit.
    upload = archive.blobs.new_upload()
    upload.write(ct_instance())
    archive.blobs.persist(upload)
    archive.blobs.sync()
    final = archive.blobs.path(upload.blob_id)
    assert final.exists() and upload.path.exists()
    archive.close()

    reopened = Archive(settings)
    try:
        assert reopened.recovery.unfinished_commits == 1
        assert not final.exists() and not upload.path.exists()
        assert reopened.index.counts().instances == len(stored)
        assert set(reopened.blobs.blob_ids()) == reopened.index.blob_ids()
        assert not (settings.data_dir / "quarantine").exists()
    finally:
        reopened.close()


def test_a_store_cut_after_its_commit_is_kept(tmp_path: Path) -> None:
    settings, stored = _populated(tmp_path / "data")
    archive = Archive(settings)
    blob_id = _blob_id(archive, stored[0])
    # The commit happened, the upload name was not removed yet.
    os.link(archive.blobs.path(blob_id), archive.blobs.upload_path(blob_id))
    archive.close()

    reopened = Archive(settings)
    try:
        assert not reopened.blobs.upload_path(blob_id).exists()
        assert reopened.blobs.path(blob_id).exists()
        assert reopened.index.counts().instances == len(stored)
    finally:
        reopened.close()


def test_a_named_upload_is_rolled_forward(tmp_path: Path) -> None:
    settings, stored = _populated(tmp_path / "data")
    archive = Archive(settings)
    blob_id = _blob_id(archive, stored[1])
    data = archive.blobs.path(blob_id).read_bytes()
    os.rename(archive.blobs.path(blob_id), archive.blobs.upload_path(blob_id))
    archive.close()

    reopened = Archive(settings)
    try:
        assert reopened.recovery.rolled_forward == 1
        assert reopened.blobs.path(blob_id).read_bytes() == data
        assert not any(reopened.blobs.uploads_dir.iterdir())
    finally:
        reopened.close()


def test_an_unnamed_partial_upload_is_removed(tmp_path: Path) -> None:
    settings, stored = _populated(tmp_path / "data")
    archive = Archive(settings)
    upload = archive.blobs.new_upload()
    upload.write(ct_instance()[:300])
    upload.close()
    archive.close()

    reopened = Archive(settings)
    try:
        assert reopened.recovery.partial_uploads == 1
        assert not upload.path.exists()
        assert reopened.index.counts().instances == len(stored)
    finally:
        reopened.close()


def _plant(data_dir: Path, data: bytes) -> Path:
    """A file in blobs/ that the index does not name, as a restored backup leaves."""
    shard = data_dir / "blobs" / "feedf00d"
    shard.mkdir(exist_ok=True)
    path = shard / ("feedf00d" + "0" * 23 + "1.dcm")
    path.write_bytes(data)
    return path


def test_a_file_the_index_does_not_name_stops_start_up(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings, _ = _populated(data_dir)
    _plant(data_dir, ct_instance())
    before = _files(data_dir)

    with pytest.raises(StartupError) as caught:
        Archive(settings)
    assert caught.value.reason == "UNINDEXED_FILES"
    message = str(caught.value)
    assert "1 instance files that its index does not name" in message
    assert f"dicomrpc rebuild-index --data {data_dir}" in message
    assert "--quarantine-unindexed" in message
    assert _files(data_dir) == before, "start-up changed files although it refused"


def test_quarantine_unindexed_moves_the_file_with_a_manifest_and_starts(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings, stored = _populated(data_dir)
    sop = generate_uid()
    planted_bytes = ct_instance(sop=sop)
    planted = _plant(data_dir, planted_bytes)
    blob_id = planted.name.removesuffix(".dcm")

    archive = Archive(Settings(data_dir=data_dir, quarantine_unindexed=True))
    try:
        assert archive.recovery.quarantined == 1
        folder = archive.recovery.quarantine
        assert folder is not None and folder.parent == data_dir / "quarantine"
        assert not planted.exists()
        assert (folder / f"{blob_id}.dcm").read_bytes() == planted_bytes
        manifest = json.loads((folder / "manifest.json").read_text())
        [entry] = manifest["files"]
        assert entry["blob_id"] == blob_id
        assert entry["original"] == planted.relative_to(data_dir).as_posix()
        assert entry["size"] == len(planted_bytes)
        assert entry["sop_instance_uid"] == sop
        assert archive.index.counts().instances == len(stored)
    finally:
        archive.close()
    # Served without it from now on: the next start has nothing to say.
    Archive(settings).close()


def test_a_missing_index_stops_start_up_and_changes_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings, _ = _populated(data_dir, count=4)
    shutil.rmtree(data_dir / "index")
    before = _files(data_dir)

    with pytest.raises(StartupError) as caught:
        Archive(settings)
    assert caught.value.reason == "INDEX_MISSING"
    assert "holds 4 instance files but its index" in str(caught.value)
    assert "is missing" in str(caught.value)
    assert f"dicomrpc rebuild-index --data {data_dir}" in str(caught.value)
    assert _files(data_dir) == before
    assert not (data_dir / "index").exists(), "start-up created an index over the files"


def test_an_index_that_never_held_an_instance_stops_start_up(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings, _ = _populated(data_dir, count=2)
    shutil.rmtree(data_dir / "index")
    # An empty index in its place, as a server on an unmounted index folder creates.
    Archive(Settings(data_dir=tmp_path / "empty")).close()
    shutil.copytree(tmp_path / "empty" / "index", data_dir / "index")
    before = _files(data_dir)

    with pytest.raises(StartupError) as caught:
        Archive(settings)
    assert caught.value.reason == "INDEX_MISSING"
    assert "has never held an instance" in str(caught.value)
    assert _files(data_dir) == before


def test_an_unfinished_rebuild_stops_start_up(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings, _ = _populated(data_dir)
    (data_dir / "index.rebuilding").mkdir()
    with pytest.raises(StartupError) as caught:
        Archive(settings)
    assert caught.value.reason == "REBUILD_UNFINISHED"
    assert f"dicomrpc rebuild-index --data {data_dir}" in str(caught.value)


def test_an_indexed_instance_without_its_file_is_reported_and_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings, stored = _populated(tmp_path / "data")
    archive = Archive(settings)
    archive.blobs.path(_blob_id(archive, stored[2])).unlink()
    archive.close()

    caplog.set_level(logging.ERROR, logger="dicomrpc_server.storage.recovery")
    reopened = Archive(settings)
    try:
        assert reopened.recovery.missing == 1
        assert reopened.index.counts().instances == len(stored)
        [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert line.startswith("1 indexed instances have no file")
        assert stored[2].sop_uid in line
    finally:
        reopened.close()


def test_deleted_files_are_removed_and_their_records_cleared(tmp_path: Path) -> None:
    settings, stored = _populated(tmp_path / "data")
    archive = Archive(settings)

    async def delete() -> tuple[list[str], int]:
        # The delete's index commit only: the process dies before removing the files.
        blob_ids = await archive.index.delete(stored[0].study_uid)
        return blob_ids, len(archive.index.pending_removals())

    blob_ids, pending = asyncio.run(delete())
    assert pending == len(stored)
    archive.close()

    reopened = Archive(settings)
    try:
        assert reopened.recovery.removals == len(stored)
        assert not any(reopened.blobs.path(b).exists() for b in blob_ids)
        assert reopened.index.pending_removals() == []
    finally:
        reopened.close()


@pytest.mark.slow
def test_a_delete_clears_its_pending_removals(tmp_path: Path) -> None:
    settings, stored = _populated(tmp_path / "data")
    archive = Archive(settings)
    try:
        assert asyncio.run(archive.delete.delete(stored[0].study_uid)) == len(stored)
    finally:
        archive.close()  # commits the clearing, queued after the delete
    reopened = Archive(settings)
    try:
        assert reopened.recovery.removals == 0
        assert list(reopened.blobs.blob_ids()) == []
    finally:
        reopened.close()
