"""Transcoding: pixels survive every lossless path, lossy needs consent, refusals name the syntax.

pydicom warns freely while decoding test files (odd VRs, JPEG markers); each test reads files
inside ``warnings.catch_warnings()`` so its own warnings are handled where they arise.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import UID, SecondaryCaptureImageStorage, generate_uid

from dicomrpc_server.errors import Code, ServiceError
from dicomrpc_server.retrieve.capabilities import (
    capabilities,
    capability_table_markdown,
    check_transcodable,
)
from dicomrpc_server.retrieve.syntaxes import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    NATIVE_SYNTAXES,
    is_lossy,
)
from dicomrpc_server.retrieve.transcode import transcode_frames, transcode_instance

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
README = Path(__file__).resolve().parents[1] / "README.md"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
RLE = "1.2.840.10008.1.2.5"
# pydicom itself cannot write this file back (a raw element without a usable VR).
UNWRITABLE = {"SC_rgb_jpeg.dcm"}


def _quiet_read(source: Path | bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(io.BytesIO(source) if isinstance(source, bytes) else source)


def _pixels(source: Path | bytes) -> NDArray[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(io.BytesIO(source) if isinstance(source, bytes) else source)
        arr: NDArray[Any] = ds.pixel_array
    return arr


def _syntax(data: bytes) -> str:
    return str(_quiet_read(data).file_meta.TransferSyntaxUID)


def _decodable_files() -> list[Path]:
    """Local pydicom test files with pixel data pydicom decodes, stored in a source syntax."""
    out = []
    sources = capabilities()
    for path in sorted(TEST_FILES.glob("*.dcm")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = dcmread(path)
                syntax = str(ds.file_meta.TransferSyntaxUID)
                if "PixelData" not in ds or syntax not in sources:
                    continue
                ds.pixel_array  # noqa: B018 (files pydicom cannot decode have nothing to match)
            except Exception:
                continue
        out.append(path)
    return out


DECODABLE = _decodable_files()


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _synthetic(
    tmp_path: Path, name: str, arr: NDArray[Any], photometric: str, bits_stored: int
) -> Path:
    """A Secondary Capture instance in explicit VR little endian holding ``arr``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.set_pixel_data(arr, photometric, bits_stored)
        path = tmp_path / name
        ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def samples(tmp_path: Path) -> dict[str, Path]:
    """Native instances: 16-bit signed, 8-bit colour, palette, and synthetic multi-frames."""
    rng = np.random.default_rng(7)
    smooth = np.add.outer(np.arange(40), np.arange(36)).astype(np.int64)
    mono8 = np.stack(
        [(smooth * (3 + k) + rng.integers(0, 9, smooth.shape)) % 256 for k in range(4)]
    )
    mono12 = np.stack(
        [(smooth * 97 + k * 311 + rng.integers(0, 50, smooth.shape)) % 4096 for k in range(3)]
    )
    rgb8 = np.stack(
        [np.stack([mono8[k], 255 - mono8[k], mono8[k] // 2], axis=-1) for k in range(2)]
    )
    signed = (mono12[:2] - 2048).astype(np.int16)
    return {
        "CT_small.dcm": TEST_FILES / "CT_small.dcm",
        "examples_rgb_color.dcm": TEST_FILES / "examples_rgb_color.dcm",
        "examples_palette.dcm": TEST_FILES / "examples_palette.dcm",
        "mono8x4": _synthetic(tmp_path, "mono8.dcm", mono8.astype(np.uint8), "MONOCHROME2", 8),
        "mono12x3": _synthetic(tmp_path, "mono12.dcm", mono12.astype(np.uint16), "MONOCHROME2", 12),
        "rgb8x2": _synthetic(tmp_path, "rgb8.dcm", rgb8.astype(np.uint8), "RGB", 8),
        "signed12x2": _synthetic(tmp_path, "signed12.dcm", signed, "MONOCHROME2", 12),
    }


# -- 1. every decodable test file, to explicit VR little endian ------------------------------


@pytest.mark.parametrize("path", DECODABLE, ids=lambda p: p.name)
def test_to_explicit_little_endian_matches_pydicom(path: Path) -> None:
    if path.name in UNWRITABLE:
        with pytest.raises(ServiceError) as caught:
            transcode_instance(path, EXPLICIT_VR_LITTLE_ENDIAN, allow_lossy=False)
        assert caught.value.code is Code.FAILED_PRECONDITION
        return
    data = transcode_instance(path, EXPLICIT_VR_LITTLE_ENDIAN, allow_lossy=False)
    if _syntax(path.read_bytes()) != EXPLICIT_VR_LITTLE_ENDIAN:
        # Re-encoded: a zero preamble (the stored syntax is returned as stored).
        assert data[:128] == b"\x00" * 128 and data[128:132] == b"DICM"
    assert _syntax(data) == EXPLICIT_VR_LITTLE_ENDIAN
    # Lossy sources too: the transcoder decodes the same bitstream with the same plugin.
    expected = _pixels(path)
    got = _pixels(data)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert _quiet_read(data).SOPInstanceUID == _quiet_read(path).SOPInstanceUID


# -- 2. lossless round trips ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "examples_rgb_color.dcm",
        "examples_palette.dcm",
        "mono8x4",
        "mono12x3",
        "rgb8x2",
        "signed12x2",
    ],
)
def test_lossless_round_trips(name: str, samples: dict[str, Path], tmp_path: Path) -> None:
    source = samples[name]
    expected = _pixels(source)
    targets = [t for t in capabilities()[EXPLICIT_VR_LITTLE_ENDIAN] if not is_lossy(t)]
    assert {JPEG_2000_LOSSLESS, RLE, EXPLICIT_VR_BIG_ENDIAN} <= set(targets)
    for target in targets:
        there = transcode_instance(source, target, allow_lossy=False)
        assert _syntax(there) == target
        np.testing.assert_array_equal(_pixels(there), expected, err_msg=target)
        back = transcode_instance(
            _write(tmp_path, "there.dcm", there), EXPLICIT_VR_LITTLE_ENDIAN, allow_lossy=False
        )
        assert _syntax(back) == EXPLICIT_VR_LITTLE_ENDIAN
        np.testing.assert_array_equal(_pixels(back), expected, err_msg=target)


@pytest.mark.parametrize(
    ("big", "little"),
    [
        ("MR_small_bigendian.dcm", "MR_small.dcm"),
        ("rtdose_expb.dcm", "rtdose.dcm"),
        ("liver_expb_1frame.dcm", "liver_1frame.dcm"),
        ("SC_rgb_small_odd_big_endian.dcm", "SC_rgb_small_odd.dcm"),
    ],
)
def test_big_endian_both_ways(big: str, little: str, tmp_path: Path) -> None:
    expected = _pixels(TEST_FILES / little)
    from_big = transcode_instance(TEST_FILES / big, EXPLICIT_VR_LITTLE_ENDIAN, allow_lossy=False)
    np.testing.assert_array_equal(_pixels(from_big), expected)
    to_big = transcode_instance(TEST_FILES / little, EXPLICIT_VR_BIG_ENDIAN, allow_lossy=False)
    ds = _quiet_read(to_big)
    assert str(ds.file_meta.TransferSyntaxUID) == EXPLICIT_VR_BIG_ENDIAN
    np.testing.assert_array_equal(_pixels(to_big), expected)
    if ds.BitsAllocated >= 16:
        # The stored samples really are big endian.
        raw = bytes(ds.PixelData)[: expected.nbytes]
        swapped = expected.astype(expected.dtype.newbyteorder(">")).tobytes()
        assert raw == swapped
    implicit = transcode_instance(
        _write(tmp_path, "big.dcm", to_big), IMPLICIT_VR_LITTLE_ENDIAN, allow_lossy=False
    )
    np.testing.assert_array_equal(_pixels(implicit), expected)
    assert _quiet_read(implicit).PatientName == _quiet_read(TEST_FILES / little).PatientName


# -- 3. lossy targets ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["examples_rgb_color.dcm", "mono8x4"])
def test_lossy_targets_need_consent(name: str, samples: dict[str, Path]) -> None:
    source = samples[name]
    expected = _pixels(source)
    lossy = [t for t in capabilities()[EXPLICIT_VR_LITTLE_ENDIAN] if is_lossy(t)]
    assert JPEG_BASELINE in lossy
    for target in lossy:
        with pytest.raises(ServiceError) as caught:
            transcode_instance(source, target, allow_lossy=False)
        assert caught.value.code is Code.FAILED_PRECONDITION
        assert caught.value.reason == "TRANSFER_SYNTAX_UNSUPPORTED"
        assert "lossy" in caught.value.message and target in caught.value.message
        data = transcode_instance(source, target, allow_lossy=True)
        ds = _quiet_read(data)
        assert str(ds.file_meta.TransferSyntaxUID) == target
        assert ds.LossyImageCompression == "01"
        got = _pixels(data)
        assert got.shape == expected.shape, target
        error = np.abs(got.astype(np.float64) - expected).mean()
        assert error < 8, (target, error)


def test_lossy_check_without_a_file() -> None:
    with pytest.raises(ServiceError, match="lossy"):
        check_transcodable(EXPLICIT_VR_LITTLE_ENDIAN, JPEG_BASELINE, allow_lossy=False)
    check_transcodable(EXPLICIT_VR_LITTLE_ENDIAN, JPEG_BASELINE, allow_lossy=True)
    check_transcodable(JPEG_BASELINE, JPEG_BASELINE, allow_lossy=False)


# -- 4. impossible targets -----------------------------------------------------------------


@pytest.mark.parametrize("target", ["1.2.3.4", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.100"])
def test_impossible_target(target: str) -> None:
    source = TEST_FILES / "CT_small.dcm"
    with pytest.raises(ServiceError) as caught:
        transcode_instance(source, target, allow_lossy=True)
    error = caught.value
    assert error.code is Code.FAILED_PRECONDITION
    assert error.reason == "TRANSFER_SYNTAX_UNSUPPORTED"
    assert target in error.message and EXPLICIT_VR_LITTLE_ENDIAN in error.message
    assert error.metadata == {
        "transfer_syntax_uid": target,
        "stored_transfer_syntax_uid": EXPLICIT_VR_LITTLE_ENDIAN,
    }
    with pytest.raises(ServiceError):
        list(transcode_frames(source, [1], target, allow_lossy=True))


def test_instance_the_codec_cannot_hold() -> None:
    # JPEG baseline holds 8-bit samples only; CT_small is 16-bit.
    with pytest.raises(ServiceError) as caught:
        transcode_instance(TEST_FILES / "CT_small.dcm", JPEG_BASELINE, allow_lossy=True)
    assert caught.value.code is Code.FAILED_PRECONDITION
    assert JPEG_BASELINE in caught.value.message
    with pytest.raises(ServiceError):
        transcode_frames(TEST_FILES / "CT_small.dcm", [1], JPEG_BASELINE, allow_lossy=True)


def test_unknown_source_syntax() -> None:
    with pytest.raises(ServiceError, match=r"1\.2\.9\.9"):
        check_transcodable("1.2.9.9", EXPLICIT_VR_LITTLE_ENDIAN, allow_lossy=True)


# -- 5. frames -----------------------------------------------------------------------------


def _decode_frame(frame: bytes, syntax: str, ds: Dataset) -> NDArray[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr, _ = get_decoder(UID(syntax)).as_array(
            encapsulate([frame]),
            rows=ds.Rows,
            columns=ds.Columns,
            samples_per_pixel=ds.SamplesPerPixel,
            bits_allocated=ds.BitsAllocated,
            bits_stored=ds.BitsStored,
            pixel_representation=ds.PixelRepresentation,
            photometric_interpretation=ds.PhotometricInterpretation,
            number_of_frames=1,
            planar_configuration=0,
        )
    result: NDArray[Any] = arr
    return result


@pytest.mark.parametrize("name", ["mono12x3", "rgb8x2", "signed12x2", "RLE-2frame"])
def test_frames(name: str, samples: dict[str, Path]) -> None:
    source = TEST_FILES / "SC_rgb_rle_2frame.dcm" if name == "RLE-2frame" else samples[name]
    expected = _pixels(source)
    ds = _quiet_read(source)
    stored = str(ds.file_meta.TransferSyntaxUID)
    numbers = [len(expected), 1]
    for target in capabilities()[stored]:
        if is_lossy(target):
            continue
        frames = list(transcode_frames(source, numbers, target, allow_lossy=False))
        assert len(frames) == 2
        for number, frame in zip(numbers, frames, strict=True):
            want = expected[number - 1]
            if target == EXPLICIT_VR_BIG_ENDIAN:
                assert frame == want.astype(want.dtype.newbyteorder(">")).tobytes()
            elif target in NATIVE_SYNTAXES:
                assert frame == want.tobytes(), target
            else:
                got = _decode_frame(frame, target, ds)
                np.testing.assert_array_equal(got, want, err_msg=target)


def test_frames_lossy_and_out_of_range(samples: dict[str, Path]) -> None:
    source = samples["rgb8x2"]
    expected = _pixels(source)
    (frame,) = transcode_frames(source, [2], JPEG_BASELINE, allow_lossy=True)
    assert frame[:2] == b"\xff\xd8"
    ds = _quiet_read(source)
    ds.PhotometricInterpretation = "YBR_FULL_422"
    got = _decode_frame(frame, JPEG_BASELINE, ds)
    assert got.shape == expected[1].shape
    assert np.abs(got.astype(np.float64) - expected[1]).mean() < 8
    with pytest.raises(ServiceError) as caught:
        transcode_frames(source, [3], RLE, allow_lossy=False)
    assert caught.value.code is Code.OUT_OF_RANGE


# -- 6. the README matrix ------------------------------------------------------------------


def test_readme_matrix_is_current() -> None:
    text = README.read_text(encoding="utf-8")
    match = re.search(
        r"<!-- transcoding-matrix:start -->\n(.*?)<!-- transcoding-matrix:end -->", text, re.S
    )
    assert match is not None
    assert match.group(1) == capability_table_markdown()


def test_capabilities_shape() -> None:
    table = capabilities()
    for source, targets in table.items():
        assert source not in targets
        assert targets == sorted(targets)
    for native in NATIVE_SYNTAXES:
        assert set(NATIVE_SYNTAXES) - {native} <= set(table[native])
    assert "1.2.840.10008.1.2.4.51" not in table


# -- 7. one frame of a large instance ------------------------------------------------------


def test_one_frame_of_a_large_multiframe(tmp_path: Path) -> None:
    """400 frames of 256 x 256 16-bit: one frame comes out right, native and JPEG 2000."""
    frames, size = 400, 256
    ramp = np.add.outer(np.arange(size), np.arange(size)).astype(np.uint16)
    stack = np.stack([(ramp * 3 + k * 37) % 4096 for k in range(frames)]).astype(np.uint16)
    native = _synthetic(tmp_path, "large.dcm", stack, "MONOCHROME2", 12)
    encoded = _write(
        tmp_path,
        "large_j2k.dcm",
        transcode_instance(native, JPEG_2000_LOSSLESS, allow_lossy=False),
    )
    ds = _quiet_read(native)
    for number in (1, 217, frames):
        want = stack[number - 1]
        # J2K -> native: the decoded frame's little endian bytes.
        (frame,) = transcode_frames(encoded, [number], EXPLICIT_VR_LITTLE_ENDIAN, allow_lossy=False)
        assert frame == want.astype("<u2").tobytes()
        (frame,) = transcode_frames(encoded, [number], EXPLICIT_VR_BIG_ENDIAN, allow_lossy=False)
        assert frame == want.astype(">u2").tobytes()
        # native -> J2K: a codestream that decodes to the frame.
        (frame,) = transcode_frames(native, [number], JPEG_2000_LOSSLESS, allow_lossy=False)
        np.testing.assert_array_equal(_decode_frame(frame, JPEG_2000_LOSSLESS, ds), want)
        # native -> native: the stored bytes of that frame.
        (frame,) = transcode_frames(native, [number], IMPLICIT_VR_LITTLE_ENDIAN, allow_lossy=False)
        assert frame == want.astype("<u2").tobytes()
    with pytest.raises(ServiceError) as caught:
        transcode_frames(encoded, [frames + 1], EXPLICIT_VR_LITTLE_ENDIAN, allow_lossy=False)
    assert caught.value.code is Code.OUT_OF_RANGE
