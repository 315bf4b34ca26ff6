"""Chunks encoded and decoded by hand are exactly protobuf's messages, both ways."""

from __future__ import annotations

import pytest

from dicomrpc.v1 import retrieve_service_pb2 as rpb
from dicomrpc.v1 import store_service_pb2 as spb
from dicomrpc.wire import chunk_of, chunk_or_message, encode_chunk, serialize

SIZES = [0, 1, 127, 128, 300, 16_383, 16_384, 65_536, 1 << 20, (1 << 21) + 7]


@pytest.mark.parametrize("size", SIZES)
def test_an_encoded_chunk_is_protobufs_own_serialization(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for message, field in (
        (rpb.RetrieveInstancesResponse(data=data), 2),
        (rpb.RetrieveFramesResponse(data=data), 2),
        (spb.StoreInstancesRequest(data=data), 3),
    ):
        encoded = encode_chunk(field, data)
        assert encoded == message.SerializeToString()
        assert type(message).FromString(encoded) == message
        view = chunk_of(encoded, field)
        assert view is not None and view.tobytes() == data


def test_memoryview_and_bytearray_chunks_encode_alike() -> None:
    data = b"\x00\x01" * 1000
    assert encode_chunk(2, memoryview(data)) == encode_chunk(2, bytearray(data))
    assert encode_chunk(2, memoryview(data)[10:20]) == encode_chunk(2, data[10:20])


def test_other_messages_are_not_taken_for_chunks() -> None:
    header = rpb.RetrieveInstancesResponse(
        instance=rpb.InstanceHeader(sop_instance_uid="1.2.3", size_bytes=10)
    ).SerializeToString()
    assert chunk_of(header, 2) is None
    # A chunk with another field beside it (the stream's study restriction) is a message.
    both = spb.StoreInstancesRequest(study_instance_uid="1.2", data=b"abc").SerializeToString()
    assert chunk_of(both, 3) is None
    chunk = encode_chunk(3, b"abc")
    assert chunk_of(chunk + b"\x0a\x01x", 3) is None  # more fields after it
    assert chunk_of(chunk[:-1], 3) is None  # shorter than its length says
    assert chunk_of(b"", 3) is None
    assert chunk_of(b"\x1a", 3) is None  # a key and no length
    assert chunk_of(b"\x1a\xff\xff", 3) is None  # an unfinished length
    assert chunk_of(encode_chunk(2, b"abc"), 3) is None  # another field number


def test_the_deserializer_parses_what_is_not_a_chunk() -> None:
    deserialize = chunk_or_message(rpb.RetrieveFramesResponse, 2)
    header = rpb.RetrieveFramesResponse(frame=rpb.FrameHeader(frame_number=4))
    parsed = deserialize(header.SerializeToString())
    assert parsed == header
    chunk = deserialize(encode_chunk(2, b"pixels"))
    assert isinstance(chunk, memoryview) and bytes(chunk) == b"pixels"
    empty = deserialize(encode_chunk(2, b""))
    assert isinstance(empty, memoryview) and len(empty) == 0


def test_serialize_passes_encoded_chunks_and_serializes_messages() -> None:
    message = rpb.RetrieveInstancesResponse(instance=rpb.InstanceHeader(version=3))
    assert serialize(message) == message.SerializeToString()
    assert serialize(b"\x12\x00") == b"\x12\x00"


def test_a_metadata_answer_from_stored_datasets_is_protobufs_own() -> None:
    from dicomrpc.v1 import dataset_pb2
    from dicomrpc.wire import encode_fields

    datasets = [
        dataset_pb2.Dataset(
            attributes={
                "00100010": dataset_pb2.Attribute(vr="PN"),
                "00080018": dataset_pb2.Attribute(vr="UI"),
            }
        ),
        dataset_pb2.Dataset(),  # an empty dataset is a field of length 0
        dataset_pb2.Dataset(attributes={"7FE00010": dataset_pb2.Attribute(vr="OW")}),
    ]
    stored = [d.SerializeToString(deterministic=True) for d in datasets]
    expected = rpb.RetrieveMetadataResponse(etag='"abc"', datasets=datasets)
    encoded = encode_fields([(1, b'"abc"'), *((3, raw) for raw in stored)])
    assert rpb.RetrieveMetadataResponse.FromString(encoded) == expected
    assert encoded == expected.SerializeToString(deterministic=True)
    assert encode_fields([]) == b""
