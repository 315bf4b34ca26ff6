"""The scopes, and the one table of what every RPC and every HTTP route needs.

Every method of the gRPC services (``/package.Service/Method``) and every DICOMweb route
(HTTP method and path template under ``/dicomweb``, or under ``/console/api`` for the
console's own reads) has exactly one entry: a scope the caller
must hold, or :data:`OPEN` (health checks, answered without credentials). Both adapters refuse
what has no entry, and a test enumerates the proto descriptors and the gateway's routes and
fails when one is missing here, so a new RPC or route cannot go out unguarded.
"""

from __future__ import annotations

from collections.abc import Mapping

READ = "dicom.read"
"""Search, retrieve, metadata, frames, rendered, bulk data, the change feed, capabilities."""
WRITE = "dicom.write"
"""Store instances."""
DELETE = "dicom.delete"
"""Delete studies, series and instances."""
WORKITEMS_READ = "workitems.read"
"""Retrieve, search and watch workitems."""
WORKITEMS_WRITE = "workitems.write"
"""Create, update, claim, complete and cancel workitems, and request cancellations."""
ADMIN = "admin"
"""Extended query tags and re-indexing, and server reflection."""

SCOPES: frozenset[str] = frozenset({READ, WRITE, DELETE, WORKITEMS_READ, WORKITEMS_WRITE, ADMIN})
"""Every scope a caller may hold."""

OPEN = "open"
"""The entry of what answers without credentials."""

AUTHENTICATED = "authenticated"
"""What any authenticated caller reaches: HTTP paths that match no route (404, 405)."""

_STORE = "/dicomrpc.v1.StoreService/"
_RETRIEVE = "/dicomrpc.v1.RetrieveService/"
_SEARCH = "/dicomrpc.v1.SearchService/"
_MANAGEMENT = "/dicomrpc.v1.ManagementService/"
_WORKITEM = "/dicomrpc.v1.WorkitemService/"

RPC_SCOPES: Mapping[str, str] = {
    _STORE + "StoreInstances": WRITE,
    _RETRIEVE + "RetrieveStudy": READ,
    _RETRIEVE + "RetrieveSeries": READ,
    _RETRIEVE + "RetrieveInstance": READ,
    _RETRIEVE + "RetrieveFrames": READ,
    _RETRIEVE + "RetrieveRendered": READ,
    _RETRIEVE + "RetrieveStudyMetadata": READ,
    _RETRIEVE + "RetrieveSeriesMetadata": READ,
    _RETRIEVE + "RetrieveInstanceMetadata": READ,
    _RETRIEVE + "GetRetrieveUrl": READ,
    _SEARCH + "SearchStudies": READ,
    _SEARCH + "SearchSeries": READ,
    _SEARCH + "SearchInstances": READ,
    _MANAGEMENT + "DeleteStudy": DELETE,
    _MANAGEMENT + "DeleteSeries": DELETE,
    _MANAGEMENT + "DeleteInstance": DELETE,
    _MANAGEMENT + "ReadChangeFeed": READ,
    _MANAGEMENT + "GetLatestChange": READ,
    _MANAGEMENT + "WatchChangeFeed": READ,
    _MANAGEMENT + "AddExtendedQueryTags": ADMIN,
    _MANAGEMENT + "ListExtendedQueryTags": ADMIN,
    _MANAGEMENT + "DeleteExtendedQueryTag": ADMIN,
    _MANAGEMENT + "GetReindexStatus": ADMIN,
    _MANAGEMENT + "GetCapabilities": READ,
    _MANAGEMENT + "ListDimsePeers": ADMIN,
    _MANAGEMENT + "AddDimsePeer": ADMIN,
    _MANAGEMENT + "RemoveDimsePeer": ADMIN,
    _WORKITEM + "CreateWorkitem": WORKITEMS_WRITE,
    _WORKITEM + "RetrieveWorkitem": WORKITEMS_READ,
    _WORKITEM + "UpdateWorkitem": WORKITEMS_WRITE,
    _WORKITEM + "ChangeWorkitemState": WORKITEMS_WRITE,
    _WORKITEM + "RequestWorkitemCancellation": WORKITEMS_WRITE,
    _WORKITEM + "SearchWorkitems": WORKITEMS_READ,
    _WORKITEM + "SubscribeWorkitems": WORKITEMS_READ,
    "/grpc.health.v1.Health/Check": OPEN,
    "/grpc.health.v1.Health/Watch": OPEN,
    "/grpc.health.v1.Health/List": OPEN,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": ADMIN,
}
"""gRPC method full name → the scope it needs."""

_STUDY = "/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"

ROUTE_SCOPES: Mapping[tuple[str, str], str] = {
    # STOW-RS
    ("POST", "/studies"): WRITE,
    ("POST", _STUDY): WRITE,
    # QIDO-RS
    ("GET", "/studies"): READ,
    ("GET", "/series"): READ,
    ("GET", "/instances"): READ,
    ("GET", _STUDY + "/series"): READ,
    ("GET", _STUDY + "/instances"): READ,
    ("GET", _SERIES + "/instances"): READ,
    # WADO-RS
    ("GET", _STUDY): READ,
    ("GET", _SERIES): READ,
    ("GET", _INSTANCE): READ,
    ("GET", _STUDY + "/metadata"): READ,
    ("GET", _SERIES + "/metadata"): READ,
    ("GET", _INSTANCE + "/metadata"): READ,
    ("GET", _INSTANCE + "/frames/{frames}"): READ,
    ("GET", _INSTANCE + "/rendered"): READ,
    ("GET", _INSTANCE + "/frames/{frame}/rendered"): READ,
    ("GET", _INSTANCE + "/bulkdata/{path}"): READ,
    # Delete
    ("DELETE", _STUDY): DELETE,
    ("DELETE", _SERIES): DELETE,
    ("DELETE", _INSTANCE): DELETE,
    # UPS-RS
    ("POST", "/workitems"): WORKITEMS_WRITE,
    ("GET", "/workitems"): WORKITEMS_READ,
    ("GET", "/workitems/{workitem}"): WORKITEMS_READ,
    ("POST", "/workitems/{workitem}"): WORKITEMS_WRITE,
    ("PUT", "/workitems/{workitem}/state"): WORKITEMS_WRITE,
    ("POST", "/workitems/{workitem}/cancelrequest"): WORKITEMS_WRITE,
}
"""(HTTP method, path template under ``/dicomweb``) → the scope it needs; HEAD is GET's."""

CONSOLE_ROUTE_SCOPES: Mapping[tuple[str, str], str] = {
    # The console's own reads (docs: README, "Console"); its pages use DICOMweb for the rest.
    ("GET", "/statistics"): READ,
    ("GET", "/changes"): READ,
    ("GET", "/changes/stream"): READ,
    ("GET", "/workitems/stream"): WORKITEMS_READ,
    ("GET", "/query-tags"): ADMIN,
}
"""(HTTP method, path template under ``/console/api``) → the scope it needs; HEAD is GET's."""


def rpc_scope(method: str) -> str | None:
    """The scope a gRPC method needs, :data:`OPEN`, or ``None`` when it has no entry."""
    return RPC_SCOPES.get(method)


def route_scope(method: str, template: str) -> str | None:
    """The scope an HTTP route needs, :data:`OPEN`, or ``None`` when it has no entry."""
    return ROUTE_SCOPES.get(("GET" if method == "HEAD" else method, template))


def console_route_scope(method: str, template: str) -> str | None:
    """The scope a route of the console's API needs, or ``None`` when it has no entry."""
    return CONSOLE_ROUTE_SCOPES.get(("GET" if method == "HEAD" else method, template))
