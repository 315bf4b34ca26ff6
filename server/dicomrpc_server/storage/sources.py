"""What the codec jobs read an instance from: a local file, or a stored blob by reference.

Codec jobs run in worker processes, which are handed a picklable :class:`BlobRef` (or, in
tests and tools, a path) and open it themselves: a folder store's blob as its file, an S3 blob
through ranged reads. Either way the job sees a seekable binary file object and reads only the
parts it needs, so no job holds more of an instance than its codec asks for.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

from dicomrpc_server.storage.protocols import BlobRef

Source = Path | BlobRef


def open_source(source: Source) -> BinaryIO:
    """A seekable binary file object over ``source`` (``FileNotFoundError`` when missing)."""
    if isinstance(source, BlobRef):
        return source.open()
    return open(os.fspath(source), "rb")


def source_name(source: Source) -> str:
    """How messages name ``source``: a file's name, a blob's id."""
    return source.name


def file_size(fp: BinaryIO) -> int:
    """The size of a seekable file object, its position left where it was."""
    here = fp.tell()
    try:
        return fp.seek(0, io.SEEK_END)
    finally:
        fp.seek(here)


def read_source(source: Source) -> bytes:
    """Every byte of ``source`` (for the callers that send an instance whole anyway)."""
    with open_source(source) as fp:
        return fp.read()
