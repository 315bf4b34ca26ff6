"""A structural walk over a Part 10 file: where every element lies, and whether all are there.

pydicom reads values, and reads them leniently: a file cut off in the middle of an element comes
back as a shorter data set without complaint. An archive must refuse such a file, and must also
know where the Pixel Data (and each of its fragments) lies so that a frame can later be served
with one seek and one read. This walk reads only element headers and skips values by seeking, so
its cost is the number of elements, not the size of the file.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO

from dicomrpc_server.errors import Code, ServiceError

PREAMBLE_LENGTH = 128
UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
# Explicit VRs whose length field is 4 bytes, after 2 reserved bytes (PS3.5 Table 7.1-1).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UR", b"UT", b"UN"})
DEFLATED_SYNTAXES = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.1.99.1"})


class MalformedFileError(ServiceError):
    """The bytes are not a readable DICOM Part 10 file (DICOM status 272)."""

    def __init__(self, message: str, *, reason: str = "INSTANCE_UNPARSABLE") -> None:
        super().__init__(Code.INVALID_ARGUMENT, reason, message, dicom_status=272)


def truncated(message: str) -> MalformedFileError:
    """Build the error of a file that ends before an element it announces."""
    return MalformedFileError(message, reason="INSTANCE_TRUNCATED")


@dataclass
class PixelDataLocation:
    """Where the top-level pixel data element's value lies in the file.

    Attributes
    ----------
    tag
        (7FE0,0010) Pixel Data, or the float / double float variants.
    value_offset
        File offset of the value (for encapsulated data, of the Basic Offset Table item's tag).
    length
        The value length, or ``None`` when encapsulated (undefined length).
    vr
        The VR written in the file (explicit VR encodings), else empty.
    basic_offset_table
        The Basic Offset Table's value, empty when absent or not encapsulated.
    fragments
        ``(offset, length)`` of each fragment's value, after the Basic Offset Table.
    """

    tag: int
    value_offset: int
    length: int | None
    vr: str = ""
    basic_offset_table: bytes = b""
    fragments: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class FileStructure:
    """What the walk found.

    Attributes
    ----------
    transfer_syntax_uid
        The TransferSyntaxUID of the file meta information.
    dataset_offset
        File offset of the first element after the file meta information.
    pixel_data
        The top-level pixel data, if any.
    has_elements_after_pixel_data
        Whether top-level elements (other than trailing padding) follow the pixel data.
    encoding_mismatch
        Why the data set's VR encoding differs from the transfer syntax's, or empty.
    """

    transfer_syntax_uid: str
    dataset_offset: int
    pixel_data: PixelDataLocation | None
    has_elements_after_pixel_data: bool
    encoding_mismatch: str = ""


class _Reader:
    """Header-level reads over a file of known size, naming what is cut off."""

    def __init__(self, fp: BinaryIO, size: int) -> None:
        self.fp = fp
        self.size = size

    def read(self, n: int, what: str) -> bytes:
        pos = self.fp.tell()
        data = self.fp.read(n)
        if len(data) < n:
            raise truncated(f"the file ends inside {what} at byte {pos} ({self.size} bytes sent)")
        return data

    def skip(self, n: int, what: str) -> None:
        pos = self.fp.tell()
        if pos + n > self.size:
            raise truncated(
                f"{what} at byte {pos} announces {n} bytes but the file has only "
                f"{self.size - pos} left ({self.size} bytes sent)"
            )
        self.fp.seek(n, 1)


def _tag_name(tag: int) -> str:
    return f"element ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def scan(fp: BinaryIO, size: int) -> FileStructure:
    """Walk a Part 10 file from its preamble; raise :class:`MalformedFileError` when it is not one.

    Parameters
    ----------
    fp
        The file, positioned anywhere; it is read from the start.
    size
        The file's size in bytes.
    """
    r = _Reader(fp, size)
    fp.seek(0)
    if size < PREAMBLE_LENGTH + 4:
        raise MalformedFileError(
            f"not a DICOM Part 10 file: {size} bytes is shorter than the 128-byte preamble "
            "and the 'DICM' prefix"
        )
    fp.seek(PREAMBLE_LENGTH)
    if fp.read(4) != b"DICM":
        raise MalformedFileError(
            "not a DICOM Part 10 file: no 'DICM' prefix at byte 128 (a bare data set without "
            "preamble and file meta information is not accepted)"
        )
    transfer_syntax = _scan_meta(r)
    dataset_offset = fp.tell()
    if transfer_syntax in DEFLATED_SYNTAXES:
        # The data set is a raw deflate stream: walk the inflated bytes instead (offsets then
        # refer to the inflated data set, which is why no frame table is built from them).
        # Deflate is used for small non-image objects; the inflated copy is bounded by that.
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            inflated = inflater.decompress(fp.read()) + inflater.flush()
        except zlib.error as exc:
            raise MalformedFileError(f"the deflated data set cannot be inflated: {exc}") from exc
        if not inflater.eof:
            raise truncated("the deflated data set ends before its deflate stream does")
        walk = _Walk(_Reader(io.BytesIO(inflated), len(inflated)), False, True)
        walk.dataset(until=len(inflated), depth=0)
        return FileStructure(
            transfer_syntax, dataset_offset, walk.pixel_data, walk.elements_after_pixel_data
        )
    implicit = transfer_syntax == "1.2.840.10008.1.2"
    little = transfer_syntax != "1.2.840.10008.1.2.2"
    # Some writers encode the data set in another VR encoding than the transfer syntax says;
    # readers (pydicom among them) detect it from the first element, and so does this walk.
    first = fp.read(6)
    fp.seek(dataset_offset)
    found_implicit = implicit
    if len(first) == 6:
        found_implicit = not (first[4:6].isalpha() and first[4:6].isupper())
    mismatch = ""
    if found_implicit != implicit:
        said, found = ("implicit", "explicit") if implicit else ("explicit", "implicit")
        mismatch = f"the data set is encoded with {found} VR but its transfer syntax says {said}"
    walk = _Walk(r, found_implicit, little)
    walk.dataset(until=size, depth=0)
    return FileStructure(
        transfer_syntax,
        dataset_offset,
        walk.pixel_data,
        walk.elements_after_pixel_data,
        mismatch,
    )


def _scan_meta(r: _Reader) -> str:
    """Walk group 0002 (always explicit VR little endian); return its TransferSyntaxUID."""
    transfer_syntax = ""
    while r.fp.tell() < r.size:
        start = r.fp.tell()
        head = r.fp.read(6)
        if len(head) < 6 or struct.unpack("<H", head[:2])[0] != 0x0002:
            r.fp.seek(start)
            break
        tag = (0x0002 << 16) | struct.unpack("<H", head[2:4])[0]
        vr = head[4:6]
        if vr in _LONG_VRS:
            length = struct.unpack("<2xI", r.read(6, f"the header of {_tag_name(tag)}"))[0]
        else:
            length = struct.unpack("<H", r.read(2, f"the header of {_tag_name(tag)}"))[0]
        if length == UNDEFINED_LENGTH:
            raise MalformedFileError(f"file meta {_tag_name(tag)} has an undefined length")
        if tag == 0x00020010:
            value = r.read(length, f"the value of {_tag_name(tag)}")
            transfer_syntax = value.rstrip(b"\x00 ").decode("ascii", "replace")
        else:
            r.skip(length, _tag_name(tag))
    if not transfer_syntax:
        raise MalformedFileError(
            "the file meta information has no TransferSyntaxUID (0002,0010): the encoding of "
            "the data set cannot be known"
        )
    return transfer_syntax


class _Walk:
    """The recursive walk over a data set's elements."""

    def __init__(self, r: _Reader, implicit: bool, little: bool) -> None:
        self.r = r
        self.implicit = implicit
        self.endian = "<" if little else ">"
        self.pixel_data: PixelDataLocation | None = None
        self.elements_after_pixel_data = False

    def _header(self, implicit: bool, endian: str) -> tuple[int, bytes, int]:
        """Read one element header; return (tag, vr, length)."""
        head = self.r.read(8, "an element header")
        group, elem = struct.unpack(endian + "HH", head[:4])
        tag = (group << 16) | elem
        if implicit or group == 0xFFFE:
            return tag, b"", struct.unpack(endian + "I", head[4:])[0]
        vr = head[4:6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack(
                endian + "I", self.r.read(4, f"the header of {_tag_name(tag)}")
            )
            return tag, vr, length
        return tag, vr, struct.unpack(endian + "H", head[6:8])[0]

    def dataset(self, until: int, depth: int, implicit: bool | None = None) -> None:
        """Walk elements up to byte ``until`` or an item delimiter."""
        implicit = self.implicit if implicit is None else implicit
        endian = self.endian
        fp = self.r.fp
        while fp.tell() < until:
            tag, vr, length = self._header(implicit, endian)
            if tag == ITEM_DELIMITER:
                return
            if depth == 0 and self.pixel_data is not None and tag != 0xFFFCFFFC:
                self.elements_after_pixel_data = True
            if length == UNDEFINED_LENGTH:
                if depth == 0 and tag in PIXEL_DATA_TAGS:
                    self.pixel_data = self._encapsulated(tag)
                    self.pixel_data.vr = vr.decode("ascii", "replace")
                else:
                    # A sequence; an UN of undefined length holds implicit VR little endian.
                    nested_implicit = implicit or vr == b"UN"
                    self._sequence(tag, depth, nested_implicit)
                continue
            if depth == 0 and tag in PIXEL_DATA_TAGS:
                self.pixel_data = PixelDataLocation(
                    tag, fp.tell(), length, vr.decode("ascii", "replace")
                )
            self.r.skip(length, f"the value of {_tag_name(tag)}")

    def _sequence(self, tag: int, depth: int, implicit: bool) -> None:
        """Walk the items of an undefined-length sequence up to its delimiter."""
        endian = "<" if implicit else self.endian
        while True:
            head = self.r.read(8, f"an item header of {_tag_name(tag)}")
            group, elem, length = struct.unpack(endian + "HHI", head)
            item_tag = (group << 16) | elem
            if item_tag == SEQUENCE_DELIMITER:
                return
            if item_tag != ITEM:
                raise MalformedFileError(
                    f"{_tag_name(tag)}: expected an item (FFFE,E000) at byte "
                    f"{self.r.fp.tell() - 8}, found {_tag_name(item_tag)}"
                )
            if length == UNDEFINED_LENGTH:
                saved = self.endian
                self.endian = endian
                try:
                    self.dataset(until=self.r.size + 1, depth=depth + 1, implicit=implicit)
                finally:
                    self.endian = saved
            else:
                self.r.skip(length, f"an item of {_tag_name(tag)}")

    def _encapsulated(self, tag: int) -> PixelDataLocation:
        """Locate the Basic Offset Table and the fragments of encapsulated pixel data."""
        fp = self.r.fp
        location = PixelDataLocation(tag, fp.tell(), None)
        first = True
        while True:
            head = self.r.read(8, "an item header of the encapsulated Pixel Data")
            group, elem, length = struct.unpack("<HHI", head)
            item_tag = (group << 16) | elem
            if item_tag == SEQUENCE_DELIMITER:
                return location
            if item_tag != ITEM or length == UNDEFINED_LENGTH:
                raise MalformedFileError(
                    f"encapsulated Pixel Data: expected a fragment item at byte {fp.tell() - 8}, "
                    f"found {_tag_name(item_tag)} of length {length:#x}"
                )
            if first:
                location.basic_offset_table = self.r.read(length, "the Basic Offset Table")
                first = False
                continue
            location.fragments.append((fp.tell(), length))
            self.r.skip(length, "a Pixel Data fragment")
