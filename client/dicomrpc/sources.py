"""What a store sends: files, folders, bytes or open files, read in chunks, never whole."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeAlias, cast

from dicomrpc.v1 import store_service_pb2 as pb
from dicomrpc.wire import encode_chunk

Source: TypeAlias = "str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO"
Sources: TypeAlias = "Source | Iterable[Source]"
DEFAULT_CHUNK = 1024 * 1024
DATA_FIELD = pb.StoreInstancesRequest.DATA_FIELD_NUMBER


@dataclass(frozen=True)
class Item:
    """One instance to send: where its bytes come from, and its reference and size."""

    reference: str
    size: int
    open: Callable[[], BinaryIO]
    # Whether the sender closes what ``open`` returns (not for a stream the caller owns).
    owned: bool = True


def expand(sources: Sources | Item | Iterable[Item]) -> list[Item]:
    """Expand files, folders (recursively, sorted) and in-memory values into items."""
    return list(iter_items(sources))


def iter_items(sources: Sources | Item | Iterable[Item]) -> Iterator[Item]:
    """Expand sources lazily, so that a generator of items streams as it is produced."""
    single = (str, os.PathLike, bytes, bytearray, memoryview, Item)
    many: Iterable[object] = (
        [sources]
        if isinstance(sources, single) or hasattr(sources, "read")
        else cast("Iterable[object]", sources)
    )
    for source in many:
        if isinstance(source, Item):
            yield source
        elif isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            yield Item(f"<bytes {len(data)}>", len(data), _bytes_opener(data))
        elif hasattr(source, "read"):
            name = str(getattr(source, "name", "<stream>"))
            yield Item(name, 0, _stream_opener(source), False)
        else:
            path = Path(cast("str | os.PathLike[str]", source))
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            yield from (Item(str(p), p.stat().st_size, _path_opener(p)) for p in files)


def _stream_opener(fp: object) -> Callable[[], BinaryIO]:
    return lambda: cast(BinaryIO, fp)


def _bytes_opener(data: bytes) -> Callable[[], BinaryIO]:
    return lambda: io.BytesIO(data)


def _path_opener(path: Path) -> Callable[[], BinaryIO]:
    return lambda: open(path, "rb")


def requests(
    items: Iterable[Item],
    study_instance_uid: str | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    on_bytes: Callable[[Item, int], None] | None = None,
) -> Iterator[pb.StoreInstancesRequest | bytes]:
    """The request stream of a store: per item a header, then its bytes in chunks.

    Chunks come already serialized (see :mod:`dicomrpc.wire`): send the stream with
    :func:`dicomrpc.wire.serialize` as the request serializer.
    """
    first = True
    for item in items:
        header = pb.StoreInstancesRequest(
            instance=pb.InstanceUpload(size_bytes=item.size, client_reference=item.reference)
        )
        if first:
            header.study_instance_uid = study_instance_uid or ""
            first = False
        yield header
        fp = item.open()
        try:
            while chunk := fp.read(chunk_size):
                yield encode_chunk(DATA_FIELD, chunk)
                if on_bytes is not None:
                    on_bytes(item, len(chunk))
        finally:
            if item.owned:
                fp.close()
