"""RetrieveCore: stored bytes, frames and pre-computed metadata, streamed with bounded memory.

Bytes are read one chunk at a time, in a worker thread, only when the consumer asks for the
next one: a slow client makes the server wait, it never makes it buffer.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from dicomrpc.v1 import dataset_pb2
from dicomrpc_server.errors import Code, ServiceError, invalid_argument
from dicomrpc_server.retrieve.scope import StoredInstance, not_found, resolve
from dicomrpc_server.storage import records_pb2
from dicomrpc_server.storage.blobs import LocalBlobStore
from dicomrpc_server.storage.lmdb_index import LmdbIndex

MIN_CHUNK = 64 * 1024
MAX_CHUNK = 1024 * 1024
NATIVE_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}
)


@dataclass(frozen=True)
class FrameRequest:
    """Frames to send: 1-based numbers in the order asked."""

    numbers: list[int]


@dataclass(frozen=True)
class FrameData:
    """One frame's description; its bytes follow as chunks."""

    number: int
    transfer_syntax_uid: str
    size: int


def clamp_chunk(requested: int, default: int) -> int:
    """The chunk size to use: the request's, within 64 KiB .. 1 MiB, else the default."""
    return min(max(requested, MIN_CHUNK), MAX_CHUNK) if requested > 0 else default


def unsupported_syntax(requested: str, stored: str) -> ServiceError:
    """The FAILED_PRECONDITION error of a transfer syntax that cannot be produced."""
    return ServiceError(
        Code.FAILED_PRECONDITION,
        "TRANSFER_SYNTAX_UNSUPPORTED",
        f"transfer syntax {requested} cannot be produced from the stored {stored}: this server "
        "returns instances as stored (ask for '*' or the stored syntax)",
        dicom_status=None,
        metadata={"transfer_syntax_uid": requested, "stored_transfer_syntax_uid": stored},
    )


def check_syntax(requested: str, instances: list[StoredInstance]) -> None:
    """Refuse, before any byte is sent, a syntax some instance is not stored in."""
    if requested in ("", "*"):
        return
    for instance in instances:
        if instance.record.transfer_syntax_uid != requested:
            raise unsupported_syntax(requested, instance.record.transfer_syntax_uid)


class RetrieveCore:
    """Reads what the store wrote: the one implementation behind WADO over gRPC and HTTP."""

    def __init__(self, index: LmdbIndex, blobs: LocalBlobStore, chunk_bytes: int) -> None:
        self.index = index
        self.blobs = blobs
        self.chunk_bytes = chunk_bytes

    def instances(
        self, study: str, series: str = "", sop: str = "", transfer_syntax: str = ""
    ) -> list[StoredInstance]:
        """Resolve a request and check its transfer syntax, before anything is streamed."""
        found = resolve(self.index, study, series, sop)
        check_syntax(transfer_syntax, found)
        return found

    async def read_chunks(self, instance: StoredInstance, chunk: int) -> AsyncIterator[bytes]:
        """The instance file's bytes, one chunk read per request for the next."""
        try:
            fp = self.blobs.open(instance.record.blob_id)
        except FileNotFoundError as exc:
            raise not_found(f"the file of instance {instance.sop_uid}") from exc
        try:
            while data := await asyncio.to_thread(fp.read, chunk):
                yield data
        finally:
            fp.close()

    # -- frames ----------------------------------------------------------------------------

    def frame_numbers(self, numbers: list[int], ranges: list[tuple[int, int]]) -> list[int]:
        """The requested frames in order: listed numbers, then expanded ranges."""
        out = list(numbers)
        for first, last in ranges:
            if last < first:
                raise invalid_argument(
                    "frame_ranges", f"range {first}-{last} ends before it starts"
                )
            out.extend(range(first, last + 1))
        if not out:
            raise invalid_argument("frame_numbers", "name at least one frame")
        return out

    def check_frames(
        self, instance: StoredInstance, numbers: list[int], transfer_syntax: str
    ) -> records_pb2.FrameTable:
        """The instance's frame table, once the request is known to be satisfiable."""
        record = instance.record
        if record.number_of_frames == 0:
            raise ServiceError(
                Code.FAILED_PRECONDITION,
                "NO_PIXEL_DATA",
                f"instance {instance.sop_uid} has no pixel data",
                metadata={"sop_instance_uid": instance.sop_uid},
            )
        outside = sorted({n for n in numbers if not 1 <= n <= record.number_of_frames})
        if outside:
            raise ServiceError(
                Code.OUT_OF_RANGE,
                "FRAME_OUT_OF_RANGE",
                f"frame {', '.join(map(str, outside))} is outside 1..{record.number_of_frames}",
                metadata={
                    "frames": ",".join(map(str, outside)),
                    "number_of_frames": str(record.number_of_frames),
                },
            )
        stored = record.transfer_syntax_uid
        if transfer_syntax not in ("", "*", stored):
            raise unsupported_syntax(transfer_syntax, stored)
        table = self.index.get_frames(instance.study_uid, instance.series_uid, instance.sop_uid)
        if table is None or len(table.frames) != record.number_of_frames:
            raise ServiceError(
                Code.FAILED_PRECONDITION,
                "TRANSFER_SYNTAX_UNSUPPORTED",
                f"the frames of instance {instance.sop_uid} cannot be located in its stored "
                f"{stored} encoding without decoding it",
                metadata={"stored_transfer_syntax_uid": stored},
            )
        return table

    def read_frame(self, fp: BinaryIO, table: records_pb2.FrameTable, number: int) -> bytes:
        """One frame's bytes: one seek and read per range (per fragment when encapsulated)."""
        location = table.frames[number - 1]
        parts = []
        for offset, length in zip(location.offsets, location.lengths, strict=True):
            fp.seek(offset)
            parts.append(fp.read(length))
        data = b"".join(parts)
        if table.bit_offsets and table.bit_offsets[number - 1]:
            data = _realign_bits(data, table.bit_offsets[number - 1])
        return data

    def iter_frames(
        self, instance: StoredInstance, table: records_pb2.FrameTable, numbers: list[int]
    ) -> Iterator[tuple[int, bytes]]:
        """Each requested frame's bytes, in order (blocking reads: run it in a thread)."""
        with self.blobs.open(instance.record.blob_id) as fp:
            for number in numbers:
                yield number, self.read_frame(fp, table, number)

    # -- metadata --------------------------------------------------------------------------

    def metadata(
        self, study: str, series: str = "", sop: str = ""
    ) -> tuple[str, list[dataset_pb2.Dataset]]:
        """The ETag and the pre-computed metadata of what a request names."""
        found = resolve(self.index, study, series, sop)
        return etag(found), self.index.get_metadata_many(
            [(i.study_uid, i.series_uid, i.sop_uid) for i in found]
        )

    def metadata_etag(self, study: str, series: str = "", sop: str = "") -> str:
        """The ETag alone, to answer a matching ``if_none_match`` without reading metadata."""
        return etag(resolve(self.index, study, series, sop))


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
