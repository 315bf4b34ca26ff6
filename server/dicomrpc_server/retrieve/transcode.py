"""Transcoding: an instance or its frames re-encoded in another transfer syntax.

Why this module exists: it is the API the retrieve core calls (:func:`transcode_instance`,
:func:`transcode_frames`), putting together the parts that live in modules of their own: the
syntax catalogue (:mod:`~dicomrpc_server.retrieve.syntaxes`), the capability matrix and its
checks (:mod:`~dicomrpc_server.retrieve.capabilities`), reading stored files and rewriting
between the native syntaxes (:mod:`~dicomrpc_server.retrieve.native`), decoding
(:mod:`~dicomrpc_server.retrieve.decoding`) and encoding
(:mod:`~dicomrpc_server.retrieve.encoding`).

How it works:

* Between the native syntaxes nothing is decoded: the data set is rewritten.
* Otherwise every frame is decoded as :attr:`pydicom.dataset.Dataset.pixel_array` decodes
  it (YCbCr converted to RGB, planes interleaved) and re-encoded; the Image Pixel module is
  updated to describe the new pixels. The SOP Instance UID is kept: a retrieve returns the
  instance that was asked for, in the representation asked for.
* When a lossy target is produced, Lossy Image Compression (0028,2110), its ratio and method
  are recorded.
* pydicom's warnings are caught inside each function, so none escapes to the caller.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

from pydicom.dataset import Dataset, FileDataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.pixels.utils import get_nr_frames
from pydicom.valuerep import VR

from dicomrpc_server.config import Settings
from dicomrpc_server.errors import Code, ServiceError
from dicomrpc_server.retrieve.capabilities import check_transcodable, undecodable
from dicomrpc_server.retrieve.decoding import PixelDescription, iter_decoded
from dicomrpc_server.retrieve.encoding import encode_frame, native_bytes
from dicomrpc_server.retrieve.native import (
    PixelValue,
    native_file_source,
    native_frame_source,
    native_to_native,
    read_for_frames,
    read_instance,
    stored_syntax,
    write_instance,
)
from dicomrpc_server.retrieve.syntaxes import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    HTJ2K,
    JPEG_2000,
    JPEG_BASELINE,
    JPEG_LS_NEAR_LOSSLESS,
    NATIVE_SYNTAXES,
    is_lossy,
)
from dicomrpc_server.storage.sources import Source, read_source, source_name

# Lossy Image Compression Method (0028,2114) values, PS3.3 C.7.6.1.1.5.1.
_LOSSY_METHODS: dict[str, str] = {
    JPEG_BASELINE: "ISO_10918_1",
    JPEG_LS_NEAR_LOSSLESS: "ISO_14495_1",
    JPEG_2000: "ISO_15444_1",
    HTJ2K: "ISO_15444_15",
}
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# Elements that describe encapsulated pixel data only.
_ENCAPSULATION_KEYWORDS = ("ExtendedOffsetTable", "ExtendedOffsetTableLengths")


def _mark_lossy(ds: Dataset, target_uid: str, raw_size: int, encoded_size: int) -> None:
    """Record lossy compression in the General Image module (PS3.3 C.7.6.1.1.5)."""
    ds.LossyImageCompression = "01"
    ratios = [str(v) for v in ds.get("LossyImageCompressionRatio", [])]
    methods = [str(v) for v in ds.get("LossyImageCompressionMethod", [])]
    ratio = raw_size / encoded_size if encoded_size else 1.0
    ratios.append(f"{ratio:.4g}"[:16])
    methods.append(_LOSSY_METHODS.get(target_uid, "ISO_10918_1"))
    ds.LossyImageCompressionRatio = ratios
    ds.LossyImageCompressionMethod = methods


def _set_image_pixel(ds: Dataset, desc: PixelDescription, photometric: str, frames: int) -> None:
    """Make the Image Pixel module describe the new pixels."""
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = desc.bits_allocated
    if desc.samples_per_pixel > 1:
        ds.PlanarConfiguration = 0
    if "NumberOfFrames" in ds or frames > 1:
        ds.NumberOfFrames = frames


def _repixel(ds: FileDataset, source_uid: str, target_uid: str, max_pixels: int) -> bytes:
    """Decode every frame and write them in ``target_uid`` (native or encapsulated)."""
    for keyword in _ENCAPSULATION_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)
    frames: list[bytes] = []
    desc: PixelDescription | None = None
    photometric = ""
    raw_size = 0
    encapsulated = target_uid not in NATIVE_SYNTAXES
    for arr, frame_desc in iter_decoded(ds, source_uid, None, max_pixels=max_pixels):
        desc = frame_desc
        raw_size += arr.nbytes
        if encapsulated:
            encoded, photometric = encode_frame(target_uid, arr, frame_desc)
            frames.append(encoded)
        else:
            frames.append(native_bytes(arr, frame_desc, target_uid == EXPLICIT_VR_BIG_ENDIAN))
            photometric = frame_desc.photometric_interpretation
    if desc is None:
        raise ValueError("the pixel data holds no frame")
    _set_image_pixel(ds, desc, photometric, len(frames))
    elem = ds["PixelData"]
    if encapsulated:
        total = sum(len(f) + 8 for f in frames)
        if total > 2**32 - 1:
            ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = (
                encapsulate_extended(frames)
            )
        else:
            ds.PixelData = encapsulate(frames)
        elem = ds["PixelData"]
        elem.VR = VR.OB
        elem.is_undefined_length = True
        if is_lossy(target_uid):
            _mark_lossy(ds, target_uid, raw_size, sum(len(f) for f in frames))
    else:
        data = b"".join(frames)
        elem.value = data + b"\x00" if len(data) % 2 else data
        elem.VR = VR.OB if desc.bits_allocated <= 8 else VR.OW
        elem.is_undefined_length = False
    return write_instance(ds, target_uid)


def _has_pixels(ds: Dataset) -> bool:
    """Whether the data set holds pixel data of any kind."""
    return any(keyword in ds for keyword in _PIXEL_DATA_KEYWORDS)


def transcode_instance(
    source: Source,
    target_uid: str,
    *,
    allow_lossy: bool,
    max_frame_pixels: int = Settings.max_frame_pixels,
) -> bytes:
    """The whole Part 10 file ``source`` re-encoded in ``target_uid``.

    Parameters
    ----------
    source
        The stored Part 10 file: a path, or a blob of the archive's store.
    target_uid
        The transfer syntax asked for.
    allow_lossy
        Whether a lossy target is acceptable.
    max_frame_pixels
        The most pixels a frame may have to be decoded.

    Returns
    -------
    bytes
        A Part 10 file: zero preamble, file meta with the new Transfer Syntax UID, the data
        set in that syntax. The stored bytes when the syntax is the stored one.

    Raises
    ------
    ServiceError
        FAILED_PRECONDITION (``TRANSFER_SYNTAX_UNSUPPORTED``) when the syntax cannot be
        produced, is lossy and not allowed, or the pixel data cannot be transcoded;
        FAILED_PRECONDITION (``FRAME_HEADER_MISMATCH``) when a compressed frame's header
        disagrees with the data set; RESOURCE_EXHAUSTED (``LIMIT_EXCEEDED``) when a frame
        has more than ``max_frame_pixels`` pixels.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = read_instance(source)
        source_uid = stored_syntax(ds)
        check_transcodable(source_uid, target_uid, allow_lossy=allow_lossy)
        if source_uid == target_uid:
            return read_source(source)
        try:
            if source_uid in NATIVE_SYNTAXES and target_uid in NATIVE_SYNTAXES:
                return native_to_native(ds, source_uid, target_uid)
            if "PixelData" not in ds:
                if _has_pixels(ds) and target_uid not in NATIVE_SYNTAXES:
                    raise ValueError("float pixel data cannot be compressed")
                return native_to_native(ds, EXPLICIT_VR_LITTLE_ENDIAN, target_uid)
            return _repixel(ds, source_uid, target_uid, max_frame_pixels)
        except ServiceError:
            raise
        except Exception as exc:
            raise undecodable(source_uid, target_uid, exc) from exc


def _frame_range_error(outside: list[int], count: int) -> ServiceError:
    """The OUT_OF_RANGE error of frame numbers the instance does not have."""
    return ServiceError(
        Code.OUT_OF_RANGE,
        "FRAME_OUT_OF_RANGE",
        f"frame {', '.join(map(str, outside))} is outside 1..{count}",
        metadata={"frames": ",".join(map(str, outside)), "number_of_frames": str(count)},
    )


def transcode_frames(
    source: Source,
    numbers: list[int],
    target_uid: str,
    *,
    allow_lossy: bool,
    max_frame_pixels: int = Settings.max_frame_pixels,
) -> Iterator[bytes]:
    """Each requested frame of the instance ``source``, in ``target_uid``.

    Everything that can be checked is checked on the call, before the iterator is returned:
    the syntax, the frame numbers and the first frame's transcoding, so a failure never
    comes half-way through.

    Parameters
    ----------
    source
        The stored Part 10 file: a path, or a blob of the archive's store.
    numbers
        1-based frame numbers, in the order wanted.
    target_uid
        The transfer syntax asked for.
    allow_lossy
        Whether a lossy target is acceptable.
    max_frame_pixels
        The most pixels a frame may have to be decoded.

    Returns
    -------
    Iterator[bytes]
        For a native target, the frame's raw pixel bytes (little endian samples; big endian
        for Explicit VR Big Endian; bit-packed when Bits Allocated is 1). For an
        encapsulated target, the frame's compressed bitstream in that syntax.

    Raises
    ------
    ServiceError
        As :func:`transcode_instance`; FAILED_PRECONDITION (``NO_PIXEL_DATA``) or
        OUT_OF_RANGE (``FRAME_OUT_OF_RANGE``).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds, pixels = read_for_frames(source)
        source_uid = stored_syntax(ds)
        check_transcodable(source_uid, target_uid, allow_lossy=allow_lossy)
        if pixels is None and "PixelData" not in ds:
            raise ServiceError(
                Code.FAILED_PRECONDITION,
                "NO_PIXEL_DATA",
                f"the instance in {source_name(source)} has no pixel data",
                metadata={"transfer_syntax_uid": target_uid},
            )
        count = get_nr_frames(ds, warn=False)
        outside = sorted({n for n in numbers if not 1 <= n <= count})
        if outside:
            raise _frame_range_error(outside, count)
        try:
            if pixels is None:
                cut = native_frame_source(ds, source_uid, target_uid)
            else:
                cut = native_file_source(ds, pixels, source_uid, target_uid)
            first = b""
            if numbers and cut is not None:
                first = cut(numbers[0])
            elif numbers:
                first = _decode_frame(
                    ds, source_uid, target_uid, numbers[0], pixels, max_frame_pixels
                )
        except ServiceError:
            raise
        except Exception as exc:
            raise undecodable(source_uid, target_uid, exc) from exc
    return _frames_after(ds, source_uid, target_uid, numbers, first, cut, pixels, max_frame_pixels)


def _decode_frame(
    ds: Dataset,
    source_uid: str,
    target_uid: str,
    number: int,
    pixels: PixelValue | None,
    max_pixels: int,
) -> bytes:
    """One frame decoded and, for an encapsulated target, re-encoded."""
    for arr, desc in iter_decoded(ds, source_uid, [number - 1], pixels, max_pixels):
        if target_uid in NATIVE_SYNTAXES:
            return native_bytes(arr, desc, target_uid == EXPLICIT_VR_BIG_ENDIAN)
        return encode_frame(target_uid, arr, desc)[0]
    raise ValueError(f"frame {number} could not be decoded")


def _frames_after(
    ds: Dataset,
    source_uid: str,
    target_uid: str,
    numbers: list[int],
    first: bytes,
    cut: Callable[[int], bytes] | None,
    pixels: PixelValue | None,
    max_pixels: int,
) -> Iterator[bytes]:
    """Yield the first frame (already made), then make and yield the others one by one."""
    if not numbers:
        return
    yield first
    for number in numbers[1:]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                data = (
                    cut(number)
                    if cut is not None
                    else _decode_frame(ds, source_uid, target_uid, number, pixels, max_pixels)
                )
            except ServiceError:
                raise
            except Exception as exc:
                raise undecodable(source_uid, target_uid, exc) from exc
        yield data
