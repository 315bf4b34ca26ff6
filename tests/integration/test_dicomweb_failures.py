"""Responses that fail: a codec message in a Warning header, a multipart retrieve cut midway."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator

import grpc
import httpx
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from dicomrpc import Client, DicomRpcError
from tests.conftest import RunningServer
from tests.dicomgen import ct_instance
from tests.integration.test_dicomweb_http import STOW_TYPE, multipart

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'


def undecodable_jpeg(study: str, series: str, sop: str) -> bytes:
    """A JPEG Baseline instance whose pixel data no decoder reads (its error spans lines)."""
    ds = pydicom.dcmread(io.BytesIO(ct_instance(study, series, sop)))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    # A JPEG header that holds (SOI, a baseline SOF of the instance's 16 x 16 x 8 bits, a scan)
    # and no tables: every decoder fails on it, each with its own reason.
    sof = b"\xff\xc0\x00\x0b\x08\x00\x10\x00\x10\x01\x01\x11\x00"
    sos = b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
    ds.PixelData = encapsulate([b"\xff\xd8" + sof + sos + b"\x12\x34" * 16 + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.dicomweb_url, timeout=60) as client:
        yield client


def _store(http: httpx.Client, instances: list[bytes]) -> None:
    response = http.post(
        "/studies", content=multipart(instances), headers={"Content-Type": STOW_TYPE}
    )
    assert response.status_code == 200, response.text


@pytest.mark.slow
def test_a_codec_message_with_a_newline_makes_a_proper_warning_header(
    http: httpx.Client,
) -> None:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    _store(http, [undecodable_jpeg(study, series, sop)])
    instance = f"/studies/{study}/series/{series}/instances/{sop}"
    for url, accept in [
        (f"{instance}/rendered", "image/png"),
        (f"{instance}/frames/1", 'multipart/related; type="application/octet-stream"'),
        (instance, f"application/dicom; transfer-syntax={EXPLICIT_VR_LE}"),
    ]:
        response = http.get(url, headers={"Accept": accept})
        assert response.status_code == 406, url
        warning = response.headers["warning"]
        assert warning.startswith('299 dicomrpc "') and warning.endswith('"')
        assert "cannot be" in warning
        assert "\n" in response.json()["message"]  # the body keeps the message whole


def _study_of_three(http: httpx.Client, undecodable_last: bool = False) -> tuple[str, list[bytes]]:
    """A stored study of three instances in one series, sent in this order (their UIDs sort)."""
    study, series, prefix = generate_uid(), generate_uid(), f"2.25.{uuid.uuid4().int}"
    sops = [f"{prefix}.{n}" for n in (1, 2, 3)]
    instances = [ct_instance(study, series, sop, rows=64, columns=64) for sop in sops]
    if undecodable_last:
        instances[2] = undecodable_jpeg(study, series, sops[2])
    _store(http, instances)
    return study, instances


def _read_cut(http: httpx.Client, url: str, accept: str) -> bytes:
    """Read a response that must end in an error; return what arrived before it."""
    received = bytearray()
    with http.stream("GET", url, headers={"Accept": accept}) as response:
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            for data in response.iter_raw():
                received += data
    return bytes(received)


def test_a_transcode_that_fails_midway_cuts_the_response(
    http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dicomrpc.access")
    study, instances = _study_of_three(http, undecodable_last=True)
    # The first two are sent as stored; the third needs a decode, which fails after the
    # response started.
    received = _read_cut(
        http, f"/studies/{study}", f"{MULTIPART_DICOM}; transfer-syntax={EXPLICIT_VR_LE}"
    )
    assert instances[0] in received and instances[1] in received
    assert not received.rstrip().endswith(b"--")  # no close delimiter
    cut = [json.loads(r.getMessage()) for r in caplog.records if r.name == "dicomrpc.access"]
    assert cut[-1]["cut"] is True
    assert cut[-1]["error"] == "TRANSFER_SYNTAX_UNSUPPORTED"


def test_a_file_cut_short_cuts_the_response(server: RunningServer, http: httpx.Client) -> None:
    study, instances = _study_of_three(http)
    found = server.archive.retrieve.instances(study)
    last = server.archive.blobs.path(found[2].record.blob_id)
    last.write_bytes(last.read_bytes()[:1000])
    received = _read_cut(http, f"/studies/{study}", f"{MULTIPART_DICOM}; transfer-syntax=*")
    assert instances[1] in received
    # gRPC says so as well, rather than ending the instance early.
    grpc_only = Client(server.target, http_retrieve=False)
    with grpc_only as client, pytest.raises(DicomRpcError) as caught:
        list(client.iter_instances(study))
    assert "ends after 1000 of the" in str(caught.value)
    # Read over a retrieve grant, the SDK sees the response cut.
    with Client(server.target) as client, pytest.raises(DicomRpcError) as caught:
        list(client.iter_instances(study))
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert "the server cut the response" in str(caught.value)


def test_a_first_part_that_fails_is_answered_with_its_status(http: httpx.Client) -> None:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    _store(http, [undecodable_jpeg(study, series, sop)])
    response = http.get(
        f"/studies/{study}",
        headers={"Accept": f"{MULTIPART_DICOM}; transfer-syntax={EXPLICIT_VR_LE}"},
    )
    assert response.status_code == 406
    assert response.json()["reason"] == "TRANSFER_SYNTAX_UNSUPPORTED"


def test_a_body_malformed_after_a_complete_part_still_reports_that_part(
    http: httpx.Client, client: Client
) -> None:
    """The fault and the parts before it arrive in one chunk: those parts are stored and
    reported, and the fault is the answer's warning (not a bare 409 with an empty body)."""
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    good = ct_instance(study, series, sop)
    body = (
        b"--b\r\nContent-Type: application/dicom\r\n\r\n"
        + good
        + b"\r\n--b\r\nContent-Type: application/dicom\r\n\r\nxyz\r\n--b not a delimiter\r\n"
    )
    response = http.post(
        "/studies",
        content=body,
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
    )
    assert response.status_code == 202, response.text
    stored = response.json()["00081199"]["Value"]
    assert [s["00081155"]["Value"] for s in stored] == [[sop]]
    assert (
        "not a delimiter" in response.headers["Warning"]
        or "delimiter" in response.headers["Warning"]
    )
    assert len(client.metadata(study).datasets) == 1
