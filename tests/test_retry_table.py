"""Every RPC of the API is placed in the SDK's retry table, once, as what it is.

``dicomrpc.retries`` names the calls gRPC may try again and those it gets a deadline for; an
RPC added to the protos without a place there would silently get neither.
"""

from __future__ import annotations

from google.protobuf.descriptor import MethodDescriptor

from dicomrpc import retries
from dicomrpc.v1 import (
    management_service_pb2,
    retrieve_service_pb2,
    search_service_pb2,
    store_service_pb2,
    workitem_service_pb2,
)

# Client streams: never retried (the stream may have landed) and without a deadline (a study's
# store takes as long as it takes).
CLIENT_STREAMS = {("StoreService", "StoreInstances")}


def _methods() -> dict[tuple[str, str], MethodDescriptor]:
    modules = (
        management_service_pb2,
        retrieve_service_pb2,
        search_service_pb2,
        store_service_pb2,
        workitem_service_pb2,
    )
    return {
        (service.name, method.name): method
        for module in modules
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }


def _placed(table: dict[str, tuple[str, ...]]) -> set[tuple[str, str]]:
    return {(service, method) for service, names in table.items() for method in names}


def test_every_rpc_has_one_place_in_the_retry_table() -> None:
    methods = _methods()
    places = [
        _placed(retries.IDEMPOTENT_UNARY),
        _placed(retries.IDEMPOTENT_STREAMS),
        _placed(retries.ONCE_UNARY),
        CLIENT_STREAMS,
    ]
    placed = [name for place in places for name in place]
    assert sorted(placed) == sorted(set(placed)), "an RPC is placed twice"
    assert set(placed) == set(methods), (
        f"not placed: {sorted(set(methods) - set(placed))}; "
        f"not RPCs: {sorted(set(placed) - set(methods))}"
    )


def test_each_place_holds_calls_of_its_shape() -> None:
    methods = _methods()
    for name in _placed(retries.IDEMPOTENT_UNARY) | _placed(retries.ONCE_UNARY):
        assert not methods[name].client_streaming and not methods[name].server_streaming, name
    for name in _placed(retries.IDEMPOTENT_STREAMS):
        assert methods[name].server_streaming and not methods[name].client_streaming, name
    for name in CLIENT_STREAMS:
        assert methods[name].client_streaming, name
