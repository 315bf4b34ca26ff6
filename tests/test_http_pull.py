"""The SDK's multipart reader, on bodies cut anywhere, with and without Content-Length."""

from __future__ import annotations

import io
from typing import Any

import grpc
import pytest

from dicomrpc import http_pull
from dicomrpc.client import target_host
from dicomrpc.errors import DicomRpcError
from dicomrpc.retrieval import instances

BOUNDARY = b"b0und4ry"


class _Trickle:
    """A response whose reads return at most ``step`` bytes."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = io.BytesIO(data)
        self._step = step
        self.closed = False

    def readinto(self, buffer: Any) -> int:
        return self._data.readinto(memoryview(buffer)[: self._step])

    def close(self) -> None:
        self.closed = True


class _Connection:
    def close(self) -> None:
        pass


def _body(parts: list[bytes], lengths: bool) -> bytes:
    out = b"preamble\r\n"
    for n, data in enumerate(parts):
        headers = [
            b"Content-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
            b"DICOMRPC-Instance: 1.2/1.2.3/1.2.3."
            + str(n).encode()
            + b"; sop-class=9.9; version=7",
        ]
        if lengths:
            headers.append(b"Content-Length: " + str(len(data)).encode())
        out += b"--" + BOUNDARY + b"\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + data + b"\r\n"
    return out + b"--" + BOUNDARY + b"--\r\n"


def _read(data: bytes, step: int) -> list[Any]:
    body = http_pull.Body(_Connection(), _Trickle(data, step), BOUNDARY)  # type: ignore[arg-type]
    return list(instances(http_pull.messages(body)))


@pytest.mark.parametrize("lengths", [True, False])
@pytest.mark.parametrize("step", [5, 61, 4096, 1 << 20])
def test_parts_come_back_whole_however_the_body_is_cut(lengths: bool, step: int) -> None:
    parts = [b"", b"\r\n--b0und4r", bytes(range(256)) * 8, b"--" + BOUNDARY + b"x"]
    if not lengths:
        parts = parts[1:]  # an empty part without a length is a delimiter right away
        parts[-1] = b"x--" + BOUNDARY[:-1]
    got = _read(_body(parts, lengths), step)
    assert [g.data for g in got] == parts
    first = got[0]
    assert (first.study_instance_uid, first.series_instance_uid) == ("1.2", "1.2.3")
    assert (first.sop_class_uid, first.version) == ("9.9", 7)
    assert first.transfer_syntax_uid == "1.2.840.10008.1.2.1"


def test_a_cut_body_is_a_clear_error() -> None:
    data = _body([b"x" * 5000], lengths=True)
    with pytest.raises(DicomRpcError) as failed:
        _read(data[:3000], 512)
    assert failed.value.code == grpc.StatusCode.UNAVAILABLE


def test_the_host_of_a_target() -> None:
    for target, host in {
        "localhost:50051": "localhost",
        "dns:///pacs.example:443": "pacs.example",
        "[::1]:50051": "[::1]",
        "10.0.0.5:1": "10.0.0.5",
        "pacs": "pacs",
        "unix:/run/x.sock": "",
    }.items():
        assert target_host(target) == host, target
