"""Bulk data: the value of one element a metadata bulk data URI names.

Metadata leaves large binary values out and names each by its tag path: the element's tag,
preceded for an element inside a sequence by the sequence's tag and the item's 0-based index
(``00880200.0.7FE00010``). Reading the value parses the stored file, so it runs in a worker
process.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from dicomrpc_server.errors import invalid_argument
from dicomrpc_server.retrieve.scope import not_found

_PATH = re.compile(r"[0-9A-Fa-f]{8}(?:\.\d+\.[0-9A-Fa-f]{8})*")


def check_tag_path(tag_path: str) -> list[str]:
    """The components of a bulk data tag path, or INVALID_ARGUMENT naming the path."""
    if not _PATH.fullmatch(tag_path):
        raise invalid_argument(
            "bulk_data_path",
            f"{tag_path!r} is not a tag path (gggggggg, or sequence.item.gggggggg ...)",
        )
    return tag_path.split(".")


def read_bulk_data(path: Path, tag_path: str) -> bytes:
    """The stored bytes of the binary element at ``tag_path`` in the file at ``path``."""
    parts = check_tag_path(tag_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset: Dataset = pydicom.dcmread(path)
        for at in range(0, len(parts) - 1, 2):
            tag, item = int(parts[at], 16), int(parts[at + 1])
            element = dataset.get(tag)
            if element is None or element.VR != "SQ" or item >= len(element.value):
                raise not_found(f"bulk data {tag_path}", bulk_data_path=tag_path)
            dataset = element.value[item]
        element = dataset.get(int(parts[-1], 16))
        value = None if element is None else element.value
    if not isinstance(value, bytes):
        raise not_found(f"bulk data {tag_path}", bulk_data_path=tag_path)
    return value
