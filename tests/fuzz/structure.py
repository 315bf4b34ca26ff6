"""Harness: the structural walk of a Part 10 file (``dicom/structure.py``, ``scan``).

The input is the file. Expected: a :class:`FileStructure`, or ``MalformedFileError`` (272).
A bug: any other exception, a hang, or a structure that points outside the file (the frame
table and retrieve seek to these offsets).
"""

from __future__ import annotations

import io

from dicomrpc_server.dicom.structure import (
    DEFLATED_SYNTAXES,
    FileStructure,
    MalformedFileError,
    scan,
)
from tests.fuzz.bugs import CRASH, Bug
from tests.fuzz.seeds import part10_files

DICTIONARY = (
    b"DICM",
    b"\xfe\xff\x00\xe0",  # item
    b"\xfe\xff\x0d\xe0",  # item delimiter
    b"\xfe\xff\xdd\xe0",  # sequence delimiter
    b"\xe0\x7f\x10\x00",  # Pixel Data
    b"\xff\xff\xff\xff",  # undefined length
    b"\x02\x00\x10\x00UI",  # TransferSyntaxUID
    b"1.2.840.10008.1.2\x00",
    b"1.2.840.10008.1.2.1\x00",
    b"1.2.840.10008.1.2.2\x00",
    b"1.2.840.10008.1.2.1.99",
    b"1.2.840.10008.1.2.4.50",
    b"SQ\x00\x00",
    b"OB\x00\x00",
    b"UN\x00\x00",
)


def seeds() -> dict[str, bytes]:
    return part10_files(64 * 1024)


def TestOneInput(data: bytes) -> None:
    try:
        found = scan(io.BytesIO(data), len(data))
    except MalformedFileError:
        return
    check(found, len(data))


def check(found: FileStructure, size: int) -> None:
    """Every offset the walk reports lies inside the file."""
    if not 0 < found.dataset_offset <= size:
        raise Bug(CRASH, "structure: the data set offset is outside the file")
    pixel = found.pixel_data
    if pixel is None or found.transfer_syntax_uid in DEFLATED_SYNTAXES:
        return  # a deflated data set's offsets are in its inflated bytes
    if not found.dataset_offset <= pixel.value_offset <= size:
        raise Bug(CRASH, "structure: the Pixel Data offset is outside the file")
    if pixel.length is not None and pixel.value_offset + pixel.length > size:
        raise Bug(CRASH, "structure: the Pixel Data value ends past the end of the file")
    for offset, length in pixel.fragments:
        if offset < pixel.value_offset or offset + length > size:
            raise Bug(CRASH, "structure: a Pixel Data fragment lies outside the file")
