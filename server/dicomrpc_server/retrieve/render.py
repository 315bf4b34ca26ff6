"""Rendered frames: one frame of a stored instance as a JPEG or PNG, for thumbnails and quick looks.

``RetrieveRendered`` (PS3.18 rendered resources) lets a caller see an image without a
DICOM toolkit: this module decodes only the frame asked for, runs it through the grayscale
pipeline of PS3.4 Annex N (modality LUT, then the VOI window or LUT, then MONOCHROME1
inversion) or the colour one (YBR to RGB, palette lookup), scales it to the viewport and encodes
it with Pillow. It reads the file it is given and nothing else; the transport adapters resolve
the instance and map :class:`~dicomrpc_server.errors.ServiceError` to their own status.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from typing import Any, BinaryIO, Final

import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
)
from pydicom.pixels.utils import pixel_array

from dicomrpc_server.config import Settings
from dicomrpc_server.dicom.elements import ElementValues
from dicomrpc_server.dicom.frames import number_of_frames
from dicomrpc_server.dicom.pixeldata import GeometryError
from dicomrpc_server.errors import Code, ServiceError, invalid_argument
from dicomrpc_server.retrieve.decoding import check_encoded_frame, within_limits
from dicomrpc_server.retrieve.syntaxes import NATIVE_SYNTAXES
from dicomrpc_server.storage.sources import Source, open_source

__all__ = ["RenderOptions", "render"]

JPEG: Final = "image/jpeg"
PNG: Final = "image/png"
MEDIA_TYPES: Final = frozenset({JPEG, PNG})

PIXEL_DATA_TAGS: Final = (0x7FE00010, 0x7FE00008, 0x7FE00009)
"""Pixel Data, Float Pixel Data and Double Float Pixel Data."""

DEFLATED: Final = "1.2.840.10008.1.2.1.99"

DEFER_SIZE: Final = 256 * 1024
"""Values larger than this are read from the file only when used: the pixel data, above all."""

Float64Array = npt.NDArray[np.float64]
UInt8Array = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class RenderOptions:
    """How to render a frame.

    Parameters
    ----------
    frame_number
        The frame, 1-based; 0 means the first.
    media_type
        ``"image/jpeg"`` or ``"image/png"``.
    quality
        The JPEG quality, 1 to 100; 0 means 100. Validated but unused for PNG, which is lossless.
    window
        ``(center, width)`` applied to the modality-transformed values, linearly (PS3.3
        C.11.2.1.2). ``None`` uses the stored VOI (the first of the VOI LUT Sequence, else the
        first Window Center and Width), else the full range of the modality-transformed values.
        Grayscale images only: colour images have no VOI stage (PS3.4 N.2).
    max_size
        Scale the image down, keeping its aspect ratio, so that neither side exceeds this many
        pixels; 0 keeps the stored size. Images are never scaled up.
    """

    frame_number: int = 0
    media_type: str = JPEG
    quality: int = 0
    window: tuple[float, float] | None = None
    max_size: int = 0


def render(
    source: Source, options: RenderOptions, max_frame_pixels: int = Settings.max_frame_pixels
) -> tuple[str, bytes]:
    """Render one frame of the instance stored in `source`.

    Parameters
    ----------
    source
        The stored DICOM file: a path, or a blob of the archive's store.
    options
        What to render and how.
    max_frame_pixels
        The most pixels a frame may have to be decoded.

    Returns
    -------
    tuple[str, bytes]
        The media type (``"image/jpeg"`` or ``"image/png"``) and the encoded image.

    Raises
    ------
    ServiceError
        INVALID_ARGUMENT (``INVALID_REQUEST``) for a bad option; NOT_FOUND (``NO_PIXEL_DATA``)
        for an instance without pixel data; OUT_OF_RANGE (``FRAME_OUT_OF_RANGE``) for a frame
        the instance does not have; FAILED_PRECONDITION (``TRANSFER_SYNTAX_UNSUPPORTED``) when
        the pixel data cannot be decoded; FAILED_PRECONDITION (``FRAME_HEADER_MISMATCH``) when
        a compressed frame's header disagrees with the data set; RESOURCE_EXHAUSTED
        (``LIMIT_EXCEEDED``) for a frame of more than ``max_frame_pixels`` pixels.
    """
    media_type = _check_options(options)
    # pydicom warns about many harmless oddities of real files; the caller wants an image, and
    # the test suite runs with warnings as errors.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open_source(source) as fp:  # open while deferred values may be read
            image = _render_image(fp, options, max_frame_pixels)
    return media_type, _encode(_fit(image, options.max_size), media_type, options.quality or 100)


def _check_options(options: RenderOptions) -> str:
    """Validate `options`; return the canonical media type."""
    media_type = options.media_type.strip().lower()
    if media_type not in MEDIA_TYPES:
        raise invalid_argument(
            "media_type", f"{options.media_type!r} is not one of {', '.join(sorted(MEDIA_TYPES))}"
        )
    if not 0 <= options.quality <= 100:
        raise invalid_argument("quality", f"{options.quality} is outside 1..100 (0 means 100)")
    if options.window is not None:
        center, width = options.window
        if not (math.isfinite(center) and math.isfinite(width)):
            raise invalid_argument("window", f"center {center} and width {width} must be finite")
        if width <= 0:
            raise invalid_argument("window", f"width {width} must be greater than 0")
    if options.max_size < 0:
        raise invalid_argument("max_size", f"{options.max_size} must be 0 (keep) or positive")
    return media_type


def _render_image(fp: BinaryIO, options: RenderOptions, max_pixels: int) -> Image.Image:
    """Read, decode and transform one frame into an 8-bit Pillow image of the stored size."""
    meta = pydicom.dcmread(fp, defer_size=DEFER_SIZE)
    sop_uid = str(meta.get("SOPInstanceUID", ""))
    if not any(tag in meta for tag in PIXEL_DATA_TAGS):
        raise ServiceError(
            Code.NOT_FOUND,
            "NO_PIXEL_DATA",
            f"instance {sop_uid} has no pixel data to render",
            metadata={"sop_instance_uid": sop_uid},
        )
    count = number_of_frames(ElementValues(meta))
    frame = options.frame_number or 1
    if not 1 <= frame <= count:
        raise ServiceError(
            Code.OUT_OF_RANGE,
            "FRAME_OUT_OF_RANGE",
            f"frame {frame} is outside 1..{count}: instance {sop_uid} has {count} "
            f"frame{'s' if count != 1 else ''}",
            metadata={"frames": str(frame), "number_of_frames": str(count)},
        )
    _check_frame(fp, frame - 1, meta, sop_uid, max_pixels)
    pixels = _decode(fp, frame - 1, meta, sop_uid)
    photometric = str(meta.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        return Image.fromarray(_palette(pixels, meta))
    if pixels.ndim == 3:
        # RGB, YBR_FULL and YBR_FULL_422 arrive as RGB: pixel_array(raw=False) converts YBR with
        # convert_color_space, and the JPEG 2000 decoders undo YBR_RCT and YBR_ICT themselves.
        return Image.fromarray(_colour(pixels, meta))
    _frame_functional_groups(meta, frame - 1)
    values = np.asarray(apply_modality_lut(pixels, meta), dtype=np.float64)
    gray = _voi(values, meta, options.window)
    if photometric == "MONOCHROME1":
        gray = 255.0 - gray
    return Image.fromarray(_to_uint8(gray))


def _check_frame(fp: BinaryIO, index: int, meta: Dataset, sop_uid: str, max_pixels: int) -> None:
    """Hold frame `index` (0-based) to the data set's header and the pixel limit, undecoded."""
    file_meta = getattr(meta, "file_meta", None)
    syntax = str(file_meta.get("TransferSyntaxUID", "")) if file_meta is not None else ""
    try:
        geometry = within_limits(meta, max_pixels)
        if syntax in NATIVE_SYNTAXES or 0x7FE00010 not in meta:
            return
        raw = meta.get_item(0x7FE00010, keep_deferred=True)
        at = None
        if isinstance(raw, RawDataElement) and raw.value is None and raw.value_tell is not None:
            at = (fp, raw.value_tell)  # deferred: the frame is read from the file
        check_encoded_frame(meta, syntax, index, geometry, max_pixels, at)
    except (GeometryError, ValueError, IndexError, EOFError) as exc:
        raise ServiceError(
            Code.FAILED_PRECONDITION,
            "TRANSFER_SYNTAX_UNSUPPORTED",
            f"frame {index + 1} of instance {sop_uid} ({syntax or 'unknown transfer syntax'}) "
            f"cannot be rendered: {exc}",
            metadata={"sop_instance_uid": sop_uid, "stored_transfer_syntax_uid": syntax},
        ) from exc


def _decode(fp: BinaryIO, index: int, meta: Dataset, sop_uid: str) -> npt.NDArray[Any]:
    """Decode frame `index` (0-based) alone, as (rows, columns[, samples]).

    The frame is read from the file object, so only that frame's bytes are decoded and held.
    Files that route cannot read (a deflated dataset, an unusual encapsulation) are read whole
    and decoded from the dataset instead; what fails both ways cannot be rendered.
    """
    file_meta = getattr(meta, "file_meta", None)
    syntax = str(file_meta.get("TransferSyntaxUID", "")) if file_meta is not None else ""
    try:
        if syntax == DEFLATED:
            raise NotImplementedError("a deflated dataset is inflated by dcmread")
        arr = pixel_array(fp, index=index)
    except (OSError, ServiceError):
        raise
    except Exception:  # decoders and their plugins raise many kinds of error
        try:
            fp.seek(0)
            arr = pixel_array(pydicom.dcmread(fp), index=index)
        except (OSError, ServiceError):
            raise
        except Exception as exc:
            raise ServiceError(
                Code.FAILED_PRECONDITION,
                "TRANSFER_SYNTAX_UNSUPPORTED",
                f"the pixel data of instance {sop_uid} ({syntax or 'unknown transfer syntax'})"
                f" cannot be decoded for rendering: {exc}",
                metadata={"sop_instance_uid": sop_uid, "stored_transfer_syntax_uid": syntax},
            ) from exc
    samples = int(meta.get("SamplesPerPixel", 1) or 1)
    if arr.ndim > (2 if samples == 1 else 3):
        arr = arr[0]  # a decoder that returned every frame of a single-frame instance
    return arr


def _frame_functional_groups(meta: Dataset, index: int) -> None:
    """Copy a multi-frame's shared and per-frame rescale and window to the top level."""
    groups: list[Dataset] = []
    for keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        sequence = meta.get(keyword)
        if not sequence:
            continue
        position = 0 if keyword.startswith("Shared") else index
        if position < len(sequence):
            groups.append(sequence[position])
    for group in groups:  # per-frame values, copied last, win
        for sequence_keyword, keywords in (
            ("PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept")),
            ("FrameVOILUTSequence", ("WindowCenter", "WindowWidth", "VOILUTFunction")),
        ):
            items = group.get(sequence_keyword)
            if not items:
                continue
            for keyword in keywords:
                if keyword in items[0]:
                    setattr(meta, keyword, items[0][keyword].value)


def _voi(values: Float64Array, meta: Dataset, window: tuple[float, float] | None) -> Float64Array:
    """The VOI stage, as floats in 0..255: the given window, the stored VOI, else min-max."""
    if window is not None:
        center, width = window
        # LINEAR (C.11.2.1.2) needs a width of at least 1; LINEAR_EXACT extends it below.
        return _window(values, center, width, "LINEAR" if width >= 1 else "LINEAR_EXACT")
    lut = _stored_voi_lut(values, meta)
    if lut is not None:
        return lut
    stored = _stored_window(meta)
    if stored is not None:
        return _window(values, *stored)
    return _min_max(values)


def _stored_voi_lut(values: Float64Array, meta: Dataset) -> Float64Array | None:
    """The first item of the VOI LUT Sequence applied, scaled to 0..255; None without one."""
    sequence = meta.get("VOILUTSequence")
    if not sequence:
        return None
    item = sequence[0]
    descriptor = item.get("LUTDescriptor")
    if descriptor is None or item.get("LUTData") is None:
        return None
    try:
        entries, first, depth = (int(v) for v in descriptor)
        # pydicom 3.0 holds the LUT indices in the LUT's dtype, so the indices of an 8-bit LUT
        # longer than 256 entries wrap: look the LUT up as 16-bit; its values are unchanged.
        lut_item = Dataset()
        lut_item.add_new("LUTDescriptor", "US", [entries, first, 16 if depth == 8 else depth])
        lut_item.add(item["LUTData"])
        voi = Dataset()
        voi.VOILUTSequence = [lut_item]
        voi.file_meta = meta.file_meta
        voi.set_original_encoding(*meta.original_encoding)
        mapped = apply_voi(np.rint(values).astype(np.int64), voi, index=0)
    except (NotImplementedError, ValueError, TypeError, IndexError, AttributeError):
        return None  # a broken LUT: fall back to the window, else the full range
    scaled: Float64Array = np.asarray(mapped, dtype=np.float64) * (255.0 / (2**depth - 1))
    return scaled


def _stored_window(meta: Dataset) -> tuple[float, float, str] | None:
    """The first stored Window Center and Width and the VOI LUT Function; None when unusable."""
    center_elem = meta.get("WindowCenter")
    width_elem = meta.get("WindowWidth")
    if center_elem is None or width_elem is None:
        return None
    try:
        center = float(_first(center_elem))
        width = float(_first(width_elem))
    except (TypeError, ValueError, IndexError):
        return None
    function = str(meta.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    if not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
        return None
    if function == "LINEAR" and width < 1:
        function = "LINEAR_EXACT"
    return center, width, function


def _first(value: Any) -> Any:
    """The first value of a possibly multi-valued element value."""
    if isinstance(value, MultiValue | list | tuple):
        return value[0]
    return value


def _window(values: Float64Array, center: float, width: float, function: str) -> Float64Array:
    """A window (C.11.2.1.2, C.11.2.1.3) onto 0..255, through pydicom's apply_windowing."""
    # An output range of 0..255: unsigned 8 bits stored, no rescale and no modality LUT.
    target = Dataset()
    target.PhotometricInterpretation = "MONOCHROME2"
    target.BitsStored = 8
    target.PixelRepresentation = 0
    target.WindowCenter = center
    target.WindowWidth = width
    target.VOILUTFunction = function
    return np.asarray(apply_windowing(values, target, index=0), dtype=np.float64)


def _min_max(values: Float64Array) -> Float64Array:
    """The full range of the values onto 0..255; a constant frame is black."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros_like(values)
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros_like(values)
    return (values - low) * (255.0 / (high - low))


def _colour(pixels: npt.NDArray[Any], meta: Dataset) -> UInt8Array:
    """RGB samples of any bit depth as 8-bit RGB (an alpha sample, if any, dropped)."""
    rgb = pixels[..., :3]
    if rgb.dtype == np.uint8:
        return np.ascontiguousarray(rgb)
    bits = int(meta.get("BitsStored", 8 * rgb.dtype.itemsize) or 8 * rgb.dtype.itemsize)
    scaled = rgb.astype(np.float64) * (255.0 / (2**bits - 1))
    return _to_uint8(scaled)


def _palette(pixels: npt.NDArray[Any], meta: Dataset) -> UInt8Array:
    """PALETTE COLOR indices through the palette (apply_color_lut), as 8-bit RGB."""
    rgb = np.asarray(apply_color_lut(pixels, meta))[..., :3]
    if rgb.dtype == np.uint8:
        return np.ascontiguousarray(rgb)
    return _to_uint8(rgb.astype(np.float64) * (255.0 / (2 ** (8 * rgb.dtype.itemsize) - 1)))


def _to_uint8(values: Float64Array) -> UInt8Array:
    """Round and clip to 0..255."""
    return np.clip(np.rint(np.nan_to_num(values)), 0, 255).astype(np.uint8)


def _fit(image: Image.Image, max_size: int) -> Image.Image:
    """Scale `image` down, keeping its aspect ratio, so neither side exceeds `max_size`."""
    width, height = image.size
    if max_size == 0 or max(width, height) <= max_size:
        return image
    scale = max_size / max(width, height)
    size = (
        min(max_size, max(1, round(width * scale))),
        min(max_size, max(1, round(height * scale))),
    )
    return image.resize(size, Image.Resampling.LANCZOS)


def _encode(image: Image.Image, media_type: str, quality: int) -> bytes:
    """Encode as JPEG (at `quality`, 4:4:4 at 100) or PNG (lossless)."""
    buffer = io.BytesIO()
    if media_type == JPEG:
        image.save(buffer, format="JPEG", quality=quality, subsampling=0 if quality == 100 else -1)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()
