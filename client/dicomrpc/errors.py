"""The SDK's typed error, decoded from a gRPC status and its ``google.rpc`` details."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass
class DicomRpcError(Exception):
    """A failed call.

    Attributes
    ----------
    code
        The gRPC status code.
    message
        The server's explanation.
    reason
        The stable reason (an ``ErrorReason`` name, e.g. ``"INSTANCE_ALREADY_EXISTS"``).
    dicom_status
        The DICOM status or reason code, when the standard defines one.
    metadata
        The error's dynamic values.
    field_violations
        ``(field, description)`` of each bad request field.
    """

    code: grpc.StatusCode
    message: str
    reason: str = ""
    dicom_status: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        tail = f" [{self.reason}]" if self.reason else ""
        return f"{self.code.name}: {self.message}{tail}"

    @property
    def details(self) -> str:
        """The server's explanation (as ``grpc.RpcError.details()`` would give it)."""
        return self.message

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
        if status is None:
            return result
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                result.reason = info.reason
                result.metadata = dict(info.metadata)
                if "dicom_status" in info.metadata:
                    result.dicom_status = int(info.metadata["dicom_status"])
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                result.field_violations = [(v.field, v.description) for v in bad.field_violations]
        return result
