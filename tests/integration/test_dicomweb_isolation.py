"""One heavy request never stalls the others: small requests are answered while it runs.

Each test starts heavy requests on raw connections, then, while they run, a round of small
ones: a 1 KB store over gRPC and over STOW-RS, a gRPC health check and a small search. Every
small one must be answered before the first heavy answer arrives (an ordering, not a timing):
work that held the event loop would answer the heavy request first. The server runs in its own
process, so that the test's own work does not share its interpreter.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydicom.uid import generate_uid

from dicomrpc import Client
from tests.conftest import spawn_server
from tests.dicomgen import ct_instance
from tests.integration.test_dicomweb_http import STOW_TYPE, multipart

# A study of this many elements in its metadata (sequence items and their elements) in all.
METADATA_ELEMENTS = 150_000
# Instances found by the heavy search, and the items of the ReferencedRequestSequence of their
# study, which each result carries with ``includefield=all``: a page of 150,000 elements.
SEARCHED = 250
REQUESTS = 200


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH", group, element) + vr + struct.pack("<H", len(value)) + value


def _sequence(group: int, element: int, items: list[bytes]) -> bytes:
    body = b"".join(b"\xfe\xff\x00\xe0" + struct.pack("<I", len(item)) + item for item in items)
    return struct.pack("<HH", group, element) + b"SQ\x00\x00" + struct.pack("<I", len(body)) + body


def many_elements(study: str, series: str, items: int) -> bytes:
    """A CT instance with a ReferencedImageSequence of ``items`` items of 3 elements each.

    Written as bytes (explicit VR little endian), which is much faster than through pydicom.
    """
    base = ct_instance(study, series)
    at = base.index(b"\x10\x00\x10\x00PN")  # PatientName: the first element after (0008,1140)
    sop_class = b"1.2.840.10008.5.1.4.1.1.2\x00"
    sequence = _sequence(
        0x0008,
        0x1140,
        [
            _element(0x0008, 0x1150, b"UI", sop_class)
            + _element(0x0008, 0x1155, b"UI", f"1.2.3.{n:06d}".encode())
            + _element(0x0008, 0x1160, b"IS", b"1 ")
            for n in range(items)
        ],
    )
    return base[:at] + sequence + base[at:]


def with_requests(study: str, items: int) -> bytes:
    """A small CT instance whose ReferencedRequestSequence (a study attribute) has ``items``."""
    base = ct_instance(study, rows=4, columns=4, patient_id="MANY")
    at = base.index(b"\xe0\x7f\x10\x00")  # Pixel Data, the last element
    sequence = _sequence(
        0x0040,
        0xA370,
        [
            _element(0x0008, 0x0050, b"SH", f"A{n:07d}".encode())
            + _element(0x0040, 0x1001, b"SH", f"R{n:07d}".encode())
            for n in range(items)
        ],
    )
    return base[:at] + sequence + base[at:]


@dataclass(frozen=True)
class Server:
    """A server process to send requests to."""

    target: str
    url: str

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/")[0])


@contextlib.contextmanager
def serving(data_dir: Path, *args: str) -> Iterator[Server]:
    proc = spawn_server(data_dir, *args)
    try:
        yield Server(proc.target, proc.dicomweb_url)
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A server holding a heavy study (its UID is given) and SEARCHED instances to search."""
    with serving(tmp_path_factory.mktemp("isolation") / "data") as server:
        study, series = generate_uid(), generate_uid()
        per_instance = METADATA_ELEMENTS // 4 // 4  # 4 instances, items of 3 elements + the item
        heavy = [many_elements(study, series, per_instance) for _ in range(4)]
        searched_study = generate_uid()
        searched = [with_requests(searched_study, REQUESTS) for _ in range(SEARCHED)]
        with Client(server.target) as client:
            assert len(client.store(heavy).stored) == 4
            assert len(client.store(searched).stored) == SEARCHED
        yield server, study


class Heavy(threading.Thread):
    """A request sent whole on its own connection; the time its answer starts to arrive."""

    def __init__(self, server: Server, request: bytes) -> None:
        super().__init__()
        self.server = server
        self.request = request
        self.sent = threading.Event()
        self.answered_at = float("inf")
        self.status = 0

    def run(self) -> None:
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=120) as sock:
            # Sent from another thread: an answer may come (431) before the request is sent.
            sender = threading.Thread(target=self._send, args=(sock,))
            sender.start()
            first = sock.recv(65536)
            self.answered_at = time.monotonic()
            self.status = int(first.split(b" ", 2)[1])
            with contextlib.suppress(ConnectionResetError):
                while sock.recv(1 << 20):
                    pass
            sender.join()

    def _send(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # refused before the end of it
            sock.sendall(self.request)
        self.sent.set()


def get(path: str, **headers: str) -> bytes:
    lines = [f"GET /dicomweb{path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def small_requests(server: Server) -> dict[str, float]:
    """A 1 KB store (gRPC, STOW-RS), a health check and a small search: when each ended."""
    done: dict[str, float] = {}
    instances = [ct_instance(rows=16, columns=16) for _ in range(2)]  # about 1 KB each
    assert all(len(instance) < 1500 for instance in instances)
    stow_body = multipart(instances[1:])
    with (
        Client(server.target) as client,
        httpx.Client(base_url=server.url, timeout=120) as http,
        grpc.insecure_channel(server.target) as channel,
    ):
        assert len(client.store(instances[:1]).stored) == 1
        done["gRPC store"] = time.monotonic()
        stow = http.post("/studies", content=stow_body, headers={"Content-Type": STOW_TYPE})
        assert stow.status_code == 200
        done["STOW-RS store"] = time.monotonic()
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=120
        )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        done["health check"] = time.monotonic()
        search = http.get("/studies", params={"PatientID": "PAT-1", "limit": "1"})
        assert search.status_code == 200
        done["small search"] = time.monotonic()
    return done


def while_heavy(server: Server, requests: list[bytes]) -> tuple[dict[str, float], float]:
    """Run the small requests while ``requests`` run; return their ends and the first answer."""
    heavy = [Heavy(server, request) for request in requests]
    for thread in heavy:
        thread.start()
    for thread in heavy:
        assert thread.sent.wait(60)
    time.sleep(0.2)  # the server is into the heavy work
    done = small_requests(server)
    for thread in heavy:
        thread.join(120)
    assert all(thread.status for thread in heavy)
    return done, min(thread.answered_at for thread in heavy)


def late(done: dict[str, float], heavy_answered: float) -> list[str]:
    """The small requests answered after the first heavy one."""
    return sorted(name for name, at in done.items() if at > heavy_answered)


@pytest.mark.slow
def test_a_huge_metadata_request_stalls_no_one(loaded: tuple[Server, str]) -> None:
    server, study = loaded
    done, heavy_answered = while_heavy(server, [get(f"/studies/{study}/metadata")])
    assert not late(done, heavy_answered)


def test_a_huge_search_stalls_no_one(loaded: tuple[Server, str]) -> None:
    server, _ = loaded
    page = get("/instances?PatientID=MANY&limit=1000&includefield=all")
    done, heavy_answered = while_heavy(server, [page])
    assert not late(done, heavy_answered)


@pytest.mark.slow
def test_a_16_mib_accept_header_stalls_no_one(tmp_path: Path) -> None:
    # With a head limit that lets it in, the header is parsed (in a thread) and negotiated.
    with serving(tmp_path / "data", "--http-max-header-bytes", str(32 << 20)) as server:
        item = "text/html;q=0.5;level=" + "x" * 48  # 72 bytes with its separator
        accept = ", ".join([item] * ((16 << 20) // 72 + 1)) + ", application/dicom+json"
        assert len(accept) >= 16 << 20
        done, heavy_answered = while_heavy(server, [get("/studies", Accept=accept)])
    assert not late(done, heavy_answered)


@pytest.mark.slow
def test_16_mib_accept_headers_are_431_and_stall_no_one(tmp_path: Path) -> None:
    # At the default head limit the header is refused after 64 KiB of it, with 431.
    with serving(tmp_path / "data") as server:
        accept = "text/html, " * ((16 << 20) // 11)
        heavy = [Heavy(server, get("/studies", Accept=accept)) for _ in range(4)]
        for thread in heavy:
            thread.start()
        small_requests(server)
        for thread in heavy:
            thread.join(120)
    assert [thread.status for thread in heavy] == [431] * 4
