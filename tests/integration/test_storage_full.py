"""A full disk, on a real small file system: a tmpfs of a few MiB holds the server's data folder.

The tmpfs is mounted in a user and mount namespace of the server's own (``unshare``), which
needs no privilege and vanishes with the server, or else directly when the tests run as root.
A filler file next to the data folder takes the space; deleting it gives the space back.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import psutil
import pytest
from pydicom.uid import generate_uid

from dicomrpc import Client, DicomRpcError
from dicomrpc.results import InstanceResult, StoreResult
from tests.conftest import ServerProcess, spawn_server
from tests.dicomgen import ct_instance
from tests.upsgen import workitem

pytestmark = pytest.mark.slow

KIB = 1024
DISK = "4m"
OUT_OF_RESOURCES = 0xA700
FD_SLACK = 8
BOUNDARY = "full-disk-test"


@dataclass
class SmallDisk:
    """Where the tmpfs is mounted, and how the server is started on it."""

    mount: Path
    prefix: tuple[str, ...]
    private: bool  # mounted in the server's namespace: seen from here through /proc/PID/root

    def view(self, proc: ServerProcess) -> Path:
        """The mount point as this process sees it."""
        if self.private:
            return Path(f"/proc/{proc.process.pid}/root") / self.mount.relative_to("/")
        return self.mount


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    mount = tmp_path / "disk"
    mount.mkdir()
    script = f'mount -t tmpfs -o size={DISK} tmpfs "$0" && exec "$@"'
    namespace = ("unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, str(mount))
    if shutil.which("unshare") and _succeeds([*namespace, "true"]):
        yield SmallDisk(mount, namespace, private=True)
        return
    if os.geteuid() == 0 and _succeeds(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(mount)]
    ):
        try:
            yield SmallDisk(mount, (), private=False)
        finally:
            subprocess.run(["umount", "--lazy", str(mount)], check=False)
        return
    pytest.skip(
        "needs a small file system: neither a user and mount namespace "
        "(unshare --user --map-root-user --mount) nor mounting a tmpfs as root works here"
    )


def _succeeds(command: list[str]) -> bool:
    return subprocess.run(command, capture_output=True, check=False).returncode == 0


def _fill(filler: Path, leave: int = 0) -> None:
    """Take every free byte of the file system with ``filler``, then give back ``leave``."""
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for block in (64 * KIB, 4 * KIB):
            try:
                while True:
                    os.write(fd, bytes(block))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
        if leave:
            os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    finally:
        os.close(fd)


@dataclass
class FullDiskServer:
    proc: ServerProcess
    data: Path  # the data folder, as seen from here
    filler: Path

    @property
    def uploads(self) -> list[str]:
        return os.listdir(self.data / "uploads")

    def blob_files(self) -> int:
        return len(list((self.data / "blobs").glob("*/*.dcm")))

    def fds(self) -> int:
        return psutil.Process(self.proc.process.pid).num_fds()


@pytest.fixture
def server_on_small_disk(small_disk: SmallDisk) -> Iterator[FullDiskServer]:
    proc = spawn_server(small_disk.mount / "data", prefix=small_disk.prefix)
    try:
        view = small_disk.view(proc)
        yield FullDiskServer(proc, view / "data", view / "filler")
    finally:
        proc.stop()


def _refused_for_space(result: InstanceResult, step: str) -> None:
    assert not result.stored
    assert result.failure_reason == OUT_OF_RESOURCES, result
    assert result.failure_reason_name == "STORAGE_FULL", result
    assert result.failure_message.startswith("the archive's storage is full"), result
    assert step in result.failure_message and "bytes are free" in result.failure_message


def _stored(result: StoreResult) -> list[bool]:
    return [r.stored for r in result.instances]


@pytest.mark.timeout(300)
def test_a_full_disk_refuses_instances_alone_and_loses_nothing(
    server_on_small_disk: FullDiskServer,
) -> None:
    server = server_on_small_disk
    study = generate_uid()
    with Client(server.proc.target) as client:
        earlier = [ct_instance(study=study, rows=32, columns=32, number=i) for i in range(3)]
        assert _stored(client.store(earlier)) == [True] * 3
        baseline = server.fds()

        # Room for a small instance, not for a large one: each gets its own answer.
        _fill(server.filler, leave=256 * KIB)
        large = ct_instance(study=study, rows=512, columns=512, number=10)
        small = ct_instance(study=study, rows=16, columns=16, number=11)
        result = client.store([large, small])
        assert _stored(result) == [False, True]
        _refused_for_space(result.instances[0], "writing the instance's file")
        assert result.status == "partially_stored"

        # No room at all.
        _fill(server.filler)
        result = client.store([ct_instance(study=study, number=n) for n in (12, 13)])
        assert _stored(result) == [False, False]
        for refused in result.instances:
            _refused_for_space(refused, "writing the instance's file")
        assert server.uploads == []
        assert server.fds() <= baseline + FD_SLACK

        # Space again: stores succeed, and nothing stored before was lost.
        server.filler.unlink()
        after = ct_instance(study=study, rows=16, columns=16, number=14)
        assert _stored(client.store(after)) == [True]
        retrieved = [i.data for i in client.iter_instances(study)]
    assert sorted(retrieved) == sorted([*earlier, small, after])
    assert server.blob_files() == 5  # no file of a refused instance left
    assert server.uploads == []


@pytest.mark.timeout(300)
def test_an_index_write_without_space_is_refused_and_leaves_the_index_consistent(
    server_on_small_disk: FullDiskServer,
) -> None:
    server = server_on_small_disk
    study = generate_uid()
    with Client(server.proc.target) as client:
        earlier = [ct_instance(study=study, rows=32, columns=32, number=i) for i in range(3)]
        assert _stored(client.store(earlier)) == [True] * 3
        # One page free: the instance's file fits in it, the index commit's new pages do not.
        _fill(server.filler, leave=4 * KIB)
        refused = [ct_instance(study=study, rows=8, columns=8, number=n) for n in (20, 21)]
        for data in refused:
            result = client.store(data)
            _refused_for_space(result.instances[0], "writing the index")
        # Every other index write is answered the same way, once the index needs a new page.
        _fill(server.filler)
        with pytest.raises(DicomRpcError) as caught:
            for _ in range(500):
                client.workitems.create(workitem())
        assert caught.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value
        assert caught.value.reason == "STORAGE_FULL"
        assert caught.value.dicom_status == OUT_OF_RESOURCES
        assert server.blob_files() == 3  # the refused instances' files are gone again
        assert server.uploads == []

        server.filler.unlink()
        after = ct_instance(study=study, rows=8, columns=8, number=22)
        assert _stored(client.store([after, *refused])) == [True] * 3
        retrieved = [i.data for i in client.iter_instances(study)]
        assert len(client.search_instances(study=study).datasets) == 6
    assert sorted(retrieved) == sorted([*earlier, after, *refused])
    assert server.blob_files() == 6


def _stow(url: str, *instances: bytes) -> httpx.Response:
    body = b"".join(
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
        for data in instances
    )
    return httpx.post(
        f"{url}/studies",
        content=body + f"--{BOUNDARY}--\r\n".encode(),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
        },
        timeout=60,
    )


FAILED_SOP_SEQUENCE, REFERENCED_SOP_SEQUENCE = "00081198", "00081199"
FAILURE_REASON, ERROR_COMMENT = "00081197", "00000902"


@pytest.mark.timeout(300)
def test_stow_answers_507_when_nothing_could_be_stored_for_lack_of_space(
    server_on_small_disk: FullDiskServer,
) -> None:
    server = server_on_small_disk
    url = server.proc.dicomweb_url
    study = generate_uid()
    earlier = ct_instance(study=study, rows=32, columns=32)
    assert _stow(url, earlier).status_code == 200

    _fill(server.filler, leave=256 * KIB)
    large = ct_instance(study=study, rows=512, columns=512, number=2)
    small = ct_instance(study=study, rows=16, columns=16, number=3)
    partly = _stow(url, large, small)
    assert partly.status_code == 202
    (failed,) = partly.json()[FAILED_SOP_SEQUENCE]["Value"]
    assert failed[FAILURE_REASON]["Value"] == [OUT_OF_RESOURCES]
    assert len(partly.json()[REFERENCED_SOP_SEQUENCE]["Value"]) == 1

    _fill(server.filler)
    refused = _stow(url, *(ct_instance(study=study, number=n) for n in (4, 5)))
    assert refused.status_code == 507, refused.text
    assert "storage is full" in refused.headers["Warning"]
    assert "bytes are free" in refused.headers["Warning"]
    failures = refused.json()[FAILED_SOP_SEQUENCE]["Value"]
    assert [f[FAILURE_REASON]["Value"] for f in failures] == [[OUT_OF_RESOURCES]] * 2
    assert all("storage is full" in f[ERROR_COMMENT]["Value"][0] for f in failures)
    assert REFERENCED_SOP_SEQUENCE not in refused.json()
    assert server.uploads == []

    server.filler.unlink()
    after = ct_instance(study=study, rows=16, columns=16, number=6)
    assert _stow(url, after).status_code == 200
    with Client(server.proc.target) as client:
        retrieved = [i.data for i in client.iter_instances(study)]
    assert sorted(retrieved) == sorted([earlier, small, after])


@pytest.mark.timeout(300)
@pytest.mark.skipif(not shutil.which("prlimit"), reason="needs prlimit (util-linux)")
def test_a_file_over_the_size_limit_is_refused_like_a_full_disk(tmp_path: Path) -> None:
    # The server may write no file larger than 2 MiB (RLIMIT_FSIZE): writes past it get EFBIG.
    proc = spawn_server(tmp_path / "data", prefix=("prlimit", f"--fsize={2048 * KIB}", "--"))
    try:
        study = generate_uid()
        large = ct_instance(study=study, rows=1024, columns=1024)  # 2 MiB of pixel data
        small = ct_instance(study=study, rows=16, columns=16, number=2)
        with Client(proc.target) as client:
            result = client.store([large, small])
        assert _stored(result) == [False, True]
        _refused_for_space(result.instances[0], "writing the instance's file")
        assert "EFBIG" in result.instances[0].failure_message
        assert os.listdir(tmp_path / "data" / "uploads") == []
    finally:
        proc.stop()
