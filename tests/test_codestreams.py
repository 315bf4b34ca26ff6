"""Codestream headers: what real encoders write is read back; forged sizes are refused."""

from __future__ import annotations

import struct
import warnings

import imagecodecs
import numpy as np
import pytest
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import JPEGLSLossless, RLELossless

from dicomrpc_server.dicom.codestreams import check_frame, read_header
from dicomrpc_server.dicom.pixeldata import FrameGeometry
from dicomrpc_server.errors import Code, ServiceError
from tests.bombgen import forge_siz, j2k_frame

J2K = "1.2.840.10008.1.2.4.90"
HTJ2K = "1.2.840.10008.1.2.4.201"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"
JPEG_LS = "1.2.840.10008.1.2.4.80"
RLE = "1.2.840.10008.1.2.5"
LIMIT = 1 << 28


def _geometry(rows: int, columns: int, samples: int = 1, bits: int = 8) -> FrameGeometry:
    photometric = "MONOCHROME2" if samples == 1 else "RGB"
    return FrameGeometry(rows, columns, samples, bits, bits, photometric)


def _pydicom_encode(uid: str, arr: np.ndarray, bits: int, plugin: str) -> bytes:
    rows, columns = arr.shape[:2]
    samples = 1 if arr.ndim == 2 else arr.shape[2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bytes(
            get_encoder(uid).encode(
                arr,
                encoding_plugin=plugin,
                rows=rows,
                columns=columns,
                samples_per_pixel=samples,
                bits_allocated=bits,
                bits_stored=bits,
                pixel_representation=0,
                photometric_interpretation="MONOCHROME2" if samples == 1 else "RGB",
                number_of_frames=1,
                planar_configuration=0,
            )
        )


GREY8 = np.random.default_rng(1).integers(0, 256, (40, 48), dtype=np.uint8)
GREY16 = np.random.default_rng(2).integers(0, 4096, (40, 48), dtype=np.uint16)
RGB8 = np.random.default_rng(3).integers(0, 256, (40, 48, 3), dtype=np.uint8)


def _real_frames() -> list[tuple[str, str, bytes, FrameGeometry]]:
    return [
        ("JPEG 2000", J2K, j2k_frame(40, 48), _geometry(40, 48)),
        ("JP2", J2K, bytes(imagecodecs.jpeg2k_encode(GREY8, codecformat="JP2")), _geometry(40, 48)),
        ("HTJ2K", HTJ2K, bytes(imagecodecs.htj2k_encode(GREY16)), _geometry(40, 48, bits=16)),
        ("JPEG", JPEG_BASELINE, bytes(imagecodecs.jpeg8_encode(RGB8)), _geometry(40, 48, 3)),
        (
            "JPEG lossless",
            JPEG_LOSSLESS,
            bytes(imagecodecs.jpeg8_encode(GREY16, lossless=True, predictor=1, bitspersample=12)),
            _geometry(40, 48, bits=16),
        ),
        (
            "JPEG-LS",
            JPEG_LS,
            _pydicom_encode(JPEGLSLossless, GREY16, 16, "pyjpegls"),
            _geometry(40, 48, bits=16),
        ),
        ("RLE", RLE, _pydicom_encode(RLELossless, RGB8, 8, "pydicom"), _geometry(40, 48, 3)),
    ]


@pytest.mark.parametrize(("name", "syntax", "frame", "geometry"), _real_frames())
def test_real_codestreams_agree_with_their_data_set(
    name: str, syntax: str, frame: bytes, geometry: FrameGeometry
) -> None:
    header = read_header(frame, syntax)
    assert header is not None
    if header.codec != "RLE":
        assert (header.rows, header.columns) == (40, 48), name
    check_frame(frame, syntax, geometry, LIMIT, name)  # no error


def _refused(frame: bytes, syntax: str, geometry: FrameGeometry, limit: int = LIMIT) -> str:
    with pytest.raises(ServiceError) as caught:
        check_frame(frame, syntax, geometry, limit, "frame 1 of instance 1.2.3")
    assert caught.value.code is Code.FAILED_PRECONDITION
    assert caught.value.reason == "FRAME_HEADER_MISMATCH"
    assert caught.value.message.startswith("frame 1 of instance 1.2.3")
    return caught.value.message


def test_a_forged_siz_is_refused() -> None:
    forged = forge_siz(j2k_frame(64, 64), 40000, 40000)
    message = _refused(forged, J2K, _geometry(64, 64))
    assert "40000 rows where Rows is 64" in message
    assert "40000 columns where Columns is 64" in message
    assert "1600000000 pixels, more than this server's limit" in message


def test_a_siz_over_the_pixel_limit_is_refused_even_when_the_data_set_agrees() -> None:
    frame = j2k_frame(64, 64)
    assert "4096 pixels, more than this server's limit of 4000" in _refused(
        frame, J2K, _geometry(64, 64), limit=4000
    )


def test_too_many_tiles_are_refused() -> None:
    frame = bytearray(j2k_frame(64, 64))
    frame[8:16] = struct.pack(">II", 300, 300)  # Xsiz, Ysiz: a 300 x 300 image ...
    frame[24:32] = struct.pack(">II", 1, 1)  # ... XTsiz, YTsiz: in 90000 tiles of one pixel
    message = _refused(bytes(frame), J2K, _geometry(300, 300))
    assert "90000 tiles" in message


def test_components_and_precision_must_fit_the_data_set() -> None:
    rgb = bytes(imagecodecs.jpeg8_encode(RGB8))
    assert "3 components where SamplesPerPixel is 1" in _refused(
        rgb, JPEG_BASELINE, _geometry(40, 48)
    )
    lossless16 = bytes(
        imagecodecs.jpeg8_encode(GREY16, lossless=True, predictor=1, bitspersample=16)
    )
    assert "16-bit samples where BitsAllocated is 8" in _refused(
        lossless16, JPEG_LOSSLESS, _geometry(40, 48)
    )


def test_a_forged_jpeg_frame_header_is_refused() -> None:
    frame = bytearray(imagecodecs.jpeg8_encode(GREY8))
    at = bytes(frame).index(b"\xff\xc0")
    frame[at + 5 : at + 9] = struct.pack(">HH", 60000, 60000)
    assert "60000 rows where Rows is 40" in _refused(bytes(frame), JPEG_BASELINE, _geometry(40, 48))


def test_rle_segments_must_match_samples_and_bits() -> None:
    frame = _pydicom_encode(RLELossless, RGB8, 8, "pydicom")
    assert "3 segments where SamplesPerPixel 1 x 2 bytes needs 2" in _refused(
        frame, RLE, _geometry(40, 48, bits=16)
    )


@pytest.mark.parametrize(
    ("frame", "syntax", "why"),
    [
        (b"\x00\x01garbage", J2K, "does not start with the JPEG 2000 SOC and SIZ markers"),
        (b"\xff\x4f\xff\x51\x00\x29", J2K, "SIZ marker segment is cut off"),
        (b"\xff\xd8\xff\xda\x00\x02", JPEG_BASELINE, "scan (SOS) comes before any frame header"),
        (b"GIF89a", JPEG_LS, "does not start with a JPEG SOI marker"),
        (struct.pack("<16I", 16, *range(15)), RLE, "declares 16 segments"),
        (struct.pack("<16I", 2, 64, 60, *([0] * 13)) + bytes(8), RLE, "not increasing"),
    ],
)
def test_unreadable_headers_are_refused(frame: bytes, syntax: str, why: str) -> None:
    message = _refused(frame, syntax, _geometry(40, 48))
    assert "header cannot be read" in message and why in message
