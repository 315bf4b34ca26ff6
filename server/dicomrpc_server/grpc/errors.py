"""The one mapping from core errors to gRPC statuses with ``google.rpc`` details."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, NoReturn

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


UNREAD_LIMIT_BYTES = 8 * 1024 * 1024
"""How much of a request stream the server reads on, at most, before ending the call early."""

UNREAD_LIMIT_S = 2.0
"""How long the server reads on, at most, before ending a request stream's call early."""


async def abort(
    context: grpc.aio.ServicerContext,
    error: ServiceError,
    unread: AsyncIterator[Any] | None = None,
) -> NoReturn:
    """End the call with ``error``; never returns (``abort_with_status`` raises).

    ``unread`` is the call's request stream when the call ends before the client finished
    sending it: a store refused for its token, or stopped by a bad instance. It is read to its
    end first, within :data:`UNREAD_LIMIT_BYTES` and :data:`UNREAD_LIMIT_S`. The asyncio client
    of grpcio reports a status that arrives while it is still writing as INTERNAL ("Internal
    error from Core"), losing the code, message and details the server sent (and with them the
    token refusal its interceptors act on); reading on lets a request of reasonable size finish,
    so that every client sees the error. Past the bounds the call ends anyway: a refused caller
    cannot make the server read an upload whole.
    """
    if unread is not None:
        await read_on(unread, UNREAD_LIMIT_BYTES, UNREAD_LIMIT_S)
    await context.abort_with_status(to_status(error))
    raise AssertionError("abort_with_status returned")


async def read_on(requests: AsyncIterator[Any], limit_bytes: int, limit_s: float) -> None:
    """Read and drop the rest of ``requests``, up to ``limit_bytes`` or ``limit_s`` seconds.

    A message that fails to read (one that cannot be parsed, say) ends the reading, as the
    bounds do: the caller ends the call either way.
    """
    seen = 0
    try:
        async with asyncio.timeout(limit_s):
            async for request in requests:
                seen += request.nbytes if isinstance(request, memoryview) else request.ByteSize()
                if seen > limit_bytes:
                    return
    except (TimeoutError, ServiceError):
        return
