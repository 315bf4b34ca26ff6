"""The frame offset table: where each frame of an instance lies in its file.

With it, Retrieve serves a frame with one seek and one read per fragment, whatever the size of
the instance. Native frames are slices of the pixel data value; encapsulated frames are mapped
to fragments by the Extended Offset Table, the Basic Offset Table, one fragment per frame, or
(when the encoder wrote none of those) by the codestream start marker each frame begins with.
"""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

from dicomrpc_server.dicom.elements import ElementValues
from dicomrpc_server.dicom.structure import PixelDataLocation
from dicomrpc_server.storage import records_pb2

_NUMBER_OF_FRAMES = 0x00280008
_ROWS = 0x00280010
_COLUMNS = 0x00280011
_SAMPLES_PER_PIXEL = 0x00280002
BITS_ALLOCATED = 0x00280100
_EXTENDED_OFFSET_TABLE = 0x7FE00001
# Markers a frame's codestream starts with: JPEG SOI, JPEG 2000 SOC+SIZ, JP2 signature box.
_FRAME_STARTS = (b"\xff\xd8", b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP")


def number_of_frames(elements: ElementValues) -> int:
    """NumberOfFrames, or 1 when absent or invalid."""
    try:
        value = int(elements.value(_NUMBER_OF_FRAMES, 1) or 1)
    except (TypeError, ValueError):
        return 1
    return max(value, 1)


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
    bounds = [*starts, len(fragments)]
    for first, end in itertools.pairwise(bounds):
        table.frames.add(
            offsets=[fragments[i][0] for i in range(first, end)],
            lengths=[fragments[i][1] for i in range(first, end)],
        )
    return table, ""


def _native(
    elements: ElementValues, pixel_data: PixelDataLocation, count: int
) -> tuple[records_pb2.FrameTable, str]:
    table = records_pb2.FrameTable(encapsulated=False)
    try:  # a missing element gives None, which int() refuses as it refuses a wrong value
        rows = int(elements.value(_ROWS, None))
        columns = int(elements.value(_COLUMNS, None))
        samples = int(elements.value(_SAMPLES_PER_PIXEL, 1) or 1)
        bits = int(elements.value(BITS_ALLOCATED, None))
    except (TypeError, ValueError):
        return table, "Rows, Columns or BitsAllocated is missing or invalid"
    if pixel_data.tag == 0x7FE00008:
        bits = 32
    elif pixel_data.tag == 0x7FE00009:
        bits = 64
    frame_bits = rows * columns * samples * bits
    assert pixel_data.length is not None
    available_bits = pixel_data.length * 8
    for i in range(count):
        start_bit = i * frame_bits
        if start_bit + frame_bits > available_bits:
            return table, (
                f"the Pixel Data holds {pixel_data.length} bytes, less than {count} frames of "
                f"{rows}x{columns}x{samples} samples of {bits} bits"
            )
        first_byte, bit_offset = divmod(start_bit, 8)
        table.frames.add(
            offsets=[pixel_data.value_offset + first_byte],
            lengths=[(bit_offset + frame_bits + 7) // 8],
        )
        table.bit_offsets.append(bit_offset)
    if not any(table.bit_offsets):
        del table.bit_offsets[:]
    return table, ""


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
    if _EXTENDED_OFFSET_TABLE in elements:
        raw = elements.value(_EXTENDED_OFFSET_TABLE, None)
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
