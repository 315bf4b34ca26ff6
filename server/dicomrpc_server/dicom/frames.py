"""The frame offset table: where each frame of an instance lies in its file.

With it, Retrieve serves a frame with one seek and one read per fragment, whatever the size of
the instance. Native frames are slices of the pixel data value, computed from its offset and
the frame size; encapsulated frames are mapped to fragments by the Extended Offset Table, the
Basic Offset Table, one fragment per frame, or (when the encoder wrote none of those) by the
codestream start marker each frame begins with.

The table holds no message per frame: it is read for every frame request, and a whole-slide
image has tens of thousands of frames, so finding one frame must not mean parsing them all.
"""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

from dicomrpc_server.dicom.elements import ElementValues
from dicomrpc_server.dicom.pixeldata import (
    BITS_ALLOCATED,
    EXTENDED_OFFSET_TABLE,
    GeometryError,
    declared_frames,
    frame_geometry,
)
from dicomrpc_server.dicom.structure import PixelDataLocation
from dicomrpc_server.storage import records_pb2

__all__ = ["BITS_ALLOCATED", "frame_count", "frame_ranges", "frame_table", "number_of_frames"]

# Markers a frame's codestream starts with: JPEG SOI, JPEG 2000 SOC+SIZ, JP2 signature box.
_FRAME_STARTS = (b"\xff\xd8", b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP")
_START = struct.Struct("<I")
_FRAGMENT = struct.Struct("<QQ")


def number_of_frames(elements: ElementValues) -> int:
    """NumberOfFrames, or 1 when absent or invalid."""
    return declared_frames(elements)[0]


def frame_table(
    elements: ElementValues, pixel_data: PixelDataLocation, path: Path
) -> tuple[records_pb2.FrameTable, str]:
    """Build the frame table; return it and, when it is incomplete, why.

    Parameters
    ----------
    elements
        The data set's values (Rows, Columns, NumberOfFrames, the offset tables ...).
    pixel_data
        The pixel data location from the structural walk.
    path
        The file, opened only to read the first bytes of fragments when no offset table says
        where frames start.
    """
    count = number_of_frames(elements)
    if pixel_data.length is not None:
        return _native(elements, pixel_data, count)
    table = records_pb2.FrameTable(encapsulated=True)
    fragments = pixel_data.fragments
    starts = _frame_starts(elements, pixel_data, count, path)
    if starts is None:
        return table, (
            f"the {len(fragments)} fragments of the Pixel Data could not be mapped to "
            f"{count} frames"
        )
    table.frame_count = count
    table.frame_starts = struct.pack(f"<{count}I", *starts)
    table.fragments = struct.pack(
        f"<{2 * len(fragments)}Q", *itertools.chain.from_iterable(fragments)
    )
    return table, ""


def _native(
    elements: ElementValues, pixel_data: PixelDataLocation, count: int
) -> tuple[records_pb2.FrameTable, str]:
    table = records_pb2.FrameTable(encapsulated=False)
    try:
        geometry = frame_geometry(elements, pixel_data.tag)
    except GeometryError as exc:
        return table, str(exc)
    frame_bits = geometry.frame_bits
    assert pixel_data.length is not None
    if count * frame_bits > pixel_data.length * 8:
        return table, (
            f"the Pixel Data holds {pixel_data.length} bytes, less than {count} frames of "
            f"{geometry.rows}x{geometry.columns}x{geometry.samples_per_pixel} samples of "
            f"{geometry.bits_allocated} bits"
        )
    table.frame_count = count
    table.native_offset = pixel_data.value_offset
    table.frame_bits = frame_bits
    return table, ""


def frame_count(table: records_pb2.FrameTable) -> int:
    """The number of frames a table locates."""
    return len(table.frames) if table.frames else table.frame_count


def frame_ranges(table: records_pb2.FrameTable, number: int) -> tuple[list[tuple[int, int]], int]:
    """Where frame ``number`` (1-based, within the table) lies.

    Returns
    -------
    tuple[list[tuple[int, int]], int]
        The ``(offset, length)`` byte ranges of the frame in the file (one for native data,
        one per fragment when encapsulated), and the bit of the first byte the frame starts
        at (not 0 only for native data of Bits Allocated 1, whose frames need not start on a
        byte boundary).
    """
    if table.frames:  # a table written one message per frame
        location = table.frames[number - 1]
        bit = table.bit_offsets[number - 1] if table.bit_offsets else 0
        return list(zip(location.offsets, location.lengths, strict=True)), bit
    if not table.encapsulated:
        first_byte, bit = divmod((number - 1) * table.frame_bits, 8)
        return [(table.native_offset + first_byte, (bit + table.frame_bits + 7) // 8)], bit
    starts, fragments = table.frame_starts, table.fragments
    (first,) = _START.unpack_from(starts, 4 * (number - 1))
    end = _START.unpack_from(starts, 4 * number)[0] if number < table.frame_count else None
    if end is None:
        end = len(fragments) // _FRAGMENT.size
    return [_FRAGMENT.unpack_from(fragments, _FRAGMENT.size * i) for i in range(first, end)], 0


def _frame_starts(
    elements: ElementValues, pixel_data: PixelDataLocation, count: int, path: Path
) -> list[int] | None:
    """The index of the fragment each frame starts with, or ``None`` if unknown."""
    fragments = pixel_data.fragments
    if not fragments:
        return None
    if count == 1:
        return [0]
    if len(fragments) == count:
        return list(range(count))
    # Offsets of both tables are relative to the first fragment's item tag.
    item_offsets = [offset - 8 - (fragments[0][0] - 8) for offset, _ in fragments]
    offsets: list[int] = []
    if EXTENDED_OFFSET_TABLE in elements:
        raw = elements.value(EXTENDED_OFFSET_TABLE, None)
        offsets = list(struct.unpack(f"<{len(raw) // 8}Q", raw))
    elif pixel_data.basic_offset_table:
        raw = pixel_data.basic_offset_table
        offsets = list(struct.unpack(f"<{len(raw) // 4}I", raw))
    if offsets:
        position = {offset: index for index, offset in enumerate(item_offsets)}
        mapped = [position.get(offset) for offset in offsets]
        found = [s for s in mapped if s is not None]
        return found if len(found) == len(mapped) == count else None
    starts = []
    with open(path, "rb") as fp:
        for index, (offset, _) in enumerate(fragments):
            fp.seek(offset)
            head = fp.read(6)
            if any(head.startswith(marker) for marker in _FRAME_STARTS):
                starts.append(index)
    if len(starts) == count and starts[0] == 0:
        return starts
    return None
