"""Reading a received Part 10 file: its structure checked, its data set read once.

This is the one parser of the archive. The structural walk (:mod:`.structure`) proves every
element is complete and locates the pixel data; pydicom then reads the values, stopping before
the pixel data (and deferring any large value), so a multi-GB instance costs a few kilobytes of
memory to parse.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from dicomrpc.datasets import MAX_SEQUENCE_DEPTH
from dicomrpc_server.dicom.structure import FileStructure, MalformedFileError, scan

# Values longer than this are not read at parse time (pydicom reads them on access).
DEFER_SIZE = 64 * 1024


@dataclass
class ParsedInstance:
    """A parsed instance.

    Attributes
    ----------
    dataset
        The data set without its pixel data (file meta in ``dataset.file_meta``).
    structure
        Where the pixel data and its fragments lie, and the transfer syntax.
    size
        The file's size in bytes.
    """

    dataset: Dataset
    structure: FileStructure
    size: int


def parse_file(path: Path, max_depth: int = MAX_SEQUENCE_DEPTH) -> ParsedInstance:
    """Check and read the Part 10 file at ``path``.

    ``max_depth`` is the most levels its sequences of undefined length may nest (see
    :func:`~.structure.scan`).

    Raises
    ------
    MalformedFileError
        When the file is not Part 10, is truncated, or cannot be read (DICOM status 272).
    ServiceError
        ``LIMIT_EXCEEDED`` (272) when its sequences nest deeper than ``max_depth``.
    """
    size = path.stat().st_size
    with open(path, "rb", buffering=64 * 1024) as fp:
        structure = scan(fp, size, max_depth)
        fp.seek(0)
        try:
            dataset = dcmread(
                fp,
                defer_size=DEFER_SIZE,
                stop_before_pixels=not structure.has_elements_after_pixel_data,
            )
        except Exception as exc:
            raise MalformedFileError(f"the data set could not be read: {exc}") from exc
    for tag in (0x7FE00010, 0x7FE00008, 0x7FE00009):
        if tag in dataset:
            del dataset[tag]
    # Deferred values are read on access from the file, by name.
    dataset.filename = str(path)
    return ParsedInstance(dataset, structure, size)
