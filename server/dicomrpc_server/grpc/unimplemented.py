"""RPCs that land in later releases: they answer UNIMPLEMENTED, with details.

Registering them now keeps the whole API visible (reflection lists it, clients can be
generated against it) and gives callers a precise status instead of a missing service.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from dicomrpc_server.errors import Code, ServiceError
from dicomrpc_server.grpc.errors import to_status

# Every service of the API is served now; a service added to the protos before its
# implementation is listed here.
PENDING_SERVICES: list[ServiceDescriptor] = []


def unimplemented_handler(service: ServiceDescriptor) -> grpc.GenericRpcHandler:
    """A handler answering every RPC of ``service`` with UNIMPLEMENTED."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        name = f"{service.full_name}.{method.name}"

        async def answer(request: Any, context: Any, name: str = name) -> None:
            error = ServiceError(
                Code.UNIMPLEMENTED,
                "INTERNAL_FAILURE",
                f"{name} is not implemented by this server yet",
                metadata={"method": name},
            )
            await context.abort_with_status(to_status(error))

        if method.client_streaming:
            handlers[method.name] = (
                grpc.stream_stream_rpc_method_handler(answer)
                if method.server_streaming
                else grpc.stream_unary_rpc_method_handler(answer)
            )
        else:
            handlers[method.name] = (
                grpc.unary_stream_rpc_method_handler(answer)
                if method.server_streaming
                else grpc.unary_unary_rpc_method_handler(answer)
            )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
