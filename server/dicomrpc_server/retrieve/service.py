"""RetrieveCore: stored bytes, frames, rendered images and metadata, with bounded memory.

Stored bytes are read one chunk at a time, in a worker thread, only when the consumer asks for
the next one: a slow client makes the server wait, it never makes it buffer. Transcoding and
rendering decode pixel data, so they run in the worker processes (off the event loop) and
hold one instance (or the requested frames) at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Collection, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from dicomrpc.v1 import dataset_pb2
from dicomrpc_server.config import Settings
from dicomrpc_server.dicom.frames import frame_count, frame_ranges
from dicomrpc_server.errors import Code, ServiceError, invalid_argument
from dicomrpc_server.retrieve.bulkdata import ByteRange, check_tag_path, locate_bulk_data
from dicomrpc_server.retrieve.capabilities import check_transcodable
from dicomrpc_server.retrieve.render import RenderOptions, render
from dicomrpc_server.retrieve.scope import StoredInstance, not_found, resolve
from dicomrpc_server.retrieve.syntaxes import syntax_name
from dicomrpc_server.retrieve.transcode import transcode_frames, transcode_instance
from dicomrpc_server.storage import records_pb2
from dicomrpc_server.storage.file_reader import FileReader, FileRegion
from dicomrpc_server.storage.protocols import BlobReader, BlobRef, BlobStore, InstanceReads
from dicomrpc_server.workers import WorkerPool

MIN_CHUNK = 64 * 1024
MAX_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Outgoing:
    """An instance about to be sent: the syntax and size of its bytes, and the bytes."""

    transfer_syntax_uid: str
    size: int
    chunks: AsyncIterator[bytes]


def clamp_chunk(requested: int, default: int) -> int:
    """The chunk size to use: the request's, within 64 KiB .. 1 MiB, else the default."""
    return min(max(requested, MIN_CHUNK), MAX_CHUNK) if requested > 0 else default


T = TypeVar("T")
# Messages (chunks of at most 1 MiB, or headers) read before the transport asks for them.
READ_AHEAD = 4


async def read_ahead(source: AsyncIterator[T], depth: int = READ_AHEAD) -> AsyncIterator[T]:
    """The items of ``source``, read up to ``depth`` ahead of the consumer by a task.

    Reading the next chunk from disk while the transport sends the current one keeps both
    busy; the bound keeps a slow reader's stream to a few chunks of memory. An error of the
    source is raised where the consumer reaches it; a consumer that stops cancels the reads.
    """
    queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue(depth)

    async def produce() -> None:
        try:
            async for item in source:
                await queue.put((True, item))
        except Exception as exc:  # handed to the consumer, in order
            await queue.put((False, exc))
            return
        finally:
            close = getattr(source, "aclose", None)
            if close is not None:  # its files are closed now, not when it is collected
                await close()
        await queue.put((False, None))

    task = asyncio.get_running_loop().create_task(produce())
    try:
        while True:
            ok, item = await queue.get()
            if not ok:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def as_stored(requested: str, stored: str) -> bool:
    """Whether a requested transfer syntax means the stored bytes, untouched."""
    return requested in ("", "*", stored)


async def _slices(data: bytes, chunk: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), chunk):
        yield data[start : start + chunk]


class RetrieveCore:
    """Reads what the store wrote: the one implementation behind WADO over gRPC and HTTP.

    Parameters
    ----------
    index, blobs
        The storage. Blobs are read through the blob store's readers (positional reads, no
        local path); worker processes get a :class:`BlobRef` and open the blob themselves.
    chunk_bytes
        The default chunk size.
    workers
        The worker processes that decode and encode pixel data (with their time and memory
        limits).
    max_frames
        The most frames one request may ask for.
    max_frame_pixels
        The most pixels a frame may have to be decoded.
    """

    def __init__(
        self,
        index: InstanceReads,
        blobs: BlobStore,
        chunk_bytes: int,
        workers: WorkerPool,
        max_frames: int = Settings.max_frames_per_request,
        max_frame_pixels: int = Settings.max_frame_pixels,
    ) -> None:
        self.index = index
        self.blobs = blobs
        self.chunk_bytes = chunk_bytes
        self.workers = workers
        self.max_frames = max_frames
        self.max_frame_pixels = max_frame_pixels

    def instances(
        self,
        study: str,
        series: str = "",
        sop: str = "",
        transfer_syntax: str = "",
        allow_lossy: bool = False,
    ) -> list[StoredInstance]:
        """Resolve a request and check every transcoding it needs, before anything is sent."""
        found = resolve(self.index, study, series, sop)
        for instance in found:
            stored = instance.record.transfer_syntax_uid
            if not as_stored(transfer_syntax, stored):
                check_transcodable(stored, transfer_syntax, allow_lossy=allow_lossy)
        return found

    async def outgoing(
        self, instance: StoredInstance, transfer_syntax: str, allow_lossy: bool, chunk: int
    ) -> Outgoing:
        """The bytes of one instance: as stored, or transcoded (held whole while sent)."""
        record = instance.record
        if as_stored(transfer_syntax, record.transfer_syntax_uid):
            return Outgoing(
                record.transfer_syntax_uid, record.size_bytes, self.read_chunks(instance, chunk)
            )
        data = await self.workers.run(
            transcode_instance,
            self.blobs.ref(record.blob_id),
            transfer_syntax,
            what=f"transcoding instance {instance.sop_uid} from "
            f"{syntax_name(record.transfer_syntax_uid)} to {syntax_name(transfer_syntax)}",
            allow_lossy=allow_lossy,
            max_frame_pixels=self.max_frame_pixels,
        )
        return Outgoing(transfer_syntax, len(data), _slices(data, chunk))

    def file_region(self, instance: StoredInstance, transfer_syntax: str) -> FileRegion | None:
        """The instance's bytes as a region of a local file, for a transport that sends files.

        ``None`` when they are not a file's bytes as they are: a transcoding, or a store whose
        blobs are no local files (S3). The caller closes the region. A file shorter than the
        size the index recorded is refused here, before anything is sent, as a read would
        refuse it at its end.
        """
        record = instance.record
        if not as_stored(transfer_syntax, record.transfer_syntax_uid):
            return None
        try:
            reader = self.blobs.open(record.blob_id)
        except FileNotFoundError as exc:
            raise not_found(f"the file of instance {instance.sop_uid}") from exc
        if not isinstance(reader, FileReader):
            reader.close()
            return None
        if reader.size < record.size_bytes:
            reader.close()
            raise _cut_short(instance, reader.size, record.size_bytes)
        return FileRegion(reader, 0, record.size_bytes)

    async def read_chunks(self, instance: StoredInstance, chunk: int) -> AsyncIterator[bytes]:
        """The instance file's bytes, one chunk read per request for the next."""
        whole = ByteRange(0, instance.record.size_bytes)
        async for data in self._read_range(instance, whole, chunk):
            yield data

    # -- frames ----------------------------------------------------------------------------

    def frame_numbers(self, numbers: list[int], ranges: list[tuple[int, int]]) -> list[int]:
        """The requested frames in order: listed numbers, then expanded ranges."""
        total = len(numbers)
        for first, last in ranges:
            if last < first:
                raise invalid_argument(
                    "frame_ranges", f"range {first}-{last} ends before it starts"
                )
            total += last - first + 1
        if total == 0:
            raise invalid_argument("frame_numbers", "name at least one frame")
        if total > self.max_frames:
            raise ServiceError(
                Code.RESOURCE_EXHAUSTED,
                "LIMIT_EXCEEDED",
                f"{total} frames were asked for, more than this server's limit of "
                f"{self.max_frames} per request",
                metadata={"limit": "max_frames_per_request", "value": str(self.max_frames)},
            )
        out = list(numbers)
        for first, last in ranges:
            out.extend(range(first, last + 1))
        return out

    def locate(self, sop: str) -> tuple[str, str] | None:
        """The (study, series) holding a SOP instance UID, or ``None``."""
        return self.index.locate_sop(sop)

    def frame_metadata(self, instance: StoredInstance) -> dataset_pb2.Dataset | None:
        """The pre-computed metadata of an instance, for its frames' shape (``None``: none)."""
        return self.index.get_metadata(instance.study_uid, instance.series_uid, instance.sop_uid)

    def check_frames(
        self, instance: StoredInstance, numbers: list[int], transfer_syntax: str, allow_lossy: bool
    ) -> records_pb2.FrameTable | None:
        """Check a frame request; return the frame table when frames go out as stored."""
        record = instance.record
        if record.number_of_frames == 0:
            raise ServiceError(
                Code.FAILED_PRECONDITION,
                "NO_PIXEL_DATA",
                f"instance {instance.sop_uid} has no pixel data",
                metadata={"sop_instance_uid": instance.sop_uid},
            )
        check_frame_range(numbers, record.number_of_frames)
        stored = record.transfer_syntax_uid
        if not as_stored(transfer_syntax, stored):
            check_transcodable(stored, transfer_syntax, allow_lossy=allow_lossy)
            return None
        table = self.index.get_frames(instance.study_uid, instance.series_uid, instance.sop_uid)
        if table is None or frame_count(table) != record.number_of_frames:
            # No byte ranges to serve (a deflated data set, or fragments that could not be
            # mapped to frames): the frames are decoded and sent as raw pixel bytes.
            check_transcodable(stored, EXPLICIT_VR_LITTLE_ENDIAN, allow_lossy=False)
            return None
        return table

    async def frames(
        self,
        instance: StoredInstance,
        numbers: list[int],
        table: records_pb2.FrameTable | None,
        transfer_syntax: str,
        allow_lossy: bool,
    ) -> tuple[str, AsyncIterator[tuple[int, bytes]]]:
        """The syntax of the frames sent, and each requested frame's bytes in order."""
        if table is not None:
            return instance.record.transfer_syntax_uid, self._stored_frames(
                instance, table, numbers
            )
        stored = instance.record.transfer_syntax_uid
        target = (
            EXPLICIT_VR_LITTLE_ENDIAN if as_stored(transfer_syntax, stored) else transfer_syntax
        )
        data = await self.workers.run(
            _frames_list,
            self.blobs.ref(instance.record.blob_id),
            numbers,
            target,
            allow_lossy,
            self.max_frame_pixels,
            what=f"decoding {_frames_named(numbers)} of instance {instance.sop_uid} "
            f"({syntax_name(stored)}) to {syntax_name(target)}",
        )

        async def decoded() -> AsyncIterator[tuple[int, bytes]]:
            for number, frame in zip(numbers, data, strict=True):
                yield number, frame

        return target, decoded()

    async def _stored_frames(
        self, instance: StoredInstance, table: records_pb2.FrameTable, numbers: list[int]
    ) -> AsyncIterator[tuple[int, bytes]]:
        frames = self.iter_frames(instance, table, numbers)
        while (item := await asyncio.to_thread(next, frames, None)) is not None:
            yield item

    def read_frame(self, reader: BlobReader, table: records_pb2.FrameTable, number: int) -> bytes:
        """One frame's bytes: one positional read, or one per range of distant fragments.

        The fragments of an encapsulated frame mostly follow one another, 8 bytes of item
        header apart: they are read as one span and cut, one request to an object store
        rather than one per fragment.
        """
        ranges, bit_offset = frame_ranges(table, number)
        parts = [span[start : start + length] for span, start, length in _spans(reader, ranges)]
        data = b"".join(parts)
        if bit_offset:
            data = _realign_bits(data, bit_offset)
        tail = table.frame_bits % 8 if not table.encapsulated else 0
        if tail:  # the bits past the frame in its last byte belong to the next one: zeroed
            data = data[: (table.frame_bits + 7) // 8]
            data = data[:-1] + bytes([data[-1] & ((1 << tail) - 1)])
        return data

    def iter_frames(
        self, instance: StoredInstance, table: records_pb2.FrameTable, numbers: list[int]
    ) -> Iterator[tuple[int, bytes]]:
        """Each requested frame's bytes, in order (blocking reads: run it in a thread)."""
        reader = self.blobs.open(instance.record.blob_id)
        try:
            for number in numbers:
                yield number, self.read_frame(reader, table, number)
        finally:
            reader.close()

    # -- rendered --------------------------------------------------------------------------

    async def rendered(self, instance: StoredInstance, options: RenderOptions) -> tuple[str, bytes]:
        """One frame rendered as JPEG or PNG: (media type, image bytes)."""
        if instance.record.number_of_frames == 0:
            raise ServiceError(
                Code.NOT_FOUND,
                "NO_PIXEL_DATA",
                f"instance {instance.sop_uid} has no pixel data to render",
                metadata={"sop_instance_uid": instance.sop_uid},
            )
        record = instance.record
        check_frame_range([options.frame_number or 1], record.number_of_frames)
        return await self.workers.run(
            render,
            self.blobs.ref(record.blob_id),
            options,
            self.max_frame_pixels,
            what=f"rendering frame {options.frame_number or 1} of instance {instance.sop_uid} "
            f"({syntax_name(record.transfer_syntax_uid)})",
        )

    # -- metadata --------------------------------------------------------------------------

    def metadata(self, study: str, series: str = "", sop: str = "") -> tuple[str, list[bytes]]:
        """The ETag and the pre-computed metadata of what a request names.

        The metadata are serialized ``Dataset`` messages, as stored: gRPC sends them without
        parsing them, DICOMweb parses them to write DICOM JSON.
        """
        found = resolve(self.index, study, series, sop)
        return etag(found), self.index.get_metadata_many(
            [(i.study_uid, i.series_uid, i.sop_uid) for i in found]
        )

    def metadata_etag(self, study: str, series: str = "", sop: str = "") -> str:
        """The ETag alone, to answer a matching ``if_none_match`` without reading metadata."""
        return etag(resolve(self.index, study, series, sop))

    def metadata_unless(
        self, if_none_match: Collection[str], study: str, series: str = "", sop: str = ""
    ) -> tuple[str, list[bytes] | None]:
        """The ETag and metadata, or the ETag and ``None`` when it is one of ``if_none_match``.

        ``*`` matches any ETag (RFC 9110 §13.1.2). The metadata is read only when it is sent.
        """
        if if_none_match:
            tag = self.metadata_etag(study, series, sop)
            if tag in if_none_match or "*" in if_none_match:
                return tag, None
        return self.metadata(study, series, sop)

    # -- bulk data -------------------------------------------------------------------------

    async def bulk_data(self, instance: StoredInstance, tag_path: str, chunk: int) -> Outgoing:
        """The value of the element a metadata bulk data URI names (``tag_path``).

        A value stored as one byte range streams from the file a chunk at a time; the size is
        known before the first byte.
        """
        check_tag_path(tag_path)
        record = instance.record
        found = await self.workers.run(
            locate_bulk_data,
            self.blobs.ref(record.blob_id),
            tag_path,
            record.transfer_syntax_uid,
            what=f"reading bulk data {tag_path} of instance {instance.sop_uid}",
        )
        if isinstance(found, bytes):
            return Outgoing(record.transfer_syntax_uid, len(found), _slices(found, chunk))
        return Outgoing(
            record.transfer_syntax_uid, found.length, self._read_range(instance, found, chunk)
        )

    async def _read_range(
        self, instance: StoredInstance, where: ByteRange, chunk: int
    ) -> AsyncIterator[bytes]:
        """The bytes of ``where`` in the instance's file; an error if the file ends before.

        The size was announced before the first byte (a part's Content-Length, a stream's
        header): a file cut short must fail the stream, not end it early as if complete.
        """
        sent = 0
        try:
            reader = self.blobs.open(instance.record.blob_id)
        except FileNotFoundError as exc:
            raise not_found(f"the file of instance {instance.sop_uid}") from exc
        try:
            try:
                async for data in reader.chunks(where.offset, where.length, chunk):
                    sent += len(data)
                    yield data
            except FileNotFoundError as exc:  # a store that looks for the blob at its first read
                if sent:
                    raise
                raise not_found(f"the file of instance {instance.sop_uid}") from exc
            if sent < where.length:
                raise _cut_short(instance, sent, where.length)
        finally:
            reader.close()


def _cut_short(instance: StoredInstance, sent: int, length: int) -> ServiceError:
    """The error of an instance file that ends before the bytes it was to send."""
    return ServiceError(
        Code.INTERNAL,
        "INTERNAL_FAILURE",
        f"the file of instance {instance.sop_uid} ends after {sent} of the {length} bytes to send",
        metadata={"sop_instance_uid": instance.sop_uid},
    )


EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


def check_frame_range(numbers: list[int], count: int) -> None:
    """Refuse frame numbers outside 1..count, naming them."""
    outside = sorted({n for n in numbers if not 1 <= n <= count})
    if outside:
        raise ServiceError(
            Code.OUT_OF_RANGE,
            "FRAME_OUT_OF_RANGE",
            f"frame {', '.join(map(str, outside))} is outside 1..{count}",
            metadata={"frames": ",".join(map(str, outside)), "number_of_frames": str(count)},
        )


def _frames_list(
    source: BlobRef, numbers: list[int], target: str, allow_lossy: bool, max_frame_pixels: int
) -> list[bytes]:
    """Decode (and re-encode) frames in a worker process; the frames asked for, in order."""
    return list(
        transcode_frames(
            source, numbers, target, allow_lossy=allow_lossy, max_frame_pixels=max_frame_pixels
        )
    )


# Fragments of one frame further apart than this are read separately.
MAX_GAP = 64 * 1024


def _spans(reader: BlobReader, ranges: list[tuple[int, int]]) -> Iterator[tuple[bytes, int, int]]:
    """Read ``ranges`` (in file order) in as few reads as their gaps allow.

    Yields each range as (the bytes of the read holding it, its start in them, its length).
    """
    i = 0
    while i < len(ranges):
        first = ranges[i][0]
        end = first + ranges[i][1]
        j = i + 1
        while j < len(ranges) and 0 <= ranges[j][0] - end <= MAX_GAP:
            end = ranges[j][0] + ranges[j][1]
            j += 1
        span = reader.pread(end - first, first)
        for offset, length in ranges[i:j]:
            yield span, offset - first, length
        i = j


def _frames_named(numbers: list[int]) -> str:
    """``frame 3``, ``frames 1, 2, 5`` or ``12 frames (1 to 40)``, for messages."""
    if len(numbers) == 1:
        return f"frame {numbers[0]}"
    if len(numbers) <= 5:
        return "frames " + ", ".join(map(str, numbers))
    return f"{len(numbers)} frames ({min(numbers)} to {max(numbers)})"


def etag(instances: list[StoredInstance]) -> str:
    """A strong ETag of a set of instances: it changes when one is added, replaced or removed."""
    digest = hashlib.blake2b(digest_size=12)
    for instance in instances:
        digest.update(instance.sop_uid.encode())
        digest.update(instance.record.version.to_bytes(8, "big"))
    return f'"{digest.hexdigest()}"'


def _realign_bits(data: bytes, bit_offset: int) -> bytes:
    """Shift bit-packed (BitsAllocated 1) frame bytes so the frame starts at bit 0.

    DICOM packs 1-bit pixels least significant bit first, so a frame that starts at bit ``k``
    of its first byte loses the first ``k`` little-endian-ordered bits.
    """
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    return np.packbits(bits[bit_offset:], bitorder="little").tobytes()
