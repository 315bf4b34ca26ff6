"""Decoding retrieve streams: instances, frames and metadata, one item in memory at a time."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def _grouped(responses: Iterable[Any], header_field: str) -> Iterator[tuple[Any, bytes]]:
    """Pair each header message of a stream with the bytes of the chunks that follow it."""
    header: Any = None
    parts: list[bytes | memoryview] = []
    for message in responses:
        if isinstance(message, memoryview):  # a bare chunk (see dicomrpc.wire)
            parts.append(message)
        elif message.WhichOneof("payload") == header_field:
            if header is not None:
                yield header, b"".join(parts)
            header, parts = getattr(message, header_field), []
        else:
            parts.append(message.data)
    if header is not None:
        yield header, b"".join(parts)


def instances(
    responses: Iterable[pb.RetrieveInstancesResponse | memoryview],
) -> Iterator[RetrievedInstance]:
    """Group an instance stream into instances (each held whole: use `save` for large ones)."""
    for h, data in _grouped(responses, "instance"):
        yield RetrievedInstance(
            h.study_instance_uid,
            h.series_instance_uid,
            h.sop_instance_uid,
            h.sop_class_uid,
            h.transfer_syntax_uid,
            h.version,
            data,
        )


def file_name(uid: str) -> str:
    """A file-system-safe name for a UID sent by a server (never trusted as a path)."""
    return uid if _SAFE_UID.fullmatch(uid) else hashlib.sha256(uid.encode()).hexdigest()[:32]


def save(
    responses: Iterable[pb.RetrieveInstancesResponse | memoryview],
    dest: Path,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[Path]:
    """Write each instance to ``dest/<study>/<series>/<sop>.dcm`` chunk by chunk."""
    fp = None
    try:
        for message in responses:
            if isinstance(message, memoryview):  # a bare chunk (see dicomrpc.wire)
                data: bytes | memoryview = message
            elif message.WhichOneof("payload") == "instance":
                if fp is not None:
                    fp.close()
                    yield Path(fp.name)
                h = message.instance
                folder = dest / file_name(h.study_instance_uid) / file_name(h.series_instance_uid)
                folder.mkdir(parents=True, exist_ok=True)
                fp = open(folder / f"{file_name(h.sop_instance_uid)}.dcm", "wb")  # noqa: SIM115
                continue
            else:
                data = message.data
            if fp is not None:
                fp.write(data)
                if on_bytes is not None:
                    on_bytes(len(data))
        if fp is not None:
            fp.close()
            yield Path(fp.name)
            fp = None
    finally:
        if fp is not None:
            fp.close()


def frames(responses: Iterable[pb.RetrieveFramesResponse | memoryview]) -> Iterator[Frame]:
    """Group a frame stream into frames."""
    for h, data in _grouped(responses, "frame"):
        yield Frame(
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


def metadata(responses: Iterable[pb.RetrieveMetadataResponse]) -> MetadataResult:
    """Collect a metadata stream."""
    etag, not_modified = "", False
    datasets: list[dataset_pb2.Dataset] = []
    for message in responses:
        etag = etag or message.etag
        not_modified = not_modified or message.not_modified
        datasets.extend(message.datasets)
    return MetadataResult(etag, not_modified, datasets)


@dataclass(frozen=True)
class SearchResult:
    """One page of search results, and the token of the next page ("" at the end)."""

    datasets: list[dataset_pb2.Dataset]
    next_page_token: str

    def as_json(self) -> list[dict[str, Any]]:
        """The results as DICOM JSON (PS3.18 F.2), one object per match."""
        from dicomrpc.datasets import to_json

        return [to_json(d) for d in self.datasets]
