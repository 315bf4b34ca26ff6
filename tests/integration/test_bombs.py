"""Bombs defused: deflate bombs, headers that lie, forged codestreams, codecs that never end.

Each hostile file is built small in the test; each test names the behaviour it replaces.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest

from dicomrpc import Client, DicomRpcError
from dicomrpc.results import InstanceResult
from tests.bombgen import (
    MIB,
    deflate_bomb,
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
    (instance,) = client.retrieve(*_uids(result))
    assert instance.data[128:] == bomb[128:]  # type: ignore[union-attr]


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


@pytest.mark.timeout(300)
def test_a_slow_transcode_never_holds_up_a_store(client: Client) -> None:
    """Today a render blocked a 1 KB store for 54 s: both ran in the one pool."""
    uids = _big_image(client)
    small = _store_one(client, one_kib_instance())
    client.rendered(*_uids(small))  # the codec workers are up
    before = _cpu()
    transcode = _Call(lambda: client.retrieve(*uids, transfer_syntax=J2K_LOSSLESS))
    transcode.start()
    while (busy := _busy_worker(before)) is None:
        assert transcode.is_alive(), transcode.error
        threading.Event().wait(0.05)
    stored = _store_one(client, one_kib_instance())
    # The worker is still encoding once the store has been answered: its CPU time still grows.
    at_store = _cpu()[busy]
    threading.Event().wait(0.5)
    still_encoding = _cpu()[busy] - at_store > 0.1
    transcode.join(240)
    assert stored.stored
    assert still_encoding, "the store waited for the transcode"
    assert transcode.error is None


@pytest.mark.timeout(300)
def test_a_codec_job_past_the_time_limit_is_stopped_and_the_next_one_served(
    tmp_path: Path,
) -> None:
    running = start_server(tmp_path / "data", codec_timeout_s=1.0, codec_workers=1)
    try:
        with Client(running.target) as client:
            uids = _big_image(client)
            small = _uids(_store_one(client, one_kib_instance()))
            transcode = _Call(lambda: client.retrieve(*uids, transfer_syntax=J2K_LOSSLESS))
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
