"""A structural walk over a Part 10 file: where every element lies, and whether all are there.

pydicom reads values, and reads them leniently: a file cut off in the middle of an element comes
back as a shorter data set without complaint. An archive must refuse such a file, and must also
know where the Pixel Data (and each of its fragments) lies so that a frame can later be served
with one seek and one read. This walk reads only element headers and skips values by seeking, so
its cost is the number of elements, not the size of the file.

The walk also refuses sequences of undefined length nested deeper than the server's limit
(:mod:`.nesting`) before pydicom, which reads such sequences recursively, is given the file.
Sequences of defined length are skipped here; the conversion of the data set checks those
(``dicomrpc.datasets.from_pydicom``), reading one level at a time.
"""

from __future__ import annotations

import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from dicomrpc.datasets import MAX_SEQUENCE_DEPTH, NestingTooDeep
from dicomrpc_server.dicom.nesting import too_deep
from dicomrpc_server.errors import Code, ServiceError

PREAMBLE_LENGTH = 128
UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
# Explicit VRs whose length field is 4 bytes, after 2 reserved bytes (PS3.5 Table 7.1-1).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
DEFLATED_SYNTAXES = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.1.99.1"})
# Element headers by byte order: (group, element, length) in implicit VR, (group, element, VR,
# 2-byte length) in explicit VR, and the 4-byte length that follows the long VRs.
_IMPLICIT_HEADER = {e: struct.Struct(e + "HHI") for e in "<>"}
_EXPLICIT_HEADER = {e: struct.Struct(e + "HH2sH") for e in "<>"}
_LONG_LENGTH = {e: struct.Struct(e + "I") for e in "<>"}
# How much of the file one read brings in: the element headers of a typical data set, at once.
_CHUNK = 64 * 1024


class MalformedFileError(ServiceError):
    """The bytes are not a readable DICOM Part 10 file (DICOM status 272)."""

    def __init__(self, message: str, *, reason: str = "INSTANCE_UNPARSABLE") -> None:
        super().__init__(Code.INVALID_ARGUMENT, reason, message, dicom_status=272)


def truncated(message: str) -> MalformedFileError:
    """Build the error of a file that ends before an element it announces."""
    return MalformedFileError(message, reason="INSTANCE_TRUNCATED")


class InflatedTooLargeError(ServiceError):
    """A deflated data set inflates to more than the instance size limit (DICOM status 272)."""

    def __init__(self, limit: int, deflated: int) -> None:
        super().__init__(
            Code.INVALID_ARGUMENT,
            "INSTANCE_TOO_LARGE",
            f"the deflated data set inflates to more than {limit} bytes, the server's limit "
            f"for an instance (max_instance_bytes): its first {deflated} bytes already do, "
            "and inflating stopped there",
            dicom_status=272,
            metadata={"limit": str(limit), "deflated_bytes_read": str(deflated)},
        )


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
    """Header-level reads over a file of known size, naming what is cut off.

    The walk reads a few bytes per element and skips the values: reading the file in chunks and
    keeping the position here (a skip only moves it) makes that one read per chunk instead of a
    read and a seek per element, which a buffered file object would still pay in calls.
    """

    def __init__(self, fp: BinaryIO, size: int) -> None:
        self.fp = fp
        self.size = size
        self.pos = 0
        self._chunk = b""
        self._chunk_start = 0

    def _window(self, n: int) -> tuple[bytes, int]:
        """The chunk holding up to ``n`` bytes at the position, and the position's index in it."""
        index = self.pos - self._chunk_start
        if index < 0 or index + n > len(self._chunk):
            self.fp.seek(self.pos)
            self._chunk = self.fp.read(max(n, _CHUNK))
            self._chunk_start = self.pos
            index = 0
        return self._chunk, index

    def peek(self, n: int) -> bytes:
        """Up to ``n`` bytes at the position, without moving it (fewer at the end of the file)."""
        chunk, index = self._window(n)
        return chunk[index : index + n]

    def read(self, n: int, what: str, tag: int | None = None) -> bytes:
        """Read ``n`` bytes of ``what`` (followed by the name of ``tag``, if given)."""
        chunk, index = self._window(n)
        data = chunk[index : index + n]
        if len(data) < n:
            raise truncated(
                f"the file ends inside {_what(what, tag)} at byte {self.pos} "
                f"({self.size} bytes sent)"
            )
        self.pos += n
        return data

    def skip(self, n: int, what: str, tag: int | None = None) -> None:
        """Skip the ``n`` bytes of ``what`` (followed by the name of ``tag``, if given)."""
        if self.pos + n > self.size:
            raise truncated(
                f"{_what(what, tag)} at byte {self.pos} announces {n} bytes but the file has "
                f"only {self.size - self.pos} left ({self.size} bytes sent)"
            )
        self.pos += n


def _tag_name(tag: int) -> str:
    return f"element ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _what(what: str, tag: int | None) -> str:
    # Error messages name the element; they are built only when an error is raised.
    return what if tag is None else what + _tag_name(tag)


def inflate(fp: BinaryIO, out: BinaryIO, limit: int) -> int:
    """Inflate the raw deflate stream at the position of ``fp`` into ``out``; return its size.

    PS3.5 A.5: the data set of a Deflated transfer syntax is one deflate stream (no zlib
    header). It is inflated as a stream, a chunk in and at most a chunk out at a time, and
    given up as soon as more than ``limit`` bytes come out: a few hundred kilobytes can
    inflate to gigabytes, and none of that is ever held in memory.

    Raises
    ------
    InflatedTooLargeError
        When the data set inflates to more than ``limit`` bytes.
    MalformedFileError
        When the stream is corrupt, or ends before its final block.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    start = fp.tell()

    def emit(piece: bytes) -> None:
        nonlocal total
        total += len(piece)
        if total > limit:
            raise InflatedTooLargeError(limit, fp.tell() - start)
        out.write(piece)

    try:
        while not inflater.eof:
            data = fp.read(_CHUNK)
            if not data:
                # The input has ended: what zlib still holds of it (less than its window).
                emit(inflater.flush())
                break
            while data and not inflater.eof:
                emit(inflater.decompress(data, _CHUNK))
                data = inflater.unconsumed_tail
    except zlib.error as exc:
        raise MalformedFileError(f"the deflated data set cannot be inflated: {exc}") from exc
    if not inflater.eof:
        raise truncated("the deflated data set ends before its deflate stream does")
    return total


def scan(
    fp: BinaryIO,
    size: int,
    max_depth: int = MAX_SEQUENCE_DEPTH,
    *,
    inflate_into: Path | None = None,
    max_inflated: int = 4 << 30,
) -> FileStructure:
    """Walk a Part 10 file from its preamble; raise :class:`MalformedFileError` when it is not one.

    Parameters
    ----------
    fp
        The file, positioned anywhere; it is read from the start.
    size
        The file's size in bytes.
    max_depth
        The most levels sequences of undefined length may nest (``LIMIT_EXCEEDED`` beyond).
    inflate_into
        The file a deflated data set is inflated into (created, or replaced), which then
        holds the data set the offsets of the result refer to; ``None`` inflates into a
        temporary file removed afterwards.
    max_inflated
        The most bytes a deflated data set may inflate to (:func:`inflate`).
    """
    r = _Reader(fp, size)
    if size < PREAMBLE_LENGTH + 4:
        raise MalformedFileError(
            f"not a DICOM Part 10 file: {size} bytes is shorter than the 128-byte preamble "
            "and the 'DICM' prefix"
        )
    r.pos = PREAMBLE_LENGTH
    if r.peek(4) != b"DICM":
        raise MalformedFileError(
            "not a DICOM Part 10 file: no 'DICM' prefix at byte 128 (a bare data set without "
            "preamble and file meta information is not accepted)"
        )
    r.pos += 4
    transfer_syntax = _scan_meta(r)
    dataset_offset = r.pos
    if transfer_syntax in DEFLATED_SYNTAXES:
        # The data set is a raw deflate stream: walk the inflated bytes instead (offsets then
        # refer to the inflated data set, which is why no frame table is built from them).
        fp.seek(dataset_offset)
        with (
            tempfile.TemporaryFile() if inflate_into is None else open(inflate_into, "w+b")
        ) as spool:
            return _scan_inflated(
                fp, spool, max_inflated, transfer_syntax, dataset_offset, max_depth
            )
    implicit = transfer_syntax == "1.2.840.10008.1.2"
    little = transfer_syntax != "1.2.840.10008.1.2.2"
    # Some writers encode the data set in another VR encoding than the transfer syntax says;
    # readers (pydicom among them) detect it from the first element, and so does this walk.
    first = r.peek(6)
    found_implicit = implicit
    if len(first) == 6:
        found_implicit = not (first[4:6].isalpha() and first[4:6].isupper())
    mismatch = ""
    if found_implicit != implicit:
        said, found = ("implicit", "explicit") if implicit else ("explicit", "implicit")
        mismatch = f"the data set is encoded with {found} VR but its transfer syntax says {said}"
    walk = _Walk(r, found_implicit, little, max_depth)
    walk.dataset(until=size, depth=0)
    return FileStructure(
        transfer_syntax,
        dataset_offset,
        walk.pixel_data,
        walk.elements_after_pixel_data,
        mismatch,
    )


def _scan_inflated(
    fp: BinaryIO,
    spool: BinaryIO,
    limit: int,
    transfer_syntax: str,
    dataset_offset: int,
    max_depth: int,
) -> FileStructure:
    """Inflate the data set at the position of ``fp`` into ``spool`` and walk it there."""
    inflated = inflate(fp, spool, limit)
    spool.flush()
    walk = _Walk(_Reader(spool, inflated), False, True, max_depth)
    walk.dataset(until=inflated, depth=0)
    return FileStructure(
        transfer_syntax, dataset_offset, walk.pixel_data, walk.elements_after_pixel_data
    )


def _scan_meta(r: _Reader) -> str:
    """Walk group 0002 (always explicit VR little endian); return its TransferSyntaxUID."""
    transfer_syntax = ""
    while r.pos < r.size:
        head = r.peek(6)
        if len(head) < 6 or struct.unpack("<H", head[:2])[0] != 0x0002:
            break
        r.pos += 6
        tag = (0x0002 << 16) | struct.unpack("<H", head[2:4])[0]
        vr = head[4:6]
        if vr in _LONG_VRS:
            length = struct.unpack("<2xI", r.read(6, "the header of ", tag))[0]
        else:
            length = struct.unpack("<H", r.read(2, "the header of ", tag))[0]
        if length == UNDEFINED_LENGTH:
            raise MalformedFileError(f"file meta {_tag_name(tag)} has an undefined length")
        if tag == 0x00020010:
            value = r.read(length, "the value of ", tag)
            transfer_syntax = value.rstrip(b"\x00 ").decode("ascii", "replace")
        else:
            r.skip(length, "", tag)
    if not transfer_syntax:
        raise MalformedFileError(
            "the file meta information has no TransferSyntaxUID (0002,0010): the encoding of "
            "the data set cannot be known"
        )
    return transfer_syntax


class _Walk:
    """The recursive walk over a data set's elements."""

    def __init__(self, r: _Reader, implicit: bool, little: bool, max_depth: int) -> None:
        self.r = r
        self.implicit = implicit
        self.endian = "<" if little else ">"
        self.max_depth = max_depth
        self.pixel_data: PixelDataLocation | None = None
        self.elements_after_pixel_data = False
        # "tag.item" of each item the walk is in, to name a sequence nested too deeply.
        self._path: list[str] = []

    def _header(self, implicit: bool, endian: str) -> tuple[int, bytes, int]:
        """Read one element header; return (tag, vr, length)."""
        head = self.r.read(8, "an element header")
        if implicit:
            group, elem, length = _IMPLICIT_HEADER[endian].unpack(head)
            return (group << 16) | elem, b"", length
        group, elem, vr, length = _EXPLICIT_HEADER[endian].unpack(head)
        tag = (group << 16) | elem
        if group == 0xFFFE:  # item and delimiter tags have no VR, and a 4-byte length
            return tag, b"", _IMPLICIT_HEADER[endian].unpack(head)[2]
        if vr in _LONG_VRS:
            (length,) = _LONG_LENGTH[endian].unpack(self.r.read(4, "the header of ", tag))
        return tag, vr, length

    def dataset(self, until: int, depth: int, implicit: bool | None = None) -> None:
        """Walk elements up to byte ``until`` or an item delimiter."""
        implicit = self.implicit if implicit is None else implicit
        endian = self.endian
        r = self.r
        while r.pos < until:
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
                    # Encapsulated pixel data in an item (an icon) is walked as one, but is not
                    # a sequence of the data set.
                    if depth >= self.max_depth and tag not in PIXEL_DATA_TAGS:
                        path = ".".join([*self._path, f"{tag:08X}"])
                        raise too_deep(NestingTooDeep(path, self.max_depth))
                    nested_implicit = implicit or vr == b"UN"
                    self._sequence(tag, depth, nested_implicit)
                continue
            if depth == 0 and tag in PIXEL_DATA_TAGS:
                self.pixel_data = PixelDataLocation(
                    tag, r.pos, length, vr.decode("ascii", "replace")
                )
            self.r.skip(length, "the value of ", tag)

    def _sequence(self, tag: int, depth: int, implicit: bool) -> None:
        """Walk the items of an undefined-length sequence up to its delimiter."""
        endian = "<" if implicit else self.endian
        index = 0
        while True:
            head = self.r.read(8, "an item header of ", tag)
            group, elem, length = struct.unpack(endian + "HHI", head)
            item_tag = (group << 16) | elem
            if item_tag == SEQUENCE_DELIMITER:
                return
            if item_tag != ITEM:
                raise MalformedFileError(
                    f"{_tag_name(tag)}: expected an item (FFFE,E000) at byte "
                    f"{self.r.pos - 8}, found {_tag_name(item_tag)}"
                )
            if length == UNDEFINED_LENGTH:
                saved = self.endian
                self.endian = endian
                self._path.append(f"{tag:08X}.{index}")
                try:
                    self.dataset(until=self.r.size + 1, depth=depth + 1, implicit=implicit)
                finally:
                    self.endian = saved
                    self._path.pop()
            else:
                self.r.skip(length, "an item of ", tag)
            index += 1

    def _encapsulated(self, tag: int) -> PixelDataLocation:
        """Locate the Basic Offset Table and the fragments of encapsulated pixel data."""
        r = self.r
        location = PixelDataLocation(tag, r.pos, None)
        first = True
        while True:
            head = self.r.read(8, "an item header of the encapsulated Pixel Data")
            group, elem, length = struct.unpack("<HHI", head)
            item_tag = (group << 16) | elem
            if item_tag == SEQUENCE_DELIMITER:
                return location
            if item_tag != ITEM or length == UNDEFINED_LENGTH:
                raise MalformedFileError(
                    f"encapsulated Pixel Data: expected a fragment item at byte {r.pos - 8}, "
                    f"found {_tag_name(item_tag)} of length {length:#x}"
                )
            if first:
                location.basic_offset_table = self.r.read(length, "the Basic Offset Table")
                first = False
                continue
            location.fragments.append((r.pos, length))
            self.r.skip(length, "a Pixel Data fragment")
