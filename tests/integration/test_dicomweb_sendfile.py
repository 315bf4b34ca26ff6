"""Instances sent from their files by the kernel: lengths, bytes, descriptors, HEAD, fallbacks."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from pydicom.uid import generate_uid

from tests.conftest import RunningServer
from tests.descriptors import open_files_under
from tests.dicomgen import ct_instance
from tests.integration.test_dicomweb_http import STOW_TYPE, multipart

MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
IMPLICIT_VR_LE = "1.2.840.10008.1.2"


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.dicomweb_url, timeout=60) as client:
        yield client


def _study(http: httpx.Client, count: int, size: int = 64) -> tuple[str, list[bytes]]:
    """A stored study of ``count`` instances of ``size`` x ``size`` pixels, in UID order."""
    study, series, prefix = generate_uid(), generate_uid(), f"2.25.{uuid.uuid4().int}"
    instances = [
        ct_instance(study, series, f"{prefix}.{n}", rows=size, columns=size, number=n, seed=n)
        for n in range(1, count + 1)
    ]
    response = http.post(
        "/studies", content=multipart(instances), headers={"Content-Type": STOW_TYPE}
    )
    assert response.status_code == 200, response.text
    return study, instances


def _parts(content_type: str, body: bytes) -> list[bytes]:
    """The bytes of each part of a multipart body, checked against its Content-Length."""
    boundary = content_type.split("boundary=")[1].split(";")[0].encode()
    assert body.endswith(b"\r\n--" + boundary + b"--\r\n")
    parts = []
    for piece in body.split(b"--" + boundary)[1:-1]:
        head, _, rest = piece.partition(b"\r\n\r\n")
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
        )
        assert rest[length:] == b"\r\n"
        parts.append(rest[:length])
    return parts


def test_a_study_as_stored_goes_by_sendfile_in_a_body_of_known_length(
    http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    study, instances = _study(http, 5)
    sent: list[int] = []
    real = os.sendfile

    def counted(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        done = real(out_fd, in_fd, offset, count)
        sent.append(done)
        return done

    monkeypatch.setattr(os, "sendfile", counted)
    response = http.get(
        f"/studies/{study}", headers={"Accept": f"{MULTIPART_DICOM}; transfer-syntax=*"}
    )
    assert response.status_code == 200
    # A length known before the body, rather than a chunked body.
    assert response.headers["content-length"] == str(len(response.content))
    assert "transfer-encoding" not in response.headers
    assert sorted(_parts(response.headers["content-type"], response.content)) == sorted(instances)
    # Every instance's bytes went by the kernel, none through a buffer of the server.
    assert sum(sent) == sum(map(len, instances))


def test_a_single_instance_and_a_head_request(server: RunningServer, http: httpx.Client) -> None:
    study, instances = _study(http, 2)
    found = server.archive.retrieve.instances(study)
    first = found[0]
    url = f"/studies/{study}/series/{first.series_uid}/instances/{first.sop_uid}"
    single = http.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert single.status_code == 200
    assert single.content == instances[0]
    assert single.headers["content-length"] == str(len(instances[0]))

    whole = http.get(
        f"/studies/{study}", headers={"Accept": f"{MULTIPART_DICOM}; transfer-syntax=*"}
    )
    head = http.head(
        f"/studies/{study}", headers={"Accept": f"{MULTIPART_DICOM}; transfer-syntax=*"}
    )
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(whole.content))


def test_a_transcoded_study_is_still_streamed_in_chunks(http: httpx.Client) -> None:
    study, _ = _study(http, 3)
    response = http.get(
        f"/studies/{study}",
        headers={"Accept": f"{MULTIPART_DICOM}; transfer-syntax={IMPLICIT_VR_LE}"},
    )
    assert response.status_code == 200
    assert response.headers.get("transfer-encoding") == "chunked"
    assert len(_parts(response.headers["content-type"], response.content)) == 3


def test_clients_that_leave_midway_leave_no_file_open(
    server: RunningServer, http: httpx.Client
) -> None:
    # 8 MiB of instances: more than loopback's socket buffers hold, so the server is still
    # sending (a file open) when each client goes.
    study, instances = _study(http, 16, size=512)
    blobs = server.archive.blobs.path(server.archive.retrieve.instances(study)[0].record.blob_id)
    folder = blobs.parent.parent
    request = (
        f"GET /dicomweb/studies/{study} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Accept: {MULTIPART_DICOM}; transfer-syntax=*\r\n\r\n"
    ).encode()
    clients = []
    for _ in range(4):
        sock = socket.create_connection(("127.0.0.1", server.http.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(request)
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        clients.append(sock)
    deadline = time.monotonic() + 10
    while not open_files_under(folder) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_files_under(folder), "the server should be sending when the clients leave"
    for sock in clients:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # a reset: the server's next send fails
    deadline = time.monotonic() + 10
    while open_files_under(folder) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_files_under(folder) == []
    # The gateway still serves, the whole study, byte for byte.
    response = http.get(
        f"/studies/{study}", headers={"Accept": f"{MULTIPART_DICOM}; transfer-syntax=*"}
    )
    assert sorted(_parts(response.headers["content-type"], response.content)) == sorted(instances)
