"""The sequence nesting ceiling, measured against protobuf; the checks that keep data below it."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from dicomrpc import datasets
from dicomrpc.datasets import MAX_SEQUENCE_DEPTH, NestingTooDeep
from dicomrpc.v1 import (
    dataset_pb2,
    management_service_pb2,
    retrieve_service_pb2,
    search_service_pb2,
    store_service_pb2,
    workitem_service_pb2,
)
from dicomrpc_server.config import Settings
from dicomrpc_server.dicom.nesting import check_depth, named_path
from dicomrpc_server.dicom.structure import scan
from dicomrpc_server.errors import Code, ServiceError
from dicomrpc_server.storage import records_pb2
from dicomrpc_server.store.prepare import prepare

API_MODULES: list[ModuleType] = [
    dataset_pb2,
    management_service_pb2,
    retrieve_service_pb2,
    search_service_pb2,
    store_service_pb2,
    workitem_service_pb2,
    records_pb2,
]
CONTENT = "0040A730"  # ContentSequence


def nested_message(depth: int) -> dataset_pb2.Dataset:
    """``depth`` sequence levels, the innermost item holding a person name (the deepest leaf)."""
    top = dataset_pb2.Dataset()
    current = top
    for _ in range(depth):
        attribute = current.attributes[CONTENT]
        attribute.vr = "SQ"
        current = attribute.sequence.items.add()
    current.attributes["00100010"].vr = "PN"
    current.attributes["00100010"].person_names.values.add(alphabetic="Doe^John")
    return top


def _nested(descriptor: Descriptor) -> Iterator[Descriptor]:
    yield descriptor
    for inner in descriptor.nested_types:
        yield from _nested(inner)


def _messages() -> Iterator[Descriptor]:
    """Every message of the API and the index records, but the Dataset's own parts."""
    for module in API_MODULES:
        if module is dataset_pb2:
            continue
        for descriptor in module.DESCRIPTOR.message_types_by_name.values():
            yield from _nested(descriptor)


def _dataset_fields(message: Descriptor) -> list[str]:
    return [
        field.name
        for field in message.fields
        if field.message_type is not None and field.message_type.full_name == "dicomrpc.v1.Dataset"
    ]


def _wrappers() -> list[tuple[type[Message], str]]:
    out = []
    for descriptor in _messages():
        module = next(m for m in API_MODULES if m.DESCRIPTOR is descriptor.file)
        for name in _dataset_fields(descriptor):
            assert descriptor.containing_type is None, descriptor.full_name
            out.extend([(getattr(module, descriptor.name), name)])
    return out


def _wrap(kind: type[Message], field: str, dataset: dataset_pb2.Dataset) -> bytes:
    message = kind()
    target = getattr(message, field)
    if hasattr(target, "add"):
        target.add().CopyFrom(dataset)
    else:
        target.CopyFrom(dataset)
    return message.SerializeToString()


def test_no_message_wraps_a_dataset_in_more_than_one_level() -> None:
    # The ceiling counts one message around a data set: a message holding a message that holds
    # a Dataset would need a lower MAX_SEQUENCE_DEPTH.
    wrappers = {kind.DESCRIPTOR.full_name for kind, _ in _wrappers()}
    assert wrappers, "no message carries a Dataset?"
    for descriptor in _messages():
        for field in descriptor.fields:
            inner = field.message_type
            assert inner is None or inner.full_name not in wrappers, (
                f"{descriptor.full_name}.{field.name} wraps {inner.full_name}, "
                "which wraps a Dataset: lower MAX_SEQUENCE_DEPTH"
            )


@pytest.mark.parametrize(("kind", "field"), _wrappers(), ids=lambda x: getattr(x, "__name__", x))
def test_the_ceiling_parses_in_every_message_that_carries_a_dataset(
    kind: type[Message], field: str
) -> None:
    data = _wrap(kind, field, nested_message(MAX_SEQUENCE_DEPTH))
    parsed = kind.FromString(data)
    assert parsed.SerializeToString() == data


def test_one_level_more_does_not() -> None:
    # The ceiling is tight: one more level fails in a wrapped message (protobuf's limit).
    data = _wrap(
        retrieve_service_pb2.RetrieveMetadataResponse,
        "datasets",
        nested_message(MAX_SEQUENCE_DEPTH + 1),
    )
    with pytest.raises(DecodeError):
        retrieve_service_pb2.RetrieveMetadataResponse.FromString(data)


@pytest.mark.parametrize("limit", [1, 5, 16, MAX_SEQUENCE_DEPTH])
def test_every_conversion_draws_the_line_at_the_same_level(limit: int) -> None:
    at, past = nested_message(limit), nested_message(limit + 1)
    datasets.check_sequence_depth(at, limit)
    with pytest.raises(NestingTooDeep) as caught:
        datasets.check_sequence_depth(past, limit)
    path = ".".join([f"{CONTENT}.0"] * limit + [CONTENT])
    assert caught.value.path == path
    assert caught.value.tag == CONTENT and caught.value.limit == limit

    assert datasets.from_json(datasets.to_json(at), max_depth=limit) == at
    with pytest.raises(NestingTooDeep) as from_json:
        datasets.from_json(datasets.to_json(past), max_depth=limit)
    assert from_json.value.path == path

    assert datasets.from_pydicom(datasets.to_pydicom(at), max_depth=limit) == at
    with pytest.raises(NestingTooDeep) as from_pydicom:
        datasets.from_pydicom(datasets.to_pydicom(past), max_depth=limit)
    assert from_pydicom.value.path == path


def test_an_empty_sequence_counts_as_a_level() -> None:
    message = datasets.from_json({CONTENT: {"vr": "SQ", "Value": [{CONTENT: {"vr": "SQ"}}]}})
    datasets.check_sequence_depth(message, 2)
    with pytest.raises(NestingTooDeep):
        datasets.check_sequence_depth(message, 1)
    with pytest.raises(NestingTooDeep):
        datasets.from_json(datasets.to_json(message), max_depth=1)


def test_the_first_sequence_past_the_limit_is_named_in_tag_order() -> None:
    deep = {CONTENT: {"vr": "SQ", "Value": [{CONTENT: {"vr": "SQ", "Value": [{}]}}]}}
    obj = {"00081115": deep[CONTENT], "0008113A": deep[CONTENT], CONTENT: {"vr": "SQ"}}
    message = datasets.from_json(obj)
    with pytest.raises(NestingTooDeep) as caught:
        datasets.check_sequence_depth(message, 1)
    assert caught.value.path == "00081115.0.0040A730"


def test_the_server_error_names_the_attribute_by_keyword() -> None:
    assert named_path("0040A730.0.00081115.3.00091010") == (
        "ContentSequence[0].ReferencedSeriesSequence[3].00091010"
    )
    assert named_path("not a tag.0.0040A730") == "not a tag[0].ContentSequence"
    with pytest.raises(ServiceError) as caught:
        check_depth(nested_message(3), 2)
    error = caught.value
    assert (error.code, error.reason, error.dicom_status) == (
        Code.INVALID_ARGUMENT,
        "LIMIT_EXCEEDED",
        0x0110,
    )
    attribute = "ContentSequence[0].ContentSequence[0].ContentSequence"
    assert error.violations[0].field == attribute
    assert error.metadata["limit"] == "max_sequence_depth" and error.metadata["value"] == "2"
    assert error.message.startswith("sequences nest more than 2 levels deep")


def test_json_nested_far_too_deeply_is_a_value_error() -> None:
    text = "[" * 100_000 + "]" * 100_000
    with pytest.raises(ValueError, match="too deeply"):
        datasets.parse_json(text)
    with pytest.raises(ValueError, match="too deeply"):
        datasets.from_json_text(text)
    deep = '{"0040A730":{"vr":"SQ","Value":[' * 5000 + "{}" + "]}}" * 5000
    with pytest.raises(ValueError, match=r"too deeply|more than"):
        datasets.from_json_text(deep)


# -- Part 10 files ------------------------------------------------------------------------


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH", group, element) + vr + struct.pack("<H", len(value)) + value


def _sequence_open(tag: int) -> bytes:
    return (
        struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        + b"SQ\x00\x00\xff\xff\xff\xff"
        + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    )


_CLOSE = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def deep_file(depth: int, *, defined: bool = False) -> bytes:
    """A Part 10 file whose ContentSequence nests ``depth`` levels (undefined lengths unless
    ``defined``), written byte by byte: pydicom itself cannot write thousands of levels."""
    leaf = _element(0x0010, 0x0010, b"PN", b"xy")
    if defined:
        body = leaf
        for _ in range(depth):
            item = struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body
            body = struct.pack("<HH", 0x0040, 0xA730) + b"SQ\x00\x00"
            body += struct.pack("<I", len(item)) + item
    else:
        body = _sequence_open(0x0040A730) * depth + leaf + _CLOSE * depth
    sop_class = b"1.2.840.10008.5.1.4.1.1.7\x00"
    meta_body = (
        struct.pack("<HH", 2, 1) + b"OB\x00\x00" + struct.pack("<I", 2) + b"\x00\x01"
        + _element(2, 2, b"UI", sop_class)
        + _element(2, 3, b"UI", b"1.2.3.4\x00")
        + _element(2, 0x10, b"UI", b"1.2.840.10008.1.2.1\x00")
    )  # fmt: skip
    meta = _element(2, 0, b"UL", struct.pack("<I", len(meta_body))) + meta_body
    data = (
        _element(0x0008, 0x0016, b"UI", sop_class)
        + _element(0x0008, 0x0018, b"UI", b"1.2.3.4\x00")
        + _element(0x0010, 0x0020, b"LO", b"P1")
        + _element(0x0020, 0x000D, b"UI", b"1.2.3.5\x00")
        + _element(0x0020, 0x000E, b"UI", b"1.2.3.6\x00")
    )
    # (0040,A730) sorts after the UIDs of group 0020.
    return b"\x00" * 128 + b"DICM" + meta + data + body


def pydicom_file(depth: int, implicit: bool = False) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID, ds.StudyInstanceUID = generate_uid(), generate_uid()
    ds.SeriesInstanceUID, ds.PatientID = generate_uid(), "P1"
    current = ds
    for _ in range(depth):
        item = Dataset()
        current.ContentSequence = Sequence([item])
        current = item
    current.PatientName = "Doe^John"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("depth", [20, 400, 50_000])
def test_the_structural_walk_stops_at_the_limit_before_pydicom_reads(depth: int) -> None:
    data = deep_file(depth)
    with pytest.raises(ServiceError) as caught:
        scan(io.BytesIO(data), len(data), 16)
    assert caught.value.reason == "LIMIT_EXCEEDED"
    assert caught.value.metadata["tag_path"] == ".".join([f"{CONTENT}.0"] * 16 + [CONTENT])
    scan(io.BytesIO(deep_file(16)), len(deep_file(16)), 16)


@pytest.mark.parametrize(("depth", "defined"), [(16, True), (17, True), (17, False), (5000, True)])
def test_prepare_refuses_past_the_limit_whatever_the_lengths(
    tmp_path: Path, depth: int, defined: bool
) -> None:
    path = tmp_path / "deep.dcm"
    path.write_bytes(deep_file(depth, defined=defined))
    if depth <= 16:
        prepared = prepare(path, 16)
        datasets.check_sequence_depth(dataset_pb2.Dataset.FromString(prepared.new.metadata), 16)
        return
    with pytest.raises(ServiceError) as caught:
        prepare(path, 16)
    error = caught.value
    assert (error.reason, error.dicom_status) == ("LIMIT_EXCEEDED", 272)
    assert error.violations[0].field.startswith("ContentSequence[0].")


@pytest.mark.parametrize("implicit", [False, True])
def test_prepare_takes_what_pydicom_writes_up_to_the_limit(tmp_path: Path, implicit: bool) -> None:
    path = tmp_path / "ok.dcm"
    path.write_bytes(pydicom_file(16, implicit))
    metadata = dataset_pb2.Dataset.FromString(prepare(path, 16).new.metadata)
    item = metadata
    for _ in range(16):
        item = item.attributes[CONTENT].sequence.items[0]
    assert item.attributes["00100010"].person_names.values[0].alphabetic == "Doe^John"
    path.write_bytes(pydicom_file(17, implicit))
    with pytest.raises(ServiceError, match="more than 16 levels"):
        prepare(path, 16)
    assert dcmread(path).SOPClassUID  # a well-formed file, refused for its nesting alone


def test_encapsulated_pixel_data_in_an_item_is_not_a_sequence_level() -> None:
    # An icon image inside the deepest allowed item: its fragments are walked as items, but
    # the data set's nesting does not grow.
    icon = (
        struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\x00\x00\xff\xff\xff\xff"
        + struct.pack("<HHI", 0xFFFE, 0xE000, 0)
        + struct.pack("<HHI", 0xFFFE, 0xE000, 2) + b"\xff\xd8"
        + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    )  # fmt: skip
    data = deep_file(2)
    data = data.replace(_CLOSE, icon + _CLOSE, 1)
    scan(io.BytesIO(data), len(data), 2)


# -- settings ------------------------------------------------------------------------------


def test_settings_refuse_a_limit_the_read_paths_cannot_carry(tmp_path: Path) -> None:
    assert Settings().max_sequence_depth == 16 < MAX_SEQUENCE_DEPTH
    Settings(max_sequence_depth=MAX_SEQUENCE_DEPTH)
    for bad in (0, MAX_SEQUENCE_DEPTH + 1):
        with pytest.raises(ValueError, match="max_sequence_depth"):
            Settings(max_sequence_depth=bad)
    run = subprocess.run(
        [
            *(sys.executable, "-m", "dicomrpc.cli", "serve"),
            *("--data", str(tmp_path / "d"), "--max-sequence-depth", "30"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "--max-sequence-depth" in run.stderr and "1 to 23" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "d").exists()  # refused before anything was opened


def test_the_variable_sets_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOMRPC_MAX_SEQUENCE_DEPTH", "8")
    assert Settings.from_env().max_sequence_depth == 8


def test_the_ceiling_in_the_json_model_is_far_below_pythons() -> None:
    # The DICOM JSON of a data set at the ceiling is read and written by Python's json module
    # with room to spare (it nests three JSON levels per sequence level).
    text = datasets.to_json_text(nested_message(MAX_SEQUENCE_DEPTH))
    assert datasets.from_json_text(text) == nested_message(MAX_SEQUENCE_DEPTH)
    assert json.loads(text)
