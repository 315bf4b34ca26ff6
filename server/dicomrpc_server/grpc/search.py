"""SearchService: QIDO requests translated onto the search core."""

from __future__ import annotations

import asyncio
from typing import Any

from dicomrpc.v1 import search_service_pb2 as pb
from dicomrpc.v1 import search_service_pb2_grpc
from dicomrpc_server.errors import ServiceError
from dicomrpc_server.grpc.errors import abort
from dicomrpc_server.query.engine import SearchCore, SearchPage, SearchRequest


def _request(level: str, query: pb.SearchQuery, study: str = "", series: str = "") -> SearchRequest:
    return SearchRequest(
        level=level,
        match=dict(query.match),
        include_fields=list(query.include_fields),
        fuzzy=query.fuzzy_matching,
        limit=query.limit,
        offset=query.offset,
        page_size=query.page_size,
        page_token=query.page_token,
        study_uid=study,
        series_uid=series,
    )


class SearchServicer(search_service_pb2_grpc.SearchServiceServicer):
    """Studies, series and instances by their attributes, one page per call."""

    def __init__(self, core: SearchCore) -> None:
        self._core = core

    async def _search(self, context: Any, request: SearchRequest) -> SearchPage:
        # Matching and building a page take time that grows with the archive and the page:
        # off the event loop, so that other calls are served meanwhile.
        try:
            return await asyncio.to_thread(self._core.search, request)
        except ServiceError as error:
            await abort(context, error)

    async def SearchStudies(
        self, request: pb.SearchStudiesRequest, context: Any
    ) -> pb.SearchStudiesResponse:
        """Search studies."""
        page = await self._search(context, _request("study", request.query))
        return pb.SearchStudiesResponse(results=page.results, next_page_token=page.next_page_token)

    async def SearchSeries(
        self, request: pb.SearchSeriesRequest, context: Any
    ) -> pb.SearchSeriesResponse:
        """Search series, in every study or in one."""
        page = await self._search(
            context, _request("series", request.query, request.study_instance_uid)
        )
        return pb.SearchSeriesResponse(results=page.results, next_page_token=page.next_page_token)

    async def SearchInstances(
        self, request: pb.SearchInstancesRequest, context: Any
    ) -> pb.SearchInstancesResponse:
        """Search instances, everywhere, in a study, or in a series."""
        page = await self._search(
            context,
            _request(
                "instance",
                request.query,
                request.study_instance_uid,
                request.series_instance_uid,
            ),
        )
        return pb.SearchInstancesResponse(
            results=page.results, next_page_token=page.next_page_token
        )
