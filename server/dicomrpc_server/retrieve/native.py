"""Stored Part 10 files read for transcoding, and rewritten between the native syntaxes.

Why this module exists: reading a stored instance (whole, or only up to its pixels with the
place of the Pixel Data value noted so that frames are read from the file), writing one back,
and moving one between the native syntaxes (implicit / explicit little endian, deflated,
explicit big endian) are byte work that decodes no pixel.

* Between the native syntaxes nothing is decoded: the data set is rewritten, and when the byte
  order changes the values pydicom leaves as bytes (OW, OF, OL, OD, OV, and Pixel Data by its
  Bits Allocated) are byte-swapped here, because pydicom's writer does not swap them.
* A frame of native pixel data asked for in a native syntax is cut from the value, in memory
  or read from the file, and byte-swapped when the byte order changes.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset
from pydicom.filewriter import correct_ambiguous_vr, dcmwrite
from pydicom.uid import UID
from pydicom.valuerep import VR

from dicomrpc_server.errors import Code, ServiceError
from dicomrpc_server.retrieve.syntaxes import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    NATIVE_SYNTAXES,
)
from dicomrpc_server.storage.sources import Source, file_size, open_source, source_name

# Value sizes of the VRs whose values pydicom keeps as bytes and does not byte-swap.
_WORD_SIZES: dict[str, int] = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_PIXEL_DATA_TAG = 0x7FE00010
PIXEL_DATA_TAGS = (_PIXEL_DATA_TAG, 0x7FE00008, 0x7FE00009)

# Explicit VRs with a 4-byte length after two reserved bytes, those Pixel Data may have.
_PIXEL_VRS = (b"OB", b"OW", b"UN")


def read_instance(source: Source) -> FileDataset:
    """The Part 10 file ``source``, every element parsed."""
    try:
        with open_source(source) as fp:
            ds = dcmread(fp)
    except ServiceError:  # the blob store could not be read
        raise
    except Exception as exc:
        raise ServiceError(
            Code.FAILED_PRECONDITION,
            "TRANSFER_SYNTAX_UNSUPPORTED",
            f"the stored file {source_name(source)} cannot be parsed for transcoding: {exc}",
        ) from exc
    return ds


@dataclass(frozen=True)
class PixelValue:
    """Where the Pixel Data value of a stored file lies, so frames are read from the file.

    ``length`` is None for encapsulated (undefined length) pixel data; ``vr`` is the VR the
    fully parsed data set would give the element.
    """

    source: Source
    offset: int
    length: int | None
    vr: str


def _locate_pixels(ds: FileDataset, source: Source, fp: Any) -> PixelValue | None:
    """The Pixel Data value that ``fp`` (stopped before the pixels) is at, if regular.

    None when the file must be parsed whole instead: no Pixel Data (or Float Pixel Data
    first), a header that is not the expected one, a value running past the end of the file,
    or a length that does not fit the syntax (defined for native, undefined for encapsulated).
    """
    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        return None
    order = "<" if little else ">"
    header = fp.read(8)
    if len(header) != 8:
        return None
    group, element = struct.unpack(f"{order}HH", header[:4])
    if (group, element) != (0x7FE0, 0x0010):
        return None
    if implicit:
        (length,) = struct.unpack(f"{order}L", header[4:])
        # As pydicom resolves "OB or OW" for implicit VR (PS3.5 A.1 and A.4).
        vr = "OB" if length == 0xFFFFFFFF else "OW"
    else:
        raw_vr = header[4:6]
        rest = fp.read(4)
        if raw_vr not in _PIXEL_VRS or len(rest) != 4:
            return None
        (length,) = struct.unpack(f"{order}L", rest)
        vr = raw_vr.decode("ascii")
    offset = int(fp.tell())
    native = stored_syntax(ds) in NATIVE_SYNTAXES
    if length == 0xFFFFFFFF:
        return None if native else PixelValue(source, offset, None, vr)
    if not native or offset + length > file_size(fp):
        return None
    return PixelValue(source, offset, length, vr)


def read_for_frames(source: Source) -> tuple[FileDataset, PixelValue | None]:
    """The data set in ``source`` without reading its pixels, and where the pixels lie.

    Only the elements before Pixel Data are parsed. When the pixels cannot be read from the
    file directly (deflated files, no Pixel Data, anything irregular) the file is parsed
    whole, as :func:`read_instance` does, and the second value is None.
    """
    try:
        with open_source(source) as fp:
            ds = dcmread(fp, stop_before_pixels=True)
            if stored_syntax(ds) == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
                pixels = None
            else:
                pixels = _locate_pixels(ds, source, fp)
    except ServiceError:
        raise
    except Exception as exc:
        raise ServiceError(
            Code.FAILED_PRECONDITION,
            "TRANSFER_SYNTAX_UNSUPPORTED",
            f"the stored file {source_name(source)} cannot be parsed for transcoding: {exc}",
        ) from exc
    if pixels is None:
        return read_instance(source), None
    return ds, pixels


def _read_range(source: Source, start: int, length: int) -> bytes:
    """``length`` bytes of ``source`` from ``start`` (fewer at its end)."""
    with open_source(source) as fp:
        fp.seek(start)
        return fp.read(max(length, 0))


def stored_syntax(ds: FileDataset) -> str:
    """The transfer syntax of a data set read from a Part 10 file."""
    return str(ds.file_meta.get("TransferSyntaxUID", EXPLICIT_VR_LITTLE_ENDIAN))


def write_instance(ds: FileDataset, target_uid: str) -> bytes:
    """``ds`` as a Part 10 file in ``target_uid``, with a preamble of zeros."""
    ds.file_meta.TransferSyntaxUID = UID(target_uid)
    ds.preamble = b"\x00" * 128
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _swap(data: bytes, size: int) -> bytes:
    """``data`` with the byte order of each ``size``-byte value reversed."""
    if size < 2 or len(data) % size:
        return data
    return np.frombuffer(data, dtype=f"<u{size}").byteswap().tobytes()


def _pixel_word_size(ds: Dataset, vr: str, big_endian_source: bool) -> int:
    """The size of the values byte-swapped in Pixel Data between byte orders.

    pydicom reads big endian Pixel Data with a sample size of Bits Allocated, and big endian
    8-bit data encoded as OW as swapped 16-bit words; this follows it. Little endian 8-bit
    data is a plain byte stream whatever its VR.
    """
    bits = int(ds.get("BitsAllocated", 8))
    if bits >= 16 and bits % 8 == 0:
        return bits // 8
    return 2 if vr == "OW" and big_endian_source else 1


def _swap_values(ds: Dataset, big_endian_source: bool) -> None:
    """Byte-swap, in place and recursively, the values pydicom writes as stored bytes."""
    for elem in ds:
        if elem.VR == VR.SQ:
            for item in elem.value:
                _swap_values(item, big_endian_source)
            continue
        if not isinstance(elem.value, bytes | bytearray) or elem.is_undefined_length:
            continue
        if elem.tag == _PIXEL_DATA_TAG:
            size = _pixel_word_size(ds, str(elem.VR), big_endian_source)
            elem.value = _swap(bytes(elem.value), size)
            elem.VR = VR.OB if int(ds.get("BitsAllocated", 8)) <= 8 else VR.OW
        elif str(elem.VR) in _WORD_SIZES:
            elem.value = _swap(bytes(elem.value), _WORD_SIZES[str(elem.VR)])


def native_to_native(ds: FileDataset, source_uid: str, target_uid: str) -> bytes:
    """Rewrite a native data set in another native syntax; no pixel is decoded."""
    source_little = source_uid != EXPLICIT_VR_BIG_ENDIAN
    target_little = target_uid != EXPLICIT_VR_BIG_ENDIAN
    # Resolve "US or SS", "OB or OW" in the source's byte order before anything else.
    correct_ambiguous_vr(ds, source_little)
    if source_little != target_little:
        _swap_values(ds, not source_little)
    return write_instance(ds, target_uid)


def native_frame_source(
    ds: Dataset, source_uid: str, target_uid: str
) -> Callable[[int], bytes] | None:
    """Frame bytes cut from native pixel data with no decode, or None if a decode is needed."""
    bits = int(ds.get("BitsAllocated", 1))
    if source_uid not in NATIVE_SYNTAXES or target_uid not in NATIVE_SYNTAXES or bits % 8:
        return None
    correct_ambiguous_vr(ds, source_uid != EXPLICIT_VR_BIG_ENDIAN)
    elem = ds["PixelData"]
    data = bytes(elem.value)
    if source_uid == EXPLICIT_VR_BIG_ENDIAN:
        data = _swap(data, _pixel_word_size(ds, str(elem.VR), True))
    samples = int(ds.get("SamplesPerPixel", 1))
    size = int(ds.Rows) * int(ds.Columns) * samples * (bits // 8)
    if str(ds.get("PhotometricInterpretation", "")) == "YBR_FULL_422":
        size = size * 2 // 3
    big = target_uid == EXPLICIT_VR_BIG_ENDIAN

    def frame(number: int) -> bytes:
        chunk = data[(number - 1) * size : number * size]
        return _swap(chunk, bits // 8) if big else chunk

    return frame


def native_file_source(
    ds: Dataset, pixels: PixelValue, source_uid: str, target_uid: str
) -> Callable[[int], bytes] | None:
    """:func:`native_frame_source` reading each frame from the file instead of memory."""
    bits = int(ds.get("BitsAllocated", 1))
    if source_uid not in NATIVE_SYNTAXES or target_uid not in NATIVE_SYNTAXES or bits % 8:
        return None
    correct_ambiguous_vr(ds, source_uid != EXPLICIT_VR_BIG_ENDIAN)
    total = pixels.length or 0
    # The stored value is byte-swapped as a whole, by words, when its length allows it.
    word = 1
    if source_uid == EXPLICIT_VR_BIG_ENDIAN:
        word = _pixel_word_size(ds, pixels.vr, True)
        if word < 2 or total % word:
            word = 1
    samples = int(ds.get("SamplesPerPixel", 1))
    size = int(ds.Rows) * int(ds.Columns) * samples * (bits // 8)
    if str(ds.get("PhotometricInterpretation", "")) == "YBR_FULL_422":
        size = size * 2 // 3
    big = target_uid == EXPLICIT_VR_BIG_ENDIAN

    def frame(number: int) -> bytes:
        # The slice data[(number - 1) * size : number * size] of the (swapped) value.
        start = min(max((number - 1) * size, 0), total)
        stop = min(max(number * size, start), total)
        first = start - start % word
        last = min(stop + (-stop) % word, total)
        data = _read_range(pixels.source, pixels.offset + first, last - first)
        if word > 1:
            data = _swap(data, word)
        chunk = data[start - first : stop - first]
        return _swap(chunk, bits // 8) if big else chunk

    return frame
