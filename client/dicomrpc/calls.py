"""The requests of the SDK's calls and the decoding of their answers, for both clients.

:class:`~dicomrpc.Client` and :class:`~dicomrpc.AsyncClient` differ only in how they wait:
what a call sends and what its answer means is written here once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import grpc

from dicomrpc.errors import DicomRpcError
from dicomrpc.results import Change
from dicomrpc.retrieval import SearchResult
from dicomrpc.v1 import management_service_pb2 as mpb
from dicomrpc.v1 import retrieve_service_pb2 as rpb
from dicomrpc.v1 import search_service_pb2 as spb

STORE_INSTANCES = "/dicomrpc.v1.StoreService/StoreInstances"
RETRIEVE_SERVICE = "/dicomrpc.v1.RetrieveService"
INSTANCE_DATA = rpb.RetrieveInstancesResponse.DATA_FIELD_NUMBER
FRAME_DATA = rpb.RetrieveFramesResponse.DATA_FIELD_NUMBER
T = TypeVar("T")
RETRIEVE_BYTES = ("RetrieveStudy", "RetrieveSeries", "RetrieveInstance")
"""The RPCs whose answers are instance bytes, sent as bare chunks (see dicomrpc.wire)."""

_INSTANCE_REQUESTS: dict[str, Any] = {
    "RetrieveInstance": rpb.RetrieveInstanceRequest,
    "RetrieveSeries": rpb.RetrieveSeriesRequest,
    "RetrieveStudy": rpb.RetrieveStudyRequest,
}
_METADATA_REQUESTS: dict[str, Any] = {
    "RetrieveInstanceMetadata": rpb.RetrieveInstanceMetadataRequest,
    "RetrieveSeriesMetadata": rpb.RetrieveSeriesMetadataRequest,
    "RetrieveStudyMetadata": rpb.RetrieveStudyMetadataRequest,
}


def _scope(study: str, series: str | None, sop: str | None) -> tuple[str, dict[str, str]]:
    """The level the UIDs name (``"Instance"``, ``"Series"``, ``"Study"``) and its UID fields."""
    if sop:
        return "Instance", {
            "study_instance_uid": study,
            "series_instance_uid": series or "",
            "sop_instance_uid": sop,
        }
    if series:
        return "Series", {"study_instance_uid": study, "series_instance_uid": series}
    return "Study", {"study_instance_uid": study}


def instances_request(
    study: str,
    series: str | None,
    sop: str | None,
    transfer_syntax: str,
    allow_lossy: bool,
    chunk_size: int,
) -> tuple[str, Any]:
    """The RPC name (one of :data:`RETRIEVE_BYTES`) and request of an instance retrieve."""
    level, uids = _scope(study, series, sop)
    name = f"Retrieve{level}"
    options = rpb.TransferOptions(
        transfer_syntax_uid=transfer_syntax, allow_lossy=allow_lossy, chunk_size=chunk_size
    )
    return name, _INSTANCE_REQUESTS[name](**uids, options=options)


def metadata_request(
    study: str, series: str | None, sop: str | None, if_none_match: str
) -> tuple[str, Any]:
    """The RPC name and request of a metadata retrieve."""
    level, uids = _scope(study, series, sop)
    name = f"Retrieve{level}Metadata"
    return name, _METADATA_REQUESTS[name](**uids, if_none_match=if_none_match)


def pulls_over_http(http_retrieve: bool, transfer_syntax: str, sop: str | None) -> bool:
    """Whether a retrieve asks for a signed URL first: a study or series, as stored."""
    return http_retrieve and transfer_syntax in ("", "*") and not sop


def retrieve_url_request(study: str, series: str | None, host: str) -> rpb.GetRetrieveUrlRequest:
    """The request of a signed URL for the stored bytes of a study or series."""
    return rpb.GetRetrieveUrlRequest(
        study_instance_uid=study, series_instance_uid=series or "", host=host
    )


def frames_request(
    study: str,
    series: str,
    sop: str,
    numbers: Iterable[int],
    transfer_syntax: str,
    allow_lossy: bool,
) -> rpb.RetrieveFramesRequest:
    """The request of a frames retrieve."""
    return rpb.RetrieveFramesRequest(
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop,
        frame_numbers=list(numbers),
        options=rpb.TransferOptions(transfer_syntax_uid=transfer_syntax, allow_lossy=allow_lossy),
    )


def rendered_request(
    study: str,
    series: str,
    sop: str,
    frame: int,
    media_type: str,
    quality: int,
    window: tuple[float, float] | None,
    max_size: int,
) -> rpb.RetrieveRenderedRequest:
    """The request of a rendered frame."""
    request = rpb.RetrieveRenderedRequest(
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop,
        frame_number=frame,
        format=rpb.RENDERED_FORMAT_PNG if media_type == "image/png" else rpb.RENDERED_FORMAT_JPEG,
        quality=quality,
        max_size=max_size,
    )
    if window is not None:
        request.window.center, request.window.width = window
    return request


def rendered_result(
    parts: list[rpb.RetrieveRenderedResponse], media_type: str
) -> tuple[str, bytes]:
    """The media type and image bytes of a rendered stream."""
    return (parts[0].media_type if parts else media_type), b"".join(p.data for p in parts)


def search_query(
    match: Mapping[str, str] | None,
    terms: Mapping[str, str],
    fuzzy: bool,
    include: Iterable[str],
    limit: int,
    offset: int,
    page_size: int,
    page_token: str,
) -> spb.SearchQuery:
    """The query of a study, series or instance search."""
    return spb.SearchQuery(
        match={**(match or {}), **terms},
        include_fields=list(include),
        fuzzy_matching=fuzzy,
        limit=limit,
        offset=offset,
        page_size=page_size,
        page_token=page_token,
    )


def search_result(
    response: spb.SearchStudiesResponse | spb.SearchSeriesResponse | spb.SearchInstancesResponse,
) -> SearchResult:
    """The page a search answered."""
    return SearchResult(list(response.results), response.next_page_token)


_QUERY_TAG_LEVELS = {
    "": mpb.QUERY_TAG_LEVEL_UNSPECIFIED,
    "study": mpb.QUERY_TAG_LEVEL_STUDY,
    "series": mpb.QUERY_TAG_LEVEL_SERIES,
    "instance": mpb.QUERY_TAG_LEVEL_INSTANCE,
}


def _query_tag_level(level: str) -> mpb.QueryTagLevel.ValueType:
    try:
        return _QUERY_TAG_LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"level {level!r} is not study, series or instance") from None


def query_tags_request(
    tags: Iterable[str | Mapping[str, str]], level: str
) -> mpb.AddExtendedQueryTagsRequest:
    """The request of :meth:`dicomrpc.Client.add_query_tags`.

    Raises
    ------
    ValueError
        For a mapping with fields other than ``tag``, ``vr``, ``level``, ``private_creator``,
        or a level that is not one.
    """
    request = mpb.AddExtendedQueryTagsRequest()
    for tag in tags:
        spec = {"tag": tag} if isinstance(tag, str) else dict(tag)
        unknown = set(spec) - {"tag", "vr", "level", "private_creator"}
        if unknown:
            raise ValueError(f"unknown query tag fields {sorted(unknown)}")
        request.tags.add(
            tag=spec["tag"],
            vr=spec.get("vr", ""),
            private_creator=spec.get("private_creator", ""),
            level=_query_tag_level(spec.get("level", level)),
        )
    return request


def target_host(target: str) -> str:
    """The host of a gRPC target (``pacs.example:50051``, ``dns:///[::1]:50051``), or ``""``."""
    address = target.removeprefix("dns:").lstrip("/")
    if address.startswith("["):
        return address[: address.find("]") + 1] if "]" in address else ""
    if ":" in address and not address.startswith(("unix", "ipv4", "ipv6", "vsock")):
        return address.rsplit(":", 1)[0]
    return "" if ":" in address else address


def change_of(message: mpb.WatchChangeFeedResponse) -> Change:
    """The change a change-feed watch sent."""
    return Change.from_message(message.entry)


def only_instance(found: list[T], sop: str) -> T:
    """The one instance (or file) a retrieve of ``sop`` gave.

    Raises
    ------
    DicomRpcError
        NOT_FOUND when the server sent none (it answers NOT_FOUND itself before that).
    """
    if len(found) != 1:
        raise DicomRpcError(
            grpc.StatusCode.NOT_FOUND, f"instance {sop}: the server sent {len(found)} instances"
        )
    return found[0]


def check_reindex_deadline(
    operation_id: str, deadline: float | None, timeout_s: float | None
) -> None:
    """Raise ``TimeoutError`` when a wait for re-indexing is past ``deadline``."""
    if deadline is not None and time.monotonic() > deadline:
        raise TimeoutError(f"re-indexing {operation_id} is not done after {timeout_s} s")
