"""The LMDB index on its own: map growth, group commit, schema guard."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dicomrpc_server.archive import Archive
from dicomrpc_server.config import Settings
from dicomrpc_server.storage.lmdb_index import LmdbIndex
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
