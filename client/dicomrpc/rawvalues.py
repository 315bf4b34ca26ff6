"""The values of pydicom's raw data elements, decoded as pydicom decodes them, for common cases.

Why this module exists: ``dcmread`` leaves each element raw (its bytes) and pydicom converts an
element when it is first accessed, building a ``DataElement`` and value objects (``UID``,
``DSfloat``, ``IS``, ``PersonName``, ``MultiValue``); ``to_json_dict`` then turns those back into
plain strings and numbers. That costs 10 to 20 µs per element, and the archive converts every
element of every instance it stores (`dicomrpc.datasets.from_pydicom`), so it was most of the
CPU time of ingest. Decoding the bytes straight to the plain values costs about 1 µs.

pydicom stays the parser: these functions start from the raw element pydicom read and repeat
its conversion (pydicom 3, ``pydicom.values``) only where that conversion is short and exactly
known, and they give pydicom's warnings about invalid values by calling pydicom's own
``validate_value`` at the same points. Everything else is declined (``None``): the caller then
lets pydicom convert the element, as before. Declined are: a pydicom configuration other than
the default (see `shortcuts_apply`), elements not read yet (deferred), sequences, AT, UN and
the ambiguous VRs, implicit VR elements whose tag is not in pydicom's dictionary, values of the
wrong length, text that needs code extensions (escape sequences) or that the character set
cannot decode, DS and IS text that is not a plain valid number, and person names with more than
one component group, non-ASCII characters, an empty name among several or a component too long.
A value is declined before any warning is given, so a warning is never given twice.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from typing import Any

from pydicom import config, hooks
from pydicom.charset import default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import validate_value

__all__ = [
    "character_sets",
    "decode_floats",
    "decode_integers",
    "decode_text",
    "element_vr",
    "shortcuts_apply",
]

# Text VRs that pydicom only splits and strips (pydicom.values.convert_string), decoded like
# AE, UI, UR, DS and IS with its default encoding (ISO 646 read as Latin-1), whatever the
# Specific Character Set says.
_STRINGS = frozenset({"AS", "CS", "DA", "DT", "TM"})
# Text VRs decoded with the data set's character set (pydicom's CUSTOMIZABLE_CHARSET_VR).
_CHARSET_TEXT = frozenset({"SH", "LO", "UC"})
_CHARSET_SINGLE_TEXT = frozenset({"ST", "LT", "UT"})
TEXT_VRS = frozenset(
    {"AE", "UI", "UR", "DS", "IS", "PN"} | _STRINGS | _CHARSET_TEXT | _CHARSET_SINGLE_TEXT
)
# Binary numbers: struct format and size of one value.
BINARY_NUMBER_VRS = {
    "US": ("H", 2),
    "SS": ("h", 2),
    "UL": ("L", 4),
    "SL": ("l", 4),
    "UV": ("Q", 8),
    "SV": ("q", 8),
    "FL": ("f", 4),
    "FD": ("d", 8),
}
BYTES_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
_DECODED_VRS = TEXT_VRS | BINARY_NUMBER_VRS.keys() | BYTES_VRS
# pydicom adds 65536 to a negative first value of these (pydicom.tag._LUT_DESCRIPTOR_TAGS).
_LUT_DESCRIPTORS = frozenset({0x00281101, 0x00281102, 0x00281103, 0x00283002})
# Character sets (as pydicom names the Python codecs) in which ASCII text is encoded as itself,
# so that a person name's length in bytes is its length in characters.
_ASCII_CHARSETS = frozenset({default_encoding, "latin_1", "UTF8"})

# Values that pydicom's validation accepts (PS3.5 Table 6.2-1) and that convert without loss:
# for these no warning is given and the conversion to a number is Python's own.
_DS_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_IS_NUMBER = re.compile(r"[+-]?[0-9]+")
_UID = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")


def shortcuts_apply() -> bool:
    """Whether pydicom is configured as the shortcuts assume: its defaults, no hooks.

    The options checked change what pydicom's conversion returns (``datetime_conversion``,
    ``use_DS_decimal`` ...), hand it to user code (callbacks, hooks), or make its validation
    raise instead of warn (``reading_validation_mode`` RAISE); with any of them set, every
    element is left to pydicom.
    """
    return (
        config.settings.reading_validation_mode != config.RAISE
        and config.data_element_callback is None
        and hooks.hooks.raw_element_vr is hooks.raw_element_vr
        and hooks.hooks.raw_element_value is hooks.raw_element_value
        and not hooks.hooks.raw_element_kwargs
        and not config.datetime_conversion
        and not config.use_DS_decimal
        and not config.use_DS_numpy
        and not config.use_IS_numpy
        and not config.use_none_as_empty_text_VR_value
    )


def character_sets(ds: Dataset) -> list[str] | None:
    """The codecs pydicom decodes the text of `ds` with, ``None`` when it would look them up.

    pydicom uses the character set the data set was read with; a data set that was not read
    from a file has none, and text in it is left to pydicom.
    """
    charset = ds.original_character_set
    if not charset:
        return None
    return [charset] if isinstance(charset, str) else list(charset)


def element_vr(raw: RawDataElement) -> str | None:
    """The VR pydicom gives `raw`, when its value is one this module decodes."""
    vr = raw.VR
    if vr is None:  # implicit VR: pydicom looks the tag up in its dictionary
        try:
            vr = dictionary_VR(raw.tag)
        except KeyError:
            return None  # pydicom then tries private dictionaries, or warns
    tag = int(raw.tag)
    if vr not in _DECODED_VRS or raw.value is None or tag in _LUT_DESCRIPTORS:
        return None
    if tag & 0x10000 and 0x0010 <= tag & 0xFFFF <= 0x00FF:
        # A private creator: pydicom converts it whenever it looks up one of its elements, so
        # it is left to pydicom, which then gives its warnings, if any, only once.
        return None
    return vr


def decode_text(raw: RawDataElement, vr: str, encodings: Sequence[str] | None) -> list[str] | None:
    """The text of each value of a text element, as ``str()`` of pydicom's values gives it.

    Parameters
    ----------
    raw : RawDataElement
        The element, with `vr` from `element_vr` (one of `TEXT_VRS`).
    vr : str
        Its VR.
    encodings : Sequence[str] or None
        The data set's `character_sets`.

    Returns
    -------
    list[str] or None
        No text when pydicom's value is empty (its VM is 0), one per value otherwise; ``None``
        when the element is declined (see the module docstring).
    """
    data = raw.value
    assert data is not None
    if raw.length == 0:
        return []
    if vr in _STRINGS:  # pydicom.values.convert_string
        return _nonempty(data.decode(default_encoding).rstrip(" \x00").split("\\"))
    if vr == "UI":
        return _uids(data.decode(default_encoding))
    if vr == "DS":  # convert_DS_string; DSfloat keeps the text as original_string
        items = data.decode(default_encoding).strip().rstrip(" \x00").split("\\")
        if not all(len(item) <= 16 and _DS_NUMBER.fullmatch(item) for item in items):
            return None
        return items
    if vr == "IS":  # convert_IS_string; IS keeps the text as original_string
        items = data.decode(default_encoding).rstrip(" \x00").split("\\")
        if not all(len(item) <= 12 and _IS_NUMBER.fullmatch(item) for item in items):
            return None
        return items
    if vr == "AE":  # convert_AE_string
        return _nonempty([item.strip() for item in data.decode(default_encoding).split("\\")])
    if vr == "UR":  # convert_UR_string
        text = data.decode(default_encoding).rstrip()
        return [text] if text else []
    if int(raw.tag) == 0x00080005:  # pydicom decodes Specific Character Set as ISO 646
        encodings = [default_encoding]
    if not encodings or b"\x1b" in data:
        return None
    if vr == "PN":
        return _person_names(data, encodings[0])
    try:  # pydicom.charset.decode_bytes, without escape sequences
        text = data.decode(encodings[0])
    except (LookupError, UnicodeError):
        return None  # pydicom warns, then decodes with replacement characters
    mode = config.settings.reading_validation_mode
    if vr in _CHARSET_TEXT:  # convert_text
        items = text.split("\\")
        for item in items:
            validate_value(vr, item, mode)
        return _nonempty([item.rstrip("\0 ") for item in items])
    validate_value(vr, text, mode)  # convert_single_string
    text = text.rstrip("\0 ")
    return [text] if text else []


def decode_integers(raw: RawDataElement, vr: str) -> list[int] | None:
    """The values of a binary integer element (US, SS, UL, SL, UV, SV), as pydicom reads them.

    Returns
    -------
    list[int] or None
        Empty for an empty element; ``None`` when the length is not a multiple of the value
        size (pydicom then tries other VRs).
    """
    return _unpack(raw, vr)


def decode_floats(raw: RawDataElement, vr: str) -> list[float] | None:
    """The values of a binary floating point element (FL, FD), as pydicom reads them.

    Returns
    -------
    list[float] or None
        As `decode_integers`.
    """
    return _unpack(raw, vr)


def _unpack(raw: RawDataElement, vr: str) -> list[Any] | None:
    # pydicom.values.convert_numbers
    data = raw.value
    assert data is not None
    if raw.length == 0:
        return []
    code, size = BINARY_NUMBER_VRS[vr]
    count, rest = divmod(len(data), size)
    if rest:
        return None
    fmt = f"{'<' if raw.is_little_endian else '>'}{count}{code}"
    return list(struct.unpack(fmt, data))


def _nonempty(items: list[str]) -> list[str]:
    # A single empty value is no value (VM 0); among several, empty values count.
    return items if len(items) > 1 or items[0] else []


def _uids(text: str) -> list[str]:
    # convert_UI, then UID(): validated as read, then stripped. A UID of PS3.5 syntax and length
    # passes pydicom's check without a warning: only the others are handed to it.
    mode = config.settings.reading_validation_mode
    items = text.rstrip("\0 ").split("\\")
    for item in items:
        if not (len(item) <= 64 and _UID.fullmatch(item)):
            validate_value("UI", item, mode)
    return _nonempty([item.strip() for item in items])


def _person_names(data: bytes, encoding: str) -> list[str] | None:
    # convert_PN: names of one component group in ASCII, each valid (at most 64 characters), so
    # that PersonName neither warns nor changes the text: its components are (name,).
    if encoding not in _ASCII_CHARSETS:
        return None
    stripped = data.rstrip(b"\x00 ")
    if not stripped.isascii():
        return None
    items = stripped.decode("ascii").split("\\")
    if any("=" in item or len(item) > 64 for item in items):
        return None
    if len(items) > 1 and not all(items):
        return None  # pydicom's to_json_dict fails on such a name: left to that path
    return _nonempty(items)
