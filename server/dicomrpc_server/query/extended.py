"""Extended query tags: attributes an administrator adds to the search index at run time.

A tag is registered with the level whose records hold it (study, series or instance) and the VR
its values are indexed as. From then on every stored instance contributes its value to that
level's record, and a background walk (:mod:`.reindexing`) adds the instances stored before.
The values come from the pre-computed metadata of each instance, so re-indexing never reads an
instance file.

A private tag is named by its group, block and element (``00091010``) and its private
creator: the block of the creator differs from file to file, so each instance's own block is
looked up by the creator's name, and the values are indexed under the tag as registered.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from dicomrpc.v1 import dataset_pb2
from dicomrpc_server.dicom.attributes import ALL_ATTRIBUTES, Level
from dicomrpc_server.errors import Code, ServiceError, invalid_argument
from dicomrpc_server.storage import records_pb2

# The VRs whose values make short, ordered index terms (as the QIDO matching rules need them).
_TEXT_VRS = frozenset(("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "SH", "TM", "UI"))
INDEXABLE_VRS = _TEXT_VRS | {"PN", "FD", "FL", "SL", "SS", "UL", "US"}
_BINARY_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}
_BUILT_IN = {a.tag: a for a in ALL_ATTRIBUTES}


@dataclass(frozen=True)
class RequestedTag:
    """An extended query tag as a client asks for it (before it is checked)."""

    tag: str
    vr: str = ""
    private_creator: str = ""
    level: int = 0
    """1 study, 2 series, 3 instance; 0 for the level that keeps a standard attribute already."""


def define(requested: RequestedTag, field: str) -> records_pb2.QueryTagRecord:
    """Check a requested tag and return its canonical record (not ready yet).

    Raises INVALID_ARGUMENT naming ``field`` when the tag is unknown, cannot be indexed, lacks
    what a private tag needs, or conflicts with what the index keeps already.
    """
    tag = _parse_tag(requested.tag, field)
    hex_tag = f"{tag:08X}"
    group, element = tag >> 16, tag & 0xFFFF
    vr = requested.vr.strip().upper()
    if group % 2:  # private
        if element < 0x1000:
            raise invalid_argument(field, f"{hex_tag} is a private creator or group length")
        if not requested.private_creator.strip():
            raise invalid_argument(field, f"private tag {hex_tag} needs its private_creator")
        if len(requested.private_creator.strip()) > 64:
            raise invalid_argument(field, "a private creator is a LO value: 64 characters at most")
        if not vr:
            raise invalid_argument(field, f"private tag {hex_tag} needs its vr")
        keyword = ""
    else:
        if requested.private_creator:
            raise invalid_argument(field, f"{hex_tag} is a standard tag: no private_creator")
        keyword = keyword_for_tag(tag)
        if not keyword:
            raise invalid_argument(field, f"{hex_tag} is not in the DICOM dictionary")
        dictionary = dictionary_VR(tag)
        if vr and vr not in dictionary.split(" or "):
            raise invalid_argument(field, f"{keyword} has VR {dictionary}, not {vr}")
        vr = vr or dictionary
    if vr not in INDEXABLE_VRS:
        raise invalid_argument(
            field, f"VR {vr} cannot be indexed (one of {', '.join(sorted(INDEXABLE_VRS))})"
        )
    built_in = _BUILT_IN.get(tag)
    if built_in is not None and built_in.searchable:
        raise invalid_argument(field, f"{keyword} is searchable already")
    level = requested.level or (built_in.level if built_in else 0)
    if level not in (Level.STUDY, Level.SERIES, Level.INSTANCE):
        raise invalid_argument(field, "level must be study, series or instance")
    if built_in is not None and built_in.level != level:
        raise invalid_argument(
            field, f"{keyword} is kept at {built_in.level.name.lower()} level: add it there"
        )
    return records_pb2.QueryTagRecord(
        hex_tag=hex_tag,
        keyword=keyword,
        vr=vr,
        private_creator=requested.private_creator.strip(),
        level=level,
    )


def unknown_operation(operation_id: str) -> ServiceError:
    """The NOT_FOUND of a re-indexing operation id this archive never issued."""
    return ServiceError(
        Code.NOT_FOUND,
        "RESOURCE_NOT_FOUND",
        f"re-indexing operation {operation_id!r} does not exist",
        metadata={"operation_id": operation_id},
    )


def canonical_hex(name: str, field: str) -> str:
    """A tag named by keyword or 8 hexadecimal digits, as 8 upper-case hexadecimal digits."""
    return f"{_parse_tag(name, field):08X}"


def extract(
    metadata: dataset_pb2.Dataset, tag: records_pb2.QueryTagRecord
) -> dataset_pb2.Attribute | None:
    """The value of an extended query tag in one instance's metadata, as its record keeps it.

    None when the instance does not have it, or has it only as bulk data or a sequence.
    """
    hex_tag = tag.hex_tag
    if tag.private_creator:
        found = _private_tag(metadata, tag)
        if found is None:
            return None
        hex_tag = found
    attribute = metadata.attributes.get(hex_tag)
    if attribute is None:
        return None
    kind = attribute.WhichOneof("value")
    if kind == "inline_binary":  # a private tag read without its VR (UN)
        return _decoded(attribute.inline_binary, tag.vr)
    if kind in (None, "bulk_data_uri", "sequence"):
        return None
    if attribute.vr != tag.vr:
        out = dataset_pb2.Attribute()
        out.CopyFrom(attribute)
        out.vr = tag.vr
        return out
    return attribute


def _private_tag(metadata: dataset_pb2.Dataset, tag: records_pb2.QueryTagRecord) -> str | None:
    """The tag of a private attribute in this data set: its creator's block, then the element."""
    group, element = tag.hex_tag[:4], tag.hex_tag[6:]
    for block in range(0x10, 0x100):
        creator = metadata.attributes.get(f"{group}00{block:02X}")
        if creator is None:
            continue
        if creator.WhichOneof("value") == "inline_binary":
            text = creator.inline_binary.decode("latin-1").rstrip("\x00 ")
        elif creator.strings.values:
            text = creator.strings.values[0]
        else:
            continue
        if text.strip() == tag.private_creator:
            return f"{group}{block:02X}{element}"
    return None


def _decoded(data: bytes, vr: str) -> dataset_pb2.Attribute | None:
    """Values of an attribute stored as UN, decoded as the registered VR (little endian)."""
    out = dataset_pb2.Attribute(vr=vr)
    if vr in _BINARY_FORMATS:
        code = _BINARY_FORMATS[vr]
        size = struct.calcsize(code)
        if not data or len(data) % size:
            return None
        values = struct.unpack(f"<{len(data) // size}{code}", data)
        if vr in ("FL", "FD"):
            out.numbers.values.extend(float(v) for v in values)
        else:
            out.integers.values.extend(int(v) for v in values)
        return out
    text = data.decode("utf-8", errors="replace").rstrip("\x00 ")
    if not text:
        return None
    parts = [p.strip() for p in text.split("\\")]
    if vr == "PN":
        out.person_names.values.extend(dataset_pb2.PersonName(alphabetic=p) for p in parts)
    elif vr in _TEXT_VRS:
        out.strings.values.extend(parts)
    else:
        return None
    return out


def _parse_tag(name: str, field: str) -> int:
    text = name.strip().replace("(", "").replace(")", "").replace(",", "")
    if len(text) == 8:
        try:
            return int(text, 16)
        except ValueError:
            pass
    tag = tag_for_keyword(name.strip())
    if tag is None:
        raise invalid_argument(field, f"{name!r} is neither a keyword nor 8 hexadecimal digits")
    return tag
