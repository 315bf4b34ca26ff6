"""The SDK's typed error, decoded from a gRPC status and its ``google.rpc`` details."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

# The standard detail messages (google/rpc/error_details.proto), decoded when a status has them.
_DETAIL_TYPES: tuple[Any, ...] = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.RetryInfo,
    error_details_pb2.DebugInfo,
    error_details_pb2.QuotaFailure,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.RequestInfo,
    error_details_pb2.ResourceInfo,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
)


@dataclass
class DicomRpcError(Exception):
    """A failed call.

    Attributes
    ----------
    code
        The gRPC status code.
    message
        The server's explanation (what ``grpc.RpcError.details()`` gives).
    reason
        The stable reason (an ``ErrorReason`` name, e.g. ``"INSTANCE_ALREADY_EXISTS"``).
    dicom_status
        The DICOM status or reason code, when the standard defines one.
    metadata
        The error's dynamic values.
    field_violations
        ``(field, description)`` of each bad request field.
    details
        Every ``google.rpc`` detail message of the status, decoded (``ErrorInfo``,
        ``BadRequest``, ``RetryInfo``...; one of a type the SDK does not know stays a
        ``google.protobuf.Any``). ``reason``, ``metadata`` and ``field_violations`` are
        read from these; the list is for the details they do not cover.
    """

    code: grpc.StatusCode
    message: str
    reason: str = ""
    dicom_status: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: list[tuple[str, str]] = field(default_factory=list)
    details: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        tail = f" [{self.reason}]" if self.reason else ""
        return f"{self.code.name}: {self.message}{tail}"

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> DicomRpcError:
        """Decode a failed call's status, including its rich details when present."""
        call: grpc.Call = error
        code = call.code() if hasattr(call, "code") else grpc.StatusCode.UNKNOWN
        message = call.details() if hasattr(call, "details") else str(error)
        result = cls(code=code, message=message or "")
        try:
            status = rpc_status.from_call(call)
        except (ValueError, AttributeError):
            status = None
        if status is not None:
            result.details = [decode_detail(detail) for detail in status.details]
        for detail in result.details:
            if isinstance(detail, error_details_pb2.ErrorInfo):
                result.reason = detail.reason
                result.metadata = dict(detail.metadata)
                if "dicom_status" in detail.metadata:
                    result.dicom_status = int(detail.metadata["dicom_status"])
            elif isinstance(detail, error_details_pb2.BadRequest):
                result.field_violations = [
                    (v.field, v.description) for v in detail.field_violations
                ]
        return result


def decode_detail(detail: any_pb2.Any) -> Message:
    """The message packed in a status detail, or the ``Any`` itself for an unknown type."""
    for message_type in _DETAIL_TYPES:
        if detail.Is(message_type.DESCRIPTOR):
            message: Message = message_type()
            detail.Unpack(message)
            return message
    return detail


T = TypeVar("T")


def call_unary(method: Callable[[Any], T], request: object) -> T:
    """Make a unary call, its failure raised as a :class:`DicomRpcError`."""
    try:
        return method(request)
    except grpc.RpcError as error:
        raise DicomRpcError.from_rpc_error(error) from None


async def call_unary_async(method: Callable[[Any], Awaitable[T]], request: object) -> T:
    """Make a grpc.aio unary call, its failure raised as a :class:`DicomRpcError`."""
    try:
        return await method(request)
    except grpc.RpcError as error:
        raise DicomRpcError.from_rpc_error(error) from None


def read_stream(messages: Iterable[T]) -> Iterator[T]:
    """Iterate a server stream, its failure raised as a :class:`DicomRpcError`."""
    try:
        yield from messages
    except grpc.RpcError as error:
        raise DicomRpcError.from_rpc_error(error) from None


async def read_stream_async(messages: AsyncIterable[T]) -> AsyncIterator[T]:
    """Iterate a grpc.aio server stream, its failure raised as a :class:`DicomRpcError`."""
    try:
        async for message in messages:
            yield message
    except grpc.RpcError as error:
        raise DicomRpcError.from_rpc_error(error) from None
