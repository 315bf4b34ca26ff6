"""Codec jobs on an S3 blob read what they need, not the instance: ranged reads, counted."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicomrpc_server.retrieve.bulkdata import ByteRange, locate_bulk_data
from dicomrpc_server.retrieve.render import RenderOptions, render
from dicomrpc_server.retrieve.transcode import transcode_frames
from dicomrpc_server.storage import s3 as s3_module
from dicomrpc_server.storage.s3 import S3BlobStore, S3Location
from dicomrpc_server.storage.sources import Source
from tests.conftest import S3Emulator

FRAMES, SIZE = 200, 256
EXPLICIT = "1.2.840.10008.1.2.1"


def multiframe() -> bytes:
    """A native 200-frame instance of 256 x 256 16-bit pixels (26 MB), frame n filled with n."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows = ds.Columns = SIZE
    ds.NumberOfFrames = FRAMES
    pixels = np.repeat(np.arange(FRAMES, dtype=np.uint16), SIZE * SIZE)
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory, s3: S3Emulator) -> tuple[Source, Path, int]:
    """The instance as an S3 blob reference, and as a local file for reference answers."""
    data = multiframe()
    tmp = tmp_path_factory.mktemp("s3reads")
    store = S3BlobStore(S3Location(s3.new_bucket(), "p", s3.endpoint), tmp)
    upload = store.new_upload()
    upload.write(data)
    blob_id = store.persist(upload)
    store.committed(upload)
    local = tmp / "local.dcm"
    local.write_bytes(bytes(128) + data[128:])
    return store.ref(blob_id), local, len(data)


@pytest.fixture
def fetched(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The size of every ranged read made from S3 during a test."""
    sizes: list[int] = []
    original = s3_module.S3Reader.pread

    def counted(self: s3_module.S3Reader, size: int, offset: int) -> bytes:
        data = original(self, size, offset)
        sizes.append(len(data))
        return data

    monkeypatch.setattr(s3_module.S3Reader, "pread", counted)
    yield sizes


@pytest.mark.slow
def test_a_decoded_frame_reads_a_few_windows_not_the_instance(
    stored: tuple[Source, Path, int], fetched: list[int]
) -> None:
    ref, local, size = stored
    (frame,) = transcode_frames(ref, [150], EXPLICIT, allow_lossy=False)
    (want,) = transcode_frames(local, [150], EXPLICIT, allow_lossy=False)
    assert frame == want == np.full(SIZE * SIZE, 149, dtype=np.uint16).tobytes()
    assert sum(fetched) < 2_000_000 < size


def test_a_rendered_frame_reads_a_few_windows_not_the_instance(
    stored: tuple[Source, Path, int], fetched: list[int]
) -> None:
    ref, local, size = stored
    options = RenderOptions(frame_number=120, media_type="image/png")
    assert render(ref, options) == render(local, options)
    assert sum(fetched) < 2_000_000 < size


def test_bulk_data_is_located_without_reading_it(
    stored: tuple[Source, Path, int], fetched: list[int]
) -> None:
    ref, local, _ = stored
    found = locate_bulk_data(ref, "7FE00010", EXPLICIT)
    assert isinstance(found, ByteRange) and found == locate_bulk_data(local, "7FE00010", EXPLICIT)
    assert found.length == FRAMES * SIZE * SIZE * 2
    assert sum(fetched) < 1_000_000
