"""Retrieve with transcoding, decoded frames, rendered images and capabilities, over gRPC."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file

from dicomrpc import Client, DicomRpcError
from dicomrpc_server.retrieve.capabilities import capabilities

EXPLICIT_LE = "1.2.840.10008.1.2.1"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def _path(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None
    return str(path)


def _pixels(data: bytes) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(io.BytesIO(data)).pixel_array


def _store(client: Client, name: str) -> tuple[str, str, str]:
    r = client.store(_path(name)).instances[0]
    assert r.stored, r.failure_message
    return r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid


def test_capabilities_are_the_servers_computed_matrix(client: Client) -> None:
    got = client.capabilities()
    assert got.transcodings == capabilities()
    assert EXPLICIT_LE in got.transcodings[J2K_LOSSLESS]
    assert got.max_instance_bytes > 0 and got.max_search_limit == 1000
    assert EXPLICIT_LE in got.storable_transfer_syntaxes


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("MR_small_jp2klossless.dcm", EXPLICIT_LE),
        ("MR_small_RLE.dcm", EXPLICIT_LE),
        ("CT_small.dcm", J2K_LOSSLESS),
        ("CT_small.dcm", "1.2.840.10008.1.2"),
    ],
)
def test_transcoded_instance_has_the_same_pixels(client: Client, name: str, target: str) -> None:
    uids = _store(client, name)
    instance = client.retrieve_instance(*uids, transfer_syntax=target)
    assert instance.transfer_syntax_uid == target
    original = _pixels(Path(_path(name)).read_bytes())
    assert np.array_equal(_pixels(instance.data), original)


@pytest.mark.slow
def test_lossy_target_needs_allow_lossy(client: Client) -> None:
    uids = _store(client, "CT_small.dcm")
    if JPEG_BASELINE not in capabilities().get(EXPLICIT_LE, []):
        pytest.skip("no JPEG baseline encoder installed")
    with pytest.raises(DicomRpcError) as caught:
        client.retrieve_instance(*uids, transfer_syntax=JPEG_BASELINE)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.reason == "TRANSFER_SYNTAX_UNSUPPORTED"


@pytest.mark.slow
def test_unknown_target_fails_before_any_byte(client: Client) -> None:
    uids = _store(client, "CT_small.dcm")
    with pytest.raises(DicomRpcError) as caught:
        client.retrieve_study(uids[0], transfer_syntax="1.2.3.4")
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.metadata["transfer_syntax_uid"] == "1.2.3.4"


@pytest.mark.slow
def test_frames_decoded_to_raw_pixels(client: Client) -> None:
    name = "SC_rgb_rle_2frame.dcm"
    uids = _store(client, name)
    frames = client.frames(*uids, [2, 1], transfer_syntax=EXPLICIT_LE)
    original = _pixels(Path(_path(name)).read_bytes())
    assert [f.number for f in frames] == [2, 1]
    assert frames[0].transfer_syntax_uid == EXPLICIT_LE
    assert frames[0].data == original[1].tobytes()
    assert frames[1].data == original[0].tobytes()


@pytest.mark.slow
def test_frames_of_a_deflated_instance_are_decoded(client: Client) -> None:
    uids = _store(client, "image_dfl.dcm")
    (frame,) = client.frames(*uids, [1])
    assert frame.transfer_syntax_uid == EXPLICIT_LE
    assert frame.data == _pixels(Path(_path("image_dfl.dcm")).read_bytes()).tobytes()


@pytest.mark.slow
def test_rendered_jpeg_and_png(client: Client) -> None:
    uids = _store(client, "CT_small.dcm")
    media_type, data = client.rendered(*uids)
    assert media_type == "image/jpeg"
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and image.size == (128, 128)
    media_type, data = client.rendered(*uids, media_type="image/png", max_size=64)
    image = Image.open(io.BytesIO(data))
    assert media_type == "image/png" and image.format == "PNG" and image.size == (64, 64)
    narrow = client.rendered(*uids, media_type="image/png", window=(40, 80))[1]
    assert narrow != client.rendered(*uids, media_type="image/png")[1]


@pytest.mark.slow
def test_rendered_errors(client: Client) -> None:
    uids = _store(client, "CT_small.dcm")
    with pytest.raises(DicomRpcError) as caught:
        client.rendered(*uids, frame=2)
    assert caught.value.code == grpc.StatusCode.OUT_OF_RANGE
    plan = _store(client, "rtplan.dcm")
    with pytest.raises(DicomRpcError) as caught:
        client.rendered(*plan)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.reason == "NO_PIXEL_DATA"
