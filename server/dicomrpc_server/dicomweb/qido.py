"""QIDO-RS: studies, series and instances by their attributes (PS3.18 §10.6).

Query parameters translate one to one onto a search core request: ``includefield``,
``limit``, ``offset`` and ``fuzzymatching`` are the request's options, every other parameter
is a match term (by keyword or tag) that the core checks and names when it is bad. Each result
is the core's, plus its RetrieveURL on this gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomrpc.datasets import to_json
from dicomrpc_server.dicomweb import dicom_json
from dicomrpc_server.dicomweb.context import archive_of, service_root
from dicomrpc_server.dicomweb.media import choose_json, negotiated
from dicomrpc_server.errors import invalid_argument
from dicomrpc_server.paths import instance_path, series_path, study_path
from dicomrpc_server.query.engine import SearchCore, SearchRequest

_OPTIONS = ("includefield", "limit", "offset", "fuzzymatching")
_MAX_DIGITS = 18
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"


def _integer(name: str, value: str) -> int:
    # ASCII digits only: str.isdigit() also takes '²' and other scripts' digits, which int()
    # then refuses. More than 18 digits is past any index (and int() refuses 4300).
    shown = repr(value) if len(value) <= 40 else f"{value[:40]!r}..."
    if not (value.isascii() and value.isdigit()):
        raise invalid_argument(name, f"{shown} is not a non-negative whole number")
    digits = value.lstrip("0")
    if len(digits) > _MAX_DIGITS:
        raise invalid_argument(name, f"{shown} has {len(digits)} digits, more than {_MAX_DIGITS}")
    return int(digits or "0")


def _boolean(name: str, value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise invalid_argument(name, f"{value!r} is not true or false")
    return value.lower() == "true"


@dataclass(frozen=True)
class QueryParameters:
    """The query parameters of a search URL: match terms, returned attributes and the page.

    QIDO-RS and UPS-RS search (PS3.18 §8.3.4) share them, so both resources read them here.
    """

    match: dict[str, str]
    include_fields: list[str]
    fuzzy: bool
    limit: int
    offset: int


def query_parameters(request: Request) -> QueryParameters:
    """The search parameters of a request's query string; a bad one is named (400)."""
    match: dict[str, str] = {}
    include: list[str] = []
    options: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        key = name.lower()
        if key == "includefield":
            include.extend(field.strip() for field in value.split(",") if field.strip())
        elif key in _OPTIONS:
            options[key] = value
        elif name in match:
            raise invalid_argument(name, "is given more than once")
        else:
            match[name] = value
    return QueryParameters(
        match=match,
        include_fields=include,
        fuzzy=_boolean("fuzzymatching", options.get("fuzzymatching", "false")),
        limit=_integer("limit", options.get("limit", "0")),
        offset=_integer("offset", options.get("offset", "0")),
    )


def search_request(request: Request, level: str) -> SearchRequest:
    """The search core request a QIDO URL asks for."""
    params = query_parameters(request)
    return SearchRequest(
        level=level,
        match=params.match,
        include_fields=params.include_fields,
        fuzzy=params.fuzzy,
        limit=params.limit,
        offset=params.offset,
        study_uid=request.path_params.get("study", ""),
        series_uid=request.path_params.get("series", ""),
    )


async def _search(request: Request, level: str) -> Response:
    """Run a search and write its page, both in a thread.

    Matching scans index ranges and a page may hold a thousand results: the time grows with
    the archive and the page, so the event loop serves other requests meanwhile.
    """
    media_type = await negotiated(choose_json, request.headers.get("accept"))
    body = await asyncio.to_thread(
        _results_json,
        archive_of(request).search,
        search_request(request, level),
        service_root(request),
        dict(request.path_params),
    )
    if body is None:
        return Response(status_code=204)
    return Response(body, media_type=media_type)


def _results_json(
    core: SearchCore, search: SearchRequest, root: str, path: Mapping[str, str]
) -> bytes | None:
    """The page of a search as DICOM JSON, each result with its RetrieveURL (None if empty)."""
    page = core.search(search)
    if not page.results:
        return None
    results = []
    for dataset in page.results:
        obj = to_json(dataset)
        url = _retrieve_url(obj, search.level, path)
        if url:
            obj["00081190"] = {"vr": "UR", "Value": [f"{root}/{url}"]}
        results.append(obj)
    return dicom_json.encode(results)


def _first(obj: dict[str, Any], tag: str) -> str:
    values = obj.get(tag, {}).get("Value", [])
    return str(values[0]) if values else ""


def _retrieve_url(obj: dict[str, Any], level: str, path: Mapping[str, str]) -> str:
    """The WADO-RS path of a result (PS3.18 §10.6.3.3: its RetrieveURL), when its UIDs are known.

    A result may leave out the UIDs its scope already names (a series search in a study), so
    the path's UIDs stand in for them.
    """
    study = _first(obj, STUDY_UID) or path.get("study", "")
    series = _first(obj, SERIES_UID) or path.get("series", "")
    sop = _first(obj, SOP_UID)
    if not study:
        return ""
    if level == "study":
        return study_path(study)
    if not series:
        return ""
    if level == "series":
        return series_path(study, series)
    return instance_path(study, series, sop) if sop else ""


async def search_studies(request: Request) -> Response:
    """Search studies."""
    return await _search(request, "study")


async def search_series(request: Request) -> Response:
    """Search series, everywhere or in one study."""
    return await _search(request, "series")


async def search_instances(request: Request) -> Response:
    """Search instances, everywhere, in a study or in a series."""
    return await _search(request, "instance")


ROUTES = [
    Route("/studies", search_studies, methods=["GET"]),
    Route("/series", search_series, methods=["GET"]),
    Route("/instances", search_instances, methods=["GET"]),
    Route("/studies/{study}/series", search_series, methods=["GET"]),
    Route("/studies/{study}/instances", search_instances, methods=["GET"]),
    Route("/studies/{study}/series/{series}/instances", search_instances, methods=["GET"]),
]
