"""rebuild_index on a real data folder: what it indexes, what it quarantines, what it keeps."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from dicomrpc.cli import main
from dicomrpc_server.archive import Archive
from dicomrpc_server.config import Settings
from dicomrpc_server.errors import StartupError
from dicomrpc_server.rebuild import describe, rebuild_index
from dicomrpc_server.store.ingest import StoreStream
from tests.dicomgen import ct_instance


def _stored(data_dir: Path, instances: list[bytes]) -> dict[str, str]:
    """Store instances; return their blob ids by SOP Instance UID."""
    archive = Archive(Settings(data_dir=data_dir))

    async def run() -> dict[str, str]:
        out = {}
        for data in instances:
            ingest = archive.store.begin(StoreStream())
            ingest.write(data)
            result = await ingest.finish()
            assert result.failure is None, result.failure
            record = archive.index.get_instance(result.study_uid, result.series_uid, result.sop_uid)
            assert record is not None
            out[result.sop_uid] = record.blob_id
        return out

    try:
        return asyncio.run(run())
    finally:
        archive.close()


@pytest.mark.slow
def test_files_that_cannot_be_indexed_go_to_quarantine_and_the_rest_is_indexed(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    study = generate_uid()
    blobs = _stored(data_dir, [ct_instance(study=study, number=i) for i in range(4)])
    shutil.rmtree(data_dir / "index")
    shard = next((data_dir / "blobs").iterdir())
    # Copied in by hand: one under a name that is no blob id, in a folder of its own ...
    copied_sop = generate_uid()
    (data_dir / "blobs" / "restored").mkdir()
    (data_dir / "blobs" / "restored" / "scan 1.dcm").write_bytes(ct_instance(sop=copied_sop))
    # ... a second copy of a stored instance, and a file that is no DICOM at all.
    duplicate_of = next(iter(blobs))
    duplicate = shard / f"{shard.name}{'d' * 24}.dcm"
    shutil.copyfile(shard / f"{blobs[duplicate_of]}.dcm", duplicate)
    garbage = shard / f"{shard.name}{'e' * 24}.dcm"
    garbage.write_bytes(b"not a DICOM file" * 20)

    summary = rebuild_index(data_dir, workers=1, progress=False)

    assert (summary.instances, summary.studies, summary.files) == (5, 2, 7)
    assert summary.quarantined == 2 and summary.quarantine is not None
    manifest = json.loads((summary.quarantine / "manifest.json").read_text())
    reasons = {entry["blob_id"]: entry["reason"] for entry in manifest["files"]}
    assert set(reasons) == {duplicate.stem, garbage.stem}
    assert reasons[duplicate.stem] == (
        f"holds SOP instance {duplicate_of}, which is indexed from blob {blobs[duplicate_of]}"
    )
    assert reasons[garbage.stem].startswith("cannot be indexed: ")
    assert not duplicate.exists() and not garbage.exists()
    lines = describe(data_dir, summary)
    assert lines[0] == (
        f"rebuilt the index of {data_dir}: 5 instances in 2 studies and 5 series, from 7 files"
    )
    assert f"2 files could not be indexed and were moved to {summary.quarantine}" in lines[1]

    archive = Archive(Settings(data_dir=data_dir))
    try:
        where = archive.index.locate_sop(copied_sop)
        assert where is not None
        record = archive.index.get_instance(*where, copied_sop)
        assert record is not None
        assert archive.blobs.path(record.blob_id).exists()  # moved to where the store reads
        assert archive.recovery.quarantined == 0  # nothing left that the index does not name
        assert set(archive.blobs.blob_ids()) == archive.index.blob_ids()
    finally:
        archive.close()


@pytest.mark.slow
def test_a_rebuild_finishes_the_pending_removals_of_the_index_it_replaces(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    kept, gone = generate_uid(), generate_uid()
    _stored(data_dir, [ct_instance(study=kept), ct_instance(study=gone)])
    archive = Archive(Settings(data_dir=data_dir))
    # The delete's commit, and then the process dies before the file is removed.
    asyncio.run(archive.index.delete(gone))
    archive.close()
    # The index also lost a file (restored from an older backup, say): it is not up to date.
    (data_dir / "blobs" / "extra").mkdir()
    (data_dir / "blobs" / "extra" / "x.dcm").write_bytes(ct_instance(study=kept))

    summary = rebuild_index(data_dir, workers=1, progress=False)

    assert summary.instances == 2 and summary.studies == 1  # the deleted study stays deleted
    assert summary.replaced is not None and summary.replaced.name.startswith("index.replaced-")
    assert summary.replaced.is_dir()
    again = rebuild_index(data_dir, workers=1, progress=False)
    assert again.up_to_date


def test_a_rebuild_refuses_a_folder_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="does not exist"):
        rebuild_index(tmp_path / "nowhere", workers=1, progress=False)


def test_the_command_rebuilds_the_data_folder_its_config_file_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "configured"
    _stored(data_dir, [ct_instance(), ct_instance()])
    shutil.rmtree(data_dir / "index")
    config = tmp_path / "dicomrpc.toml"
    config.write_text(f'data_dir = "{data_dir}"\nlmdb_map_size = 1073741824\n')
    monkeypatch.chdir(tmp_path)  # where ./data, the default, is not
    monkeypatch.delenv("DICOMRPC_DATA", raising=False)

    assert main(["rebuild-index", "--config", str(config), "--quiet", "--workers", "1"]) == 0

    assert str(data_dir) in capsys.readouterr().out
    assert not (tmp_path / "data").exists()
    archive = Archive(Settings(data_dir=data_dir))
    try:
        assert archive.index.counts().instances == 2
    finally:
        archive.close()
    # The variable names the file as --config does; a key it does not know is refused.
    config.write_text(f'data_dir = "{data_dir}"\nlmdb_map_sizes = 1073741824\n')
    monkeypatch.setenv("DICOMRPC_CONFIG", str(config))
    assert main(["rebuild-index", "--quiet"]) == 2
    assert "lmdb_map_sizes" in capsys.readouterr().err
