"""Conversion between DICOM JSON, pydicom data sets and the ``dicomrpc.v1.Dataset`` message.

Why this module exists: metadata, search results and workitems travel over gRPC as
``dicomrpc.v1.Dataset``, a protobuf mirror of the DICOM JSON model (PS3.18 Annex F.2), while the
archive and its clients work with DICOM JSON (DICOMweb) and with pydicom data sets. This module
is the one place that maps between the three, so that the mapping is the same everywhere and
its losslessness can be tested in one place: for any JSON that pydicom produces,
``to_json(from_json(d)) == d``, values keeping their JSON types (``1`` stays an int, ``1.0`` a
float, ``null`` stays ``null``, an empty sequence stays distinct from an absent value).

How the JSON model maps onto the message:

* An attribute without ``"Value"``, ``"InlineBinary"`` or ``"BulkDataURI"`` leaves the ``value``
  oneof unset. ``"Value": []`` sets the oneof member that the VR selects to an empty message
  (protobuf keeps that presence on the wire), so an SQ with zero items, an SQ with one empty item
  and an SQ without a value are three different messages.
* PN values become ``person_names``; SQ items ``sequence``; DS, IS, FL and FD values ``numbers``
  (JSON integers are listed in ``integral_indexes`` so they come back as integers); SS, US, SL,
  UL and SV values ``integers``; UV values ``unsigned_integers``; the string VRs and AT
  ``strings``. ``null`` becomes an empty value listed in ``null_indexes``. DS and IS values that
  arrive as JSON strings (non-conformant, or text that is not a number, see `from_pydicom`) are
  kept as ``strings``. A VR the table does not know (for example pydicom's ``"US or SS"``) is
  mapped by the JSON types of its values.
* ``"InlineBinary"`` is decoded to ``inline_binary`` bytes; ``"BulkDataURI"`` is kept as text.

Normalizations, the only cases where ``to_json(from_json(d)) != d`` (pydicom never produces
them, and they do not change the meaning of the data set):

* SV and UV values given as JSON strings come back as JSON numbers.
* ``"InlineBinary"`` and ``"BulkDataURI"`` given as a one-element list come back as a string, and
  inline binary comes back in canonical base64.
* A person name always carries ``"Alphabetic"``; ``"Ideographic"`` and ``"Phonetic"`` come back
  only when they or a later group are non-empty, because proto3 strings have no presence. A
  name written with an empty trailing group (``"Doe^John="``) therefore comes back without it,
  which PS3.5 §6.2.1 defines as the same name (pydicom drops such groups when it reads a name).

JSON the message cannot carry raises `ValueError` naming the attribute: ``null`` among binary
integers or as a sequence item, integers in DS/IS/FL/FD that a double cannot hold exactly,
booleans, objects where values belong, and keys other than ``vr``/``Value``/``InlineBinary``/
``BulkDataURI``.

Nesting has a ceiling: a data set whose sequences nest more than `MAX_SEQUENCE_DEPTH` levels
deep cannot be read back from the wire (see there), so the conversions into a message refuse it
with `NestingTooDeep` (a `ValueError`) instead of building a message no reader can parse;
``max_depth`` lowers the limit.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from dicomrpc.v1 import dataset_pb2

if TYPE_CHECKING:
    import pydicom
    from pydicom.dataelem import DataElement, RawDataElement

# pydicom (and numpy with it) is imported by the functions that convert to or from it, not
# here: a program that only stores, searches or retrieves, the CLI first, starts without it.

__all__ = [
    "MAX_SEQUENCE_DEPTH",
    "NestingTooDeep",
    "check_sequence_depth",
    "from_json",
    "from_json_text",
    "from_pydicom",
    "parse_json",
    "to_json",
    "to_json_text",
    "to_pydicom",
]

_TAG = re.compile(r"[0-9A-F]{8}")
_STRING_VRS = frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
_NUMBER_VRS = frozenset({"DS", "IS", "FL", "FD"})
# VRs whose DICOM encoding is text, so a value that is not a number can still be carried.
_TEXT_NUMBER_VRS = frozenset({"DS", "IS"})
_INTEGER_VRS = frozenset({"SS", "US", "SL", "UL", "SV"})
_PN_GROUPS = frozenset({"Alphabetic", "Ideographic", "Phonetic"})

_Values = list[Any] | tuple[Any, ...]
# (sequence tag, item index) steps to a nested data set, the tag, the VR and the value text of a
# DS or IS attribute that `to_pydicom` adds as a raw element after pydicom's from_json.
_Step = tuple[int, int]
_TextNumber = tuple[tuple[_Step, ...], int, str, str]


# The deepest sequence nesting a ``Dataset`` message can carry through every message of the API.
# Protobuf parsers (upb under Python, C++, Java) refuse a message nested more than 100 messages
# deep. A data set costs one level, and each sequence level four more (the attributes map
# entry, the Attribute, its SequenceItems, the item's Dataset); an attribute of the innermost
# item costs up to four (map entry, Attribute, PersonNameValues, PersonName); one message wraps
# the data set in every response, event and index record (RetrieveMetadataResponse, a search
# response, SubscribeWorkitemsResponse, StudyRecord, ...). 23 levels parse everywhere, 24 do
# not (tests/test_nesting.py measures it). Python's json module and pydicom read far deeper.
MAX_SEQUENCE_DEPTH = 23


class _LocatedError(ValueError):
    """A conversion error whose message already names the attribute."""


class NestingTooDeep(_LocatedError):
    """A data set whose sequences nest deeper than a limit.

    Attributes
    ----------
    path : str
        The tag path of the first sequence past the limit, ``"0040A730.0.0040A730"`` (sequence
        tag, item index, and so on), as bulk data paths are written.
    tag : str
        That sequence's tag (8 hexadecimal digits).
    limit : int
        The most sequence levels allowed.
    """

    def __init__(self, path: str, limit: int) -> None:
        self.path = path
        self.tag = path.rsplit(".", 1)[-1]
        self.limit = limit
        super().__init__(
            f"{path}: sequences nest more than {limit} levels deep"
            + (
                f" ({MAX_SEQUENCE_DEPTH}, the most a Dataset message can carry)"
                if limit == MAX_SEQUENCE_DEPTH
                else ""
            )
        )


def check_sequence_depth(ds: dataset_pb2.Dataset, limit: int = MAX_SEQUENCE_DEPTH) -> None:
    """Raise `NestingTooDeep` when a sequence of `ds` lies more than `limit` levels deep.

    A top-level SQ attribute (with items or not) is level 1, an SQ in one of its items level 2,
    and so on. The walk is iterative, so any message that was parsed can be checked.

    Parameters
    ----------
    ds : dataset_pb2.Dataset
        The data set.
    limit : int, optional
        The most sequence levels allowed.

    Raises
    ------
    NestingTooDeep
        Naming the first sequence (in tag order) past the limit.
    """
    stack: list[tuple[dataset_pb2.Dataset, int, str]] = [(ds, 0, "")]
    while stack:
        current, level, prefix = stack.pop()
        nested = []
        for tag, attr in sorted(current.attributes.items()):
            if attr.vr != "SQ" and attr.WhichOneof("value") != "sequence":
                continue
            if level >= limit:
                raise NestingTooDeep(f"{prefix}{tag}", limit)
            nested.append((tag, attr))
        # Pushed in reverse: the items are walked in tag order, as the data set is written.
        for tag, attr in reversed(nested):
            items = attr.sequence.items
            stack.extend(
                (items[index], level + 1, f"{prefix}{tag}.{index}.")
                for index in reversed(range(len(items)))
            )


# --------------------------------------------------------------------------------------------
# DICOM JSON -> message


def from_json(
    obj: Mapping[str, Any], *, max_depth: int = MAX_SEQUENCE_DEPTH
) -> dataset_pb2.Dataset:
    """Convert a DICOM JSON data set to a ``Dataset`` message.

    Parameters
    ----------
    obj : Mapping[str, Any]
        A data set in the DICOM JSON model, as produced by ``json.loads`` or by pydicom's
        ``Dataset.to_json_dict()``: tags of 8 upper-case hexadecimal digits mapped to objects
        with ``"vr"`` and at most one of ``"Value"``, ``"InlineBinary"`` and ``"BulkDataURI"``.
    max_depth : int, optional
        The most sequence levels `obj` may nest (see `check_sequence_depth`); the default is
        the most a message can carry.

    Returns
    -------
    dataset_pb2.Dataset
        The message; ``to_json`` of it gives `obj` back (see the module docstring for the few
        normalizations).

    Raises
    ------
    ValueError
        If `obj` is not valid DICOM JSON or holds a value the message cannot carry exactly; the
        message names the attribute, as a tag path such as ``"00540016.0.00181072"``.
        `NestingTooDeep` when its sequences nest deeper than `max_depth`.
    """
    message = dataset_pb2.Dataset()
    _dataset_from_json(message, obj, "", 0, max_depth)
    return message


def parse_json(text: str | bytes) -> Any:
    """``json.loads``, with JSON nested too deeply for Python's parser refused as `ValueError`.

    Python's ``json`` module raises `RecursionError` for arrays and objects nested some
    thousand levels deep; no data set a message can carry nests a tenth as deep.

    Parameters
    ----------
    text : str or bytes
        JSON text.

    Returns
    -------
    Any
        The parsed value.

    Raises
    ------
    ValueError
        If `text` is not JSON (`json.JSONDecodeError`) or nests too deeply to parse.
    """
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(
            "the JSON nests arrays and objects too deeply to be read (a data set may nest at "
            f"most {MAX_SEQUENCE_DEPTH} sequence levels)"
        ) from None


def from_json_text(
    text: str | bytes, *, max_depth: int = MAX_SEQUENCE_DEPTH
) -> dataset_pb2.Dataset:
    """Parse DICOM JSON text and convert it with `from_json`.

    Parameters
    ----------
    text : str or bytes
        A DICOM JSON data set (one JSON object).
    max_depth : int, optional
        The most sequence levels it may nest, as for `from_json`.

    Returns
    -------
    dataset_pb2.Dataset
        The message.

    Raises
    ------
    ValueError
        If `text` is not JSON (`json.JSONDecodeError` is a `ValueError`), nests too deeply to
        parse (see `parse_json`), is not an object, or is not valid DICOM JSON.
    """
    obj = parse_json(text)
    if not isinstance(obj, dict):
        raise ValueError(f"a DICOM JSON data set is a JSON object, not {type(obj).__name__}")
    return from_json(obj, max_depth=max_depth)


def _dataset_from_json(
    target: dataset_pb2.Dataset, obj: Any, prefix: str, level: int, limit: int
) -> None:
    if not isinstance(obj, Mapping):
        where = prefix.rstrip(".") or "data set"
        raise _LocatedError(f"{where}: a data set is a JSON object, not {type(obj).__name__}")
    attributes = target.attributes
    for tag, element in obj.items():
        if not isinstance(tag, str) or _TAG.fullmatch(tag) is None:
            raise _LocatedError(f"{prefix}{tag!r}: a tag is 8 upper-case hexadecimal digits")
        if not isinstance(element, Mapping):
            raise _LocatedError(f"{prefix}{tag}: an attribute is a JSON object")
        _attribute_from_json(attributes[tag], element, prefix, tag, level, limit)


def _attribute_from_json(
    attr: dataset_pb2.Attribute,
    element: Mapping[str, Any],
    prefix: str,
    tag: str,
    level: int = 0,
    limit: int = MAX_SEQUENCE_DEPTH,
) -> None:
    # `level`: how many sequences enclose the data set holding the attribute.
    vr = element.get("vr")
    if not isinstance(vr, str):
        raise _LocatedError(f"{prefix}{tag}: missing or invalid 'vr'")
    if vr == "SQ" and level >= limit:
        raise NestingTooDeep(f"{prefix}{tag}", limit)
    attr.vr = vr
    try:
        if len(element) == 1:
            return
        if len(element) == 2:
            if "Value" in element:
                _values_from_json(attr, vr, element["Value"], prefix, tag, level, limit)
                return
            if "InlineBinary" in element:
                text = _single_text(element["InlineBinary"])
                attr.inline_binary = base64.b64decode(text, validate=True)
                return
            if "BulkDataURI" in element:
                attr.bulk_data_uri = _single_text(element["BulkDataURI"])
                return
        raise ValueError(
            f"unexpected keys {sorted(element)}; expected 'vr' and at most one of 'Value', "
            "'InlineBinary' and 'BulkDataURI'"
        )
    except _LocatedError:
        raise
    except (TypeError, ValueError) as exc:  # binascii.Error is a ValueError
        raise _LocatedError(f"{prefix}{tag} ({vr}): {exc}") from exc


def _single_text(value: Any) -> str:
    # PS3.18 Table F.3.1-1 gives a string; its Annex F.4 example a one-element list.
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise ValueError(f"expected a string, not {type(value).__name__}")
    return value


def _values_from_json(
    attr: dataset_pb2.Attribute,
    vr: str,
    values: Any,
    prefix: str,
    tag: str,
    level: int,
    limit: int,
) -> None:
    if not isinstance(values, list | tuple):
        raise ValueError(f"'Value' is a JSON array, not {type(values).__name__}")
    if vr in _STRING_VRS:
        _strings_from_json(attr.strings, values)
    elif vr in _NUMBER_VRS:
        _numbers_from_json(attr, values, text_allowed=vr in _TEXT_NUMBER_VRS)
    elif vr in _INTEGER_VRS:
        _integers_from_json(attr.integers, values, text_allowed=vr == "SV")
    elif vr == "PN":
        _person_names_from_json(attr.person_names, values)
    elif vr == "SQ":
        sequence = attr.sequence
        sequence.SetInParent()
        items = sequence.items
        base = f"{prefix}{tag}."
        for index, item in enumerate(values):
            _dataset_from_json(items.add(), item, f"{base}{index}.", level + 1, limit)
    elif vr == "UV":
        _integers_from_json(attr.unsigned_integers, values, text_allowed=True)
    elif all(value is None or isinstance(value, str) for value in values):
        _strings_from_json(attr.strings, values)  # unknown VR: choose by the JSON types
    else:
        _numbers_from_json(attr, values, text_allowed=False)


def _strings_from_json(target: dataset_pb2.StringValues, values: _Values) -> None:
    target.SetInParent()
    if None in values:
        target.null_indexes.extend([i for i, value in enumerate(values) if value is None])
        values = ["" if value is None else value for value in values]
    target.values.extend(values)  # TypeError for a value that is not a string


def _numbers_from_json(attr: dataset_pb2.Attribute, values: _Values, *, text_allowed: bool) -> None:
    doubles: list[float] = []
    nulls: list[int] = []
    integral: list[int] = []
    for index, value in enumerate(values):
        if isinstance(value, float):
            doubles.append(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            try:
                as_double = float(value)
            except OverflowError:
                as_double = 0.0  # and so != value
            if as_double != value:
                raise ValueError(f"integer {value} cannot be carried exactly as a double")
            doubles.append(as_double)
            integral.append(index)
        elif value is None:
            doubles.append(0.0)
            nulls.append(index)
        elif text_allowed and isinstance(value, str):
            _strings_from_json(attr.strings, values)  # DS or IS as text: keep the text
            return
        else:
            raise ValueError(f"expected a number or null, not {value!r}")
    numbers = attr.numbers
    numbers.SetInParent()
    numbers.values.extend(doubles)
    numbers.null_indexes.extend(nulls)
    numbers.integral_indexes.extend(integral)


def _integers_from_json(
    target: dataset_pb2.IntegerValues | dataset_pb2.UnsignedIntegerValues,
    values: _Values,
    *,
    text_allowed: bool,
) -> None:
    target.SetInParent()
    if not all(type(value) is int for value in values):
        converted: list[int] = []
        for value in values:
            if isinstance(value, int) and not isinstance(value, bool):
                converted.append(value)
            elif text_allowed and isinstance(value, str):  # PS3.18 F.2.3: SV, UV may be strings
                converted.append(int(value))
            else:
                raise ValueError(f"expected an integer, not {value!r}")
        values = converted
    target.values.extend(values)  # ValueError when out of range


def _person_names_from_json(target: dataset_pb2.PersonNameValues, values: _Values) -> None:
    target.SetInParent()
    names = target.values
    for index, value in enumerate(values):
        if value is None:
            names.add()
            target.null_indexes.append(index)
        elif isinstance(value, Mapping) and value.keys() <= _PN_GROUPS:
            names.add(
                alphabetic=value.get("Alphabetic", ""),
                ideographic=value.get("Ideographic", ""),
                phonetic=value.get("Phonetic", ""),
            )
        else:
            raise ValueError(
                f"a person name is null or an object with 'Alphabetic', 'Ideographic' and "
                f"'Phonetic' strings, not {value!r}"
            )


# --------------------------------------------------------------------------------------------
# message -> DICOM JSON


def to_json(ds: dataset_pb2.Dataset) -> dict[str, Any]:
    """Convert a ``Dataset`` message to a DICOM JSON data set.

    Parameters
    ----------
    ds : dataset_pb2.Dataset
        The message.

    Returns
    -------
    dict[str, Any]
        The data set in the DICOM JSON model, attributes (also those of sequence items) in tag
        order, ready for ``json.dumps`` or pydicom's ``Dataset.from_json``.

    Raises
    ------
    ValueError
        If the message is malformed: a ``null_indexes`` or ``integral_indexes`` entry out of
        range, or an integral index on a value that is not a finite number.
    """
    return _dataset_to_json(ds, None, ())


def to_json_text(ds: dataset_pb2.Dataset) -> str:
    """Convert a ``Dataset`` message to compact DICOM JSON text.

    Parameters
    ----------
    ds : dataset_pb2.Dataset
        The message.

    Returns
    -------
    str
        ``json.dumps(to_json(ds))`` without insignificant white space and with non-ASCII
        characters unescaped (encode it as UTF-8). NaN and infinite FL/FD values are written as
        ``NaN``/``Infinity``, which Python's ``json`` reads back but strict JSON parsers reject.
    """
    return json.dumps(to_json(ds), ensure_ascii=False, separators=(",", ":"))


def _dataset_to_json(
    ds: dataset_pb2.Dataset, text_numbers: list[_TextNumber] | None, steps: tuple[_Step, ...]
) -> dict[str, Any]:
    return {
        tag: _attribute_to_json(attr, tag, text_numbers, steps)
        for tag, attr in sorted(ds.attributes.items())
    }


def _attribute_to_json(
    attr: dataset_pb2.Attribute,
    tag: str,
    text_numbers: list[_TextNumber] | None,
    steps: tuple[_Step, ...],
) -> dict[str, Any]:
    vr = attr.vr
    element: dict[str, Any] = {"vr": vr}
    kind = attr.WhichOneof("value")
    if kind is None:
        return element
    values: list[Any]
    try:
        if kind == "strings":
            strings = attr.strings
            if text_numbers is not None and vr in _TEXT_NUMBER_VRS:
                # pydicom's from_json cannot take DS/IS text; `to_pydicom` adds it afterwards.
                text_numbers.append((steps, int(tag, 16), vr, "\\".join(strings.values)))
                return element
            values = list(strings.values)
            for index in strings.null_indexes:
                values[index] = None
        elif kind == "numbers":
            numbers = attr.numbers
            values = list(numbers.values)
            for index in numbers.integral_indexes:
                values[index] = int(values[index])
            for index in numbers.null_indexes:
                values[index] = None
        elif kind == "integers":
            values = list(attr.integers.values)
        elif kind == "unsigned_integers":
            values = list(attr.unsigned_integers.values)
        elif kind == "person_names":
            person_names = attr.person_names
            values = [_person_name_to_json(name) for name in person_names.values]
            for index in person_names.null_indexes:
                values[index] = None
        elif kind == "sequence":
            items = attr.sequence.items
            if text_numbers is None:
                values = [_dataset_to_json(item, None, steps) for item in items]
            else:
                sequence_tag = int(tag, 16)
                values = [
                    _dataset_to_json(item, text_numbers, (*steps, (sequence_tag, index)))
                    for index, item in enumerate(items)
                ]
        elif kind == "inline_binary":
            element["InlineBinary"] = base64.b64encode(attr.inline_binary).decode("ascii")
            return element
        else:
            element["BulkDataURI"] = attr.bulk_data_uri
            return element
    except (IndexError, OverflowError, ValueError) as exc:
        if isinstance(exc, _LocatedError):
            raise
        raise _LocatedError(f"{tag} ({vr}): malformed {kind}: {exc}") from exc
    element["Value"] = values
    return element


def _person_name_to_json(name: dataset_pb2.PersonName) -> dict[str, str]:
    groups = {"Alphabetic": name.alphabetic}
    if name.phonetic:
        groups["Ideographic"] = name.ideographic
        groups["Phonetic"] = name.phonetic
    elif name.ideographic:
        groups["Ideographic"] = name.ideographic
    return groups


# --------------------------------------------------------------------------------------------
# pydicom


def from_pydicom(
    ds: pydicom.Dataset,
    *,
    bulk_data_threshold: int = 1024,
    bulk_data_uri: Callable[[str], str] | None = None,
    max_depth: int = MAX_SEQUENCE_DEPTH,
) -> dataset_pb2.Dataset:
    """Convert a pydicom data set to a ``Dataset`` message.

    The result equals ``from_json(ds.to_json_dict(...))`` with the same bulk data settings.
    Elements pydicom has not converted yet (as ``dcmread`` leaves them) are, in the common cases,
    decoded from their bytes by :mod:`dicomrpc.rawvalues`, which gives the same values and the
    same warnings at a tenth of the cost; the others go through pydicom's
    ``DataElement.to_json_dict``. Sequences are walked here rather than by pydicom to know the
    tag path of nested elements, and inline binary values are taken from the element as bytes
    instead of through base64 and back. The file meta information (group 0002) is not part of
    `ds` and not converted, as in pydicom.

    Elements of files pydicom reads but cannot convert to JSON are handled one by one, in the
    known cases. pydicom keeps DS and IS text that is not a number as text (``NumberOfFrames``
    ``"1A"`` in its ``badVR.dcm``) and an empty value of a multi-valued DS or IS
    (``"1\\\\2"``) as ``""``, and its ``to_json_dict`` raises ``ValueError`` on both: such an
    element is kept as ``strings`` holding the text of its values, which `to_pydicom` restores.
    An empty value of a multi-valued PN (``"Doe^John\\\\"``) makes ``to_json_dict`` raise
    ``IndexError``: it is carried as a name with empty groups (``{"Alphabetic": ""}``). Any
    other failure raises. Warnings pydicom gives while decoding elements of odd files (invalid
    values, unknown VRs) are passed through.

    Parameters
    ----------
    ds : pydicom.Dataset
        The data set, for example as returned by ``pydicom.dcmread``.
    bulk_data_threshold : int, optional
        With `bulk_data_uri`, binary values whose base64 text would be longer than this
        (pydicom's rule: more than ``bulk_data_threshold // 4 * 3`` bytes) become a bulk data
        URI. Ignored without `bulk_data_uri`.
    bulk_data_uri : Callable[[str], str] or None, optional
        Called with the tag path of each such element, ``"7FE00010"`` at the top level and
        ``"00540016.0.00181072"`` (sequence tag, item index, tag, and so on) in sequence items,
        and returns its bulk data URI. Without it every binary value is carried inline,
        whatever its size.
    max_depth : int, optional
        The most sequence levels `ds` may nest (see `check_sequence_depth`); the default is the
        most a message can carry. Sequences are converted level by level and the limit is
        checked before a level is read, so pydicom never parses far past it.

    Returns
    -------
    dataset_pb2.Dataset
        The message.

    Raises
    ------
    ValueError
        If pydicom cannot decode or convert an element (other than the DS/IS case above); the
        message names its tag path. `NestingTooDeep` when the sequences nest deeper than
        `max_depth` (or so deep that pydicom's recursive reader gives up).
    """
    from dicomrpc import rawvalues

    # CT_small.dcm (258 elements): ~1 ms after dcmread, ~2.3 ms once pydicom has converted them.
    message = dataset_pb2.Dataset()
    # Without a URI callable, a threshold of 0 sends every non-empty binary value to the handler,
    # which lets pydicom skip the base64 encoding that would only be decoded again here.
    threshold = bulk_data_threshold if bulk_data_uri is not None else 0
    shortcuts = rawvalues.shortcuts_apply()
    _dataset_from_pydicom(message, ds, threshold, bulk_data_uri, "", shortcuts, 0, max_depth)
    return message


def _inline_marker(element: DataElement) -> str:
    return ""


def _dataset_from_pydicom(
    target: dataset_pb2.Dataset,
    source: pydicom.Dataset,
    threshold: int,
    bulk_data_uri: Callable[[str], str] | None,
    prefix: str,
    shortcuts: bool,
    level: int,
    limit: int,
) -> None:
    from pydicom.dataelem import RawDataElement

    from dicomrpc import rawvalues

    handler: Callable[[DataElement], str]
    if bulk_data_uri is None:
        handler = _inline_marker
    else:
        uri = bulk_data_uri

        def handler(element: DataElement) -> str:
            return uri(f"{prefix}{element.tag:08X}")

    attributes = target.attributes
    encodings = rawvalues.character_sets(source) if shortcuts else None
    # items() gives the elements as they are, raw (bytes) if pydicom has not converted them.
    for key, stored in source.items():
        tag = f"{key:08X}"
        if (
            shortcuts
            and isinstance(stored, RawDataElement)
            and _attribute_from_raw(
                attributes, tag, stored, encodings, threshold, bulk_data_uri, prefix
            )
        ):
            continue
        try:
            element = source[key]
        except Exception as exc:
            if isinstance(exc, Warning):  # a pydicom warning turned into an error by a filter
                raise
            if isinstance(exc, RecursionError):  # sequences nested hundreds of levels deep
                raise NestingTooDeep(f"{prefix}{tag}", limit) from exc
            raise _LocatedError(f"{prefix}{tag}: pydicom cannot decode the element: {exc}") from exc
        attr = attributes[tag]
        vr = element.VR
        if vr == "SQ":
            if level >= limit:
                raise NestingTooDeep(f"{prefix}{tag}", limit)
            attr.vr = vr
            sequence = attr.sequence
            sequence.SetInParent()
            items = sequence.items
            base = f"{prefix}{tag}."
            for index, item in enumerate(element.value):
                _dataset_from_pydicom(
                    items.add(),
                    item,
                    threshold,
                    bulk_data_uri,
                    f"{base}{index}.",
                    shortcuts,
                    level + 1,
                    limit,
                )
            continue
        try:
            obj = element.to_json_dict(handler, threshold)
        except Exception as exc:
            if isinstance(exc, Warning):
                raise
            if not _carry_unconvertible(attr, element, exc):
                raise _LocatedError(
                    f"{prefix}{tag} ({vr}): pydicom cannot convert the element: {exc}"
                ) from exc
            continue
        if bulk_data_uri is None and "BulkDataURI" in obj:
            attr.vr = vr
            value = element.value
            try:
                attr.inline_binary = value if isinstance(value, bytes) else bytes(memoryview(value))
            except TypeError as exc:
                raise _LocatedError(
                    f"{prefix}{tag} ({vr}): binary value is {type(value).__name__}"
                ) from exc
        else:
            _attribute_from_json(attr, obj, prefix, tag)  # never an SQ: those are walked above


def _attribute_from_raw(
    attributes: MutableMapping[str, dataset_pb2.Attribute],
    tag: str,
    raw: RawDataElement,
    encodings: list[str] | None,
    threshold: int,
    bulk_data_uri: Callable[[str], str] | None,
    prefix: str,
) -> bool:
    """Convert an element pydicom has not converted yet straight from its bytes, if possible.

    The message is the one pydicom's ``DataElement.to_json_dict`` and `_attribute_from_json`
    give, without the ``DataElement`` and pydicom's value objects in between (see
    `dicomrpc.rawvalues`). Returns ``False``, having changed nothing, when the element is left
    to pydicom.
    """
    from dicomrpc import rawvalues

    vr = rawvalues.element_vr(raw)
    if vr is None:
        return False
    if vr in rawvalues.BYTES_VRS:
        value = raw.value
        attr = attributes[tag]
        if not value or raw.length == 0:
            attr.vr = vr
        elif bulk_data_uri is not None and len(value) > (threshold // 4) * 3:
            try:
                uri = bulk_data_uri(f"{prefix}{tag}")
            except Exception as exc:
                if isinstance(exc, Warning):
                    raise
                raise _LocatedError(
                    f"{prefix}{tag} ({vr}): pydicom cannot convert the element: {exc}"
                ) from exc
            _attribute_from_json(attr, {"vr": vr, "BulkDataURI": uri}, prefix, tag)
        else:
            attr.vr = vr
            attr.inline_binary = value
        return True
    if vr in rawvalues.TEXT_VRS:
        texts = rawvalues.decode_text(raw, vr, encodings)
        if texts is None:
            return False
        attr = attributes[tag]
        attr.vr = vr
        if not texts:
            return True
        # The lists are not empty: filling them sets the oneof member.
        if vr == "PN":
            names = attr.person_names.values
            for text in texts:
                names.add(alphabetic=text)
        elif vr == "DS":
            attr.numbers.values.extend([float(text) for text in texts])
        elif vr == "IS":
            numbers = attr.numbers
            numbers.values.extend([float(int(text)) for text in texts])
            numbers.integral_indexes.extend(range(len(texts)))
        else:
            attr.strings.values.extend(texts)
        return True
    if vr in _NUMBER_VRS:  # FL, FD
        floats = rawvalues.decode_floats(raw, vr)
        if floats is None:
            return False
        attr = attributes[tag]
        attr.vr = vr
        if floats:
            attr.numbers.values.extend(floats)
        return True
    integers = rawvalues.decode_integers(raw, vr)
    if integers is None:
        return False
    attr = attributes[tag]
    attr.vr = vr
    if integers:
        target = attr.unsigned_integers if vr == "UV" else attr.integers
        target.values.extend(integers)
    return True


def _carry_unconvertible(attr: dataset_pb2.Attribute, element: DataElement, exc: Exception) -> bool:
    from pydicom.valuerep import PersonName

    # The values of an element that pydicom's to_json_dict raised `exc` on, in the known cases.
    vr = element.VR
    value = element.value
    values = [value] if isinstance(value, str | PersonName) else list(value)
    if vr in _TEXT_NUMBER_VRS and isinstance(exc, TypeError | ValueError):
        attr.vr = vr
        # str() of pydicom's IS and DSfloat gives the text they were read from.
        _strings_from_json(attr.strings, ["" if item is None else str(item) for item in values])
        return True
    if vr == "PN" and isinstance(exc, IndexError):  # an empty name has no components[0]
        attr.vr = vr
        person_names = attr.person_names
        person_names.SetInParent()
        for item in values:
            name = item if isinstance(item, PersonName) else PersonName(item)
            groups = (*name.components, "", "", "")
            person_names.values.add(alphabetic=groups[0], ideographic=groups[1], phonetic=groups[2])
        return True
    return False


def to_pydicom(ds: dataset_pb2.Dataset) -> pydicom.Dataset:
    """Convert a ``Dataset`` message to a pydicom data set.

    Uses pydicom's ``Dataset.from_json`` on the message's DICOM JSON. Bulk data URIs are not
    resolved: such elements get pydicom's empty value for their VR (``None`` for the binary VRs,
    ``""`` for text), as pydicom gives without a bulk data handler, but without its warning. DS
    and IS values carried as text (see `from_pydicom`) are added as raw elements afterwards, so
    pydicom decodes them as it would from a file: same value, same warning for invalid text (a
    null among them becomes an empty value, ``""``).

    pydicom validates every value while building elements from JSON and warns (``UserWarning``)
    about invalid ones, including some that ``dcmread`` accepts silently, such as the date
    ``"1997.04.24"``; those warnings are passed through.

    Parameters
    ----------
    ds : dataset_pb2.Dataset
        The message.

    Returns
    -------
    pydicom.Dataset
        The data set, without file meta information. For a message from `from_pydicom` (without
        bulk data URIs), its ``to_json_dict()`` equals that of the original data set.

    Raises
    ------
    ValueError
        If the message is malformed or pydicom rejects a value.
    """
    import pydicom
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    text_numbers: list[_TextNumber] = []
    result = pydicom.Dataset.from_json(
        _dataset_to_json(ds, text_numbers, ()), bulk_data_uri_handler=_unresolved_bulk_data
    )
    for steps, tag, vr, text in text_numbers:
        target = result
        for sequence_tag, index in steps:
            target = target[sequence_tag].value[index]
        raw = text.encode()
        target[tag] = RawDataElement(Tag(tag), vr, len(raw), raw, 0, False, True)
    return result


def _unresolved_bulk_data(tag: str, vr: str, uri: str) -> Any:
    from pydicom.dataelem import empty_value_for_VR

    return empty_value_for_VR(vr)


def keyword(tag: str) -> str:
    """The DICOM keyword of ``tag`` (8 hexadecimal digits), or "" for one the dictionary lacks.

    A string that is not a tag (a ``Dataset`` message built by hand may key an attribute with
    anything) has no keyword either.
    """
    from pydicom.datadict import keyword_for_tag

    if re.fullmatch(r"[0-9A-Fa-f]{8}", tag) is None:
        return ""
    return str(keyword_for_tag(int(tag, 16)))
