"""Decoding retrieve streams: instances, frames and metadata, one item in memory at a time."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from dicomrpc.v1 import dataset_pb2
from dicomrpc.v1 import retrieve_service_pb2 as pb

_SAFE_UID = re.compile(r"[0-9.]{1,64}")


@dataclass(frozen=True)
class RetrievedInstance:
    """One retrieved instance: its header fields and its Part 10 bytes."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    version: int
    data: bytes


@dataclass(frozen=True)
class Frame:
    """One retrieved frame: its number, encoding and shape, and its bytes."""

    number: int
    transfer_syntax_uid: str
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    pixel_representation: int
    photometric_interpretation: str
    data: bytes

    def array(self) -> Any:
        """The frame as a numpy array (native encodings only: raw pixel bytes)."""
        import numpy as np

        if self.bits_allocated not in (8, 16, 32, 64):
            raise ValueError(f"cannot shape {self.bits_allocated}-bit samples as an array")
        kind = "i" if self.pixel_representation else "u"
        if self.bits_allocated == 64 or (self.bits_allocated == 32 and not self.rows):
            kind = "f"
        dtype = np.dtype(f"<{kind}{self.bits_allocated // 8}")
        values = np.frombuffer(self.data, dtype=dtype)
        shape = (self.rows, self.columns) + (
            (self.samples_per_pixel,) if self.samples_per_pixel > 1 else ()
        )
        return values[: int(np.prod(shape))].reshape(shape)


@dataclass(frozen=True)
class MetadataResult:
    """Metadata of a study, series or instance, with the ETag to revalidate it."""

    etag: str
    not_modified: bool
    datasets: list[dataset_pb2.Dataset]

    def as_json(self) -> list[dict[str, Any]]:
        """The metadata as DICOM JSON (PS3.18 F.2), one object per instance."""
        from dicomrpc.datasets import to_json

        return [to_json(d) for d in self.datasets]

    def as_pydicom(self) -> list[Any]:
        """The metadata as pydicom Datasets (bulk data left as unresolved URIs)."""
        from dicomrpc.datasets import to_pydicom

        return [to_pydicom(d) for d in self.datasets]


class Grouper:
    """Pairs each header message of a stream with the bytes of the chunks that follow it.

    Fed one message at a time, so that the sync and the asyncio clients group a stream by the
    same rule: :meth:`feed` gives the previous item when a new header starts it, and
    :meth:`finish` the last one.
    """

    def __init__(self, header_field: str) -> None:
        self._field = header_field
        self._header: Any = None
        self._parts: list[bytes | memoryview] = []

    def feed(self, message: Any) -> tuple[Any, bytes] | None:
        """Take one message; return the item it completes, if any."""
        if isinstance(message, memoryview):  # a bare chunk (see dicomrpc.wire)
            self._parts.append(message)
        elif message.WhichOneof("payload") == self._field:
            done = self.finish()
            self._header = getattr(message, self._field)
            return done
        else:
            self._parts.append(message.data)
        return None

    def finish(self) -> tuple[Any, bytes] | None:
        """The item being collected, if any (the stream has ended)."""
        if self._header is None:
            return None
        done = self._header, b"".join(self._parts)
        self._header, self._parts = None, []
        return done


def instance_of(item: tuple[Any, bytes]) -> RetrievedInstance:
    """The instance of a grouped header and its bytes."""
    h, data = item
    return RetrievedInstance(
        h.study_instance_uid,
        h.series_instance_uid,
        h.sop_instance_uid,
        h.sop_class_uid,
        h.transfer_syntax_uid,
        h.version,
        data,
    )


def frame_of(item: tuple[Any, bytes]) -> Frame:
    """The frame of a grouped header and its bytes."""
    h, data = item
    return Frame(
        h.frame_number,
        h.transfer_syntax_uid,
        h.rows,
        h.columns,
        h.samples_per_pixel,
        h.bits_allocated,
        h.pixel_representation,
        h.photometric_interpretation,
        data,
    )


def _grouped(responses: Iterable[Any], header_field: str) -> Iterator[tuple[Any, bytes]]:
    grouper = Grouper(header_field)
    for message in responses:
        done = grouper.feed(message)
        if done is not None:
            yield done
    last = grouper.finish()
    if last is not None:
        yield last


def instances(
    responses: Iterable[pb.RetrieveInstancesResponse | memoryview],
) -> Iterator[RetrievedInstance]:
    """Group an instance stream into instances (each held whole: use `save` for large ones)."""
    for item in _grouped(responses, "instance"):
        yield instance_of(item)


def file_name(uid: str) -> str:
    """A file-system-safe name for a UID sent by a server (never trusted as a path)."""
    return uid if _SAFE_UID.fullmatch(uid) else hashlib.sha256(uid.encode()).hexdigest()[:32]


class Writer:
    """Writes an instance stream to ``dest/<study>/<series>/<sop>.dcm``, chunk by chunk.

    Fed one message at a time (by the sync and the asyncio clients alike): :meth:`feed`
    gives the path of a file it finished, :meth:`finish` the last one. Only one chunk is held
    at a time, whatever the size of the instances. :meth:`close` closes a file left open by a
    failed stream.
    """

    def __init__(self, dest: Path, on_bytes: Callable[[int], None] | None = None) -> None:
        self._dest = dest
        self._on_bytes = on_bytes
        self._fp: BinaryIO | None = None
        self._path: Path | None = None

    def feed(self, message: pb.RetrieveInstancesResponse | memoryview) -> Path | None:
        """Write one message; return the path of the file a new instance's header ends."""
        if isinstance(message, memoryview):  # a bare chunk (see dicomrpc.wire)
            data: bytes | memoryview = message
        elif message.WhichOneof("payload") == "instance":
            done = self.finish()
            h = message.instance
            folder = self._dest / file_name(h.study_instance_uid) / file_name(h.series_instance_uid)
            folder.mkdir(parents=True, exist_ok=True)
            self._path = folder / f"{file_name(h.sop_instance_uid)}.dcm"
            self._fp = open(self._path, "wb")  # noqa: SIM115
            return done
        else:
            data = message.data
        if self._fp is not None:
            self._fp.write(data)
            if self._on_bytes is not None:
                self._on_bytes(len(data))
        return None

    def finish(self) -> Path | None:
        """Close the file being written and return its path, if any."""
        done = self._path
        self.close()
        return done

    def close(self) -> None:
        """Close the file being written, if any."""
        if self._fp is not None:
            self._fp.close()
        self._fp, self._path = None, None


def save(
    responses: Iterable[pb.RetrieveInstancesResponse | memoryview],
    dest: Path,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[Path]:
    """Write each instance to ``dest/<study>/<series>/<sop>.dcm`` chunk by chunk."""
    writer = Writer(dest, on_bytes)
    try:
        for message in responses:
            done = writer.feed(message)
            if done is not None:
                yield done
        last = writer.finish()
        if last is not None:
            yield last
    finally:
        writer.close()


def frames(responses: Iterable[pb.RetrieveFramesResponse | memoryview]) -> Iterator[Frame]:
    """Group a frame stream into frames."""
    for item in _grouped(responses, "frame"):
        yield frame_of(item)


class MetadataCollector:
    """Collects a metadata stream, one message at a time (shared by both clients)."""

    def __init__(self) -> None:
        self.etag = ""
        self.not_modified = False
        self.datasets: list[dataset_pb2.Dataset] = []

    def feed(self, message: pb.RetrieveMetadataResponse) -> None:
        """Take one message of the stream."""
        self.etag = self.etag or message.etag
        self.not_modified = self.not_modified or message.not_modified
        self.datasets.extend(message.datasets)

    def result(self) -> MetadataResult:
        """What the stream said."""
        return MetadataResult(self.etag, self.not_modified, self.datasets)


def metadata(responses: Iterable[pb.RetrieveMetadataResponse]) -> MetadataResult:
    """Collect a metadata stream."""
    collector = MetadataCollector()
    for message in responses:
        collector.feed(message)
    return collector.result()


@dataclass(frozen=True)
class SearchResult:
    """One page of search results, and the token of the next page ("" at the end).

    Every search answers one: studies, series, instances and workitems. Iterating it, or
    ``len``, reads its ``datasets``.
    """

    datasets: list[dataset_pb2.Dataset]
    next_page_token: str

    def __iter__(self) -> Iterator[dataset_pb2.Dataset]:
        return iter(self.datasets)

    def __len__(self) -> int:
        return len(self.datasets)

    def as_json(self) -> list[dict[str, Any]]:
        """The results as DICOM JSON (PS3.18 F.2), one object per match."""
        from dicomrpc.datasets import to_json

        return [to_json(d) for d in self.datasets]
