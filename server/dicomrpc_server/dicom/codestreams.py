"""What a compressed frame declares about itself: the header of its codestream.

A decoder sizes its output, and its working memory, by the codestream's own header, not by the
data set's Rows and Columns: the SIZ marker of a 3 KB JPEG 2000 frame can declare a
40000 x 40000 image, and the codec then allocates gigabytes before it finds there is no data.
So before a frame is decoded its header is read here (JPEG SOFn, JPEG-LS SOF55, JPEG 2000 and
HTJ2K SIZ, the RLE segment header) and held to the Image Pixel module (:mod:`.pixeldata`) and
to the pixel limit: a frame that disagrees is refused before any codec sees it.
"""

from __future__ import annotations

import itertools
import math
import struct
from dataclasses import dataclass
from typing import BinaryIO

from pydicom.encaps import get_frame

from dicomrpc_server.dicom.pixeldata import FrameGeometry
from dicomrpc_server.errors import Code, ServiceError

JPEG_SYNTAXES = frozenset(
    {f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62)}
    | {f"1.2.840.10008.1.2.4.{n}" for n in (63, 64, 65, 66, 70)}
)
JPEG_LS_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})
JPEG_2000_SYNTAXES = frozenset(
    {f"1.2.840.10008.1.2.4.{n}" for n in (90, 91, 92, 93, 201, 202, 203)}
)
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

# JPEG start of frame markers (ISO/IEC 10918-1 B.1.1.3): C0-CF but DHT (C4), JPG (C8) and DAC
# (CC); F7 is the JPEG-LS start of frame (ISO/IEC 14495-1 C.2.2).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_SOF55 = 0xF7
# Markers without a length (ISO/IEC 10918-1 B.1.1.3): TEM, RST0-7, SOI.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8), 0xD8})
# JPEG 2000 (ISO/IEC 15444-1 A.5.1): SOC then SIZ; the JP2 file format's signature box.
_SOC_SIZ = b"\xff\x4f\xff\x51"
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
# At most 65535 tiles: the tile index Isot is 0..65534 (ISO/IEC 15444-1 A.4.2).
_MAX_TILES = 65535
# An RLE frame starts with a header of 16 little-endian uint32 (PS3.5 G.3.1).
_RLE_HEADER = struct.Struct("<16I")


class CodestreamError(ValueError):
    """A codestream header that cannot be read."""


@dataclass(frozen=True)
class CodestreamHeader:
    """The image a codestream declares.

    Attributes
    ----------
    codec
        ``"JPEG"``, ``"JPEG-LS"``, ``"JPEG 2000"`` or ``"RLE"``.
    rows
        The image height, ``None`` when the header leaves it to later (a JPEG DNL marker).
    columns
        The image width (``None`` for RLE, which takes the data set's).
    components
        The number of components (samples per pixel); for RLE, of segments.
    precision
        The most bits of any component.
    tiles
        The number of tiles (JPEG 2000).
    """

    codec: str
    rows: int | None
    columns: int | None
    components: int
    precision: int
    tiles: int = 1


def read_header(frame: bytes, transfer_syntax_uid: str) -> CodestreamHeader | None:
    """The header of a compressed frame, ``None`` for a syntax without a checked header.

    Raises
    ------
    CodestreamError
        When the header is missing, cut off or malformed.
    """
    if transfer_syntax_uid in JPEG_SYNTAXES:
        return _jpeg(frame, "JPEG")
    if transfer_syntax_uid in JPEG_LS_SYNTAXES:
        return _jpeg(frame, "JPEG-LS")
    if transfer_syntax_uid in JPEG_2000_SYNTAXES:
        return _jpeg_2000(frame)
    if transfer_syntax_uid == RLE_LOSSLESS:
        return _rle(frame)
    return None


def _u16(data: bytes, at: int) -> int:
    if at + 2 > len(data):
        raise CodestreamError(f"the header is cut off at byte {len(data)}")
    return int.from_bytes(data[at : at + 2], "big")


def _jpeg(frame: bytes, codec: str) -> CodestreamHeader:
    """The frame header (SOFn, or SOF55 for JPEG-LS) of a JPEG or JPEG-LS codestream."""
    if not frame.startswith(b"\xff\xd8"):
        raise CodestreamError("it does not start with a JPEG SOI marker (FFD8)")
    at = 2
    while at + 1 < len(frame):
        if frame[at] != 0xFF:
            raise CodestreamError(f"expected a marker at byte {at}, found {frame[at]:02X}")
        marker = frame[at + 1]
        if marker == 0xFF:  # a fill byte
            at += 1
            continue
        if marker in _STANDALONE:
            at += 2
            continue
        if marker in _SOF_MARKERS or marker == _SOF55:
            if at + 10 > len(frame):
                raise CodestreamError("the frame header is cut off")
            precision = frame[at + 4]
            rows, columns = _u16(frame, at + 5), _u16(frame, at + 7)
            components = frame[at + 9]
            return CodestreamHeader(codec, rows or None, columns, components, precision)
        if marker in (0xD9, 0xDA):
            found = "a scan (SOS)" if marker == 0xDA else "the end (EOI)"
            raise CodestreamError(f"{found} comes before any frame header (SOFn)")
        at += 2 + _u16(frame, at + 2)
    raise CodestreamError("no frame header (SOFn) before the end of the data")


def _jpeg_2000(frame: bytes) -> CodestreamHeader:
    """The SIZ marker segment of a JPEG 2000 or HTJ2K codestream (bare, or in a JP2 file)."""
    codestream = frame
    if frame.startswith(_JP2_SIGNATURE):
        codestream = _jp2_codestream(frame)
    if not codestream.startswith(_SOC_SIZ):
        raise CodestreamError("it does not start with the JPEG 2000 SOC and SIZ markers")
    if len(codestream) < 4 + 38:
        raise CodestreamError("the SIZ marker segment is cut off")
    (xsiz, ysiz, x0, y0, xt, yt, xt0, yt0, csiz) = struct.unpack_from(">8IH", codestream, 8)
    if not (x0 < xsiz and y0 < ysiz and xt and yt and xt0 <= x0 and yt0 <= y0):
        raise CodestreamError(
            f"its SIZ marker declares an impossible image or tiling (Xsiz {xsiz}, Ysiz "
            f"{ysiz}, XOsiz {x0}, YOsiz {y0}, XTsiz {xt}, YTsiz {yt})"
        )
    if len(codestream) < 42 + 3 * csiz:
        raise CodestreamError("the SIZ marker segment is cut off")
    precision = max(((codestream[42 + 3 * i] & 0x7F) + 1 for i in range(csiz)), default=0)
    tiles = math.ceil((xsiz - xt0) / xt) * math.ceil((ysiz - yt0) / yt)
    return CodestreamHeader("JPEG 2000", ysiz - y0, xsiz - x0, csiz, precision, tiles)


def _jp2_codestream(frame: bytes) -> bytes:
    """The contiguous codestream box (``jp2c``) of a JP2 file (ISO/IEC 15444-1 I.4)."""
    at = 0
    while at + 8 <= len(frame):
        length, kind = struct.unpack_from(">I4s", frame, at)
        header = 8
        if length == 1:
            if at + 16 > len(frame):
                break
            (length,) = struct.unpack_from(">Q", frame, at + 8)
            header = 16
        if kind == b"jp2c":
            return frame[at + header : at + length if length else len(frame)]
        if length < header:
            break
        at += length
    raise CodestreamError("the JP2 file has no contiguous codestream box (jp2c)")


def _rle(frame: bytes) -> CodestreamHeader:
    """The segment header of an RLE frame (PS3.5 G.3.1)."""
    if len(frame) < _RLE_HEADER.size:
        raise CodestreamError("the RLE header is cut off")
    count, *offsets = _RLE_HEADER.unpack_from(frame)
    if not 1 <= count <= 15:
        raise CodestreamError(f"its RLE header declares {count} segments (1 to 15 allowed)")
    used = offsets[:count]
    if used[0] != _RLE_HEADER.size or any(b <= a for a, b in itertools.pairwise(used)):
        raise CodestreamError(f"its RLE segment offsets {used} are not increasing from 64")
    if used[-1] >= len(frame):
        raise CodestreamError(f"its last RLE segment starts past the frame's {len(frame)} bytes")
    return CodestreamHeader("RLE", None, None, count, 8)


def check_frame(
    frame: bytes,
    transfer_syntax_uid: str,
    geometry: FrameGeometry,
    max_pixels: int,
    what: str,
) -> None:
    """Refuse a compressed frame whose header disagrees with the data set, or is too large.

    Parameters
    ----------
    frame
        The frame's bytes (its fragments joined), or at least the start of them.
    transfer_syntax_uid
        The syntax the frame is encoded in.
    geometry
        What the data set's Image Pixel module declares.
    max_pixels
        The most pixels a frame may have (``max_frame_pixels``).
    what
        The frame, for messages (``"frame 2 of instance 1.2.3"``).

    Raises
    ------
    ServiceError
        FAILED_PRECONDITION, reason ``FRAME_HEADER_MISMATCH``, naming what disagrees.
    """
    try:
        header = read_header(frame, transfer_syntax_uid)
    except CodestreamError as exc:
        raise _mismatch(what, transfer_syntax_uid, f"its header cannot be read: {exc}") from None
    if header is None:
        return
    problems = []
    if header.rows is not None and header.rows != geometry.rows:
        problems.append(f"{header.rows} rows where Rows is {geometry.rows}")
    if header.columns is not None and header.columns != geometry.columns:
        problems.append(f"{header.columns} columns where Columns is {geometry.columns}")
    bytes_per_sample = (geometry.bits_allocated + 7) // 8
    if header.codec == "RLE":
        expected = geometry.samples_per_pixel * bytes_per_sample
        if header.components != expected:
            problems.append(
                f"{header.components} segments where SamplesPerPixel "
                f"{geometry.samples_per_pixel} x {bytes_per_sample} bytes needs {expected}"
            )
    elif header.components != geometry.samples_per_pixel:
        problems.append(
            f"{header.components} components where SamplesPerPixel is {geometry.samples_per_pixel}"
        )
    if header.precision > max(geometry.bits_allocated, 8):
        problems.append(
            f"{header.precision}-bit samples where BitsAllocated is {geometry.bits_allocated}"
        )
    pixels = (header.rows or geometry.rows) * (header.columns or geometry.columns)
    if pixels > max_pixels:
        problems.append(
            f"{pixels} pixels, more than this server's limit of {max_pixels} per frame "
            "(max_frame_pixels)"
        )
    if header.tiles > _MAX_TILES:
        problems.append(f"{header.tiles} tiles, more than the {_MAX_TILES} JPEG 2000 allows")
    if problems:
        raise _mismatch(
            what, transfer_syntax_uid, f"its {header.codec} header declares " + "; ".join(problems)
        )


def _mismatch(what: str, transfer_syntax_uid: str, why: str) -> ServiceError:
    return ServiceError(
        Code.FAILED_PRECONDITION,
        "FRAME_HEADER_MISMATCH",
        f"{what} ({transfer_syntax_uid}) is not decoded: {why}",
        metadata={"transfer_syntax_uid": transfer_syntax_uid},
    )


def encoded_frame(
    source: bytes | BinaryIO,
    index: int,
    number_of_frames: int,
    extended_offsets: tuple[bytes, bytes] | None,
) -> bytes:
    """The bytes of frame ``index`` (0-based) of encapsulated pixel data, as a decoder gets them.

    ``source`` is the Pixel Data value, or a file positioned at it (its Basic Offset Table
    item); the frames are found as pydicom's decoders find them, so the frame checked is the
    frame decoded.
    """
    return get_frame(
        source, index, number_of_frames=number_of_frames, extended_offsets=extended_offsets
    )
