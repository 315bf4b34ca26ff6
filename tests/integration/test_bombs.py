"""Bombs defused: deflate bombs, headers that lie, forged codestreams, codecs that never end.

Each hostile file is built small in the test; each test names the behaviour it replaces.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import psutil
import pytest

from dicomrpc import Client, DicomRpcError
from dicomrpc.results import InstanceResult
from tests.bombgen import (
    MIB,
    deflate_bomb,
    encapsulated,
    forged_j2k_instance,
    image_dataset,
    native,
    one_kib_instance,
)
from tests.conftest import RunningServer, start_server

EXPLICIT_LE = "1.2.840.10008.1.2.1"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
RLE = "1.2.840.10008.1.2.5"


def _peak_rss() -> dict[int, int]:
    """The peak resident size (VmHWM) of each process this test process started, in bytes."""
    peaks = {}
    for child in psutil.Process().children(recursive=True):
        try:
            status = Path(f"/proc/{child.pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peaks[child.pid] = int(line.split()[1]) * 1024
    return peaks


def _growth(before: dict[int, int], after: dict[int, int]) -> int:
    """How much the peak resident size of any process grew (a new process: all of it)."""
    return max((peak - before.get(pid, 0) for pid, peak in after.items()), default=0)


def _store_one(client: Client, data: bytes) -> InstanceResult:
    (result,) = client.store([data]).instances
    return result


def _uids(result: InstanceResult) -> tuple[str, str, str]:
    return result.study_instance_uid, result.series_instance_uid, result.sop_instance_uid


@pytest.fixture
def small_instances(tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path / "data", max_instance_bytes=64 * MIB)
    yield running
    running.stop()


# -- deflate -----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_deflate_bomb_is_refused_as_soon_as_it_inflates_past_the_limit(
    small_instances: RunningServer,
) -> None:
    """Today a 510 KB file inflated to 512 MiB, twice, in the worker."""
    bomb = deflate_bomb()  # 16384 x 16384 x 16 bits of zeros: 512 MiB
    assert len(bomb) < 600_000
    with Client(small_instances.target) as client:
        assert _store_one(client, one_kib_instance()).stored  # the workers are up
        before = _peak_rss()
        result = _store_one(client, bomb)
        after = _peak_rss()
    assert (result.outcome, result.failure_reason) == ("failed", 272)
    assert result.failure_reason_name == "INSTANCE_TOO_LARGE"
    assert f"inflates to more than {64 * MIB} bytes" in result.failure_message
    assert "max_instance_bytes" in result.failure_message
    assert _growth(before, after) < 100 * MIB
    assert list(small_instances.archive.blobs.uploads_dir.iterdir()) == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_deflate_bomb_within_the_limit_is_stored_with_bounded_memory(
    server: RunningServer, client: Client
) -> None:
    """Inflated once, as a stream, to a file: never to memory, never a second time."""
    bomb = deflate_bomb()
    assert _store_one(client, one_kib_instance()).stored
    before = _peak_rss()
    result = _store_one(client, bomb)
    after = _peak_rss()
    assert result.outcome == "stored", result.failure_message
    assert _growth(before, after) < 100 * MIB
    assert list(server.archive.blobs.uploads_dir.iterdir()) == []
    instance = client.retrieve_instance(*_uids(result))
    assert instance.data[128:] == bomb[128:]


# -- the Image Pixel module against the Pixel Data -----------------------------------------


def test_rows_and_columns_zero_with_two_million_frames_are_refused(
    server: RunningServer, client: Client
) -> None:
    """Today this built a 42 MB frame table, and each frame request cost a second and 310 MB."""
    result = _store_one(client, native(image_dataset(0, 0, frames=2_000_000), b""))
    assert (result.outcome, result.failure_reason) == ("failed", 43264)
    assert result.failure_reason_name == "INSTANCE_VALIDATION_FAILED"
    assert result.failure_message == "Rows (00280010) is 0, but the instance has Pixel Data"
    assert server.archive.index.counts().instances == 0


def _without(name: str, rows: int = 4, columns: int = 4) -> bytes:
    ds = image_dataset(rows, columns)
    delattr(ds, name)
    return native(ds, bytes(rows * columns))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            native(image_dataset(4, 4, frames=10), bytes(16)),
            "Pixel Data (7FE00010) holds 16 bytes, less than the 160 bytes of the 10 frames of "
            "4 x 4 pixels, 1 sample of 8 bits that NumberOfFrames, Rows, Columns, "
            "SamplesPerPixel and BitsAllocated declare",
        ),
        (
            native(image_dataset(4, 4, bits=16), bytes(16)),
            "Pixel Data (7FE00010) holds 16 bytes, less than the 32 bytes",
        ),
        (_without("Columns"), "Columns (00280011) is missing, but the instance has Pixel Data"),
        (_without("BitsAllocated"), "BitsAllocated (00280100) is missing"),
        (
            encapsulated(image_dataset(8, 8, frames=5), [b"\x00" * 6, b"\x00" * 6], RLE),
            "NumberOfFrames (00280008) is 5, but the encapsulated Pixel Data has 2 fragments "
            "and it has no offset table: every frame needs at least one fragment (PS3.5 A.4)",
        ),
        (
            encapsulated(image_dataset(8, 8), [], RLE),
            "the encapsulated Pixel Data (7FE00010) has no fragment, so no frame",
        ),
    ],
)
def test_an_image_pixel_module_that_disagrees_with_the_pixel_data_is_refused(
    client: Client, data: bytes, message: str
) -> None:
    result = _store_one(client, data)
    assert (result.outcome, result.failure_reason) == ("failed", 43264)
    assert result.failure_message.startswith(message), result.failure_message


def test_a_frame_over_the_pixel_limit_is_refused(tmp_path: Path) -> None:
    running = start_server(tmp_path / "data", max_frame_pixels=4000)
    try:
        with Client(running.target) as client:
            result = _store_one(client, native(image_dataset(64, 100), bytes(6400)))
            assert _store_one(client, native(image_dataset(40, 100), bytes(4000))).stored
    finally:
        running.stop()
    assert (result.outcome, result.failure_reason) == ("failed", 43264)
    assert result.failure_message == (
        "Rows x Columns (64 x 100 = 6400 pixels) is more than this server's limit of 4000 "
        "pixels per frame (max_frame_pixels)"
    )


def test_real_world_layouts_stay_storable(client: Client) -> None:
    # An odd value padded to an even length (PS3.5 8.1.1).
    padded = _store_one(client, native(image_dataset(3, 3), bytes(9)))
    assert padded.outcome == "stored"
    # More bytes than the frames need: kept, with a warning naming Pixel Data.
    longer = _store_one(client, native(image_dataset(4, 4), bytes(64)))
    assert longer.outcome == "stored_with_warnings"
    assert [w.comment for w in longer.warnings if w.keyword == "PixelData"] == [
        "holds 64 bytes, more than the 16 bytes of its 1 frame: the rest is kept but never "
        "served as a frame"
    ]
    # One frame spanning many fragments; fewer fragments than frames when an offset table
    # lists every frame.
    spanning = _store_one(client, encapsulated(image_dataset(8, 8), [b"\x01" * 8] * 3, RLE))
    assert spanning.stored
    ds = image_dataset(8, 8, frames=3)
    ds.ExtendedOffsetTable = struct.pack("<3Q", 0, 8, 16)
    ds.ExtendedOffsetTableLengths = struct.pack("<3Q", 8, 8, 8)
    assert _store_one(client, encapsulated(ds, [b"\x01" * 8, b"\x02" * 16], RLE)).stored


def test_one_bit_frames_that_do_not_start_on_a_byte_are_served(client: Client) -> None:
    """3 x 3 pixels of 1 bit: 9 bits a frame, packed least significant bit first (PS3.5 8.1.1)."""
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2, 5 * 9, dtype=np.uint8)
    packed = np.packbits(bits, bitorder="little").tobytes()
    result = _store_one(client, native(image_dataset(3, 3, frames=5, bits=1), packed))
    assert result.stored
    frames = client.frames(*_uids(result), [1, 2, 3, 4, 5])
    for number, frame in enumerate(frames, 1):
        expected = np.packbits(bits[(number - 1) * 9 : number * 9], bitorder="little").tobytes()
        assert frame.data == expected


@pytest.mark.slow
def test_a_table_of_50000_frames_is_read_without_a_message_per_frame(
    server: RunningServer, client: Client
) -> None:
    """A frame request reads a table of packed offsets, not 50,000 parsed messages."""
    count = 50_000
    pixels = np.arange(count * 4, dtype=np.uint32).astype(np.uint8)
    result = _store_one(client, native(image_dataset(2, 2, frames=count), pixels.tobytes()))
    assert result.stored
    table = server.archive.index.get_frames(*_uids(result))
    assert table is not None and len(table.frames) == 0 and table.ByteSize() < 64
    frames = client.frames(*_uids(result), [1, 25_000, count])
    assert [f.data for f in frames] == [
        pixels[(n - 1) * 4 : n * 4].tobytes() for n in (1, 25_000, count)
    ]
    # Encapsulated: two packed arrays, 20 bytes a frame, read by slicing.
    fragments = [struct.pack("<I", n) for n in range(count)]
    ds = image_dataset(2, 2, frames=count)
    result = _store_one(client, encapsulated(ds, fragments, RLE))
    assert result.stored
    table = server.archive.index.get_frames(*_uids(result))
    assert table is not None and len(table.frames) == 0 and table.ByteSize() < 21 * count
    got = client.frames(*_uids(result), [2, count], transfer_syntax="*")
    assert [f.data for f in got] == [fragments[1], fragments[count - 1]]


# -- decoding within the header's limits -------------------------------------------------


@pytest.mark.slow
def test_a_forged_jpeg_2000_size_is_refused_before_any_codec_sees_it(
    server: RunningServer, client: Client
) -> None:
    """Today 3 KB with a forged SIZ marker took 9.4 GB and 29 s of a codec worker."""
    forged = forged_j2k_instance(40000, 40000)
    assert len(forged) < 8000
    result = _store_one(client, forged)
    assert result.stored  # the codestream is not read at store
    uids = _uids(result)
    assert _store_one(client, one_kib_instance()).stored
    before = _peak_rss()
    for call in (
        lambda: client.frames(*uids, [1], transfer_syntax=EXPLICIT_LE),
        lambda: client.rendered(*uids),
        lambda: client.retrieve_instance(*uids, transfer_syntax=EXPLICIT_LE),
    ):
        with pytest.raises(DicomRpcError) as caught:
            call()
        assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert caught.value.reason == "FRAME_HEADER_MISMATCH"
        assert f"frame 1 of instance {uids[2]}" in caught.value.message
        assert "40000 rows where Rows is 64" in caught.value.message
    study, series, sop = uids
    with httpx.Client(base_url=server.dicomweb_url, timeout=60) as http:
        response = http.get(f"/studies/{study}/series/{series}/instances/{sop}/frames/1")
    assert response.status_code == 409
    assert response.json()["reason"] == "FRAME_HEADER_MISMATCH"
    assert _growth(before, _peak_rss()) < 100 * MIB
    (frame,) = client.frames(*uids, [1])  # as stored: nothing is decoded
    assert len(frame.data) > 1000


# -- time limits and separate pools ------------------------------------------------------


def _big_image(client: Client, side: int = 4096) -> tuple[str, str, str]:
    """A side x side 16-bit image of noise: several seconds to encode as JPEG 2000."""
    pixels = np.random.default_rng(5).integers(0, 4096, (side, side), dtype=np.uint16)
    result = _store_one(client, native(image_dataset(side, side, bits=16), pixels.tobytes()))
    assert result.stored
    return _uids(result)


class _Call(threading.Thread):
    """A blocking client call run in a thread, keeping its result or error."""

    def __init__(self, call: object) -> None:
        super().__init__(daemon=True)
        self.call = call
        self.result: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.call()  # type: ignore[operator]
        except BaseException as exc:
            self.error = exc


def _cpu() -> dict[int, float]:
    """The CPU seconds each process this test process started has used."""
    out = {}
    for child in psutil.Process().children(recursive=True):
        try:
            out[child.pid] = sum(child.cpu_times()[:2])
        except psutil.Error:
            continue
    return out


def _busy_worker(before: dict[int, float]) -> int | None:
    """A worker that has used a second of CPU since ``before`` (a job is running in it)."""
    for pid, used in _cpu().items():
        if used - before.get(pid, used) > 1.0:
            return pid
    return None


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_slow_transcode_never_holds_up_a_store(client: Client) -> None:
    """Today a render blocked a 1 KB store for 54 s: both ran in the one pool."""
    uids = _big_image(client)
    small = _store_one(client, one_kib_instance())
    client.rendered(*_uids(small))  # the codec workers are up
    before = _cpu()
    transcode = _Call(lambda: client.retrieve_instance(*uids, transfer_syntax=J2K_LOSSLESS))
    transcode.start()
    while (busy := _busy_worker(before)) is None:
        assert transcode.is_alive(), transcode.error
        threading.Event().wait(0.05)
    stored = _store_one(client, one_kib_instance())
    # The worker is still encoding once the store has been answered: its CPU time still grows
    # (however busy the machine is), where a worker that served the store after the
    # transcode sits idle while the transcoded instance is sent.
    at_store = _cpu()[busy]
    still_encoding = False
    while transcode.is_alive() and not still_encoding:
        threading.Event().wait(0.05)
        still_encoding = _cpu().get(busy, at_store) - at_store > 0.1
    transcode.join(240)
    assert stored.stored
    assert still_encoding, "the store waited for the transcode"
    assert transcode.error is None


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_codec_job_past_the_time_limit_is_stopped_and_the_next_one_served(
    tmp_path: Path,
) -> None:
    running = start_server(tmp_path / "data", codec_timeout_s=1.0, codec_workers=1)
    try:
        with Client(running.target) as client:
            uids = _big_image(client)
            small = _uids(_store_one(client, one_kib_instance()))
            transcode = _Call(lambda: client.retrieve_instance(*uids, transfer_syntax=J2K_LOSSLESS))
            transcode.start()
            threading.Event().wait(0.5)  # the render below queues behind the transcode
            render = _Call(lambda: client.rendered(*small))
            render.start()
            transcode.join(120)
            render.join(120)
    finally:
        running.stop()
    error = transcode.error
    assert isinstance(error, DicomRpcError), error
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.reason == "LIMIT_EXCEEDED"
    assert error.metadata["limit"] == "codec_timeout_s"
    assert f"transcoding instance {uids[2]}" in error.message
    assert "took longer than this server's limit of 1 s per codec job" in error.message
    assert render.error is None and render.result is not None
