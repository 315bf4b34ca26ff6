"""Streaming a 2 GiB study holds a few chunks in memory, on the server and on the clients."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
from pydicom.uid import generate_uid

from dicomrpc import AsyncClient, Client
from dicomrpc.v1 import retrieve_service_pb2, retrieve_service_pb2_grpc
from tests.conftest import spawn_server
from tests.dicomgen import big_image

pytestmark = pytest.mark.slow

MB = 1024 * 1024
INSTANCES = 256
SIDE = 2048  # 2048 x 2048 x 16 bit = 8 MiB of pixel data per instance: 2 GiB in all
# The study is on disk three times: the files sent, the archive's copy, the files retrieved.
DISK_NEEDED = 3 * INSTANCES * 8 * MB + 1024 * MB


def _write_study(folder: Path, study: str) -> None:
    series = generate_uid()
    pixels = np.arange(SIDE * SIDE, dtype=np.uint16).tobytes()
    for i in range(INSTANCES):
        ds = big_image(study, series, i + 1, SIDE, pixels)
        ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)


class _PeakRss:
    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


async def _save_async(target: str, study: str, out: Path) -> list[Path]:
    async with AsyncClient(target) as client:
        return await client.save_study(study, out)


@pytest.mark.timeout(600)
def test_large_study_streams_with_bounded_memory(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    if free < DISK_NEEDED:
        pytest.skip(f"needs {DISK_NEEDED // MB} MiB of free disk, {free // MB} MiB free")
    study = generate_uid()
    (tmp_path / "in").mkdir()
    _write_study(tmp_path / "in", study)
    proc = spawn_server(tmp_path / "data")
    try:
        with Client(proc.target) as client:
            assert len(client.store(tmp_path / "in").stored) == INSTANCES
        total = sum(p.stat().st_size for p in (tmp_path / "in").iterdir())
        server_before = psutil.Process(proc.process.pid).memory_info().rss

        # A slow reader: the server must wait for it, not buffer the study.
        server = _PeakRss(proc.process.pid)
        received = 0
        with grpc.insecure_channel(proc.target) as channel:
            stub = retrieve_service_pb2_grpc.RetrieveServiceStub(channel)
            stream = stub.RetrieveStudy(
                retrieve_service_pb2.RetrieveStudyRequest(study_instance_uid=study)
            )
            for i, message in enumerate(stream):
                received += len(message.data)
                if i % 50 == 0:
                    time.sleep(0.05)
        assert received == total
        assert server.stop() - server_before < 100 * MB

        # The SDK writing to disk: client memory stays flat too.
        me = _PeakRss(psutil.Process().pid)
        client_before = me.peak
        server = _PeakRss(proc.process.pid)
        with Client(proc.target) as client:
            paths = client.save_study(study, tmp_path / "out")
        assert len(paths) == INSTANCES
        assert sum(Path(p).stat().st_size for p in paths) == total
        assert me.stop() - client_before < 100 * MB
        assert server.stop() - server_before < 100 * MB

        # The asyncio client's save, each chunk written in a worker thread: flat as well.
        shutil.rmtree(tmp_path / "out")
        me = _PeakRss(psutil.Process().pid)
        client_before = me.peak
        paths = asyncio.run(_save_async(proc.target, study, tmp_path / "out"))
        assert len(paths) == INSTANCES
        assert sum(Path(p).stat().st_size for p in paths) == total
        assert me.stop() - client_before < 100 * MB
    finally:
        proc.process.terminate()
        proc.process.wait(30)
        assert proc.process.stdout is not None
        proc.process.stdout.close()
