"""The element values that validation, the frame table and the records read from an instance.

They read a few dozen elements of every stored instance, and pydicom converts an element on its
first access (some 10 µs each, giving its warnings then). Elements pydicom has not converted
yet are decoded here by :mod:`dicomrpc.rawvalues` when that module can (the text VRs and binary
numbers, see its docstring), the others are read through pydicom as before: the values and the
warnings are the same either way.
"""

from __future__ import annotations

from typing import Any

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicomrpc import rawvalues

__all__ = ["ElementValues", "UnreadableValue"]


class UnreadableValue(ValueError):
    """An element's value pydicom cannot decode: a length its VR does not allow, say.

    One error for every way pydicom's conversion fails (``BytesLengthException``,
    ``NotImplementedError`` for a VR it has no converter for, ...), so that a caller checking a
    value catches a ``ValueError`` as for any other invalid value. ``reason`` is pydicom's.
    """

    def __init__(self, tag: int, reason: str) -> None:
        super().__init__(f"({tag:08X}) cannot be read: {reason}")
        self.reason = reason


class ElementValues:
    """The top-level element values of a pydicom data set.

    Parameters
    ----------
    dataset
        The data set, usually as ``dcmread`` returned it (its elements still raw).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._shortcuts = rawvalues.shortcuts_apply()
        self._encodings = rawvalues.character_sets(dataset) if self._shortcuts else None
        # Keyed by plain int: a look-up then compares ints, not pydicom's BaseTag (whose __eq__
        # is Python code). Elements pydicom converts through this object are put back here.
        self._elements: dict[int, DataElement | RawDataElement] = {
            int(tag): element for tag, element in dataset.items()
        }

    def __contains__(self, tag: int) -> bool:
        return tag in self._elements

    def _raw(self, tag: int) -> tuple[RawDataElement, str] | None:
        """The element and its VR, if it is raw and its VR one that rawvalues decodes."""
        element = self._elements.get(tag)
        if not self._shortcuts or not isinstance(element, RawDataElement):
            return None
        vr = rawvalues.element_vr(element)
        return None if vr is None else (element, vr)

    def _pydicom_value(self, tag: int) -> Any:
        try:
            element = self.dataset[tag]
        except Exception as exc:  # pydicom's conversion of the raw element
            raise UnreadableValue(tag, str(exc)) from exc
        self._elements[tag] = element
        return element.value

    def _texts(self, tag: int) -> list[str] | None:
        """The text of each value of a raw text element, ``None`` to ask pydicom."""
        found = self._raw(tag)
        if found is None or found[1] not in rawvalues.TEXT_VRS:
            return None
        return rawvalues.decode_text(found[0], found[1], self._encodings)

    def values(self, tag: int) -> list[Any] | None:
        """An element's values, ``None`` when it is absent.

        The text VRs give the text of each value (``str()`` of pydicom's value); the others
        pydicom's value in a list of one, unless it is a ``MultiValue``. An empty element gives
        no value or pydicom's empty value.
        """
        if tag not in self._elements:
            return None
        texts = self._texts(tag)
        if texts is not None:
            return texts
        found = self._raw(tag)
        if found is not None and found[1] in rawvalues.BINARY_NUMBER_VRS:
            numbers = _binary_numbers(*found)
            if numbers is not None:
                return [_single(numbers)]
        value = self._pydicom_value(tag)
        return list(value) if isinstance(value, MultiValue) else [value]

    def text(self, tag: int) -> str | None:
        """The single string value of an attribute, ``None`` when absent."""
        if tag not in self._elements:
            return None
        texts = self._texts(tag)
        if texts is not None:
            if len(texts) > 1:  # pydicom's value is a MultiValue
                return "\\".join(texts)
            return texts[0].strip("\x00 ") if texts else ""
        value = self._pydicom_value(tag)
        if isinstance(value, MultiValue):
            return "\\".join(str(v) for v in value)
        return "" if value is None else str(value).strip("\x00 ")

    def value(self, tag: int, default: Any) -> Any:
        """An element's value as pydicom gives it, ``default`` when the element is absent.

        For integer elements (binary, or IS) an ``int`` or a ``list`` of them may stand for
        pydicom's value: they are equal as numbers, and as truth values.
        """
        if tag not in self._elements:
            return default
        found = self._raw(tag)
        if found is not None:
            raw, vr = found
            if vr == "IS":
                texts = rawvalues.decode_text(raw, vr, self._encodings)
                if texts is not None:
                    return _single([int(text) for text in texts])
            elif vr in rawvalues.BINARY_NUMBER_VRS:
                numbers = _binary_numbers(raw, vr)
                if numbers is not None:
                    return _single(numbers)
        return self._pydicom_value(tag)


def _binary_numbers(raw: RawDataElement, vr: str) -> list[int] | list[float] | None:
    if vr in ("FL", "FD"):
        return rawvalues.decode_floats(raw, vr)
    return rawvalues.decode_integers(raw, vr)


def _single(values: list[int] | list[float]) -> Any:
    # pydicom's value of a number element: None when empty, the number, or a list of them.
    if not values:
        return None
    return values[0] if len(values) == 1 else values
