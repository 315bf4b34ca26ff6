"""render(): one frame as JPEG or PNG, checked against references computed here with numpy."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels.utils import pixel_array

from dicomrpc_server.errors import Code, ServiceError
from dicomrpc_server.retrieve.render import RenderOptions, render

PNG = "image/png"
JPEG = "image/jpeg"


def sample(name: str) -> Path:
    found = get_testdata_file(name)
    assert found is not None, name
    return Path(str(found))


def read(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def stored_pixels(path: Path) -> npt.NDArray[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read(path).pixel_array


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def png(path: Path, **options: Any) -> npt.NDArray[np.int64]:
    media_type, data = render(path, RenderOptions(media_type=PNG, **options))
    assert media_type == PNG
    image = decode(data)
    assert image.format == "PNG"
    return np.asarray(image).astype(np.int64)


def linear_window(x: npt.NDArray[Any], center: float, width: float) -> npt.NDArray[np.int64]:
    """PS3.3 C.11.2.1.2 onto 0..255, written out from the standard's pseudo-code."""
    x = x.astype(np.float64)
    low = center - 0.5 - (width - 1) / 2
    high = center - 0.5 + (width - 1) / 2
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255
    y = np.where(x <= low, 0.0, np.where(x > high, 255.0, y))
    return np.rint(y).astype(np.int64)


def min_max(x: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    x = x.astype(np.float64)
    scaled: npt.NDArray[np.float64] = (x - x.min()) / (x.max() - x.min()) * 255
    return np.rint(scaled).astype(np.int64)


def assert_close(actual: npt.NDArray[Any], expected: npt.NDArray[Any], tolerance: int = 1) -> None:
    assert actual.shape == expected.shape
    assert int(np.abs(actual.astype(np.int64) - expected.astype(np.int64)).max()) <= tolerance


def assert_error(path: Path, options: RenderOptions, code: Code, reason: str) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        render(path, options)
    assert caught.value.code is code
    assert caught.value.reason == reason
    return caught.value


# Grayscale


def test_ct_without_stored_window_uses_full_range_of_rescaled_values() -> None:
    path = sample("CT_small.dcm")
    ds = read(path)
    assert "WindowCenter" not in ds  # the VOI falls back to min-max
    hu = stored_pixels(path) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    out = png(path)
    assert out.shape == (128, 128)
    assert_close(out, min_max(hu))


def test_mr_uses_the_stored_window() -> None:
    path = sample("MR_small.dcm")
    ds = read(path)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    assert (center, width) == (600.0, 1600.0)
    out = png(path)
    assert_close(out, linear_window(stored_pixels(path), center, width))
    assert not np.array_equal(out, min_max(stored_pixels(path)))


def test_given_window_applies_to_modality_transformed_values() -> None:
    path = sample("CT_small.dcm")
    ds = read(path)
    hu = stored_pixels(path) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    out = png(path, window=(40.0, 400.0))
    expected = linear_window(hu, 40.0, 400.0)
    assert_close(out, expected)
    # A few pixels exactly, one each below, inside and above the window.
    for value, target in ((hu.min(), 0), (hu.max(), 255)):
        row, col = np.argwhere(hu == value)[0]
        assert out[row, col] == target
    inside = np.argwhere((hu > -150) & (hu < 230))
    assert inside.size
    for row, col in inside[:5]:
        assert abs(int(out[row, col]) - int(expected[row, col])) <= 1
        assert 0 < out[row, col] < 255
    assert not np.array_equal(out, png(path))


def test_given_window_overrides_the_stored_one() -> None:
    path = sample("MR_small.dcm")
    out = png(path, window=(300.0, 200.0))
    assert_close(out, linear_window(stored_pixels(path), 300.0, 200.0))
    assert not np.array_equal(out, png(path))


def test_window_narrower_than_one_uses_linear_exact() -> None:
    # LINEAR needs a width of at least 1; below it, LINEAR_EXACT (C.11.2.1.3.2) applies.
    path = sample("MR_small.dcm")
    pixels = stored_pixels(path)
    out = png(path, window=(500.0, 0.5))
    assert np.all(out[pixels <= 499.75] == 0)
    assert np.all(out[pixels > 500.25] == 255)
    assert np.all(out[pixels == 500] == 128)  # (0 / 0.5 + 0.5) * 255, rounded
    assert set(np.unique(out).tolist()) <= {0, 128, 255}


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    source = sample("MR_small.dcm")
    ds = read(source)
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = tmp_path / "mr_mono1.dcm"
    ds.save_as(inverted)
    normal = png(source)
    out = png(inverted)
    assert np.array_equal(out, 255 - normal)
    windowed = png(inverted, window=(300.0, 200.0))
    assert np.array_equal(windowed, 255 - png(source, window=(300.0, 200.0)))


@pytest.mark.parametrize("bits", [8, 12])
def test_voi_lut_sequence_is_preferred_to_the_window(bits: int, tmp_path: Path) -> None:
    ds = read(sample("MR_small.dcm"))
    assert "WindowCenter" in ds
    # 4096 entries: value // 16 over 8 bits, the identity over 12 bits.
    lut = np.arange(4096) // 16 if bits == 8 else np.arange(4096)
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, bits]
    item.add_new("LUTData", "OW", lut.astype("<u2").tobytes())
    ds.VOILUTSequence = pydicom.Sequence([item])
    path = tmp_path / "voi_lut.dcm"
    ds.save_as(path)
    mapped = lut[np.clip(stored_pixels(path).astype(np.int64), 0, 4095)]
    expected = np.rint(mapped * 255 / (2**bits - 1)).astype(np.int64)
    assert_close(png(path), expected, tolerance=0)


def test_functional_groups_supply_rescale_and_window(tmp_path: Path) -> None:
    source = sample("CT_small.dcm")
    ds = read(source)
    hu = stored_pixels(source) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    transform = pydicom.Dataset()
    transform.RescaleSlope = ds.RescaleSlope
    transform.RescaleIntercept = ds.RescaleIntercept
    del ds.RescaleSlope, ds.RescaleIntercept
    shared = pydicom.Dataset()
    shared.PixelValueTransformationSequence = pydicom.Sequence([transform])
    voi = pydicom.Dataset()
    voi.WindowCenter = 40
    voi.WindowWidth = 400
    per_frame = pydicom.Dataset()
    per_frame.FrameVOILUTSequence = pydicom.Sequence([voi])
    ds.SharedFunctionalGroupsSequence = pydicom.Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = pydicom.Sequence([per_frame])
    path = tmp_path / "enhanced.dcm"
    ds.save_as(path)
    assert_close(png(path), linear_window(hu, 40.0, 400.0))


def test_one_bit_pixels_render_black_and_white() -> None:
    out = png(sample("liver_1frame.dcm"))
    assert out.shape == (512, 512)
    assert set(np.unique(out).tolist()) == {0, 255}


# Colour


def test_rgb_renders_unchanged() -> None:
    path = sample("SC_rgb_rle.dcm")
    _, data = render(path, RenderOptions(media_type=PNG))
    image = decode(data)
    assert image.mode == "RGB"
    assert image.size == (100, 100)
    assert np.array_equal(np.asarray(image), stored_pixels(path))


@pytest.mark.parametrize(
    ("name", "mean", "p90"),
    [
        ("SC_ybr_full_422_uncompressed.dcm", 1.0, 3),  # native YBR_FULL_422
        ("SC_rgb_dcmtk_+eb+cy+n1.dcm", 4.0, 5),  # JPEG baseline, YBR_FULL (lossy)
        ("SC_rgb_dcmtk_+eb+cy+np.dcm", 4.0, 5),  # JPEG baseline, YBR_FULL_422 (lossy)
        ("SC_rgb_jpeg_gdcm.dcm", 0.0, 0),  # JPEG lossless, RGB
        ("SC_rgb_rle_16bit.dcm", 0.0, 0),  # 16 bits a sample, scaled to 8
    ],
)
def test_ybr_and_deep_rgb_render_as_8_bit_rgb(name: str, mean: float, p90: int) -> None:
    reference = stored_pixels(sample("SC_rgb_rle.dcm")).astype(np.int64)
    out = png(sample(name))
    assert out.shape == (100, 100, 3)
    difference = np.abs(out - reference)
    assert float(difference.mean()) <= mean
    assert float(np.percentile(difference, 90)) <= p90


def test_ybr_left_unconverted_would_be_far_from_rgb() -> None:
    # The check above has teeth: the stored YBR samples are nowhere near the RGB ones.
    path = sample("SC_ybr_full_422_uncompressed.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = pixel_array(path, raw=True).astype(np.int64)
    reference = stored_pixels(sample("SC_rgb_rle.dcm")).astype(np.int64)
    assert float(np.abs(raw - reference).mean()) > 20


def test_palette_color_is_looked_up() -> None:
    path = sample("examples_palette.dcm")
    ds = read(path)
    indices = stored_pixels(path).astype(np.int64)
    channels = []
    for colour in ("Red", "Green", "Blue"):
        entries, first, bits = ds[f"{colour}PaletteColorLookupTableDescriptor"].value
        assert (entries, first, bits) == (256, 0, 16)
        table = np.frombuffer(ds[f"{colour}PaletteColorLookupTableData"].value, dtype="<u2")
        channels.append(np.rint(table[np.clip(indices - first, 0, entries - 1)] / 65535 * 255))
    expected = np.stack(channels, axis=-1).astype(np.int64)
    _, data = render(path, RenderOptions(media_type=PNG))
    image = decode(data)
    assert image.mode == "RGB"
    assert image.size == (int(ds.Columns), int(ds.Rows))
    assert_close(np.asarray(image), expected, tolerance=0)


# Frames


def test_frame_number_selects_the_frame() -> None:
    path = sample("SC_rgb_rle_2frame.dcm")
    frames = stored_pixels(path)
    assert not np.array_equal(frames[0], frames[1])
    first, default, second = png(path, frame_number=1), png(path), png(path, frame_number=2)
    assert np.array_equal(first, default)
    assert np.array_equal(first, frames[0])
    assert np.array_equal(second, frames[1])


def test_frame_number_selects_a_grayscale_frame() -> None:
    path = sample("rtdose.dcm")
    ds = read(path)
    frames = stored_pixels(path) * float(ds.DoseGridScaling)
    assert int(ds.NumberOfFrames) == 15
    for number in (1, 8, 15):
        assert_close(png(path, frame_number=number), min_max(frames[number - 1]))


def test_frame_of_a_compressed_multiframe() -> None:
    path = sample("examples_ybr_color.dcm")
    first, last = png(path, frame_number=1), png(path, frame_number=30)
    assert first.shape == last.shape == (240, 320, 3)
    assert not np.array_equal(first, last)


# Encoding and size


def test_jpeg_is_the_default_and_quality_changes_its_size() -> None:
    path = sample("examples_rgb_color.dcm")
    media_type, default = render(path, RenderOptions())
    assert media_type == JPEG
    image = decode(default)
    assert image.format == "JPEG"
    assert image.mode == "RGB"
    assert image.size == (320, 240)
    sizes = [len(render(path, RenderOptions(quality=q))[1]) for q in (5, 50, 95)]
    assert sizes[0] < sizes[1] < sizes[2] < len(default)
    assert render(path, RenderOptions(quality=100)) == (JPEG, default)


def test_grayscale_jpeg_is_close_to_png() -> None:
    path = sample("MR_small.dcm")
    _, data = render(path, RenderOptions(media_type=JPEG, quality=100))
    image = decode(data)
    assert image.mode == "L"
    assert float(np.abs(np.asarray(image).astype(np.int64) - png(path)).mean()) < 2


def test_media_type_is_case_insensitive() -> None:
    path = sample("MR_small.dcm")
    media_type, data = render(path, RenderOptions(media_type="Image/PNG"))
    assert media_type == PNG
    assert decode(data).format == "PNG"


@pytest.mark.parametrize(
    ("name", "max_size", "size"),
    [
        ("examples_palette.dcm", 200, (200, 88)),  # 800 x 350: the width limits
        ("examples_overlay.dcm", 100, (100, 62)),  # 484 x 300: 61.98 rounds to 62
        ("MR_small.dcm", 32, (32, 32)),
        ("MR_small.dcm", 64, (64, 64)),  # already fits
        ("MR_small.dcm", 1000, (64, 64)),  # never scaled up
        ("examples_palette.dcm", 1, (1, 1)),
    ],
)
def test_max_size_keeps_the_aspect_ratio(name: str, max_size: int, size: tuple[int, int]) -> None:
    for media_type in (PNG, JPEG):
        _, data = render(sample(name), RenderOptions(media_type=media_type, max_size=max_size))
        assert decode(data).size == size


# Errors


def test_instance_without_pixel_data_is_not_found() -> None:
    error = assert_error(sample("rtplan.dcm"), RenderOptions(), Code.NOT_FOUND, "NO_PIXEL_DATA")
    assert error.metadata["sop_instance_uid"] == read(sample("rtplan.dcm")).SOPInstanceUID


@pytest.mark.parametrize(
    ("name", "frame", "count"),
    [("SC_rgb_rle_2frame.dcm", 3, 2), ("MR_small.dcm", 2, 1), ("rtdose.dcm", -1, 15)],
)
def test_frame_outside_the_instance(name: str, frame: int, count: int) -> None:
    error = assert_error(
        sample(name),
        RenderOptions(frame_number=frame),
        Code.OUT_OF_RANGE,
        "FRAME_OUT_OF_RANGE",
    )
    assert error.metadata == {"frames": str(frame), "number_of_frames": str(count)}
    assert str(frame) in error.message
    assert str(count) in error.message


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (RenderOptions(quality=101), "quality"),
        (RenderOptions(quality=-1), "quality"),
        (RenderOptions(media_type="image/gif"), "media_type"),
        (RenderOptions(media_type=""), "media_type"),
        (RenderOptions(window=(40.0, 0.0)), "window"),
        (RenderOptions(window=(40.0, -10.0)), "window"),
        (RenderOptions(window=(float("nan"), 10.0)), "window"),
        (RenderOptions(max_size=-1), "max_size"),
    ],
)
def test_invalid_options(options: RenderOptions, field: str, tmp_path: Path) -> None:
    for path in (sample("MR_small.dcm"), tmp_path / "never-read.dcm"):  # checked before reading
        error = assert_error(path, options, Code.INVALID_ARGUMENT, "INVALID_REQUEST")
        assert error.metadata == {"field": field}
        assert [v.field for v in error.violations] == [field]


def test_undecodable_pixel_data_is_a_failed_precondition() -> None:
    # 12-bit JPEG Extended needs pylibjpeg-libjpeg (GPL, deliberately not installed).
    error = assert_error(
        sample("JPGExtended.dcm"),
        RenderOptions(),
        Code.FAILED_PRECONDITION,
        "TRANSFER_SYNTAX_UNSUPPORTED",
    )
    assert error.metadata["stored_transfer_syntax_uid"] == "1.2.840.10008.1.2.4.51"


def test_files_the_path_decoder_cannot_read_fall_back_to_the_dataset() -> None:
    # Deflated: the path route cannot inflate; SC_rgb_jpeg.dcm: an encapsulation it rejects.
    assert png(sample("image_dfl.dcm")).shape == (512, 512)
    out = png(sample("SC_rgb_jpeg.dcm"))
    assert out.shape == (256, 256, 3)
