"""Responses that fail: a codec message in a Warning header."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from tests.conftest import RunningServer
from tests.dicomgen import ct_instance
from tests.integration.test_dicomweb_http import STOW_TYPE, multipart

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"


def undecodable_jpeg(study: str, series: str, sop: str) -> bytes:
    """A JPEG Baseline instance whose pixel data no decoder reads (its error spans lines)."""
    ds = pydicom.dcmread(io.BytesIO(ct_instance(study, series, sop)))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([b"\xff\xd8 not a JPEG\r\nat all" + b"\x00" * 20])
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
