"""A store that ends any way but by finishing leaves nothing behind: no upload, no descriptor.

Each test drives many stores into one way of ending (cancelled, past their deadline, one message
over the server's limit, a STOW body cut off or malformed, a server stopping) against a server
in a child process, waits until each really holds an upload file, and then checks that the
server's ``uploads/`` folder empties and its open descriptors come back to where they were,
while the instances stored before are untouched.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import grpc
import psutil
import pytest
from pydicom.uid import generate_uid

from dicomrpc import Client
from dicomrpc.client import STORE_INSTANCES
from dicomrpc.v1 import store_service_pb2 as pb
from dicomrpc.wire import serialize
from dicomrpc_server.archive import Archive
from dicomrpc_server.config import Settings
from tests.conftest import ServerProcess, spawn_server
from tests.dicomgen import ct_instance

CHUNK = 16 * 1024
# Above the server's largest message (its 4 MiB chunk limit plus the envelope).
OVERSIZED = 5 * 1024 * 1024
# Descriptors the server may hold beyond its baseline for reasons of its own (gRPC's pollers,
# a worker's pipe): far fewer than one per store under test.
FD_SLACK = 8
BOUNDARY = "cleanup-test"


@dataclass
class Archived:
    """A server with a few instances stored before the test, and their bytes."""

    proc: ServerProcess
    data: Path
    study: str
    stored: dict[str, bytes]

    @property
    def uploads(self) -> list[str]:
        return os.listdir(self.data / "uploads")

    def fds(self) -> int:
        return psutil.Process(self.proc.process.pid).num_fds()


@pytest.fixture
def archived(tmp_path: Path) -> Iterator[Archived]:
    data = tmp_path / "data"
    proc = spawn_server(data)
    try:
        yield _with_instances(proc, data)
    finally:
        proc.stop()


def _with_instances(proc: ServerProcess, data: Path) -> Archived:
    study = generate_uid()
    sent = [ct_instance(study=study, rows=64, columns=64, number=i) for i in range(3)]
    with Client(proc.target) as client:
        result = client.store(sent)
    assert all(r.stored for r in result.instances)
    stored = {r.sop_instance_uid: data for r, data in zip(result.instances, sent, strict=True)}
    return Archived(proc, data, study, stored)


def _wait_until(condition: Callable[[], bool], timeout: float = 60) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; return whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _assert_nothing_left(archived: Archived, baseline_fds: int) -> None:
    """No upload file, descriptors back near the baseline, earlier instances intact."""
    _wait_until(lambda: not archived.uploads and archived.fds() <= baseline_fds + FD_SLACK)
    assert archived.uploads == [], f"{len(archived.uploads)} upload files were left behind"
    assert archived.fds() <= baseline_fds + FD_SLACK, (
        f"the server holds {archived.fds()} descriptors, {baseline_fds} before"
    )
    with Client(archived.proc.target) as client:
        retrieved = {i.sop_instance_uid: i.data for i in client.iter_instances(archived.study)}
    assert retrieved == archived.stored


async def _stalled_stores(
    target: str,
    count: int,
    uploads: Callable[[], int],
    *,
    cancel: bool = False,
    timeout: float | None = None,
    oversized: bool = False,
) -> Counter[grpc.StatusCode]:
    """Run ``count`` stores that send part of an instance and then stall; return how each ended.

    With ``cancel``, every store is cancelled once the server holds ``count`` uploads.
    """
    instance = ct_instance(rows=256, columns=256)
    options = [("grpc.max_send_message_length", 2 * OVERSIZED)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        store = channel.stream_unary(
            STORE_INSTANCES,
            request_serializer=serialize,
            response_deserializer=pb.StoreInstancesResponse.FromString,
        )

        async def requests() -> AsyncIterator[pb.StoreInstancesRequest]:
            yield pb.StoreInstancesRequest(instance=pb.InstanceUpload(size_bytes=len(instance)))
            for start in range(0, 3 * CHUNK, CHUNK):
                yield pb.StoreInstancesRequest(data=instance[start : start + CHUNK])
            if oversized:
                yield pb.StoreInstancesRequest(data=bytes(OVERSIZED))
            await asyncio.Event().wait()  # the stream never ends by itself

        calls = [store(requests(), timeout=timeout) for _ in range(count)]
        if cancel:
            deadline = time.monotonic() + 60
            while uploads() < count and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert uploads() == count, f"the server holds {uploads()} of {count} uploads"
            for call in calls:
                call.cancel()
        codes: Counter[grpc.StatusCode] = Counter()
        for call in calls:
            try:
                await call
            except grpc.aio.AioRpcError as error:
                codes[error.code()] += 1
            except asyncio.CancelledError:
                codes[grpc.StatusCode.CANCELLED] += 1
        return codes


def _uploads_of(archived: Archived) -> Callable[[], int]:
    return lambda: len(archived.uploads)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cancelled_streams_leave_no_upload_and_no_descriptor(archived: Archived) -> None:
    baseline = archived.fds()
    codes = asyncio.run(
        _stalled_stores(archived.proc.target, 300, _uploads_of(archived), cancel=True)
    )
    assert codes == {grpc.StatusCode.CANCELLED: 300}
    _assert_nothing_left(archived, baseline)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_streams_past_their_deadline_leave_nothing(archived: Archived) -> None:
    baseline = archived.fds()
    codes = asyncio.run(
        _stalled_stores(archived.proc.target, 50, _uploads_of(archived), timeout=2.0)
    )
    assert codes == {grpc.StatusCode.DEADLINE_EXCEEDED: 50}
    _assert_nothing_left(archived, baseline)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_oversized_message_leaves_nothing(archived: Archived) -> None:
    baseline = archived.fds()
    codes = asyncio.run(
        _stalled_stores(archived.proc.target, 50, _uploads_of(archived), oversized=True)
    )
    assert codes == {grpc.StatusCode.RESOURCE_EXHAUSTED: 50}
    _assert_nothing_left(archived, baseline)


def _stow_head(url: str, length: int) -> tuple[tuple[str, int], bytes]:
    parsed = urlparse(url)
    assert parsed.hostname is not None and parsed.port is not None
    head = (
        f"POST {parsed.path}/studies HTTP/1.1\r\nHost: {parsed.netloc}\r\n"
        f'Content-Type: multipart/related; type="application/dicom"; boundary={BOUNDARY}\r\n'
        f"Content-Length: {length}\r\n\r\n"
    ).encode()
    return (parsed.hostname, parsed.port), head


def _part(data: bytes) -> bytes:
    return f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_stow_bodies_cut_off_inside_a_part_leave_nothing(archived: Archived) -> None:
    baseline = archived.fds()
    instance = ct_instance(rows=256, columns=256)
    sent = _part(instance[: len(instance) // 2])
    address, head = _stow_head(archived.proc.dicomweb_url, len(_part(instance)) + 64)
    sockets = [socket.create_connection(address) for _ in range(50)]
    try:
        for sock in sockets:
            sock.sendall(head + sent)
        assert _wait_until(lambda: len(archived.uploads) == 50), (
            f"the server holds {len(archived.uploads)} of 50 uploads"
        )
    finally:
        for sock in sockets:
            sock.close()
    _assert_nothing_left(archived, baseline)


@pytest.mark.slow
def test_stow_bodies_malformed_midway_store_the_parts_before(archived: Archived) -> None:
    baseline = archived.fds()
    for _ in range(10):
        sop = generate_uid()
        first = ct_instance(study=archived.study, sop=sop, rows=64, columns=64)
        second = ct_instance(study=archived.study, rows=256, columns=256)
        # The second part is cut short by a delimiter followed by text on its line, sent once
        # the server has read the parts before it (the first is stored when the second begins).
        sound = _part(first) + b"\r\n" + _part(second[:5000])
        broken = f"\r\n--{BOUNDARY} not a delimiter\r\n".encode() + second[5000:]
        address, head = _stow_head(archived.proc.dicomweb_url, len(sound) + len(broken))
        with socket.create_connection(address) as sock, Client(archived.proc.target) as client:
            sock.sendall(head + sound)
            assert _wait_until(functools.partial(_is_stored, client, sop))
            sock.sendall(broken)
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 202"), answer[:200]
        archived.stored[sop] = first
    _assert_nothing_left(archived, baseline)


def _is_stored(client: Client, sop: str) -> bool:
    return bool(client.search_instances(SOPInstanceUID=sop).datasets)


def _blob_files(data: Path) -> set[str]:
    return {f.stem for f in (data / "blobs").glob("*/*.dcm")}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_server_stopping_mid_stream_leaves_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    archived = _with_instances(spawn_server(data, "--shutdown-grace", "1"), data)
    ended: dict[str, Counter[grpc.StatusCode]] = {}

    def stall() -> None:
        target = archived.proc.target
        ended["codes"] = asyncio.run(_stalled_stores(target, 50, _uploads_of(archived)))

    thread = threading.Thread(target=stall)
    thread.start()
    instance = ct_instance(rows=256, columns=256)
    address, head = _stow_head(archived.proc.dicomweb_url, len(_part(instance)) + 64)
    sockets = [socket.create_connection(address) for _ in range(10)]
    try:
        for sock in sockets:
            sock.sendall(head + _part(instance[: len(instance) // 2]))
        assert _wait_until(lambda: len(archived.uploads) == 60), (
            f"the server holds {len(archived.uploads)} of 60 uploads"
        )
        assert archived.proc.stop(signal.SIGTERM) == 0
    finally:
        for sock in sockets:
            sock.close()
        thread.join(60)
    assert sum(ended["codes"].values()) == 50
    assert archived.uploads == [], f"{len(archived.uploads)} upload files were left behind"
    on_disk = _blob_files(data)
    reopened = Archive(Settings(data_dir=data))
    try:
        assert reopened.index.blob_ids() == on_disk
        assert reopened.index.counts().instances == len(archived.stored)
    finally:
        reopened.close()
