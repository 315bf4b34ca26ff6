"""Byte chunks on the wire without protobuf's copies.

Most of what a store or a retrieve moves is chunk messages: ``StoreInstancesRequest.data``,
``RetrieveInstancesResponse.data``, ``RetrieveFramesResponse.data``, each one length-delimited
field holding up to 1 MiB. Through protobuf, every chunk is copied into a message, copied out
again to serialize it, and on the other side copied into a parsed message and once more when
``.data`` is read. Those copies (and the page faults of the fresh buffers behind them) were the
largest cost of moving bytes in the server and the SDK alike.

So a chunk is written by hand, one copy: the field's key, its length, the bytes. And a received
message that is exactly one such field is read as a memoryview of the bytes gRPC delivered, no
copy at all. Any other message goes through protobuf as before. The bytes on the wire are what
protobuf itself writes for the message, so every gRPC client and server, generated from the
same ``.proto`` files, reads and writes them as usual.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from google.protobuf.message import Message

M = TypeVar("M", bound=Message)

_LENGTH_DELIMITED = 2


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_chunk(field_number: int, data: bytes | bytearray | memoryview) -> bytes:
    """The serialized form of a message whose only field is bytes field ``field_number``."""
    return encode_fields(((field_number, data),))


def encode_fields(fields: Iterable[tuple[int, bytes | bytearray | memoryview]]) -> bytes:
    """The serialized form of a message made of length-delimited fields, in the order given.

    A field is a string, bytes or (already serialized) message field; a repeated one is given
    once per value. This is how metadata answers send the stored, serialized datasets without
    parsing them first.
    """
    parts: list[bytes | bytearray | memoryview] = []
    for field_number, value in fields:
        parts += (_varint(field_number << 3 | _LENGTH_DELIMITED), _varint(len(value)), value)
    return b"".join(parts)


def chunk_of(raw: bytes, field_number: int) -> memoryview | None:
    """The bytes of a serialized message that is only bytes field ``field_number``, else None.

    A message with any other field, or this one followed by more, is not a bare chunk: the
    caller parses it with protobuf.
    """
    key = field_number << 3 | _LENGTH_DELIMITED
    if key > 0x7F:
        raise ValueError(f"field number {field_number} needs a multi-byte key")
    if len(raw) < 2 or raw[0] != key:
        return None
    length = shift = 0
    position = 1
    while position < len(raw) and position <= 10:
        byte = raw[position]
        position += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if position + length != len(raw):
                return None
            return memoryview(raw)[position:]
        shift += 7
    return None


def serialize(message: Message | bytes) -> bytes:
    """Serialize for gRPC: a message through protobuf, a chunk already encoded as it is."""
    if isinstance(message, bytes):
        return message
    return message.SerializeToString()


def chunk_or_message(message_type: type[M], field_number: int) -> Callable[[bytes], memoryview | M]:
    """Deserialize for gRPC: a bare chunk as a memoryview, any other message parsed."""

    def deserialize(raw: bytes) -> memoryview | M:
        chunk = chunk_of(raw, field_number)
        return chunk if chunk is not None else message_type.FromString(raw)

    return deserialize
