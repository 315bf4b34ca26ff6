"""The one mapping from core errors to gRPC statuses with ``google.rpc`` details."""

from __future__ import annotations

from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from dicomrpc_server.errors import Code, ServiceError

DOMAIN = "dicomrpc"

GRPC_CODES: dict[Code, grpc.StatusCode] = {code: grpc.StatusCode[code.value] for code in Code}


def to_status(error: ServiceError) -> grpc.Status:
    """Build the gRPC status of ``error``: code, message, ErrorInfo and BadRequest details."""
    metadata = dict(error.metadata)
    if error.dicom_status is not None:
        metadata["dicom_status"] = str(error.dicom_status)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=metadata)
    details = [info]
    if error.violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in error.violations
                ]
            )
        )
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    status = status_pb2.Status(
        code=getattr(code_pb2, error.code.value),
        message=error.message,
        details=packed,
    )
    return rpc_status.to_status(status)


async def abort(context: grpc.aio.ServicerContext, error: ServiceError) -> NoReturn:
    """End the call with ``error``; never returns (``abort_with_status`` raises)."""
    await context.abort_with_status(to_status(error))
    raise AssertionError("abort_with_status returned")
