"""What is particular to the S3 blob store: its location, and uploads that fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomrpc_server.config import Settings
from dicomrpc_server.errors import Code, ServiceError, StartupError
from dicomrpc_server.rebuild import rebuild_index
from dicomrpc_server.storage.s3 import S3BlobStore, S3Location
from dicomrpc_server.storage.sources import open_source
from tests.conftest import S3Emulator
from tests.test_blob_contract import read_all


@pytest.mark.parametrize(
    ("url", "bucket", "prefix", "key"),
    [
        ("s3://bucket", "bucket", "", "ab.dcm"),
        ("s3://bucket/", "bucket", "", "ab.dcm"),
        ("s3://bucket/a/b/", "bucket", "a/b", "a/b/ab.dcm"),
    ],
)
def test_a_location_is_a_bucket_and_a_prefix(url: str, bucket: str, prefix: str, key: str) -> None:
    location = S3Location.parse(url, "http://127.0.0.1:9")
    assert (location.bucket, location.prefix, location.endpoint) == (
        bucket,
        prefix,
        "http://127.0.0.1:9",
    )
    assert location.key("ab") == key
    assert S3Location.parse(location.url) == S3Location(bucket, prefix)


@pytest.mark.parametrize("url", ["s3://", "http://bucket/x", "s3://bucket/x?versionId=1", "bucket"])
def test_a_location_that_is_not_one_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="s3://bucket"):
        S3Location.parse(url)


def test_settings_take_s3_urls_and_absolute_folders_for_blobs() -> None:
    assert Settings(blobs="s3://b/p").blobs == "s3://b/p"
    assert Settings(blobs="/mnt/shared").blobs == "/mnt/shared"
    with pytest.raises(ValueError, match="absolute path of a shared folder"):
        Settings(blobs="mnt/shared")


def test_an_unreachable_bucket_fails_start_up_and_an_upload_fails_as_storage(
    tmp_path: Path, s3: S3Emulator
) -> None:
    store = S3BlobStore(S3Location("no-such-bucket", "p", s3.endpoint), tmp_path)
    with pytest.raises(StartupError, match="no-such-bucket"):
        store.check()
    upload = store.new_upload()
    upload.write(b"x" * 1000)
    with pytest.raises(OSError, match="s3://no-such-bucket/p/"):
        store.persist(upload)
    store.discard(upload)
    # The spool file goes; the marker stays, for start-up to remove an object that may exist.
    assert [p.name for p in store.uploads_dir.iterdir()] == [f"{upload.blob_id}.pending"]


def test_a_store_that_cannot_be_read_is_unavailable_not_missing(
    tmp_path: Path, s3: S3Emulator
) -> None:
    store = S3BlobStore(S3Location("no-such-bucket", "p", s3.endpoint), tmp_path)
    blob_id = "0123456789abcdef0123456789abcdef"
    with pytest.raises(ServiceError) as caught:
        store.open(blob_id).pread(10, 0)
    assert caught.value.code is Code.UNAVAILABLE
    assert caught.value.reason == "SERVER_UNAVAILABLE"
    assert "no-such-bucket" in caught.value.message
    with pytest.raises(ServiceError, match="no-such-bucket"):
        read_all(store.open(blob_id), 0, 10, 10)
    # A HEAD answer has no body to tell a missing bucket from a missing object (start-up checks
    # the bucket).
    with pytest.raises(FileNotFoundError):
        open_source(store.ref(blob_id))


def test_rebuild_index_refuses_a_data_folder_whose_files_are_objects(tmp_path: Path) -> None:
    (tmp_path / "blob-store").write_text("s3://bucket/prefix\n")
    with pytest.raises(StartupError, match="kept in s3://bucket/prefix") as caught:
        rebuild_index(tmp_path, workers=1, progress=False)
    assert caught.value.reason == "REBUILD_UNSUPPORTED"
