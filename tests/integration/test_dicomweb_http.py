"""The gateway over raw HTTP: statuses and edge cases dicomweb-client does not reach."""

from __future__ import annotations

import io
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.conftest import RunningServer, spawn_server, start_server
from tests.dicomgen import ct_instance
from tests.integration.test_store_pydicom_data import EXPECTED, ROOT

BOUNDARY = "test-boundary-1234"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def multipart(parts: list[bytes], boundary: str = BOUNDARY, close: bool = True) -> bytes:
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
        for part in parts
    )
    return body + (f"--{boundary}--\r\n".encode() if close else b"")


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.dicomweb_url, timeout=60) as client:
        yield client


def stow(http: httpx.Client, parts: list[bytes], path: str = "/studies") -> httpx.Response:
    return http.post(path, content=multipart(parts), headers={"Content-Type": STOW_TYPE})


def _sequence(body: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return list(body.get(tag, {}).get("Value", []))


def _instance_url(study: str, series: str, sop: str) -> str:
    return f"/studies/{study}/series/{series}/instances/{sop}"


def test_stow_statuses_200_202_409(http: httpx.Client) -> None:
    study, series = generate_uid(), generate_uid()
    first = ct_instance(study, series)
    response = stow(http, [first])
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    body = response.json()
    (item,) = _sequence(body, "00081199")
    assert item["00081190"]["Value"][0].endswith(
        f"/studies/{study}/series/{series}/instances/" + item["00081155"]["Value"][0]
    )
    assert body["00081190"]["Value"][0].endswith(f"/dicomweb/studies/{study}")

    second = ct_instance(study, series)
    taken = bytearray(first)
    taken[-1] ^= 0xFF  # the first's SOP Instance UID, other bytes
    response = stow(http, [second, bytes(taken)])  # the second's UID exists, with other bytes
    assert response.status_code == 202
    (failed,) = _sequence(response.json(), "00081198")
    assert failed["00081197"]["Value"] == [45070]

    response = stow(http, [first])  # the same bytes again: already stored, a success
    assert response.status_code == 200
    (item,) = _sequence(response.json(), "00081199")
    assert item["00081155"]["Value"] == [str(dcmread(io.BytesIO(first)).SOPInstanceUID)]

    changed = bytearray(first)
    changed[-1] ^= 0xFF  # the same SOP Instance UID with other bytes: a conflict
    response = stow(http, [bytes(changed)])
    assert response.status_code == 409
    assert _sequence(response.json(), "00081198")[0]["00081197"]["Value"] == [45070]


def test_stow_to_a_study_refuses_other_studies(http: httpx.Client) -> None:
    study = generate_uid()
    response = stow(http, [ct_instance(), ct_instance(study)], path=f"/studies/{study}")
    assert response.status_code == 202
    (failed,) = _sequence(response.json(), "00081198")
    assert failed["00081197"]["Value"] == [43265]
    assert len(_sequence(response.json(), "00081199")) == 1


def test_stow_warnings_name_the_attribute(http: httpx.Client) -> None:
    bad_date = ct_instance().replace(b"20240102", b"2024.1.2")  # StudyDate: not a DA value
    response = stow(http, [bad_date])
    assert response.status_code == 200
    (item,) = _sequence(response.json(), "00081199")
    assert item["00081196"]["Value"] == [1]
    comments = [c["00000902"]["Value"][0] for c in item["00741048"]["Value"]]
    assert any(c.startswith("StudyDate") for c in comments), comments


@pytest.mark.parametrize(
    "content_type",
    [
        "application/dicom",
        'multipart/related; type="application/dicom+json"; boundary=x',
        "text/plain",
        "",
    ],
)
def test_stow_unsupported_media_type_is_415(http: httpx.Client, content_type: str) -> None:
    response = http.post("/studies", content=b"x", headers={"Content-Type": content_type})
    assert response.status_code == 415
    assert "Content-Type" in response.json()["message"]


@pytest.mark.parametrize(
    ("content_type", "body", "words"),
    [
        ('multipart/related; type="application/dicom"', multipart([b"x"]), "no boundary"),
        (STOW_TYPE, multipart([b"x"], boundary="other"), "no part was found"),
        (STOW_TYPE, f"--{BOUNDARY}\r\nno colon here\r\n\r\nx".encode(), "header line"),
        (STOW_TYPE, b"", "no part was found"),
        (STOW_TYPE, f"--{BOUNDARY} trailing\r\n\r\nx".encode(), "other text"),
    ],
)
def test_malformed_multipart_is_400_and_stores_nothing(
    server: RunningServer, http: httpx.Client, content_type: str, body: bytes, words: str
) -> None:
    response = http.post("/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 400
    assert words in response.json()["message"]
    assert server.archive.index.counts().instances == 0


def test_body_without_close_delimiter_keeps_complete_parts(
    server: RunningServer, http: httpx.Client
) -> None:
    whole, cut = ct_instance(), ct_instance()
    body = multipart([whole])[: -len(f"--{BOUNDARY}--\r\n")]
    body += f"--{BOUNDARY}\r\n\r\n".encode() + cut[: len(cut) // 2]
    response = http.post("/studies", content=body, headers={"Content-Type": STOW_TYPE})
    assert response.status_code == 202
    assert "inside part 2" in response.headers["warning"]
    assert len(_sequence(response.json(), "00081199")) == 1
    (failed,) = _sequence(response.json(), "00081198")
    assert failed["00081197"]["Value"] == [272]
    assert server.archive.index.counts().instances == 1


def test_client_cut_off_mid_part_stores_only_complete_parts(
    server: RunningServer, tmp_path: Path
) -> None:
    instances = [ct_instance(rows=64, columns=64, seed=i) for i in range(3)]
    complete = multipart(instances[:2], close=False)
    partial = f"--{BOUNDARY}\r\n\r\n".encode() + instances[2][: len(instances[2]) // 2]
    declared = len(complete) + len(instances[2]) + 200
    port = server.http.port
    with socket.create_connection(("127.0.0.1", port)) as sock:
        head = (
            f"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: {STOW_TYPE}\r\nContent-Length: {declared}\r\n\r\n"
        )
        sock.sendall(head.encode() + complete + partial)
        # The server has the two complete parts when the third is still arriving.
        _wait_for(lambda: server.archive.index.counts().instances == 2)
    _wait_for(lambda: not any(server.archive.blobs.uploads_dir.iterdir()))
    assert server.archive.index.counts().instances == 2
    assert len(list(server.archive.blobs.blob_ids())) == 2


def _wait_for(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def _stored(http: httpx.Client, **kwargs: Any) -> tuple[str, str, str]:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    assert stow(http, [ct_instance(study, series, sop, **kwargs)]).status_code == 200
    return study, series, sop


def test_metadata_etag_and_304(http: httpx.Client) -> None:
    study, series, _ = _stored(http)
    first = http.get(f"/studies/{study}/metadata")
    assert first.status_code == 200
    etag = first.headers["etag"]
    again = http.get(f"/studies/{study}/metadata", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    assert stow(http, [ct_instance(study, series)]).status_code == 200
    changed = http.get(f"/studies/{study}/metadata", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag
    assert len(changed.json()) == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    ("suffix", "accept", "words"),
    [
        ("", "text/html", "text/html"),
        ("", 'multipart/related; type="application/dicom"; transfer-syntax=1.2.3.4', "1.2.3.4"),
        ("/metadata", "application/dicom+xml", "application/dicom+json"),
        ("/frames/1", "image/gif", "application/octet-stream"),
        ("/rendered", "image/gif", "image/png"),
    ],
)
def test_unsupported_accept_is_406(
    http: httpx.Client, suffix: str, accept: str, words: str
) -> None:
    url = _instance_url(*_stored(http)) + suffix
    response = http.get(url, headers={"Accept": accept})
    assert response.status_code == 406
    assert words in response.json()["message"]


def test_default_transfer_syntax_and_single_part(http: httpx.Client) -> None:
    study, series, sop = _stored(http)
    url = _instance_url(study, series, sop)
    multipart_response = http.get(url)
    assert multipart_response.headers["content-type"].startswith(
        'multipart/related; type="application/dicom"'
    )
    assert "transfer-syntax=1.2.840.10008.1.2.1" in multipart_response.headers["content-type"]
    single = http.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert (
        single.headers["content-type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    )
    assert single.content[128:132] == b"DICM"
    assert single.content in multipart_response.content


@pytest.mark.slow
def test_missing_resources_are_404(http: httpx.Client) -> None:
    study, series, sop = _stored(http)
    other = generate_uid()
    for url in [
        f"/studies/{other}",
        f"/studies/{other}/metadata",
        f"/studies/{study}/series/{other}",
        _instance_url(study, series, other),
        _instance_url(study, series, other) + "/frames/1",
        _instance_url(study, series, sop) + "/bulkdata/00091001",
    ]:
        response = http.get(url)
        assert response.status_code == 404, url
        assert response.json()["reason"] == "RESOURCE_NOT_FOUND"


def test_frames_out_of_range_and_bad_lists_are_400(http: httpx.Client) -> None:
    url = _instance_url(*_stored(http))
    response = http.get(url + "/frames/2")
    assert response.status_code == 400
    assert "frame 2 is outside 1..1" in response.json()["message"]
    assert http.get(url + "/frames/1,x").status_code == 400
    assert http.get(url + "/rendered", params={"quality": "high"}).status_code == 400


def test_qido_204_and_400_name_the_parameter(http: httpx.Client) -> None:
    _stored(http)
    assert http.get("/studies").status_code == 200
    assert http.get("/studies", params={"PatientID": "NOBODY"}).status_code == 204
    assert http.get("/studies", params={"offset": "5"}).status_code == 204
    for params, name in [
        ({"limit": "abc"}, "limit"),
        ({"limit": "5000"}, "limit"),
        ({"limit": "\u00b2"}, "limit"),  # '²' passes str.isdigit(), not int(): it was a 500
        ({"NotAnAttribute": "1"}, "NotAnAttribute"),
        ({"StudyDate": "yesterday"}, "StudyDate"),
        ({"fuzzymatching": "maybe"}, "fuzzymatching"),
    ]:
        response = http.get("/studies", params=params)
        assert response.status_code == 400, params
        assert name in response.json()["message"], response.json()


def test_qido_takes_the_related_counts_as_include_fields(http: httpx.Client) -> None:
    """Viewers ask for the counts by name (``includefield=00201206``): they are returned."""
    study, _, _ = _stored(http)
    for field in ("00201206", "NumberOfStudyRelatedInstances", "00201208"):
        response = http.get("/studies", params={"StudyInstanceUID": study, "includefield": field})
        assert response.status_code == 200, response.text
        (match,) = response.json()
        assert match["00201206"]["Value"] == [1]
        assert match["00201208"]["Value"] == [1]
    response = http.get(
        f"/studies/{study}/series", params={"includefield": "NumberOfSeriesRelatedInstances"}
    )
    assert response.status_code == 200, response.text
    assert response.json()[0]["00201209"]["Value"] == [1]


def test_delete_is_204_then_404(http: httpx.Client) -> None:
    study, series, sop = _stored(http)
    assert http.delete(_instance_url(study, series, sop)).status_code == 204
    assert http.delete(_instance_url(study, series, sop)).status_code == 404
    assert http.delete(f"/studies/{study}").status_code == 404
    study, series, _ = _stored(http)
    assert http.delete(f"/studies/{study}/series/{series}").status_code == 204
    study, _, _ = _stored(http)
    assert http.delete(f"/studies/{study}").status_code == 204
    assert http.get(f"/studies/{study}/metadata").status_code == 404


def test_cors_preflight_and_exposed_headers(tmp_path: Path) -> None:
    origin = "https://viewer.test"
    running = start_server(tmp_path / "data", cors_origins=(origin,))
    try:
        with httpx.Client(base_url=running.dicomweb_url) as http:
            preflight = http.options(
                "/studies",
                headers={
                    "Origin": origin,
                    "Access-Control-Request-Method": "GET",
                    "Access-Control-Request-Headers": "accept, if-none-match",
                },
            )
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] == origin
            assert "GET" in preflight.headers["access-control-allow-methods"]
            study, _, _ = _stored(http)
            response = http.get(f"/studies/{study}/metadata", headers={"Origin": origin})
            assert response.headers["access-control-allow-origin"] == origin
            assert "etag" in response.headers["access-control-expose-headers"].lower()
            stranger = http.options(
                "/studies",
                headers={"Origin": "https://evil.test", "Access-Control-Request-Method": "GET"},
            )
            assert stranger.status_code == 400
    finally:
        running.stop()


def test_no_cors_headers_without_configured_origins(http: httpx.Client) -> None:
    response = http.get("/studies", headers={"Origin": "https://viewer.test"})
    assert "access-control-allow-origin" not in response.headers


def test_one_access_log_line_per_request(
    http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dicomrpc.access")
    study, _, _ = _stored(http)
    http.get(f"/studies/{study}/metadata")
    http.get("/studies", params={"limit": "x"})
    # The line is written once the response is sent, so it may trail the client a little.
    _wait_for(lambda: len(_access_lines(caplog)) >= 3, timeout=5)
    lines = _access_lines(caplog)
    assert [(line["http"], line["status"]) for line in lines] == [
        ("POST", 200),
        ("GET", 200),
        ("GET", 400),
    ]
    assert lines[0]["bytes_in"] > 0 and lines[1]["bytes_out"] > 0
    assert lines[1]["path"] == f"/dicomweb/studies/{study}/metadata"


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "dicomrpc.access"]


@pytest.mark.slow
def test_sigterm_lets_an_in_flight_stow_finish_then_stops(tmp_path: Path) -> None:
    proc = spawn_server(tmp_path / "data")
    sent = threading.Semaphore(0)

    def slow_body() -> Iterator[bytes]:
        for i in range(10):
            yield multipart([ct_instance(number=i)], close=False)
            sent.release()
            time.sleep(0.1)
        yield f"--{BOUNDARY}--\r\n".encode()

    answers: list[httpx.Response] = []

    def post() -> None:
        with httpx.Client(base_url=proc.dicomweb_url, timeout=60) as http:
            answers.append(
                http.post("/studies", content=slow_body(), headers={"Content-Type": STOW_TYPE})
            )

    writer = threading.Thread(target=post)
    writer.start()
    for _ in range(3):
        assert sent.acquire(timeout=30)
    proc.process.send_signal(signal.SIGTERM)
    writer.join(60)
    assert proc.stop(None) == 0
    assert answers and answers[0].status_code == 200
    assert len(answers[0].json()["00081199"]["Value"]) == 10
    with pytest.raises(httpx.ConnectError):
        httpx.get(proc.dicomweb_url + "/studies", timeout=5)


def test_http_can_be_turned_off(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dicomrpc.cli",
            "serve",
            "--data",
            str(tmp_path / "data"),
            "--grpc-port",
            "0",
            "--http-port",
            "-1",
            "--dimse-port",
            "-1",
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert "serving gRPC on" in process.stdout.readline()
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        assert "DICOMweb" not in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
        assert process.stdout is not None
        process.stdout.close()


def test_stow_of_every_pydicom_file_answers_as_grpc_does(
    server: RunningServer, http: httpx.Client
) -> None:
    """The outcome table of the gRPC store test, through one STOW-RS request."""
    files = sorted(p for p in ROOT.rglob("*") if p.is_file())
    names = [p.relative_to(ROOT).as_posix() for p in files]
    response = stow(http, [p.read_bytes() for p in files])
    assert response.status_code == 202
    body = response.json()
    expected = [EXPECTED[name] for name in names]
    failed = [code for outcome, code in expected if outcome == "failed"]
    warned = [code for outcome, code in expected if outcome != "failed"]
    assert [f["00081197"]["Value"][0] for f in _sequence(body, "00081198")] == failed
    stored = _sequence(body, "00081199")
    assert [s.get("00081196", {}).get("Value", [0])[0] for s in stored] == warned
    new = [outcome for outcome, _ in expected if outcome.startswith("stored")]
    assert server.archive.index.counts().instances == len(new)


def test_stow_to_an_invalid_study_uid_is_400(server: RunningServer, http: httpx.Client) -> None:
    response = stow(http, [ct_instance()], path="/studies/not%20a%20uid")
    assert response.status_code == 400
    assert response.json()["violations"][0]["field"] == "study"
    assert server.archive.index.counts().instances == 0
