"""Frames decoded from stored pixel data, as ``pixel_array`` decodes them, within limits.

Why this module exists: which decoder may be used for a syntax, and decoding itself, are one
concern whatever is done with the pixels afterwards (transcoding here, rendering in
:mod:`dicomrpc_server.retrieve.render`).

* Decoding uses pydicom's decoders (pylibjpeg-openjpeg for JPEG 2000 and HTJ2K, pylibjpeg-rle
  or pydicom for RLE, pyjpegls or GDCM for JPEG-LS, GDCM or Pillow for the JPEG family); the
  ``pylibjpeg`` plugin is never used for the JPEG and JPEG-LS family because behind it is
  pylibjpeg-libjpeg, which is GPL and this project is Apache-2.0.
* Every frame is decoded as :attr:`pydicom.dataset.Dataset.pixel_array` decodes it (YCbCr
  converted to RGB, planes interleaved), and described by a :class:`PixelDescription`.
* No frame is decoded beyond the limits its header sets: Rows x Columns at most
  ``max_frame_pixels``, and a compressed frame's own codestream header must declare what the
  data set does (:mod:`dicomrpc_server.dicom.codestreams`) before a codec is given it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import DecodeRunner, get_decoder
from pydicom.pixels.utils import as_pixel_options, get_nr_frames
from pydicom.uid import UID

from dicomrpc_server.config import Settings
from dicomrpc_server.dicom.codestreams import check_frame, encoded_frame
from dicomrpc_server.dicom.elements import ElementValues
from dicomrpc_server.dicom.pixeldata import FrameGeometry, frame_geometry, too_many_pixels
from dicomrpc_server.errors import Code, ServiceError
from dicomrpc_server.retrieve.native import PIXEL_DATA_TAGS, PixelValue
from dicomrpc_server.retrieve.syntaxes import (
    HTJ2K,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    JPEG_2000,
    JPEG_2000_LOSSLESS,
    JPEG_BASELINE,
    JPEG_EXTENDED,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    NATIVE_SYNTAXES,
    RLE_LOSSLESS,
)
from dicomrpc_server.storage.protocols import BlobRef
from dicomrpc_server.storage.sources import Source, open_source

# Decoding plugins never used: pydicom's "pylibjpeg" plugin for these syntaxes is
# pylibjpeg-libjpeg (GPL-3.0).
_GPL_DECODER_PLUGINS: dict[str, frozenset[str]] = {
    uid: frozenset({"pylibjpeg"})
    for uid in (
        JPEG_BASELINE,
        JPEG_EXTENDED,
        JPEG_LOSSLESS,
        JPEG_LOSSLESS_SV1,
        JPEG_LS_LOSSLESS,
        JPEG_LS_NEAR_LOSSLESS,
    )
}

# Encapsulated syntaxes pydicom can decode (and whose decoders are looked at). JPEG Extended
# (.51) is left out: neither GDCM nor Pillow decodes its 12-bit samples, the reason it exists.
_DECODABLE_ENCAPSULATED = (
    JPEG_BASELINE,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    JPEG_2000_LOSSLESS,
    JPEG_2000,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    HTJ2K,
    RLE_LOSSLESS,
)


@dataclass(frozen=True)
class PixelDescription:
    """The Image Pixel module values that describe one decoded frame."""

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric_interpretation: str

    def encoder_options(self) -> dict[str, int | str]:
        """The keyword arguments pydicom's encoders take to describe one frame."""
        return {
            "rows": self.rows,
            "columns": self.columns,
            "samples_per_pixel": self.samples_per_pixel,
            "bits_allocated": self.bits_allocated,
            "bits_stored": self.bits_stored,
            "pixel_representation": self.pixel_representation,
            "photometric_interpretation": self.photometric_interpretation,
            "number_of_frames": 1,
            "planar_configuration": 0,
        }


def decoding_plugin(uid: str) -> str | None:
    """The pydicom decoding plugin to use for ``uid``, ``""`` for all, ``None`` for none."""
    if uid in NATIVE_SYNTAXES:
        return ""
    if uid not in _DECODABLE_ENCAPSULATED:
        return None
    decoder = get_decoder(UID(uid))
    excluded = _GPL_DECODER_PLUGINS.get(uid, frozenset())
    available = list(decoder.available_plugins)
    allowed = [name for name in available if name not in excluded]
    if not allowed:
        return None
    # Let pydicom try every plugin in its own order unless a GPL one is among them.
    return "" if allowed == available else allowed[0]


class _Sized:
    """A stand-in buffer of ``length`` bytes, for pydicom's check of the pixel data size."""

    def __init__(self, length: int) -> None:
        self._length = length

    def __len__(self) -> int:
        return self._length


def _decode_from_file(
    ds: Dataset, source_uid: str, pixels: PixelValue, index: int, plugin: str
) -> tuple[NDArray[Any], dict[str, Any]]:
    """One frame decoded from the file, reading only what the frame needs.

    The decoder gets the options it would take from the data set, and a file positioned at
    the Pixel Data value; for native data the size check pydicom makes of an in-memory value
    is made first, with the value's length, so the same data is refused the same way.
    """
    options: dict[str, Any] = as_pixel_options(
        ds, pixel_keyword="PixelData", pixel_vr=pixels.vr, as_rgb=True
    )
    if pixels.length is not None:
        runner = DecodeRunner(UID(source_uid))
        runner.set_source(_Sized(pixels.length))  # type: ignore[arg-type]
        runner.set_options(**options)
        runner.validate()
    with open_source(pixels.source) as fp:
        fp.seek(pixels.offset)
        decoder = get_decoder(UID(source_uid))
        arr, props = decoder.as_array(fp, index=index, decoding_plugin=plugin, **options)
    return arr, props


def within_limits(ds: Dataset, max_pixels: int) -> FrameGeometry:
    """The frame size ``ds`` declares, refused when over ``max_pixels`` pixels.

    Raises
    ------
    ServiceError
        RESOURCE_EXHAUSTED (``LIMIT_EXCEEDED``) naming ``max_frame_pixels``.
    GeometryError
        When Rows, Columns or Bits Allocated is missing or invalid.
    """
    elements = ElementValues(ds)
    tag = next((t for t in PIXEL_DATA_TAGS if t in elements), PIXEL_DATA_TAGS[0])
    geometry = frame_geometry(elements, tag)
    why = too_many_pixels(geometry, max_pixels)
    if why:
        raise ServiceError(
            Code.RESOURCE_EXHAUSTED,
            "LIMIT_EXCEEDED",
            f"instance {ds.get('SOPInstanceUID', '')} is not decoded: {why}",
            metadata={"limit": "max_frame_pixels", "value": str(max_pixels)},
        )
    return geometry


def check_encoded_frame(
    ds: Dataset,
    source_uid: str,
    index: int,
    geometry: FrameGeometry,
    max_pixels: int,
    at: tuple[Source | BinaryIO, int] | None = None,
) -> None:
    """Hold frame ``index`` (0-based) of encapsulated data to its header before decoding it.

    The frame is found as pydicom's decoders find it: in ``ds.PixelData``, or in the file
    ``at[0]`` (a source, or a file object already open on it) whose Pixel Data value starts
    at byte ``at[1]``.
    """
    count = get_nr_frames(ds, warn=False)
    offsets = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    if at is None:
        frame = encoded_frame(ds.PixelData, index, count, offsets)
    elif isinstance(at[0], Path | BlobRef):
        with open_source(at[0]) as fp:
            fp.seek(at[1])
            frame = encoded_frame(fp, index, count, offsets)
    else:
        at[0].seek(at[1])
        frame = encoded_frame(at[0], index, count, offsets)
    what = f"frame {index + 1} of instance {ds.get('SOPInstanceUID', '')}"
    check_frame(frame, source_uid, geometry, max_pixels, what)


def iter_decoded(
    ds: Dataset,
    source_uid: str,
    indices: list[int] | None,
    pixels: PixelValue | None = None,
    max_pixels: int = Settings.max_frame_pixels,
) -> Iterator[tuple[NDArray[Any], PixelDescription]]:
    """Each frame at ``indices`` (0-based; all when None), decoded as ``pixel_array`` does.

    With ``pixels`` the frames are read from the file, not from ``ds`` (which then holds no
    Pixel Data). No frame over ``max_pixels`` pixels is decoded, nor a compressed one whose
    header disagrees with the data set.
    """
    plugin = decoding_plugin(source_uid) or ""
    decoder = get_decoder(UID(source_uid))
    geometry = within_limits(ds, max_pixels)
    if indices is None:
        indices = list(range(get_nr_frames(ds, warn=False)))
    for index in indices:
        if source_uid not in NATIVE_SYNTAXES:
            at = None if pixels is None else (pixels.source, pixels.offset)
            check_encoded_frame(ds, source_uid, index, geometry, max_pixels, at)
        # One frame at a time with as_array: iter_array fails on read-only buffers when it
        # corrects the sign of JPEG 2000 samples (pydicom 3.0).
        if pixels is not None:
            arr, props = _decode_from_file(ds, source_uid, pixels, index, plugin)
        else:
            options: dict[str, Any] = {"as_rgb": True}
            arr, props = decoder.as_array(ds, index=index, decoding_plugin=plugin, **options)
        yield (
            arr,
            PixelDescription(
                rows=int(props["rows"]),
                columns=int(props["columns"]),
                samples_per_pixel=int(props["samples_per_pixel"]),
                bits_allocated=int(props["bits_allocated"]),
                bits_stored=int(props.get("bits_stored", props["bits_allocated"])),
                pixel_representation=int(props.get("pixel_representation", 0)),
                photometric_interpretation=str(props["photometric_interpretation"]),
            ),
        )
