"""The raw value shortcuts give what pydicom's own conversion gives: values and warnings alike.

Every test builds a data set whose one element is raw (as ``dcmread`` leaves it) and compares
`from_pydicom` and `ElementValues` with the shortcuts against the same calls without them
(pydicom converting the element), on generated values of every VR the shortcuts decode.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import config
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dicomrpc import rawvalues
from dicomrpc.datasets import from_pydicom
from dicomrpc_server.dicom.elements import ElementValues

# A tag whose dictionary VR is each VR (an explicit VR element may still say another VR).
TAGS = {
    "AE": 0x00080054,
    "AS": 0x00101010,
    "CS": 0x00080060,
    "DA": 0x00080020,
    "DT": 0x0008002A,
    "TM": 0x00080030,
    "UI": 0x00200052,
    "UR": 0x0008010E,
    "SH": 0x00080050,
    "LO": 0x00080070,
    "UC": 0x00080119,
    "ST": 0x00080081,
    "LT": 0x00080108,
    "UT": 0x00100218,
    "PN": 0x00100010,
    "DS": 0x00101020,
    "IS": 0x00200013,
    "US": 0x00280010,
    "SS": 0x00189219,
    "UL": 0x00041200,
    "SL": 0x00186020,
    "FL": 0x00180013,
    "FD": 0x00082134,
    "SV": 0x00720082,
    "UV": 0x0008040C,
    "OB": 0x00142210,
    "OW": 0x00281201,
    "OF": 0x00181638,
    "AT": 0x00209165,
    "UN": 0x0072006D,
}
SPECIFIC_CHARACTER_SET = 0x00080005
CHARACTER_SETS = [None, "iso8859", ["latin_1"], ["UTF8"], ["iso2022_jp"], ["latin_1", "GB18030"]]
# Bytes that matter to the decoding: digits and number signs, separators, padding, the PN
# delimiters, an escape, Latin-1 and UTF-8 bytes, control characters.
ALPHABET = b"0123456789.+-eE ^=\\\x00AbZ_/:~\x1b\xe9\xc3\xa9\xff\n\t"

values = st.one_of(
    st.binary(max_size=20),
    st.lists(st.sampled_from(ALPHABET), max_size=70).map(bytes),
    st.tuples(st.text(alphabet="aZ1^=\\ .é漢", max_size=12), st.sampled_from(["utf-8", "latin-1"]))
    .filter(lambda text_codec: text_codec[1] == "utf-8" or "漢" not in text_codec[0])
    .map(lambda text_codec: text_codec[0].encode(text_codec[1])),
    st.lists(
        st.sampled_from(["1", "-2.5", "+.5", "1e3", "007", "2147483648", " 3 ", "", "1A", "nan"]),
        min_size=1,
        max_size=3,
    ).map(lambda parts: "\\".join(parts).encode()),
    st.lists(st.sampled_from(["1", "2", "840", "10008", "0", "01"]), min_size=1, max_size=40).map(
        lambda parts: ".".join(parts).encode()
    ),
)


def _dataset(
    tag: int, vr: str | None, data: bytes, little: bool, charset: str | list[str] | None
) -> Dataset:
    ds = Dataset()
    ds[tag] = RawDataElement(Tag(tag), vr, len(data), data, 0, vr is None, little)
    ds.set_original_encoding(vr is None, little, charset or "")
    return ds


@contextmanager
def _shortcuts(on: bool) -> Iterator[None]:
    apply = rawvalues.shortcuts_apply
    if not on:
        rawvalues.shortcuts_apply = lambda: False
    try:
        yield
    finally:
        rawvalues.shortcuts_apply = apply


def _outcome(call: Callable[[], Any]) -> tuple[Any, list[tuple[str, str]]]:
    """What ``call`` returns (or raises) and the warnings it gives."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result: Any = ("returned", call())
        except Exception as exc:
            result = ("raised", type(exc).__name__, str(exc))
    return result, [(type(w.message).__name__, str(w.message)) for w in caught]


def _as_number(value: Any) -> Any:
    # ElementValues.value may give an int (or a list of them) for pydicom's IS: compare numbers.
    try:
        return ("int", int(value), bool(value))
    except (TypeError, ValueError) as exc:
        return ("not an int", type(exc).__name__, value is None)


def _everything(make: Callable[[], Dataset], tag: int) -> list[Any]:
    def message(**kwargs: Any) -> bytes:
        return from_pydicom(make(), **kwargs).SerializeToString(deterministic=True)

    def texts(method: str) -> Any:
        found = getattr(ElementValues(make()), method)(tag)
        if method == "values" and found is not None:
            # What validation looks at: the text of the non-empty values.
            found = [str(v) for v in found if v is not None and v != ""]
        return found

    return [
        _outcome(message),
        _outcome(lambda: message(bulk_data_uri=lambda path: f"u/{path}", bulk_data_threshold=4)),
        _outcome(lambda: texts("text")),
        _outcome(lambda: texts("values")),
        _outcome(lambda: _as_number(ElementValues(make()).value(tag, None))),
    ]


def _same_with_and_without_shortcuts(make: Callable[[], Dataset], tag: int) -> None:
    with _shortcuts(False):
        expected = _everything(make, tag)
    with _shortcuts(True):
        got = _everything(make, tag)
    assert got == expected


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    vr=st.sampled_from(sorted(TAGS)),
    written=st.one_of(st.none(), st.sampled_from(sorted(TAGS))),
    data=values,
    little=st.booleans(),
    charset=st.sampled_from(CHARACTER_SETS),
)
def test_generated_elements(
    vr: str, written: str | None, data: bytes, little: bool, charset: str | list[str] | None
) -> None:
    # `written` None: implicit VR (pydicom looks the VR up); else explicit, maybe not `vr`.
    tag = TAGS[vr]
    _same_with_and_without_shortcuts(lambda: _dataset(tag, written, data, little, charset), tag)


# Values at the edges of what the shortcuts take, by VR (binary values little endian).
EDGES: dict[str, list[bytes]] = {
    "UI": [
        b"1.2.3",
        b"1.2.3\x00",
        b"1.2.03",
        b"1.2.3 ",
        b" 1.2.3",
        b"1.2\\3.4",
        b"\x00\x00",
        b"1.2.a",
        b"1.2.3\n",
        b"1.2\\",
        b"1" * 64,
        b"1" * 65,
        b"1.2" + b".3" * 31,
    ],
    "CS": [b"A\\B\\C", b"A\\\\B ", b"  ", b"a b", b"X\x00", b"\\", b"\xe9T", b" LEAD", b"A" * 17],
    "DA": [b"20240101", b"2024.01.01", b"20240101-20240202", b"2024010 ", b"20240101\\20240102"],
    "TM": [b"080000", b"08:00:00", b"080000.123456 ", b"0800\\0900"],
    "DT": [b"20240101080000.123456+0100", b"abc"],
    "AS": [b"026Y", b"26Y ", b"026Y\\003M"],
    "AE": [b" AE1 ", b"A\\ B ", b"\x01AE", b"A\x00", b"A" * 20],
    "SH": [b"Hello \\World ", b"x" * 16, b"x" * 17, b"M\xfcller", b"\xc3\xa9", b"   ", b"a\\\\b"],
    "LO": [b"x" * 64, b"x" * 65, b"two\\values ", b" lead", b"\xff\xfe", b"A\x00"],
    "UC": [b"a\\b", b"x" * 100],
    "ST": [b"text \\ backslash ", b"x" * 1024, b"x" * 1025, b"\x00\x00", b"\xc3\xa9 "],
    "LT": [b"x" * 10241, b"\xc3\xa9"],
    "UT": [b"text \\ b ", b"\xc3\xa9"],
    "UR": [b"http://x y ", b"http://ok\\x", b"  "],
    "PN": [
        b"Doe^John",
        b"Doe^John\\Smith^J",
        b"Doe^John=",
        b"=X",
        b"  ",
        b"\\",
        b"A" * 64,
        b"A" * 65,
        b"a=b=c=d",
        b"Doe^John ",
        b" Doe",
        b"\xc3\xa9^x",
        b"Doe^John\x00",
    ],
    "DS": [
        b"1.0\\2.5 ",
        b" 1.5",
        b"1A",
        b"1\\\\2",
        b"  ",
        b"1e3",
        b"1e400",
        b"nan",
        b"+.5",
        b"-0",
        b"1.\\.5",
        b"1,5",
        b"1" * 16,
        b"1" * 17,
        b"1.0\x00",
        b"inf",
    ],
    "IS": [
        b"007",
        b" 12 ",
        b"1.0",
        b"1.5",
        b"1" * 12,
        b"1" * 13,
        b"2147483648",
        b"1\\\\2",
        b"+3",
        b"1\\2\\3",
        b"-0",
        b"0",
    ],
    "US": [b"\x01\x00", b"\x01\x00\x02\x00", b"\x01\x00\x02"],
    "SS": [b"\xff\xff", b"\x01"],
    "UL": [b"\x01\x00\x00\x00\x02\x00\x00\x00", b"\x01\x00"],
    "FL": [b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f\x00\x00\x80\x3f"],
    "FD": [b"\x00" * 6 + b"\xf8\x7f", b"\x00" * 4],
    "UV": [b"\xff" * 8, b"\xff" * 9],
    "OB": [b"\x01", b"\x00" * 3, b"\x00" * 4],
    "OF": [b"\x00" * 4],
    "AT": [b"\x10\x00\x10\x00"],
    "UN": [b"CT"],
}


@pytest.mark.parametrize("vr", sorted(EDGES))
def test_edge_values(vr: str) -> None:
    tag = TAGS[vr]
    for data in [b"", *EDGES[vr]]:
        for written, little, charset in [
            (vr, True, ["latin_1"]),
            (vr, False, ["UTF8"]),
            (None, True, "iso8859"),
            (vr, True, None),
            (vr, True, ["iso2022_jp"]),
        ]:
            make = lambda: _dataset(tag, written, data, little, charset)  # noqa: E731, B023
            _same_with_and_without_shortcuts(make, tag)


@pytest.mark.parametrize("written", ["CS", "LO", "PN", "ST"])
@pytest.mark.parametrize("data", [b"ISO_IR 192", b"\xc3\xa9", b"\xe9"])
def test_specific_character_set_is_decoded_as_iso_646(written: str, data: bytes) -> None:
    make = lambda: _dataset(SPECIFIC_CHARACTER_SET, written, data, True, ["UTF8"])  # noqa: E731
    _same_with_and_without_shortcuts(make, SPECIFIC_CHARACTER_SET)


@pytest.mark.parametrize(
    ("vr", "data"),
    [
        ("UI", b"1.2.840.10008.5.1.4.1.1.2\x00"),
        ("UI", b"1.2.3\\1.2.4"),
        ("CS", b"ORIGINAL\\PRIMARY\\AXIAL "),
        ("DA", b"20240108"),
        ("TM", b"091100.001 "),
        ("AS", b"026Y"),
        ("AE", b" STORESCP "),
        ("UR", b"http://example.com/x "),
        ("LO", b"General Hospital"),
        ("SH", b"ACC1\\ACC2 "),
        ("ST", b"Line one\r\nline two "),
        ("PN", b"SMITH^OMAR"),
        ("PN", b"Doe^John\\Roe^Jane "),
        ("DS", b"-175.0\\-175.0\\-101.0"),
        ("DS", b"0.683594\\0.683594 "),
        ("IS", b"12 "),
        ("US", struct.pack("<H", 512)),
        ("SS", struct.pack("<2h", -1, 1)),
        ("FD", struct.pack("<d", 2.5)),
        ("OB", b"\x00\x01" * 600),
    ],
)
def test_common_values_take_the_shortcut(vr: str, data: bytes) -> None:
    make = lambda: _dataset(TAGS[vr], vr, data, True, ["latin_1"])  # noqa: E731
    raw = make().get_item(TAGS[vr], keep_deferred=True)
    assert isinstance(raw, RawDataElement)
    assert rawvalues.element_vr(raw) == vr
    if vr in rawvalues.TEXT_VRS:
        assert rawvalues.decode_text(raw, vr, ["latin_1"]) is not None
    _same_with_and_without_shortcuts(make, TAGS[vr])


@pytest.mark.parametrize(
    ("vr", "data", "why"),
    [
        ("DS", b"1A", "not a number: pydicom keeps the text"),
        ("DS", b"1\\\\2", "an empty value among several"),
        ("DS", b"12345678901234567", "longer than 16 characters"),
        ("IS", b"1.0", "not an integer: pydicom warns"),
        ("PN", b"Yamada^Taro=\xe5\xb1\xb1\xe7\x94\xb0", "more than one component group"),
        ("PN", b"M\xfcller", "not ASCII"),
        ("PN", b"Doe^John\\", "an empty name among several"),
        ("LO", b"\x1b$B;3\x1b(B", "an escape sequence"),
    ],
)
def test_unusual_values_are_left_to_pydicom(vr: str, data: bytes, why: str) -> None:
    raw = _dataset(TAGS[vr], vr, data, True, ["latin_1"]).get_item(TAGS[vr], keep_deferred=True)
    assert rawvalues.decode_text(raw, vr, ["latin_1"]) is None, why


def test_private_creators_and_unknown_tags_are_left_to_pydicom() -> None:
    creator = RawDataElement(Tag(0x00090010), "LO", 4, b"ACME", 0, False, True)
    unknown = RawDataElement(Tag(0x00091001), None, 4, b"abcd", 0, True, True)
    assert rawvalues.element_vr(creator) is None
    assert rawvalues.element_vr(unknown) is None


@pytest.mark.parametrize(
    ("option", "value"),
    [("datetime_conversion", True), ("use_DS_decimal", True), ("use_IS_numpy", True)],
)
def test_other_pydicom_configurations_turn_the_shortcuts_off(
    option: str, value: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert rawvalues.shortcuts_apply()
    monkeypatch.setattr(config, option, value)
    assert not rawvalues.shortcuts_apply()


def test_raising_validation_turns_the_shortcuts_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config.settings, "reading_validation_mode", config.RAISE)
    assert not rawvalues.shortcuts_apply()
