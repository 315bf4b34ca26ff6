"""A 1 GiB STOW body and a 1 GiB study retrieve through the gateway hold a few chunks in memory.

The server runs as a child process; its RSS is sampled while the body streams in and while the
study streams out. The test data is generated while it is sent, never held whole.
"""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from pydicom.uid import generate_uid

from tests.conftest import spawn_server
from tests.dicomgen import big_image
from tests.integration.test_retrieve_memory import _PeakRss

MB = 1024 * 1024
INSTANCES = 128
SIDE = 2048  # 2048 x 2048 x 16 bit = 8 MiB of pixel data per instance: 1 GiB in all
DISK_NEEDED = INSTANCES * 8 * MB + 1024 * MB
BOUNDARY = "memory-test-boundary"


def _instance(study: str, series: str, number: int, pixels: bytes) -> bytes:
    ds = big_image(study, series, number, SIDE, pixels)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _stow_body(study: str, sent: list[int]) -> Iterator[bytes]:
    """The multipart body, one instance generated at a time, in 1 MiB pieces."""
    series = generate_uid()
    pixels = np.arange(SIDE * SIDE, dtype=np.uint16).tobytes()
    for number in range(1, INSTANCES + 1):
        data = _instance(study, series, number, pixels)
        sent.append(len(data))
        yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        for start in range(0, len(data), MB):
            yield data[start : start + MB]
        yield b"\r\n"
    yield f"--{BOUNDARY}--\r\n".encode()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_gigabyte_stow_and_retrieve_hold_bounded_memory(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    if free < DISK_NEEDED:
        pytest.skip(f"needs {DISK_NEEDED // MB} MiB of free disk, {free // MB} MiB free")
    proc = spawn_server(tmp_path / "data")
    try:
        pid = proc.process.pid
        before = psutil.Process(pid).memory_info().rss
        study, sent = generate_uid(), []
        with httpx.Client(base_url=proc.dicomweb_url, timeout=300) as http:
            peak = _PeakRss(pid)
            response = http.post(
                "/studies",
                content=_stow_body(study, sent),
                headers={
                    "Content-Type": (
                        f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
                    )
                },
            )
            stow_growth = peak.stop() - before
            assert response.status_code == 200, response.text[:500]
            assert len(response.json()["00081199"]["Value"]) == INSTANCES
            assert sum(sent) > 1024 * MB

            # A slow reader: the server must wait for it, not buffer the study.
            before = psutil.Process(pid).memory_info().rss
            peak = _PeakRss(pid)
            received = 0
            accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
            with http.stream("GET", f"/studies/{study}", headers={"Accept": accept}) as stream:
                assert stream.status_code == 200
                for i, chunk in enumerate(stream.iter_raw(1024 * 1024)):
                    received += len(chunk)
                    if i % 100 == 0:
                        time.sleep(0.05)
            retrieve_growth = peak.stop() - before
        assert received > sum(sent)  # the instances plus the multipart framing
        assert stow_growth < 100 * MB, f"STOW grew the server by {stow_growth // MB} MiB"
        assert retrieve_growth < 100 * MB, (
            f"retrieve grew the server by {retrieve_growth // MB} MiB"
        )
    finally:
        proc.stop()
