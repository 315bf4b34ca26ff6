"""Reading a received Part 10 file: its structure checked, its data set read once.

This is the one parser of the archive. The structural walk (:mod:`.structure`) proves every
element is complete and locates the pixel data; pydicom then reads the values, stopping before
the pixel data (and deferring any large value), so a multi-GB instance costs a few kilobytes of
memory to parse.

A deflated data set (PS3.5 A.5) is inflated once, as a stream and within the instance size
limit, into a file beside the received one; the walk and pydicom both read that file. pydicom
is never handed the deflate stream itself: it would inflate it whole, in memory, without limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset
from pydicom.filereader import read_dataset, read_file_meta_info

from dicomrpc.datasets import MAX_SEQUENCE_DEPTH
from dicomrpc_server.dicom.structure import (
    DEFLATED_SYNTAXES,
    PIXEL_DATA_TAGS,
    FileStructure,
    MalformedFileError,
    scan,
)

# Values longer than this are not read at parse time (pydicom reads them on access).
DEFER_SIZE = 64 * 1024
# The default limit of an inflated data set: the default instance size limit.
MAX_INFLATED = 4 << 30


@dataclass
class ParsedInstance:
    """A parsed instance; :meth:`close` it when done with the data set.

    Attributes
    ----------
    dataset
        The data set without its pixel data (file meta in ``dataset.file_meta``).
    structure
        Where the pixel data and its fragments lie, and the transfer syntax.
    size
        The file's size in bytes.
    inflated
        The inflated data set of a deflated file (pydicom reads deferred values from it),
        else ``None``.
    """

    dataset: Dataset
    structure: FileStructure
    size: int
    inflated: Path | None = None

    def close(self) -> None:
        """Remove the inflated copy of a deflated data set, if any."""
        if self.inflated is not None:
            self.inflated.unlink(missing_ok=True)


def inflated_path(path: Path) -> Path:
    """Where the inflated data set of the deflated file at ``path`` is written."""
    return path.with_name(path.name + ".inflated")


def parse_file(
    path: Path, max_depth: int = MAX_SEQUENCE_DEPTH, *, max_inflated: int = MAX_INFLATED
) -> ParsedInstance:
    """Check and read the Part 10 file at ``path``.

    Parameters
    ----------
    path
        The file.
    max_depth
        The most levels its sequences of undefined length may nest (see
        :func:`~.structure.scan`).
    max_inflated
        The most bytes a deflated data set may inflate to.

    Raises
    ------
    MalformedFileError
        When the file is not Part 10, is truncated, or cannot be read (DICOM status 272).
    ServiceError
        ``LIMIT_EXCEEDED`` (272) when its sequences nest deeper than ``max_depth``.
    InflatedTooLargeError
        When a deflated data set inflates to more than ``max_inflated`` bytes (272).
    """
    size = path.stat().st_size
    spool = inflated_path(path)
    try:
        with open(path, "rb", buffering=64 * 1024) as fp:
            structure = scan(
                fp, size, max_depth=max_depth, inflate_into=spool, max_inflated=max_inflated
            )
            stop_before_pixels = not structure.has_elements_after_pixel_data
            try:
                if structure.transfer_syntax_uid in DEFLATED_SYNTAXES:
                    dataset: Dataset = _read_inflated(path, spool, stop_before_pixels)
                else:
                    fp.seek(0)
                    dataset = dcmread(
                        fp, defer_size=DEFER_SIZE, stop_before_pixels=stop_before_pixels
                    )
            except Exception as exc:
                raise MalformedFileError(f"the data set could not be read: {exc}") from exc
    except BaseException:
        spool.unlink(missing_ok=True)
        raise
    for tag in PIXEL_DATA_TAGS:
        if tag in dataset:
            del dataset[tag]
    if structure.transfer_syntax_uid in DEFLATED_SYNTAXES:
        return ParsedInstance(dataset, structure, size, spool)
    # Deferred values are read on access from the file, by name.
    dataset.filename = str(path)
    return ParsedInstance(dataset, structure, size)


def _at_pixel_data(tag: int, vr: str | None, length: int) -> bool:
    return tag in PIXEL_DATA_TAGS


def _read_inflated(path: Path, inflated: Path, stop_before_pixels: bool) -> FileDataset:
    """Read a deflated file's data set from its inflated copy (explicit VR little endian)."""
    meta = read_file_meta_info(path)
    with open(inflated, "rb", buffering=64 * 1024) as fp:
        dataset = read_dataset(
            fp,
            is_implicit_VR=False,
            is_little_endian=True,
            stop_when=_at_pixel_data if stop_before_pixels else None,
            defer_size=DEFER_SIZE,
        )
    # Named by the inflated copy: deferred values are read from there, at the offsets read.
    out = FileDataset(str(inflated), dataset, b"\x00" * 128, meta, False, True)
    out.set_original_encoding(False, True, dataset._character_set)
    return out
