"""The blob store role: one contract, run against the folder, shared folder and S3 stores.

The folder store is the reference; the S3 store runs against moto's S3 emulator (``s3``
fixture). Every test goes through the protocol only.
"""

from __future__ import annotations

import asyncio
import io
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomrpc_server.storage.blobs import LocalBlobStore
from dicomrpc_server.storage.protocols import BlobReader, BlobStore
from dicomrpc_server.storage.s3 import S3BlobStore, S3Location
from dicomrpc_server.storage.shared_folder import SharedFolderBlobStore
from dicomrpc_server.storage.sources import open_source, read_source
from dicomrpc_server.workers import WorkerPool
from tests.conftest import S3Emulator

MISSING = "0123456789abcdef0123456789abcdef"
MIB = 1024 * 1024


@pytest.fixture(params=["folder", "shared", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "folder":
        yield LocalBlobStore(tmp_path)
        return
    if request.param == "shared":
        (tmp_path / "shared").mkdir()
        shared = SharedFolderBlobStore(tmp_path / "shared", tmp_path / "data")
        shared.check()
        yield shared
        return
    s3: S3Emulator = request.getfixturevalue("s3")
    location = S3Location(s3.new_bucket(), "archive/blobs", s3.endpoint)
    # Small parts, so that a 12 MiB upload is a multipart one (S3 parts are 5 MiB or more).
    yield S3BlobStore(location, tmp_path, multipart_bytes=5 * MIB, part_bytes=5 * MIB)


def expected(data: bytes) -> bytes:
    """What a store keeps of ``data``: the preamble zeroed."""
    return bytes(min(128, len(data))) + data[128:]


def put(store: BlobStore, data: bytes, step: int = 4096) -> str:
    upload = store.new_upload()
    for start in range(0, len(data), step):
        upload.write(data[start : start + step])
    blob_id = store.persist(upload)
    store.sync()
    store.committed(upload)
    return blob_id


def read_all(reader: BlobReader, offset: int, length: int, chunk: int) -> list[bytes]:
    async def collect() -> list[bytes]:
        return [part async for part in reader.chunks(offset, length, chunk)]

    return asyncio.run(collect())


def test_a_committed_blob_reads_back_whole_with_its_preamble_zeroed(store: BlobStore) -> None:
    data = os.urandom(300_000)
    blob_id = put(store, data)
    reader = store.open(blob_id)
    try:
        assert reader.size == len(data)
        assert reader.pread(len(data), 0) == expected(data)
        assert b"".join(read_all(reader, 0, len(data), 64 * 1024)) == expected(data)
    finally:
        reader.close()
        reader.close()  # idempotent
    assert blob_id in set(store.blob_ids())


def test_ranged_reads_at_the_edges(store: BlobStore) -> None:
    data = os.urandom(10_000)
    stored = expected(data)
    reader = store.open(put(store, data))
    try:
        size = len(data)
        assert reader.pread(0, 0) == b""
        assert reader.pread(1, 0) == stored[:1]
        assert reader.pread(1, size - 1) == stored[-1:]
        assert reader.pread(100, size - 5) == stored[-5:]  # short at the end
        assert reader.pread(10, size) == b""  # at the end
        assert reader.pread(10, size + 100) == b""  # past it
        assert reader.pread(3000, 128) == stored[128:3128]
        chunks = read_all(reader, 100, 5000, 1024)
        assert b"".join(chunks) == stored[100:5100]
        assert max(map(len, chunks)) <= 1024
        # A range running past the end stops at the end, short: the caller tells.
        assert b"".join(read_all(reader, size - 10, 100, 1024)) == stored[-10:]
        assert read_all(reader, size, 10, 1024) == []
        assert read_all(reader, 5, 0, 1024) == []
    finally:
        reader.close()


def test_a_missing_blob_is_file_not_found(store: BlobStore) -> None:
    with pytest.raises(FileNotFoundError):
        reader = store.open(MISSING)
        try:  # a store may look at the first read
            reader.pread(10, 0)
        finally:
            reader.close()
    with pytest.raises(FileNotFoundError):
        reader = store.open(MISSING)
        read_all(reader, 0, 10, 10)
    with pytest.raises(FileNotFoundError):
        open_source(store.ref(MISSING))


def test_remove_is_durable_and_idempotent(store: BlobStore) -> None:
    kept = put(store, b"k" * 1000)
    gone = [put(store, bytes([i]) * 2000) for i in range(3)]
    store.remove(gone)
    store.remove(gone)  # again: nothing to do
    store.remove([MISSING])  # never there
    store.remove([])
    assert set(store.blob_ids()) == {kept}
    for blob_id in gone:
        with pytest.raises(FileNotFoundError):
            store.open(blob_id).pread(1, 0)


def test_a_discarded_upload_leaves_nothing(store: BlobStore, tmp_path: Path) -> None:
    upload = store.new_upload()
    upload.write(os.urandom(5000))
    blob_id = store.persist(upload)
    store.sync()
    store.discard(upload)  # its index commit failed
    assert blob_id not in set(store.blob_ids())
    with pytest.raises(FileNotFoundError):
        store.open(blob_id).pread(1, 0)
    abandoned = store.new_upload()  # a stream that failed half-way
    abandoned.write(b"x" * 100)
    abandoned.discard()
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == []


@pytest.mark.slow
def test_listing_names_every_committed_blob(store: BlobStore) -> None:
    assert list(store.blob_ids()) == []
    ids = {put(store, os.urandom(200 + i)) for i in range(25)}
    assert set(store.blob_ids()) == ids


def test_a_large_blob_is_uploaded_in_parts_and_read_in_ranges(store: BlobStore) -> None:
    data = os.urandom(12 * MIB + 3)
    blob_id = put(store, data, step=MIB)
    reader = store.open(blob_id)
    try:
        assert reader.size == len(data)
        assert reader.pread(10, 6 * MIB - 5) == data[6 * MIB - 5 : 6 * MIB + 5]
        total = sum(len(c) for c in read_all(reader, 0, len(data), MIB))
        assert total == len(data)
    finally:
        reader.close()


def test_a_reference_is_picklable_and_opens_as_a_seekable_file(store: BlobStore) -> None:
    data = os.urandom(700_000)
    ref = pickle.loads(pickle.dumps(store.ref(put(store, data))))
    with open_source(ref) as fp:
        fp.seek(500_000)
        assert fp.read(10) == data[500_000:500_010]
        assert fp.seek(0, io.SEEK_END) == len(data)
        fp.seek(-3, io.SEEK_END)
        assert fp.read() == data[-3:]
        fp.seek(0)
        assert fp.read(200) == expected(data)[:200]
        # A read that starts in what was read ahead and runs past it is not cut short.
        assert fp.read(400_000) == data[200:400_200]
        fp.seek(len(data) - 100)
        assert fp.read(1000) == data[-100:]
        assert fp.read(10) == b""


@pytest.mark.slow
def test_a_worker_process_reads_a_blob_by_reference(store: BlobStore) -> None:
    data = os.urandom(100_000)
    ref = store.ref(put(store, data))
    pool = WorkerPool(1, name="codec", modules=())
    try:
        got = asyncio.run(pool.run(read_source, ref, what="reading a blob"))
    finally:
        pool.shutdown()
    assert got == expected(data)
