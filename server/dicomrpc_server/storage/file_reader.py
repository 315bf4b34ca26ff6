"""Reading blobs that are local files: positional reads on a descriptor, cached bytes at once.

The folder store's :class:`~dicomrpc_server.storage.protocols.BlobReader` keeps the retrieve
path as fast as reading a file directly: one descriptor per open blob, ``pread`` at an offset
(no shared file position, so frames of one blob can be read while it streams), and bytes the
page cache holds copied on the event loop without a thread round trip (:func:`read_at`).
"""

from __future__ import annotations

import asyncio
import errno
import io
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


async def read_at(fd: int, buffer: bytearray, size: int, offset: int) -> bytes:
    """Up to ``size`` bytes of ``fd`` at ``offset``, without blocking the event loop.

    Bytes in the page cache (what a retrieve of recently stored or read data mostly meets) are
    copied at once, through ``buffer`` (reused by the caller, at least ``size`` long): a thread
    round trip per chunk costs more than the copy. Only a read that would wait for the disk
    goes to a thread, and every read does where the kernel or the file system cannot read
    without waiting.
    """
    if _nowait.flag:
        view = memoryview(buffer)[:size]
        try:
            got = os.preadv(fd, [view], offset, _nowait.flag)
        except BlockingIOError:
            got = 0
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            _nowait.flag = 0
            got = 0
        if got:
            return bytes(view[:got])
    return await asyncio.to_thread(os.pread, fd, size, offset)


@dataclass
class _NoWait:
    """The flag of reads that fail rather than wait for the disk, or 0 when unsupported.

    ``RWF_NOWAIT`` exists from Linux 4.14 (buffered reads need a 5.x kernel on most file
    systems); the first read refused for want of it turns it off.
    """

    flag: int


_nowait = _NoWait(getattr(os, "RWF_NOWAIT", 0))


class FileReader:
    """A blob that is a local file, opened once: a descriptor and the file's size.

    Raises ``FileNotFoundError`` when there is no such file. A blob removed while it is open
    stays readable to the end (the descriptor keeps the file), so a retrieve already streaming
    a deleted instance finishes.
    """

    def __init__(self, path: Path) -> None:
        self.fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.size = os.fstat(self.fd).st_size

    def _fd(self) -> int:
        if self.fd is None:
            raise ValueError("the blob reader is closed")
        return self.fd

    def pread(self, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (blocking)."""
        return os.pread(self._fd(), size, offset)

    async def chunks(self, offset: int, length: int, chunk: int) -> AsyncIterator[bytes]:
        """The bytes of ``offset .. offset + length``, one :func:`read_at` per chunk."""
        fd = self._fd()
        end = offset + length
        buffer = bytearray(max(min(chunk, length), 1))
        while offset < end and (
            data := await read_at(fd, buffer, min(chunk, end - offset), offset)
        ):
            offset += len(data)
            yield data

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> FileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class FileRegion:
    """Bytes of a local file an adapter may hand to the kernel whole (``sendfile``).

    The region owns its reader: whoever sends it closes it. ``chunks`` reads the same bytes
    for a transport that cannot send a file (TLS, a server without the zero-copy extension).
    """

    reader: FileReader
    offset: int
    length: int

    def file(self) -> BinaryIO:
        """An unbuffered file object over the reader's descriptor, which it does not close.

        ``loop.sendfile`` takes a file object and moves its position; positional reads of the
        same descriptor (``pread``) do not use the position, so they are not disturbed.
        """
        fd = self.reader.fd
        if fd is None:
            raise ValueError("the blob reader is closed")
        return io.FileIO(fd, "rb", closefd=False)

    def chunks(self, chunk: int) -> AsyncIterator[bytes]:
        """The region's bytes, read as :meth:`FileReader.chunks` reads them."""
        return self.reader.chunks(self.offset, self.length, chunk)

    def close(self) -> None:
        """Close the reader (idempotent)."""
        self.reader.close()


@dataclass(frozen=True)
class FolderSpec:
    """How a worker process opens the blobs of a folder store: where its files are."""

    blobs_dir: Path
    suffix: str = ".dcm"

    def path(self, blob_id: str) -> Path:
        """The file of a blob id (as :meth:`LocalBlobStore.path` names it)."""
        return self.blobs_dir / blob_id[:8] / f"{blob_id}{self.suffix}"

    def open_file(self, blob_id: str) -> BinaryIO:
        """The blob's file, opened for reading (buffered, seekable)."""
        return open(self.path(blob_id), "rb")
