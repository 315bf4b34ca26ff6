"""DICOM JSON bodies written in slices, so that writing a large one never holds up the others.

``json.dumps`` runs in C and keeps the interpreter for its whole call: writing the metadata of
a study of 300,000 elements in one call holds it for about a second, and the event loop (whose
thread needs the interpreter for every step of every other request) waits that long even when
the body is written in another thread. So a body is written by many short calls instead: one
per data set of a list, and a data set holding many sequence items (with its items, at any
depth) one attribute at a time, its large sequences one item at a time. A body without large
sequences costs one call per data set, as before.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

# Sequence items (at any depth) a data set may hold and still be written by one call.
SLICE_ITEMS = 256


def encode(
    body: list[dict[str, Any]] | dict[str, Any], slice_items: int = SLICE_ITEMS, **options: Any
) -> bytes:
    """The JSON of a DICOM JSON data set or list of them, in UTF-8.

    The same JSON as ``json.dumps(body, separators=(",", ":"), **options)``; a data set with
    more than ``slice_items`` sequence items is written in slices.
    """
    writer = _Writer(json.JSONEncoder(separators=(",", ":"), **options).encode, slice_items)
    if isinstance(body, dict):
        writer.dataset(body)
    else:
        writer.parts.append("[")
        for number, dataset in enumerate(body):
            if number:
                writer.parts.append(",")
            writer.dataset(dataset)
        writer.parts.append("]")
    return "".join(writer.parts).encode()


def _items(attribute: Any) -> list[Any]:
    """The items of a sequence attribute (none for any other)."""
    if isinstance(attribute, dict) and attribute.get("vr") == "SQ":
        value = attribute.get("Value")
        if isinstance(value, list):
            return value
    return []


def _weight(dataset: dict[str, Any], bound: int) -> int:
    """The sequence items in ``dataset`` at any depth, counted up to just past ``bound``."""
    count = 0
    for attribute in dataset.values():
        for item in _items(attribute):
            count += 1
            if isinstance(item, dict):
                count += _weight(item, bound - count)
            if count > bound:
                return count
    return count


class _Writer:
    def __init__(self, dumps: Callable[[Any], str], slice_items: int) -> None:
        self.dumps = dumps
        self.slice_items = slice_items
        self.parts: list[str] = []

    def dataset(self, dataset: Any) -> None:
        dumps, parts = self.dumps, self.parts
        if not isinstance(dataset, dict) or _weight(dataset, self.slice_items) <= self.slice_items:
            parts.append(dumps(dataset))
            return
        parts.append("{")
        for number, (tag, attribute) in enumerate(dataset.items()):
            parts.append(("," if number else "") + dumps(tag) + ":")
            items = _items(attribute)
            if not items:
                parts.append(dumps(attribute))
                continue
            parts.append("{")
            for index, (key, value) in enumerate(attribute.items()):
                parts.append(("," if index else "") + dumps(key) + ":")
                if key != "Value":
                    parts.append(dumps(value))
                    continue
                parts.append("[")
                for position, item in enumerate(items):
                    if position:
                        parts.append(",")
                    self.dataset(item)
                parts.append("]")
            parts.append("}")
        parts.append("}")
