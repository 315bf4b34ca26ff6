"""The one table of what is audited: every RPC and every DICOMweb route → action + what to read.

Both adapters' hooks look a call up here and nowhere else. An entry says what the call does and
where the record's subjects come from:

- ``uids``: the study / series / instance / workitem UIDs the request names (gRPC request
  fields ``study_instance_uid``, ``series_instance_uid``, ``sop_instance_uid``,
  ``workitem_uid``; HTTP path parameters ``study``, ``series``, ``instance``, ``workitem``);
- ``query``: the request's parameters (the gRPC request's match terms and other fields; the
  HTTP query string);
- ``results``: what the call produced (the instances a store stored, from its results; the
  workitem a create made, from its response).

A call in none of the tables is not audited: the test of this table fails for any RPC or route
that is missing and not exempted below (health checking, reflection, capabilities, the
console's counts).
"""

from __future__ import annotations

from dataclasses import dataclass

from dicomrpc_server.audit.records import Action


@dataclass(frozen=True)
class Entry:
    """What one RPC or route does, and where its record's subjects are read from."""

    action: Action
    uids: bool = True
    query: bool = False
    results: bool = False


_STORE = "/dicomrpc.v1.StoreService/"
_RETRIEVE = "/dicomrpc.v1.RetrieveService/"
_SEARCH = "/dicomrpc.v1.SearchService/"
_MANAGEMENT = "/dicomrpc.v1.ManagementService/"
_WORKITEMS = "/dicomrpc.v1.WorkitemService/"

GRPC: dict[str, Entry] = {
    _STORE + "StoreInstances": Entry(Action.STORE, uids=False, results=True),
    _RETRIEVE + "RetrieveStudy": Entry(Action.RETRIEVE),
    _RETRIEVE + "RetrieveSeries": Entry(Action.RETRIEVE),
    _RETRIEVE + "RetrieveInstance": Entry(Action.RETRIEVE),
    _RETRIEVE + "RetrieveFrames": Entry(Action.FRAMES),
    _RETRIEVE + "RetrieveRendered": Entry(Action.RENDERED),
    _RETRIEVE + "RetrieveStudyMetadata": Entry(Action.METADATA),
    _RETRIEVE + "RetrieveSeriesMetadata": Entry(Action.METADATA),
    _RETRIEVE + "RetrieveInstanceMetadata": Entry(Action.METADATA),
    # A grant is audited as the retrieve it authorizes; the read it then makes over HTTP is
    # audited again by the gateway, under the same identity.
    _RETRIEVE + "GetRetrieveUrl": Entry(Action.RETRIEVE),
    _SEARCH + "SearchStudies": Entry(Action.SEARCH, query=True),
    _SEARCH + "SearchSeries": Entry(Action.SEARCH, query=True),
    _SEARCH + "SearchInstances": Entry(Action.SEARCH, query=True),
    _MANAGEMENT + "DeleteStudy": Entry(Action.DELETE),
    _MANAGEMENT + "DeleteSeries": Entry(Action.DELETE),
    _MANAGEMENT + "DeleteInstance": Entry(Action.DELETE),
    _MANAGEMENT + "ReadChangeFeed": Entry(Action.FEED_READ, uids=False, query=True),
    _MANAGEMENT + "GetLatestChange": Entry(Action.FEED_READ, uids=False),
    _MANAGEMENT + "WatchChangeFeed": Entry(Action.FEED_READ, uids=False, query=True),
    _MANAGEMENT + "AddExtendedQueryTags": Entry(Action.ADMIN, uids=False),
    _MANAGEMENT + "ListExtendedQueryTags": Entry(Action.ADMIN, uids=False),
    _MANAGEMENT + "DeleteExtendedQueryTag": Entry(Action.ADMIN, uids=False, query=True),
    _MANAGEMENT + "GetReindexStatus": Entry(Action.ADMIN, uids=False, query=True),
    _MANAGEMENT + "ListDimsePeers": Entry(Action.ADMIN, uids=False),
    _MANAGEMENT + "AddDimsePeer": Entry(Action.ADMIN, uids=False, query=True),
    _MANAGEMENT + "RemoveDimsePeer": Entry(Action.ADMIN, uids=False, query=True),
    _WORKITEMS + "CreateWorkitem": Entry(Action.WORKITEM_CREATE, results=True),
    _WORKITEMS + "RetrieveWorkitem": Entry(Action.WORKITEM_RETRIEVE),
    _WORKITEMS + "UpdateWorkitem": Entry(Action.WORKITEM_UPDATE),
    _WORKITEMS + "ChangeWorkitemState": Entry(Action.WORKITEM_STATE),
    _WORKITEMS + "RequestWorkitemCancellation": Entry(Action.WORKITEM_CANCEL_REQUEST),
    _WORKITEMS + "SearchWorkitems": Entry(Action.WORKITEM_SEARCH, query=True),
    _WORKITEMS + "SubscribeWorkitems": Entry(Action.WORKITEM_SUBSCRIBE, query=True),
}

# Calls that touch no patient data and change nothing: never audited.
GRPC_EXEMPT_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)
GRPC_EXEMPT = frozenset({_MANAGEMENT + "GetCapabilities"})

_STUDY = "/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"

# (HTTP method, route template under the DICOMweb prefix) → entry.
HTTP: dict[tuple[str, str], Entry] = {
    ("POST", "/studies"): Entry(Action.STORE, uids=False, results=True),
    ("POST", _STUDY): Entry(Action.STORE, uids=False, results=True),
    ("GET", "/studies"): Entry(Action.SEARCH, query=True),
    ("GET", "/series"): Entry(Action.SEARCH, query=True),
    ("GET", "/instances"): Entry(Action.SEARCH, query=True),
    ("GET", _STUDY + "/series"): Entry(Action.SEARCH, query=True),
    ("GET", _STUDY + "/instances"): Entry(Action.SEARCH, query=True),
    ("GET", _SERIES + "/instances"): Entry(Action.SEARCH, query=True),
    ("GET", _STUDY): Entry(Action.RETRIEVE),
    ("GET", _SERIES): Entry(Action.RETRIEVE),
    ("GET", _INSTANCE): Entry(Action.RETRIEVE),
    ("GET", _STUDY + "/metadata"): Entry(Action.METADATA),
    ("GET", _SERIES + "/metadata"): Entry(Action.METADATA),
    ("GET", _INSTANCE + "/metadata"): Entry(Action.METADATA),
    ("GET", _INSTANCE + "/frames/{frames}"): Entry(Action.FRAMES),
    ("GET", _INSTANCE + "/rendered"): Entry(Action.RENDERED),
    ("GET", _INSTANCE + "/frames/{frame}/rendered"): Entry(Action.RENDERED),
    ("GET", _INSTANCE + "/bulkdata/{path}"): Entry(Action.BULKDATA),
    ("DELETE", _STUDY): Entry(Action.DELETE),
    ("DELETE", _SERIES): Entry(Action.DELETE),
    ("DELETE", _INSTANCE): Entry(Action.DELETE),
    ("POST", "/workitems"): Entry(Action.WORKITEM_CREATE, uids=False, results=True),
    ("GET", "/workitems"): Entry(Action.WORKITEM_SEARCH, query=True),
    ("GET", "/workitems/{workitem}"): Entry(Action.WORKITEM_RETRIEVE),
    ("POST", "/workitems/{workitem}"): Entry(Action.WORKITEM_UPDATE),
    ("PUT", "/workitems/{workitem}/state"): Entry(Action.WORKITEM_STATE),
    ("POST", "/workitems/{workitem}/cancelrequest"): Entry(Action.WORKITEM_CANCEL_REQUEST),
}

# Routes that touch no patient data and change nothing (none yet).
HTTP_EXEMPT: frozenset[tuple[str, str]] = frozenset()

# The console's API (below ``/console/api``): the reads its pages make beside DICOMweb, each the
# same action as the RPC that serves the same thing (``ReadChangeFeed`` / ``WatchChangeFeed``,
# ``SubscribeWorkitems`` of every workitem, ``ListExtendedQueryTags``).
CONSOLE: dict[tuple[str, str], Entry] = {
    ("GET", "/changes"): Entry(Action.FEED_READ, uids=False, query=True),
    ("GET", "/changes/stream"): Entry(Action.FEED_READ, uids=False, query=True),
    ("GET", "/workitems/stream"): Entry(Action.WORKITEM_SUBSCRIBE, uids=False, query=True),
    ("GET", "/query-tags"): Entry(Action.ADMIN, uids=False),
}

# Console routes that touch no patient data and change nothing: the archive's counts.
CONSOLE_EXEMPT: frozenset[tuple[str, str]] = frozenset({("GET", "/statistics")})
