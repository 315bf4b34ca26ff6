"""Reading and writing single attribute values of a ``dicomrpc.v1.Dataset``.

Workitems are kept as the API's own ``Dataset`` message (the DICOM JSON model), so the core
reads and sets the few attributes it manages (state, Transaction UID, date-times) here.
"""

from __future__ import annotations

import datetime

from dicomrpc.v1 import dataset_pb2


def has_value(attribute: dataset_pb2.Attribute) -> bool:
    """Whether an attribute holds at least one non-empty value (a sequence: one item)."""
    kind = attribute.WhichOneof("value")
    if kind is None:
        return False
    if kind == "strings":
        return any(v != "" for v in attribute.strings.values)
    if kind == "person_names":
        return any(
            p.alphabetic or p.ideographic or p.phonetic for p in attribute.person_names.values
        )
    if kind == "sequence":
        return len(attribute.sequence.items) > 0
    if kind == "numbers":
        return len(attribute.numbers.values) > 0
    if kind == "integers":
        return len(attribute.integers.values) > 0
    if kind == "unsigned_integers":
        return len(attribute.unsigned_integers.values) > 0
    if kind == "inline_binary":
        return len(attribute.inline_binary) > 0
    return bool(attribute.bulk_data_uri)


def text(dataset: dataset_pb2.Dataset, hex_tag: str) -> str:
    """The first value of a string attribute, or ``""`` when absent or empty."""
    attribute = dataset.attributes.get(hex_tag)
    if attribute is None or attribute.WhichOneof("value") != "strings":
        return ""
    values = attribute.strings.values
    return values[0].strip() if values else ""


def set_text(dataset: dataset_pb2.Dataset, hex_tag: str, vr: str, value: str) -> None:
    """Set a single-valued string attribute."""
    attribute = dataset.attributes[hex_tag]
    attribute.Clear()
    attribute.vr = vr
    attribute.strings.values.append(value)


def items(dataset: dataset_pb2.Dataset, hex_tag: str) -> list[dataset_pb2.Dataset]:
    """The items of a sequence attribute (none when absent)."""
    attribute = dataset.attributes.get(hex_tag)
    if attribute is None or attribute.WhichOneof("value") != "sequence":
        return []
    return list(attribute.sequence.items)


def first_item(dataset: dataset_pb2.Dataset, hex_tag: str) -> dataset_pb2.Dataset:
    """The first item of a sequence, created (with the sequence) when there is none."""
    attribute = dataset.attributes[hex_tag]
    if attribute.WhichOneof("value") != "sequence":
        attribute.Clear()
        attribute.vr = "SQ"
        attribute.sequence.SetInParent()
    if not attribute.sequence.items:
        attribute.sequence.items.add()
    return attribute.sequence.items[0]


def now_dt() -> str:
    """The current UTC time as a DICOM DT value with its offset."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%d%H%M%S.%f+0000")
