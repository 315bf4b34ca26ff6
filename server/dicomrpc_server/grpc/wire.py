"""Registering the byte-moving services with chunk-aware serializers (see ``dicomrpc.wire``).

The generated ``add_*Servicer_to_server`` functions hard-wire protobuf's serializers. The store
and retrieve services are registered here instead, from the same service descriptors, so that a
servicer may yield chunks already encoded (``bytes``) and receive bare chunks as memoryviews.
Every other service keeps its generated registration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from dicomrpc.wire import chunk_or_message, serialize


def add_chunked_servicer(
    server: grpc.aio.Server,
    servicer: object,
    service: ServiceDescriptor,
    messages: ModuleType,
    chunk_fields: Mapping[str, int] | None = None,
) -> None:
    """Register every method of ``service`` on ``server``, served by ``servicer``.

    Parameters
    ----------
    server
        The server to register on.
    servicer
        Has a method per RPC of the service, named as in the ``.proto`` file.
    service
        The service's descriptor (``*_pb2.DESCRIPTOR.services_by_name[...]``).
    messages
        The generated ``*_pb2`` module holding the service's request messages.
    chunk_fields
        Method name → the bytes field of its request messages that is delivered as a
        memoryview when a message holds nothing else.
    """
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        request_type = getattr(messages, method.input_type.name)
        field = (chunk_fields or {}).get(method.name)
        deserializer: Callable[[bytes], Any] = (
            request_type.FromString if field is None else chunk_or_message(request_type, field)
        )
        behaviour = getattr(servicer, method.name)
        if method.client_streaming and method.server_streaming:
            make = grpc.stream_stream_rpc_method_handler
        elif method.client_streaming:
            make = grpc.stream_unary_rpc_method_handler
        elif method.server_streaming:
            make = grpc.unary_stream_rpc_method_handler
        else:
            make = grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(
            behaviour, request_deserializer=deserializer, response_serializer=serialize
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)
