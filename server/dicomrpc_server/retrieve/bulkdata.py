"""Bulk data: the value of one element a metadata bulk data URI names.

Metadata leaves large binary values out and names each by its tag path: the element's tag,
preceded for an element inside a sequence by the sequence's tag and the item's 0-based index
(``00880200.0.7FE00010``). Finding the element parses the stored file (in a worker process)
without reading large values: a value of known length is then streamed from its place in the
file, a chunk at a time, so bulk data of any size is sent with bounded memory. Values the file
does not hold as one byte range (encapsulated pixel data, which has no length; any value of a
deflated file) are read whole instead.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from dicomrpc_server.dicom.structure import DEFLATED_SYNTAXES
from dicomrpc_server.errors import invalid_argument
from dicomrpc_server.retrieve.scope import not_found
from dicomrpc_server.storage.sources import Source, open_source

_PATH = re.compile(r"[0-9A-Fa-f]{8}(?:\.\d+\.[0-9A-Fa-f]{8})*")
# Values longer than this are located, not read, when the file is parsed.
DEFER_BYTES = 64 * 1024
UNDEFINED_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True)
class ByteRange:
    """Where a value is in the stored file."""

    offset: int
    length: int


def check_tag_path(tag_path: str) -> list[str]:
    """The components of a bulk data tag path, or INVALID_ARGUMENT naming the path."""
    if not _PATH.fullmatch(tag_path):
        raise invalid_argument(
            "bulk_data_path",
            f"{tag_path!r} is not a tag path (gggggggg, or sequence.item.gggggggg ...)",
        )
    return tag_path.split(".")


def locate_bulk_data(source: Source, tag_path: str, transfer_syntax_uid: str) -> ByteRange | bytes:
    """Where the binary element at ``tag_path`` is in the file ``source``, or its value."""
    parts = check_tag_path(tag_path)
    deflated = transfer_syntax_uid in DEFLATED_SYNTAXES
    with warnings.catch_warnings(), open_source(source) as fp:
        warnings.simplefilter("ignore")
        dataset: Dataset = pydicom.dcmread(fp, defer_size=None if deflated else DEFER_BYTES)
        for at in range(0, len(parts) - 1, 2):
            tag, item = int(parts[at], 16), int(parts[at + 1])
            element = dataset.get(tag)
            if element is None or element.VR != "SQ" or item >= len(element.value):
                raise not_found(f"bulk data {tag_path}", bulk_data_path=tag_path)
            dataset = element.value[item]
        tag = int(parts[-1], 16)
        if tag not in dataset:
            raise not_found(f"bulk data {tag_path}", bulk_data_path=tag_path)
        raw = dataset.get_item(tag, keep_deferred=True)
        if (
            isinstance(raw, RawDataElement)
            and raw.value is None
            and raw.value_tell is not None
            and raw.length != UNDEFINED_LENGTH
        ):
            return ByteRange(raw.value_tell, raw.length)
        value = dataset[tag].value
    if not isinstance(value, bytes):
        raise not_found(f"bulk data {tag_path}", bulk_data_path=tag_path)
    return value
