"""The LMDB index on its own: map growth, group commit, schema guard, the change log's records."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from pydicom import dcmread

from dicomrpc.v1 import management_service_pb2 as pb
from dicomrpc_server.archive import Archive
from dicomrpc_server.config import Settings
from dicomrpc_server.storage import keys
from dicomrpc_server.storage.lmdb_index import LmdbIndex
from dicomrpc_server.storage.protocols import ChangeAction, ChangeState
from dicomrpc_server.store.ingest import StoreStream
from tests.dicomgen import ct_instance


def _store_all(archive: Archive, instances: list[bytes]) -> list[int]:
    async def run() -> list[int]:
        async def one(data: bytes) -> int:
            ingest = archive.store.begin(StoreStream())
            ingest.write(data)
            result = await ingest.finish()
            assert result.failure is None, result.failure
            return result.version

        return list(await asyncio.gather(*(one(d) for d in instances)))

    return asyncio.run(run())


@pytest.mark.slow
def test_map_grows_when_full_and_nothing_is_lost(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", lmdb_map_size=256 * 1024)
    archive = Archive(settings)
    try:
        start = archive.index.env.info()["map_size"]
        versions = _store_all(archive, [ct_instance(rows=8, columns=8) for _ in range(300)])
        assert archive.index.env.info()["map_size"] > start
        assert sorted(versions) == list(range(1, 301))
        assert archive.index.counts().instances == 300
        # Many concurrent stores, fewer commits: the writer groups them.
        assert archive.index.writer.commits < 300
    finally:
        archive.close()
    reopened = Archive(settings)
    try:
        assert reopened.index.counts().instances == 300
    finally:
        reopened.close()


def test_schema_version_is_checked(tmp_path: Path) -> None:
    index = LmdbIndex(
        tmp_path / "index", map_size=1 << 20, max_readers=8, max_batch=8, before_commit=lambda: None
    )
    with index.env.begin(write=True) as txn:
        txn.put(b"schema", (99).to_bytes(4, "big"), db=index._db["meta"])
    index.close()
    with pytest.raises(RuntimeError, match="schema 99"):
        LmdbIndex(
            tmp_path / "index",
            map_size=1 << 20,
            max_readers=8,
            max_batch=8,
            before_commit=lambda: None,
        )


def test_a_change_log_written_as_api_entries_reads_the_same(tmp_path: Path) -> None:
    # Earlier versions stored the API's ChangeFeedEntry in the log; the index's own record has
    # its field numbers and types, so such a log reads as it was written.
    archive = Archive(Settings(data_dir=tmp_path / "data"))
    try:
        first, second = ct_instance(seed=1), ct_instance(seed=2)
        _store_all(archive, [first])  # one after the other: the log's order is known
        _store_all(archive, [second])
        gone = dcmread(io.BytesIO(second))
        uids = (gone.StudyInstanceUID, gone.SeriesInstanceUID, gone.SOPInstanceUID)
        assert asyncio.run(archive.delete.delete(*uids)) == 1
        index = archive.index
        changes = index.changes(0, 100)
        assert [(c.action, c.state) for c in changes] == [
            (ChangeAction.CREATED, ChangeState.CURRENT),
            (ChangeAction.CREATED, ChangeState.DELETED),
            (ChangeAction.DELETED, ChangeState.DELETED),
        ]
        assert (changes[2].study_uid, changes[2].series_uid, changes[2].sop_uid) == uids
        assert all(c.time_us > 0 for c in changes)
        with index.env.begin(write=True) as txn:
            for change in changes:
                entry = pb.ChangeFeedEntry(
                    sequence=change.sequence,
                    action=pb.CHANGE_ACTION_CREATED
                    if change.action is ChangeAction.CREATED
                    else pb.CHANGE_ACTION_DELETED,
                    study_instance_uid=change.study_uid,
                    series_instance_uid=change.series_uid,
                    sop_instance_uid=change.sop_uid,
                    version=change.version,
                )
                entry.commit_time.FromMicroseconds(change.time_us)
                key = keys.sequence_key(change.sequence)
                txn.put(key, entry.SerializeToString(), db=index._db["changes"])
        assert index.changes(0, 100) == changes
        assert index.latest_change() == changes[-1]
    finally:
        archive.close()
