"""The gateway against slow, greedy and heavy clients: every HTTP limit and what it answers."""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydicom.uid import generate_uid

from dicomrpc import Client
from tests.conftest import RunningServer, spawn_server, start_server
from tests.dicomgen import ct_instance
from tests.integration.test_dicomweb_http import BOUNDARY, STOW_TYPE, multipart

Response = tuple[int, dict[str, str], bytes]


@contextlib.contextmanager
def serving(tmp_path: Path, **limits: Any) -> Iterator[RunningServer]:
    """A server with ``limits`` (``Settings`` fields), the others at their defaults."""
    running = start_server(tmp_path / "data", **limits)
    try:
        yield running
    finally:
        running.stop()


def _connect(server: RunningServer, timeout: float = 30) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.http.port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset after the answer ends it too)."""
    received = bytearray()
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return bytes(received)
        if not data:
            return bytes(received)
        received += data


def _parse(raw: bytes) -> Response:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def _status_lines(raw: bytes) -> int:
    """How many responses ``raw`` holds (lines that begin as a status line does)."""
    return sum(
        1 for line in raw.split(b"\r\n") if line[:9] == b"HTTP/1.1 " and line[9:12].isdigit()
    )


def _head(path: str = "/dicomweb/studies", method: str = "GET", **headers: str) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- the request head --------------------------------------------------------------------------


def test_a_trickled_head_is_cut_with_408(tmp_path: Path) -> None:
    with serving(tmp_path, http_header_timeout_s=1.0) as limited:
        head = _head()
        stop = threading.Event()
        sent = [0]

        def trickle(sock: socket.socket) -> None:
            # One byte every 0.1 s: the whole head would take several times the timeout.
            for byte in head[:-2]:
                if stop.wait(0.1):
                    return
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    return
                sent[0] += 1

        with _connect(limited) as sock:
            thread = threading.Thread(target=trickle, args=(sock,))
            thread.start()
            try:
                status, headers, body = _parse(_read_until_closed(sock))
            finally:
                unsent = len(head) - 2 - sent[0]
                stop.set()
                thread.join()
        assert unsent > 0, "the connection stayed open for the whole head"
        assert status == 408
        assert headers["connection"] == "close"
        error = json.loads(body)
        assert error["reason"] == "LIMIT_EXCEEDED"
        assert error["metadata"] == {"limit": "http_header_timeout_s", "value": "1.0"}
        assert "did not arrive within 1 s" in headers["warning"]


@pytest.mark.slow
def test_a_connection_that_sends_nothing_gets_408(tmp_path: Path) -> None:
    with serving(tmp_path, http_header_timeout_s=1.0) as limited:
        with _connect(limited) as sock:
            status, _, _ = _parse(_read_until_closed(sock))
        assert status == 408
        # A request on a new connection is served as usual.
        with httpx.Client(base_url=limited.dicomweb_url) as client:
            assert client.get("/studies").status_code == 204


def test_a_head_over_the_limit_is_431(tmp_path: Path) -> None:
    with serving(tmp_path, http_max_header_bytes=4096) as limited:
        with httpx.Client(base_url=limited.dicomweb_url) as client:
            assert client.get("/studies", headers={"X-Fill": "a" * 3000}).status_code == 204
            response = client.get("/studies", headers={"X-Fill": "a" * 5000})
        assert response.status_code == 431
        assert response.json()["metadata"] == {"limit": "http_max_header_bytes", "value": "4096"}
        assert response.headers["connection"] == "close"


def test_a_16_mib_accept_header_is_431(server: RunningServer) -> None:
    total = 16 * 1024 * 1024
    sent = [0]

    def send(sock: socket.socket) -> None:
        piece = b"application/dicom+json, " * 2730  # 64 KiB
        try:
            sock.sendall(b"GET /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: ")
            while sent[0] < total:
                sock.sendall(piece)
                sent[0] += len(piece)
        except OSError:
            return

    with _connect(server) as sock:
        thread = threading.Thread(target=send, args=(sock,))
        thread.start()
        status, _, body = _parse(_read_until_closed(sock))
        thread.join()
    assert status == 431
    assert json.loads(body)["metadata"]["limit"] == "http_max_header_bytes"


def test_a_long_request_target_is_414(server: RunningServer) -> None:
    with httpx.Client(base_url=server.dicomweb_url) as client:
        response = client.get("/studies", params={"PatientID": "x" * 20_000})
    assert response.status_code == 414
    assert response.json()["metadata"] == {"limit": "http_max_url_bytes", "value": "16384"}
    assert "longer than 16384 bytes" in response.headers["warning"]


def test_a_request_that_is_not_http_is_400_as_json(server: RunningServer) -> None:
    with _connect(server) as sock:
        sock.sendall(b"\x16\x03\x01 not a request line\r\n\r\n")
        status, _, body = _parse(_read_until_closed(sock))
    assert status == 400
    assert json.loads(body)["violations"][0]["field"] == "request"


def test_a_request_line_without_a_version_is_400_and_what_follows_is_not_parsed(
    server: RunningServer,
) -> None:
    # No "HTTP/1.1": the parser takes the line for a whole HTTP/0.9 request, and what follows
    # for the next request (here not a valid one). One clear answer, and the connection ends.
    with _connect(server) as sock:
        sock.sendall(b"PATCH /dicomweb/studies/--b\r\nContent-Type: application/dicom\r\n\r\n")
        sock.sendall(b"\x00" * 5000)
        raw = _read_until_closed(sock)
    status, _, body = _parse(raw)
    assert status == 400
    assert "HTTP version" in json.loads(body)["violations"][0]["description"]
    assert _status_lines(raw) == 1


def test_an_invalid_request_after_a_valid_one_still_gets_the_first_answered(
    server: RunningServer,
) -> None:
    # A pipelined request that cannot be parsed arrives while the first one is answered: the
    # first answer is sent whole, then the connection ends (a lingering close, not a reset).
    with _connect(server) as sock:
        sock.sendall(_head("/dicomweb/studies?limit=1") + b"\x00 not a request\r\n\r\n" * 200)
        raw = _read_until_closed(sock)
    assert raw, "the connection was closed without an answer"
    status, _, _ = _parse(raw)
    assert status in (200, 204)
    assert _status_lines(raw) == 1


def test_a_body_that_is_not_http_is_400_while_its_request_waits_for_it(
    server: RunningServer,
) -> None:
    # A chunked STOW-RS whose chunk size is not a number: the request has begun (the store
    # reads its body) and has no answer yet; it ends with the parser's error as its answer.
    head = _head(
        "/dicomweb/studies",
        method="POST",
        **{"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
        **{"Transfer-Encoding": "chunked"},
    )
    with _connect(server) as sock:
        sock.sendall(head + b"4\r\n--b\r\n")
        time.sleep(0.3)  # the store is under way, waiting for the rest
        sock.sendall(b"zz\r\nnot a chunk\r\n")
        raw = _read_until_closed(sock)
    status, _, body = _parse(raw)
    assert status == 400
    assert "not a valid HTTP/1.1 request" in json.loads(body)["violations"][0]["description"]
    assert _status_lines(raw) == 1


def test_an_idle_keep_alive_connection_is_closed(tmp_path: Path) -> None:
    with serving(tmp_path, http_keep_alive_s=1) as limited:
        with _connect(limited) as sock:
            sock.sendall(_head())
            status, headers, _ = _parse(_read_until_closed(sock))
        assert status == 204
        assert "connection" not in headers  # kept alive, until the idle timeout closed it


# -- the request body --------------------------------------------------------------------------


@pytest.mark.slow
def test_a_stalled_stow_keeps_its_complete_parts_and_removes_the_partial_one(
    tmp_path: Path,
) -> None:
    with serving(tmp_path, http_body_timeout_s=1.0) as limited:
        _stalled_stow(limited)


def _stalled_stow(limited: RunningServer) -> None:
    complete = multipart([ct_instance()], close=False)
    partial = ct_instance(rows=64, columns=64)
    body = complete + f"--{BOUNDARY}\r\n\r\n".encode() + partial[: len(partial) // 2]
    declared = len(complete) + len(partial) + 200
    with _connect(limited) as sock:
        sock.sendall(
            _head(method="POST", **{"Content-Type": STOW_TYPE, "Content-Length": str(declared)})
        )
        sock.sendall(body)  # then nothing more: the client stalls
        status, headers, answer = _parse(_read_until_closed(sock))
    assert status == 202
    assert "no byte of the request body arrived for 1 s" in headers["warning"]
    result = json.loads(answer)
    assert len(result["00081199"]["Value"]) == 1
    assert result["00081198"]["Value"][0]["00081197"]["Value"] == [272]
    assert limited.archive.index.counts().instances == 1
    assert not any(limited.archive.blobs.uploads_dir.iterdir())


@pytest.mark.slow
def test_a_stalled_body_without_a_complete_part_is_408(tmp_path: Path) -> None:
    with serving(tmp_path, http_body_timeout_s=1.0) as limited:
        instance = ct_instance()
        with _connect(limited) as sock:
            sock.sendall(
                _head(method="POST", **{"Content-Type": STOW_TYPE, "Content-Length": "100000"})
            )
            sock.sendall(f"--{BOUNDARY}\r\n\r\n".encode() + instance[:100])
            status, _, body = _parse(_read_until_closed(sock))
        assert status == 408
        assert json.loads(body)["metadata"] == {"limit": "http_body_timeout_s", "value": "1.0"}
        assert limited.archive.index.counts().instances == 0
        assert not any(limited.archive.blobs.uploads_dir.iterdir())


@pytest.mark.slow
def test_an_answer_before_the_body_is_read_ends_the_connection(server: RunningServer) -> None:
    with _connect(server) as sock:
        # A body of the wrong type is refused from its headers, before a byte of it is read;
        # the client then sends only a little of the 10 MB it announced.
        sock.sendall(
            _head(method="POST", **{"Content-Type": "text/plain", "Content-Length": "10000000"})
        )
        sock.sendall(b"x" * 1000)
        status, _, _ = _parse(_read_until_closed(sock))
    assert status == 415


def test_a_body_that_follows_an_early_answer_keeps_the_connection(server: RunningServer) -> None:
    with _connect(server) as sock:
        sock.sendall(_head(method="POST", **{"Content-Type": "text/plain", "Content-Length": "2"}))
        first = _read_response(sock)
        sock.sendall(b"{}")  # the body, after the answer: read and dropped
        sock.sendall(_head())
        second = _read_response(sock)
    assert (first[0], second[0]) == (415, 204)


def _read_response(sock: socket.socket) -> Response:
    """One response of a kept-alive connection (its body is as long as Content-Length says)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the connection was closed"
        data += chunk
    status, headers, body = _parse(data)
    while len(body) < int(headers.get("content-length", "0")):
        body += sock.recv(65536)
    return status, headers, body


def test_a_stow_over_the_part_limit_is_413_naming_it(tmp_path: Path) -> None:
    with serving(tmp_path, http_max_stow_parts=5) as limited:
        study = generate_uid()
        instances = [ct_instance(study, seed=i) for i in range(7)]
        with httpx.Client(base_url=limited.dicomweb_url, timeout=60) as client:
            response = client.post(
                "/studies", content=multipart(instances), headers={"Content-Type": STOW_TYPE}
            )
            assert response.status_code == 413
            error = response.json()
            assert error["reason"] == "LIMIT_EXCEEDED"
            assert error["metadata"] == {
                "limit": "http_max_stow_parts",
                "value": "5",
                "stored": "5",
                "processed": "5",
            }
            assert "more than 5 parts" in error["message"]
            # The first five were stored; the others never were.
            assert limited.archive.index.counts().instances == 5
            exactly = client.post(
                "/studies", content=multipart(instances[5:]), headers={"Content-Type": STOW_TYPE}
            )
            assert exactly.status_code == 200
        assert limited.archive.index.counts().instances == 7


@pytest.mark.slow
def test_a_stow_of_many_tiny_parts_takes_linear_time(tmp_path: Path) -> None:
    with serving(tmp_path, http_max_stow_parts=60_000) as limited:
        # 59,999 empty parts: each is refused as not DICOM. Bounded by pytest's timeout: with a
        # cost per part that grew with the parts before it, this took minutes.
        count = 59_999
        body = b"".join(f"--{BOUNDARY}\r\n\r\n\r\n".encode() for _ in range(count))
        body += f"--{BOUNDARY}--\r\n".encode()
        with httpx.Client(base_url=limited.dicomweb_url, timeout=120) as client:
            response = client.post("/studies", content=body, headers={"Content-Type": STOW_TYPE})
        assert response.status_code == 409
        assert len(response.json()["00081198"]["Value"]) == count


# -- connections -------------------------------------------------------------------------------


def test_at_the_cap_the_longest_idle_connection_makes_room(tmp_path: Path) -> None:
    with serving(tmp_path, http_max_connections=3) as limited:
        gate = limited.http.gate
        idle = [_connect(limited) for _ in range(3)]
        wait_for(lambda: gate.served == 3)
        with httpx.Client(base_url=limited.dicomweb_url) as client:
            assert client.get("/studies").status_code == 204
        assert idle[0].recv(1) == b""  # the oldest was closed to make room
        for sock in idle:
            sock.close()


def test_at_the_cap_with_every_connection_busy_a_new_one_gets_503(tmp_path: Path) -> None:
    with serving(tmp_path, http_max_connections=3) as limited:
        gate = limited.http.gate
        busy = [_connect(limited) for _ in range(3)]
        for sock in busy:
            sock.sendall(b"GET /dicomweb/studies HTTP/1.1\r\n")  # a head under way
        wait_for(lambda: gate.served == 3 and gate.idle_count == 0)
        with httpx.Client(base_url=limited.dicomweb_url) as client:
            response = client.get("/studies")
        assert response.status_code == 503
        assert response.json()["metadata"] == {"limit": "http_max_connections", "value": "3"}
        for sock in busy:  # the busy ones are served as usual
            sock.sendall(b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert _parse(_read_until_closed(sock))[0] == 204
            sock.close()


def _lower_descriptor_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


@pytest.mark.slow
def test_sockets_past_the_descriptor_limit_starve_neither_grpc_nor_http(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = spawn_server(
            tmp_path / "data",
            "--http-header-timeout",
            "3",
            log=log,
            preexec_fn=_lower_descriptor_limit,
        )
    port = int(proc.dicomweb_url.rsplit(":", 1)[1].split("/")[0])
    sockets: list[socket.socket] = []
    try:
        with (
            Client(proc.target) as client,
            httpx.Client(base_url=proc.dicomweb_url, timeout=30) as http,
        ):
            # More idle connections than the process has descriptors.
            sockets += [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
            _serving(client)
            assert http.get("/studies").status_code == 204
            assert len(client.store([ct_instance()]).stored) == 1
            # As many connections with a head under way: beyond the cap, 503 at once.
            busy = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
            sockets += busy
            for sock in busy:
                sock.sendall(b"GET /dicomweb/studies HTTP/1.1\r\n")
            _serving(client)
            assert http.get("/studies").status_code in (200, 503)
            assert len(client.store([ct_instance()]).stored) == 1
            # The heads never complete: 408 ends them, and HTTP serves again.
            wait_for(lambda: _get(http) == 200)
    finally:
        for sock in sockets:
            sock.close()
        proc.stop()
    text = log_path.read_text()
    assert len(text) < 10_000, text[:2000]
    assert "Too many open files" not in text


def _serving(client: Client) -> None:
    with grpc.insecure_channel(client.target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def _get(http: httpx.Client) -> int:
    return http.get("/studies").status_code


# -- helpers shared with other modules -------------------------------------------------------


def raw_request(server: RunningServer, data: bytes) -> Response:
    """Send ``data`` on a new connection and read the answer until the server closes it."""
    with _connect(server) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return _parse(_read_until_closed(sock))


def wait_for(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)
