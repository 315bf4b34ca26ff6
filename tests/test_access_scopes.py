"""The one access table covers every RPC of the protos and every route of the gateway."""

from __future__ import annotations

import importlib
import pkgutil

from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from starlette.routing import Route

import dicomrpc.v1
from dicomrpc_server.access.scopes import OPEN, ROUTE_SCOPES, RPC_SCOPES, SCOPES, route_scope
from dicomrpc_server.dicomweb.app import RESOURCE_ROUTES


def proto_methods() -> set[str]:
    """Every method of every service in the API's descriptors, health and reflection."""
    modules = [
        importlib.import_module(f"dicomrpc.v1.{info.name}")
        for info in pkgutil.iter_modules(dicomrpc.v1.__path__)
        if info.name.endswith("_pb2")
    ]
    methods = set()
    for module in [*modules, health_pb2, reflection_pb2]:
        for service in module.DESCRIPTOR.services_by_name.values():
            methods |= {f"/{service.full_name}/{m.name}" for m in service.methods}
    return methods


def gateway_routes() -> set[tuple[str, str]]:
    """Every (method, template) the gateway serves (HEAD comes with GET)."""
    return {
        (method, route.path)
        for resource in RESOURCE_ROUTES
        for route in resource
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }


def test_every_rpc_has_exactly_its_entry() -> None:
    methods = proto_methods()
    assert len(methods) > 30
    assert sorted(methods - set(RPC_SCOPES)) == [], "RPCs without an access entry"
    assert sorted(set(RPC_SCOPES) - methods) == [], "access entries of RPCs that do not exist"


def test_every_route_has_exactly_its_entry() -> None:
    routes = gateway_routes()
    assert len(routes) > 20
    assert sorted(routes - set(ROUTE_SCOPES)) == [], "routes without an access entry"
    assert sorted(set(ROUTE_SCOPES) - routes) == [], "access entries of routes that do not exist"


def test_entries_name_real_scopes_and_only_health_is_open() -> None:
    for entry in [*RPC_SCOPES.values(), *ROUTE_SCOPES.values()]:
        assert entry in SCOPES | {OPEN}
    assert {m for m, s in RPC_SCOPES.items() if s == OPEN} == {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.health.v1.Health/List",
    }
    assert OPEN not in ROUTE_SCOPES.values()
    assert RPC_SCOPES["/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"] == "admin"
    assert route_scope("HEAD", "/studies/{study}") == "dicom.read"
