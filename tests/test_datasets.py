"""Tests of dicomrpc.datasets: DICOM JSON <-> Dataset message <-> pydicom, losslessly."""

from __future__ import annotations

import base64
import json
import warnings
from functools import cache
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.data.data_manager import DATA_ROOT
from pydicom.dataelem import RawDataElement
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from dicomrpc import datasets
from dicomrpc.v1 import dataset_pb2

# --------------------------------------------------------------------------------------------
# pydicom's test files

NOT_DICOM_SUFFIXES = {".json", ".txt", ".gz", ".dump", ".icc"}

# Warnings pydicom itself gives while reading or decoding these (odd) files. Each test of such a
# file ignores exactly these; any other warning fails the test (the project makes warnings
# errors).
PYDICOM_WARNINGS: dict[str, list[str]] = {
    "SC_rgb_jpeg.dcm": ["Expected explicit VR, but found implicit VR"],
    "badVR.dcm": ["Invalid value for VR IS", "Invalid value for VR UI"],
    # dcmread accepts StudyDate '1997.04.24' (old ACR-NEMA style) and its TM silently; pydicom's
    # Dataset.from_json, used by to_pydicom, validates them and warns.
    "ExplVR_BigEnd.dcm": ["Invalid value for VR DA", "Invalid value for VR TM"],
    "no_meta.dcm": ["VR lookup failed"],
    # A text file; dcmread(force=True) reads it as one element of unknown VR.
    "dicomdirtests/TINY_ALPHA/README": ["VR lookup failed"],
    "rtdose.dcm": ["Invalid value for VR UI"],
    "rtdose_1frame.dcm": ["Invalid value for VR UI"],
    "rtdose_expb.dcm": ["Invalid value for VR UI"],
    "rtdose_expb_1frame.dcm": ["Invalid value for VR UI"],
    "rtdose_rle.dcm": ["Invalid value for VR UI"],
    "rtdose_rle_1frame.dcm": ["Invalid value for VR UI"],
}

# Files pydicom reads but cannot convert to DICOM JSON itself, so there is no JSON to compare
# with. test_pydicom_cannot_convert_to_json checks that this still holds and that
# from_pydicom/to_pydicom keep these files' data anyway.
PYDICOM_JSON_FAILURES: dict[str, str] = {
    "badVR.dcm": (
        "NumberOfFrames (0028,0008) is IS '1A'; pydicom keeps the text and its to_json_dict "
        "raises ValueError on int('1A')"
    ),
}

TEST_FILES_ROOT = Path(DATA_ROOT) / "test_files"


def _file_name(path: str) -> str:
    try:
        return Path(path).relative_to(TEST_FILES_ROOT).as_posix()
    except ValueError:  # a file from an external pydicom data source
        return Path(path).name


FILES: dict[str, str] = {
    _file_name(path): path
    for path in get_testdata_files()
    if Path(path).is_file() and Path(path).suffix not in NOT_DICOM_SUFFIXES
}


def _param(name: str, *, json_comparable: bool = False) -> Any:
    marks: list[Any] = [
        pytest.mark.filterwarnings(f"ignore:{message}:UserWarning")
        for message in PYDICOM_WARNINGS.get(name, [])
    ]
    if json_comparable and name in PYDICOM_JSON_FAILURES:
        marks.append(pytest.mark.skip(reason=f"pydicom cannot: {PYDICOM_JSON_FAILURES[name]}"))
    return pytest.param(name, id=name, marks=marks)


ALL_FILES = [_param(name) for name in sorted(FILES)]
JSON_FILES = [_param(name, json_comparable=True) for name in sorted(FILES)]


@cache
def _file_bytes(name: str) -> bytes:
    return Path(FILES[name]).read_bytes()


def read(name: str) -> pydicom.Dataset:
    return pydicom.dcmread(BytesIO(_file_bytes(name)), force=True)


def assert_same_json(actual: Any, expected: Any) -> None:
    """Equal, and equal as JSON text too, which tells 1 from 1.0 and True from 1."""
    assert actual == expected
    assert json.dumps(actual, sort_keys=True) == json.dumps(expected, sort_keys=True)


def bulk_uri(path: str) -> str:
    return f"https://archive.test/bulk/{path}"


def test_the_test_files_are_found() -> None:
    assert len(FILES) > 100
    assert "CT_small.dcm" in FILES
    assert set(PYDICOM_WARNINGS) <= set(FILES)
    assert set(PYDICOM_JSON_FAILURES) <= set(FILES)


@pytest.mark.parametrize("name", JSON_FILES)
def test_json_round_trip(name: str) -> None:
    ds = read(name)
    obj = ds.to_json_dict(bulk_data_threshold=10**9)
    assert_same_json(datasets.to_json(datasets.from_json(obj)), obj)


@pytest.mark.parametrize("name", JSON_FILES)
def test_from_pydicom_equals_pydicom_json(name: str) -> None:
    ds = read(name)
    # Without a bulk data handler pydicom inlines every binary value; so does from_pydicom
    # without bulk_data_uri.
    assert_same_json(datasets.to_json(datasets.from_pydicom(ds)), ds.to_json_dict())
    # With one, both replace the same values.
    message = datasets.from_pydicom(ds, bulk_data_threshold=1024, bulk_data_uri=lambda _: "uri")
    expected = ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda _: "uri")
    assert_same_json(datasets.to_json(message), expected)


@pytest.mark.slow
@pytest.mark.parametrize("name", JSON_FILES)
def test_pydicom_round_trip_is_lossless(name: str) -> None:
    ds = read(name)
    restored = datasets.to_pydicom(datasets.from_pydicom(ds))
    assert_same_json(restored.to_json_dict(), ds.to_json_dict())
    assert restored == ds


@pytest.mark.parametrize("name", ALL_FILES)
def test_message_bytes_round_trip(name: str) -> None:
    message = datasets.from_pydicom(read(name))
    parsed = dataset_pb2.Dataset.FromString(message.SerializeToString())
    assert parsed == message
    assert_same_json(datasets.to_json(parsed), datasets.to_json(message))


def _attribute_at(message: dataset_pb2.Dataset, path: str) -> dataset_pb2.Attribute:
    *steps, tag = path.split(".")
    for sequence_tag, index in zip(steps[::2], steps[1::2], strict=True):
        message = message.attributes[sequence_tag].sequence.items[int(index)]
    return message.attributes[tag]


@pytest.mark.parametrize("name", ALL_FILES)
def test_large_binary_values_become_bulk_data_uris(name: str) -> None:
    ds = read(name)
    paths: list[str] = []

    def uri(path: str) -> str:
        paths.append(path)
        return bulk_uri(path)

    message = datasets.from_pydicom(ds, bulk_data_threshold=1024, bulk_data_uri=uri)
    assert len(paths) == len(set(paths))
    for path in paths:
        assert _attribute_at(message, path).bulk_data_uri == bulk_uri(path)
    if "PixelData" in ds:
        pixel_data = message.attributes["7FE00010"]
        # pydicom's rule: base64 text longer than the threshold, i.e. > 1024 // 4 * 3 bytes.
        if len(ds.PixelData) > 768:
            assert pixel_data.WhichOneof("value") == "bulk_data_uri"
            assert pixel_data.bulk_data_uri == bulk_uri("7FE00010")
        else:
            assert pixel_data.inline_binary == ds.PixelData


def test_some_test_files_have_large_pixel_data_and_nested_bulk_data() -> None:
    paths: list[str] = []
    with warnings.catch_warnings():
        # Only counting; the per-file tests above handle each file's warnings.
        warnings.simplefilter("ignore", UserWarning)
        for name in FILES:
            datasets.from_pydicom(read(name), bulk_data_uri=lambda p: paths.append(p) or p)
    assert paths.count("7FE00010") > 40
    assert "00880200.0.7FE00010" in paths  # examples_overlay.dcm: the icon image's pixel data
    assert "54000100.1.54001010" in paths  # waveform_ecg.dcm: the second waveform's data


@pytest.mark.parametrize("name", [_param(name) for name in sorted(PYDICOM_JSON_FAILURES)])
def test_pydicom_cannot_convert_to_json(name: str) -> None:
    ds = read(name)
    with pytest.raises(ValueError):
        ds.to_json_dict()
    message = datasets.from_pydicom(ds)
    assert dataset_pb2.Dataset.FromString(message.SerializeToString()) == message
    assert datasets.to_pydicom(message) == ds


def test_bad_vr_file_keeps_the_invalid_text() -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Invalid value for VR (IS|UI)", UserWarning)
        ds = read("badVR.dcm")
        message = datasets.from_pydicom(ds)
        assert datasets.to_json(message)["00280008"] == {"vr": "IS", "Value": ["1A"]}
        assert datasets.to_pydicom(message).NumberOfFrames == "1A"


# --------------------------------------------------------------------------------------------
# DICOM JSON


def round_trip(obj: dict[str, Any]) -> dataset_pb2.Dataset:
    """Return the message for `obj`, checking that it reproduces `obj`, also over the wire."""
    message = datasets.from_json(obj)
    assert_same_json(datasets.to_json(message), obj)
    parsed = dataset_pb2.Dataset.FromString(message.SerializeToString())
    assert_same_json(datasets.to_json(parsed), obj)
    return message


def test_null_values_in_multi_valued_strings() -> None:
    obj = {"00080008": {"vr": "CS", "Value": ["ORIGINAL", None, "", "AXIAL", None]}}
    strings = round_trip(obj).attributes["00080008"].strings
    assert list(strings.values) == ["ORIGINAL", "", "", "AXIAL", ""]
    assert list(strings.null_indexes) == [1, 4]
    assert datasets.to_pydicom(round_trip(obj)).ImageType == ["ORIGINAL", "", "", "AXIAL", ""]


def test_person_name_with_three_groups() -> None:
    name = {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
    obj = {"00100010": {"vr": "PN", "Value": [name]}}
    names = round_trip(obj).attributes["00100010"].person_names
    assert names.values[0] == dataset_pb2.PersonName(
        alphabetic="Yamada^Tarou", ideographic="山田^太郎", phonetic="やまだ^たろう"
    )
    ds = datasets.to_pydicom(datasets.from_json(obj))
    assert ds.PatientName.components == ("Yamada^Tarou", "山田^太郎", "やまだ^たろう")
    assert_same_json(datasets.to_json(datasets.from_pydicom(ds)), obj)


def test_person_names_with_nulls_and_fewer_groups() -> None:
    obj = {
        "00081060": {
            "vr": "PN",
            "Value": [
                {"Alphabetic": "Doe^John"},
                None,
                {"Alphabetic": "", "Ideographic": "山田^太郎"},
                {"Alphabetic": "", "Ideographic": "", "Phonetic": "やまだ^たろう"},
            ],
        }
    }
    assert list(round_trip(obj).attributes["00081060"].person_names.null_indexes) == [1]


def test_person_name_normalizations() -> None:
    # proto3 strings have no presence: an empty trailing group, which PS3.5 6.2.1 lets a writer
    # omit, is omitted; a missing Alphabetic group comes back empty.
    obj = {
        "00100010": {
            "vr": "PN",
            "Value": [{"Alphabetic": "Doe^John", "Ideographic": ""}, {"Phonetic": "do^jon"}],
        }
    }
    assert datasets.to_json(datasets.from_json(obj))["00100010"]["Value"] == [
        {"Alphabetic": "Doe^John"},
        {"Alphabetic": "", "Ideographic": "", "Phonetic": "do^jon"},
    ]


def test_empty_sequence_vs_sequence_with_empty_item_vs_no_value() -> None:
    obj = {
        "00081115": {"vr": "SQ", "Value": []},
        "00081140": {"vr": "SQ", "Value": [{}]},
        "00082112": {"vr": "SQ"},
        "00089092": {"vr": "SQ", "Value": [{}, {"00081150": {"vr": "UI", "Value": ["1.2.3"]}}]},
    }
    attributes = round_trip(obj).attributes
    assert attributes["00081115"].WhichOneof("value") == "sequence"
    assert len(attributes["00081115"].sequence.items) == 0
    assert len(attributes["00081140"].sequence.items) == 1
    assert attributes["00082112"].WhichOneof("value") is None
    ds = datasets.to_pydicom(datasets.from_json(obj))
    assert len(ds.ReferencedSeriesSequence) == 0
    assert len(ds.ReferencedImageSequence) == 1
    assert len(ds.ReferencedImageEvidenceSequence) == 2


def test_empty_value_array_is_kept_for_every_kind() -> None:
    obj = {
        tag: {"vr": vr, "Value": []}
        for tag, vr in [
            ("00080060", "CS"),
            ("00101010", "AS"),
            ("00101020", "DS"),
            ("00200013", "IS"),
            ("00280010", "US"),
            ("00100010", "PN"),
            ("0040A132", "UL"),
            ("00720082", "UV"),
            ("00091001", "US or SS"),
        ]
    }
    round_trip(obj)


def test_is_and_ds_keep_integers_and_floats_apart() -> None:
    obj = {
        "00200013": {"vr": "IS", "Value": [7, -3, None, 0]},
        "00280030": {"vr": "DS", "Value": [1, 1.0, -0.0, 2.5, None, 1e-300, 123456789012]},
        "00189087": {"vr": "FD", "Value": [1.0, 0.1, -1.7976931348623157e308]},
        "00189089": {"vr": "FL", "Value": [0.5, 3, None]},
    }
    attributes = round_trip(obj).attributes
    assert list(attributes["00200013"].numbers.integral_indexes) == [0, 1, 3]
    assert list(attributes["00200013"].numbers.null_indexes) == [2]
    assert list(attributes["00280030"].numbers.integral_indexes) == [0, 6]
    out = datasets.to_json(datasets.from_json(obj))
    types = [type(v) for v in out["00280030"]["Value"]]
    assert types == [int, float, float, float, type(None), float, int]


def test_ds_and_is_given_as_text_are_kept_as_text() -> None:
    obj = {"00280030": {"vr": "DS", "Value": ["0.5", None, "0.25"]}, "00200013": {"vr": "IS"}}
    assert round_trip(obj).attributes["00280030"].WhichOneof("value") == "strings"
    # to_pydicom lets pydicom decode DS/IS text as it would from a file, where null is empty.
    assert datasets.to_pydicom(datasets.from_json(obj)).PixelSpacing == [0.5, "", 0.25]


def test_integers_beyond_double_precision_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"00200013 \(IS\).*exactly"):
        datasets.from_json({"00200013": {"vr": "IS", "Value": [2**53 + 1]}})
    with pytest.raises(ValueError, match="exactly"):
        datasets.from_json({"00200013": {"vr": "IS", "Value": [10**400]}})


def test_uv_above_2_63_and_sv_extremes() -> None:
    obj = {
        "00720082": {"vr": "UV", "Value": [2**64 - 1, 2**63, 0]},
        "00720081": {"vr": "SV", "Value": [-(2**63), 2**63 - 1, 0]},
    }
    attributes = round_trip(obj).attributes
    assert list(attributes["00720082"].unsigned_integers.values) == [2**64 - 1, 2**63, 0]
    ds = datasets.to_pydicom(datasets.from_json(obj))
    assert ds[0x00720082].value == [2**64 - 1, 2**63, 0]
    assert_same_json(datasets.to_json(datasets.from_pydicom(ds)), obj)


def test_sv_and_uv_given_as_strings_become_numbers() -> None:
    obj = {
        "00720082": {"vr": "UV", "Value": ["18446744073709551615"]},
        "00720081": {"vr": "SV", "Value": ["-9223372036854775808", 5]},
    }
    assert datasets.to_json(datasets.from_json(obj)) == {
        "00720081": {"vr": "SV", "Value": [-(2**63), 5]},
        "00720082": {"vr": "UV", "Value": [2**64 - 1]},
    }


@pytest.mark.parametrize(
    ("vr", "values"),
    [("UV", [2**64]), ("UV", [-1]), ("SV", [2**63]), ("US", ["5"]), ("US", [None]), ("SL", [1.5])],
)
def test_binary_integers_out_of_range_or_of_wrong_type_are_rejected(
    vr: str, values: list[Any]
) -> None:
    with pytest.raises(ValueError, match=rf"^00720082 \({vr}\)"):
        datasets.from_json({"00720082": {"vr": vr, "Value": values}})


def test_at() -> None:
    obj = {"00209165": {"vr": "AT", "Value": ["00100010", "7FE00010"]}}
    assert list(round_trip(obj).attributes["00209165"].strings.values) == ["00100010", "7FE00010"]
    ds = datasets.to_pydicom(datasets.from_json(obj))
    assert ds.DimensionIndexPointer == [0x00100010, 0x7FE00010]
    assert_same_json(datasets.to_json(datasets.from_pydicom(ds)), obj)


def test_inline_binary_and_bulk_data_uri() -> None:
    data = bytes(range(256)) * 3 + b"\x01"
    obj = {
        "00420011": {"vr": "OB", "InlineBinary": base64.b64encode(data).decode()},
        "7FE00010": {"vr": "OW", "BulkDataURI": "https://archive.test/bulk/7FE00010"},
        "00660023": {"vr": "OF"},
    }
    attributes = round_trip(obj).attributes
    assert attributes["00420011"].inline_binary == data
    assert attributes["7FE00010"].bulk_data_uri == "https://archive.test/bulk/7FE00010"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # unresolved bulk data: pydicom's empty value, no warning
        ds = datasets.to_pydicom(datasets.from_json(obj))
    assert ds.EncapsulatedDocument == data
    assert ds.PixelData is None


def test_one_element_list_forms_of_binary_values_are_accepted() -> None:
    obj = {
        "00420011": {"vr": "OB", "InlineBinary": ["AAE="]},
        "7FE00010": {"vr": "OW", "BulkDataURI": ["https://archive.test/x"]},
    }
    assert datasets.to_json(datasets.from_json(obj)) == {
        "00420011": {"vr": "OB", "InlineBinary": "AAE="},
        "7FE00010": {"vr": "OW", "BulkDataURI": "https://archive.test/x"},
    }


def test_unknown_vrs_are_mapped_by_value_types() -> None:
    round_trip(
        {
            "00091001": {"vr": "US or SS", "Value": [1, 65535]},
            "00091002": {"vr": "XX", "Value": ["a", None]},
            "00091003": {"vr": "OB or OW", "InlineBinary": "AAE="},
        }
    )


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ({"0010001a": {"vr": "LO"}}, "'0010001a': a tag is 8 upper-case"),
        ({"00100010": {"Value": ["x"]}}, "^00100010: missing or invalid 'vr'"),
        ({"00100010": ["x"]}, "^00100010: an attribute is a JSON object"),
        ({"00100020": {"vr": "LO", "Value": ["x"], "InlineBinary": ""}}, "unexpected keys"),
        ({"00100020": {"vr": "LO", "Values": ["x"]}}, "unexpected keys"),
        ({"00100020": {"vr": "LO", "Value": "x"}}, "'Value' is a JSON array"),
        ({"00100020": {"vr": "LO", "Value": [1]}}, r"^00100020 \(LO\)"),
        ({"00100010": {"vr": "PN", "Value": ["Doe^John"]}}, "a person name is null or"),
        ({"00100010": {"vr": "PN", "Value": [{"Alphabetic": "a", "X": "b"}]}}, "a person name"),
        ({"00200013": {"vr": "IS", "Value": [True]}}, "expected a number or null"),
        ({"00280030": {"vr": "FD", "Value": ["1.5"]}}, "expected a number or null"),
        ({"7FE00010": {"vr": "OB", "InlineBinary": "A*=="}}, r"^7FE00010 \(OB\)"),
        ({"7FE00010": {"vr": "OB", "InlineBinary": "AAE"}}, "padding"),
        ({"7FE00010": {"vr": "OB", "BulkDataURI": 5}}, "expected a string"),
        (
            {"00081140": {"vr": "SQ", "Value": [{}, None]}},
            "^00081140.1: a data set is a JSON object",
        ),
        (
            {"00081140": {"vr": "SQ", "Value": [{"00081150": {"vr": "UI", "Value": [1]}}]}},
            r"^00081140.0.00081150 \(UI\)",
        ),
    ],
)
def test_invalid_json_is_rejected_naming_the_attribute(obj: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        datasets.from_json(obj)


def test_to_json_sorts_by_tag() -> None:
    obj = {
        "7FE00010": {"vr": "OB"},
        "00100010": {"vr": "PN"},
        "00081140": {
            "vr": "SQ",
            "Value": [{"00081155": {"vr": "UI"}, "00081150": {"vr": "UI"}}],
        },
        "00080005": {"vr": "CS"},
    }
    out = datasets.to_json(datasets.from_json(obj))
    assert list(out) == ["00080005", "00081140", "00100010", "7FE00010"]
    assert list(out["00081140"]["Value"][0]) == ["00081150", "00081155"]


def test_json_text() -> None:
    obj = {
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen"}]},
        "00280030": {"vr": "DS", "Value": [0.5, 1]},
    }
    text = datasets.to_json_text(datasets.from_json(obj))
    assert text == (
        '{"00100010":{"vr":"PN","Value":[{"Alphabetic":"Müller^Jürgen"}]},'
        '"00280030":{"vr":"DS","Value":[0.5,1]}}'
    )
    assert_same_json(datasets.to_json(datasets.from_json_text(text)), obj)
    assert datasets.from_json_text(text.encode()) == datasets.from_json(obj)
    with pytest.raises(ValueError, match="JSON object"):
        datasets.from_json_text("[]")


def test_malformed_messages_are_rejected() -> None:
    message = dataset_pb2.Dataset()
    attr = message.attributes["00280030"]
    attr.vr = "DS"
    attr.numbers.values.append(1.0)
    attr.numbers.null_indexes.append(3)
    with pytest.raises(ValueError, match=r"^00280030 \(DS\): malformed numbers"):
        datasets.to_json(message)


# --------------------------------------------------------------------------------------------
# pydicom


def _raw(tag: int, vr: str, value: bytes) -> RawDataElement:
    return RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def test_nested_bulk_data_paths() -> None:
    icon = pydicom.Dataset()
    icon.add_new(0x7FE00010, "OW", b"\x00\x01" * 500)
    small = pydicom.Dataset()
    small.add_new(0x7FE00010, "OW", b"\x00\x01" * 10)
    ds = pydicom.Dataset()
    ds.IconImageSequence = Sequence([small, icon])
    ds.add_new(0x7FE00010, "OB", b"\x02" * 769)
    ds.add_new(0x00420011, "OB", b"\x03" * 768)
    paths: list[str] = []
    message = datasets.from_pydicom(
        ds, bulk_data_uri=lambda path: paths.append(path) or bulk_uri(path)
    )
    assert sorted(paths) == ["00880200.1.7FE00010", "7FE00010"]
    assert _attribute_at(message, "00880200.1.7FE00010").bulk_data_uri == bulk_uri(
        "00880200.1.7FE00010"
    )
    assert _attribute_at(message, "00880200.0.7FE00010").inline_binary == b"\x00\x01" * 10
    assert message.attributes["00420011"].inline_binary == b"\x03" * 768
    # Without a callable everything is inline, whatever its size.
    inline = datasets.from_pydicom(ds, bulk_data_threshold=0)
    assert _attribute_at(inline, "00880200.1.7FE00010").inline_binary == b"\x00\x01" * 500
    assert datasets.to_pydicom(inline) == ds


def test_elements_pydicom_cannot_convert_are_kept() -> None:
    # pydicom reads these (with a warning for '1A'), but its to_json_dict raises on each: an
    # empty value in a multi-valued DS, IS or PN, and IS text that is not a number.
    item = pydicom.Dataset()
    item[0x00101001] = _raw(0x00101001, "PN", "Doe^John\\\\Yamada^Tarou=山田\\".encode())
    item[0x00200013] = _raw(0x00200013, "IS", b"1\\\\2")
    item[0x00280008] = _raw(0x00280008, "IS", b"1A")
    item[0x00280030] = _raw(0x00280030, "DS", b"0.5\\\\0.25")
    item.SpecificCharacterSet = "ISO_IR 192"
    ds = pydicom.Dataset()
    ds.ReferencedImageSequence = Sequence([pydicom.Dataset(), item])
    with pytest.warns(UserWarning, match="Invalid value for VR IS: '1A'"):
        message = datasets.from_pydicom(ds)
    assert datasets.to_json(message)["00081140"]["Value"][1] == {
        "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
        "00101001": {
            "vr": "PN",
            "Value": [
                {"Alphabetic": "Doe^John"},
                {"Alphabetic": ""},
                {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田"},
                {"Alphabetic": ""},
            ],
        },
        "00200013": {"vr": "IS", "Value": ["1", "", "2"]},
        "00280008": {"vr": "IS", "Value": ["1A"]},
        "00280030": {"vr": "DS", "Value": ["0.5", "", "0.25"]},
    }
    restored = datasets.to_pydicom(message)
    with pytest.warns(UserWarning, match="Invalid value for VR IS: '1A'"):
        assert restored == ds
    restored_item = restored.ReferencedImageSequence[1]
    assert restored_item.NumberOfFrames == "1A"
    assert restored_item.PixelSpacing == [0.5, "", 0.25]
    assert restored_item.OtherPatientNames == ["Doe^John", "", "Yamada^Tarou=山田", ""]


def test_from_pydicom_ignores_file_meta() -> None:
    ds = read("CT_small.dcm")
    message = datasets.from_pydicom(ds)
    assert not any(tag.startswith("0002") for tag in message.attributes)
    name = message.attributes["00100010"].person_names.values[0]
    assert name.alphabetic == "CompressedSamples^CT1"
    assert message.attributes["7FE00010"].inline_binary == ds.PixelData


def test_errors_name_the_element() -> None:
    ds = pydicom.Dataset()
    ds[0x00280010] = _raw(0x00280010, "US", b"\x01\x00\x02")  # odd length for US
    with pytest.raises(ValueError, match=r"^00280010: pydicom cannot decode the element: Expected"):
        datasets.from_pydicom(ds)
