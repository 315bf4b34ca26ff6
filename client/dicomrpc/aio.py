"""The asyncio SDK client: the calls of :class:`~dicomrpc.Client`, awaited.

Requests are built and answers decoded by the same functions as the sync client's
(:mod:`dicomrpc.calls`, :mod:`dicomrpc.retrieval`, :mod:`dicomrpc.workitems`), so the two never
disagree on what a call means; only the waiting differs. Disk reads and writes run in worker
threads, one chunk at a time, so the event loop never blocks on a file and memory stays
bounded.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

import grpc

from dicomrpc import calls, http_pull, retrieval
from dicomrpc.calls import (
    FRAME_DATA,
    INSTANCE_DATA,
    RETRIEVE_BYTES,
    RETRIEVE_SERVICE,
    STORE_INSTANCES,
    target_host,
)
from dicomrpc.client import ClientConfig, TlsConfig, configured
from dicomrpc.credentials import TokenProvider, aio_interceptors
from dicomrpc.errors import call_unary_async, read_stream_async
from dicomrpc.results import Capabilities, Change, DimsePeer, QueryTag, ReindexStatus, StoreResult
from dicomrpc.sources import Item, Sources, expand, requests
from dicomrpc.v1 import management_service_pb2 as mpb
from dicomrpc.v1 import (
    management_service_pb2_grpc,
    retrieve_service_pb2_grpc,
    search_service_pb2_grpc,
)
from dicomrpc.v1 import retrieve_service_pb2 as rpb
from dicomrpc.v1 import search_service_pb2 as spb
from dicomrpc.v1 import store_service_pb2 as pb
from dicomrpc.watch import AsyncWatch
from dicomrpc.wire import chunk_or_message, serialize
from dicomrpc.workitems import AsyncWorkitems

T = TypeVar("T")
InstanceMessage = rpb.RetrieveInstancesResponse | memoryview


class AsyncClient:
    """An asyncio connection to a dicomrpc server (use as ``async with``).

    Every call of :class:`~dicomrpc.Client` is here with the same arguments, awaited (the
    streams, :meth:`iter_instances` and the watches, are ``async for``). ``token``,
    ``token_provider`` (which may be async), ``tls`` and ``http_retrieve`` are those of
    :class:`~dicomrpc.Client`; so are the deadlines and retries of ``config``.
    """

    def __init__(
        self,
        target: str = "localhost:50051",
        config: ClientConfig | None = None,
        *,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
        tls: TlsConfig | None = None,
        http_retrieve: bool | None = None,
    ) -> None:
        self.target = target
        self.config = configured(config, token, token_provider, tls, http_retrieve)
        options = self.config.channel_options()
        source = self.config.token_source()
        interceptors = aio_interceptors(source) if source else None
        tls = self.config.tls
        if tls is not None:
            self.channel = grpc.aio.secure_channel(
                target, tls.credentials(), options, interceptors=interceptors
            )
        else:
            self.channel = grpc.aio.insecure_channel(target, options, interceptors=interceptors)
        self._store_instances = self.channel.stream_unary(
            STORE_INSTANCES,
            request_serializer=serialize,
            response_deserializer=pb.StoreInstancesResponse.FromString,
        )
        chunked = chunk_or_message(rpb.RetrieveInstancesResponse, INSTANCE_DATA)
        self._retrieve_bytes = {
            name: self.channel.unary_stream(
                f"{RETRIEVE_SERVICE}/{name}",
                request_serializer=serialize,
                response_deserializer=chunked,
            )
            for name in RETRIEVE_BYTES
        }
        self._retrieve_frames = self.channel.unary_stream(
            f"{RETRIEVE_SERVICE}/RetrieveFrames",
            request_serializer=serialize,
            response_deserializer=chunk_or_message(rpb.RetrieveFramesResponse, FRAME_DATA),
        )
        self._retrieve = retrieve_service_pb2_grpc.RetrieveServiceStub(self.channel)
        self._management = management_service_pb2_grpc.ManagementServiceStub(self.channel)
        self._search = search_service_pb2_grpc.SearchServiceStub(self.channel)
        self.workitems = AsyncWorkitems(self.channel)
        """Workitem (UPS) calls: ``await client.workitems.claim(uid)`` and the others."""

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close()

    async def store(
        self,
        sources: Sources | Iterable[Item],
        study_instance_uid: str | None = None,
        *,
        on_bytes: Callable[[Item, int], None] | None = None,
        timeout: float | None = None,
    ) -> StoreResult:
        """Store instances in one stream; see :meth:`dicomrpc.Client.store`.

        File reads (and a generator of ``sources``) run in a worker thread so the event loop
        is never blocked on disk; ``on_bytes`` is called from that thread. Never retried.
        """
        items = await asyncio.to_thread(expand, sources)

        async def read_stream(items: list[Item]) -> AsyncIterator[pb.StoreInstancesRequest | bytes]:
            iterator = requests(items, study_instance_uid, self.config.chunk_size, on_bytes)
            while True:
                request = await asyncio.to_thread(next, iterator, None)
                if request is None:
                    return
                yield request

        response = await call_unary_async(
            lambda stream: self._store_instances(stream, timeout=timeout), read_stream(items)
        )
        return StoreResult.from_message(response)

    # -- retrieve ---------------------------------------------------------------------------

    async def _instance_stream(
        self,
        study: str,
        series: str | None,
        sop: str | None,
        transfer_syntax: str,
        allow_lossy: bool,
    ) -> AsyncIterator[InstanceMessage]:
        if calls.pulls_over_http(self.config.http_retrieve, transfer_syntax, sop):
            pulled = await self._pulled(study, series)
            if pulled is not None:
                return _threaded(pulled)
        name, request = calls.instances_request(
            study, series, sop, transfer_syntax, allow_lossy, self.config.chunk_size
        )
        return read_stream_async(self._retrieve_bytes[name](request))

    async def _pulled(self, study: str, series: str | None) -> Iterator[InstanceMessage] | None:
        """The stored bytes of a study or series over the HTTP gateway, or ``None``.

        ``None`` when the server grants no URL or the gateway refuses it before the first
        byte: the caller streams over gRPC. The pull is :mod:`dicomrpc.http_pull`'s, its
        connection opened and each buffer read in a worker thread, one buffer at a time.
        """
        request = calls.retrieve_url_request(study, series, target_host(self.target))
        try:
            granted = await self._retrieve.GetRetrieveUrl(request)
            body = await asyncio.to_thread(http_pull.open_body, granted.url, self.config.tls)
        except (grpc.RpcError, http_pull.PullRefused):
            return None
        return http_pull.messages(body)

    async def iter_instances(
        self,
        study: str,
        series: str | None = None,
        sop: str | None = None,
        *,
        transfer_syntax: str = "*",
        allow_lossy: bool = False,
    ) -> AsyncIterator[retrieval.RetrievedInstance]:
        """Stream the instances of a study, series or instance, one in memory at a time.

        ``async for instance in client.iter_instances(study)``; see
        :meth:`dicomrpc.Client.iter_instances`.
        """
        stream = await self._instance_stream(study, series, sop, transfer_syntax, allow_lossy)
        grouper = retrieval.Grouper("instance")
        async for message in stream:
            done = grouper.feed(message)
            if done is not None:
                yield retrieval.instance_of(done)
        last = grouper.finish()
        if last is not None:
            yield retrieval.instance_of(last)

    async def _retrieved(
        self,
        study: str,
        series: str | None,
        sop: str | None,
        transfer_syntax: str,
        allow_lossy: bool,
    ) -> list[retrieval.RetrievedInstance]:
        found = self.iter_instances(
            study, series, sop, transfer_syntax=transfer_syntax, allow_lossy=allow_lossy
        )
        return [instance async for instance in found]

    async def retrieve_study(
        self, study: str, *, transfer_syntax: str = "*", allow_lossy: bool = False
    ) -> list[retrieval.RetrievedInstance]:
        """Every instance of a study, in memory (:meth:`iter_instances` streams them)."""
        return await self._retrieved(study, None, None, transfer_syntax, allow_lossy)

    async def retrieve_series(
        self, study: str, series: str, *, transfer_syntax: str = "*", allow_lossy: bool = False
    ) -> list[retrieval.RetrievedInstance]:
        """Every instance of a series, in memory (:meth:`iter_instances` streams them)."""
        return await self._retrieved(study, series, None, transfer_syntax, allow_lossy)

    async def retrieve_instance(
        self,
        study: str,
        series: str,
        sop: str,
        *,
        transfer_syntax: str = "*",
        allow_lossy: bool = False,
    ) -> retrieval.RetrievedInstance:
        """One instance, in memory (NOT_FOUND when there is none)."""
        found = await self._retrieved(study, series, sop, transfer_syntax, allow_lossy)
        return calls.only_instance(found, sop)

    async def _save(
        self,
        study: str,
        series: str | None,
        sop: str | None,
        dest_dir: str | os.PathLike[str],
        transfer_syntax: str,
        allow_lossy: bool,
        on_bytes: Callable[[int], None] | None,
    ) -> list[Path]:
        stream = await self._instance_stream(study, series, sop, transfer_syntax, allow_lossy)
        writer = retrieval.Writer(Path(dest_dir), on_bytes)
        paths: list[Path] = []
        try:
            async for message in stream:
                done = await asyncio.to_thread(writer.feed, message)
                if done is not None:
                    paths.append(done)
            last = writer.finish()
            if last is not None:
                paths.append(last)
        finally:
            writer.close()
        return paths

    async def save_study(
        self,
        study: str,
        dest_dir: str | os.PathLike[str],
        *,
        transfer_syntax: str = "*",
        allow_lossy: bool = False,
        on_bytes: Callable[[int], None] | None = None,
    ) -> list[Path]:
        """Write a study as files under ``dest_dir``, chunk by chunk, in a worker thread.

        See :meth:`dicomrpc.Client.save_study`; ``on_bytes`` is called from the thread.
        """
        return await self._save(study, None, None, dest_dir, transfer_syntax, allow_lossy, on_bytes)

    async def save_series(
        self,
        study: str,
        series: str,
        dest_dir: str | os.PathLike[str],
        *,
        transfer_syntax: str = "*",
        allow_lossy: bool = False,
        on_bytes: Callable[[int], None] | None = None,
    ) -> list[Path]:
        """Write a series as files under ``dest_dir`` (see :meth:`save_study`)."""
        return await self._save(
            study, series, None, dest_dir, transfer_syntax, allow_lossy, on_bytes
        )

    async def save_instance(
        self,
        study: str,
        series: str,
        sop: str,
        dest_dir: str | os.PathLike[str],
        *,
        transfer_syntax: str = "*",
        allow_lossy: bool = False,
        on_bytes: Callable[[int], None] | None = None,
    ) -> Path:
        """Write one instance as a file under ``dest_dir`` (see :meth:`save_study`)."""
        paths = await self._save(
            study, series, sop, dest_dir, transfer_syntax, allow_lossy, on_bytes
        )
        return calls.only_instance(paths, sop)

    async def frames(
        self,
        study: str,
        series: str,
        sop: str,
        numbers: Iterable[int],
        *,
        transfer_syntax: str = "*",
        allow_lossy: bool = False,
    ) -> list[retrieval.Frame]:
        """Retrieve frames (1-based) of an instance; see :meth:`dicomrpc.Client.frames`."""
        request = calls.frames_request(study, series, sop, numbers, transfer_syntax, allow_lossy)
        grouper = retrieval.Grouper("frame")
        found: list[retrieval.Frame] = []
        async for message in read_stream_async(self._retrieve_frames(request)):
            done = grouper.feed(message)
            if done is not None:
                found.append(retrieval.frame_of(done))
        last = grouper.finish()
        if last is not None:
            found.append(retrieval.frame_of(last))
        return found

    async def metadata(
        self,
        study: str,
        series: str | None = None,
        sop: str | None = None,
        *,
        if_none_match: str = "",
    ) -> retrieval.MetadataResult:
        """The metadata of a study, series or instance; see :meth:`dicomrpc.Client.metadata`."""
        name, request = calls.metadata_request(study, series, sop, if_none_match)
        collector = retrieval.MetadataCollector()
        async for message in read_stream_async(getattr(self._retrieve, name)(request)):
            collector.feed(message)
        return collector.result()

    async def rendered(
        self,
        study: str,
        series: str,
        sop: str,
        *,
        frame: int = 0,
        media_type: str = "image/jpeg",
        quality: int = 0,
        window: tuple[float, float] | None = None,
        max_size: int = 0,
    ) -> tuple[str, bytes]:
        """One frame rendered as JPEG or PNG; see :meth:`dicomrpc.Client.rendered`."""
        request = calls.rendered_request(
            study, series, sop, frame, media_type, quality, window, max_size
        )
        parts = [part async for part in read_stream_async(self._retrieve.RetrieveRendered(request))]
        return calls.rendered_result(parts, media_type)

    # -- search ---------------------------------------------------------------------------

    async def search_studies(
        self,
        match: Mapping[str, str] | None = None,
        *,
        fuzzy: bool = False,
        include: Iterable[str] = (),
        limit: int = 0,
        offset: int = 0,
        page_size: int = 0,
        page_token: str = "",
        **terms: str,
    ) -> retrieval.SearchResult:
        """Search studies; see :meth:`dicomrpc.Client.search_studies`."""
        query = calls.search_query(
            match, terms, fuzzy, include, limit, offset, page_size, page_token
        )
        request = spb.SearchStudiesRequest(query=query)
        return calls.search_result(await call_unary_async(self._search.SearchStudies, request))

    async def search_series(
        self,
        match: Mapping[str, str] | None = None,
        *,
        study: str = "",
        fuzzy: bool = False,
        include: Iterable[str] = (),
        limit: int = 0,
        offset: int = 0,
        page_size: int = 0,
        page_token: str = "",
        **terms: str,
    ) -> retrieval.SearchResult:
        """Search series, in every study or in ``study``."""
        query = calls.search_query(
            match, terms, fuzzy, include, limit, offset, page_size, page_token
        )
        request = spb.SearchSeriesRequest(study_instance_uid=study, query=query)
        return calls.search_result(await call_unary_async(self._search.SearchSeries, request))

    async def search_instances(
        self,
        match: Mapping[str, str] | None = None,
        *,
        study: str = "",
        series: str = "",
        fuzzy: bool = False,
        include: Iterable[str] = (),
        limit: int = 0,
        offset: int = 0,
        page_size: int = 0,
        page_token: str = "",
        **terms: str,
    ) -> retrieval.SearchResult:
        """Search instances, everywhere, in ``study`` or in ``study``/``series``."""
        query = calls.search_query(
            match, terms, fuzzy, include, limit, offset, page_size, page_token
        )
        request = spb.SearchInstancesRequest(
            study_instance_uid=study, series_instance_uid=series, query=query
        )
        return calls.search_result(await call_unary_async(self._search.SearchInstances, request))

    # -- delete and change feed ----------------------------------------------------------

    async def delete_study(self, study: str) -> int:
        """Delete a study; return how many instances were deleted."""
        request = mpb.DeleteStudyRequest(study_instance_uid=study)
        response: mpb.DeleteStudyResponse = await call_unary_async(
            self._management.DeleteStudy, request
        )
        return response.deleted_instances

    async def delete_series(self, study: str, series: str) -> int:
        """Delete a series; return how many instances were deleted."""
        request = mpb.DeleteSeriesRequest(study_instance_uid=study, series_instance_uid=series)
        response: mpb.DeleteSeriesResponse = await call_unary_async(
            self._management.DeleteSeries, request
        )
        return response.deleted_instances

    async def delete_instance(self, study: str, series: str, sop: str) -> int:
        """Delete one instance; return 1."""
        request = mpb.DeleteInstanceRequest(
            study_instance_uid=study, series_instance_uid=series, sop_instance_uid=sop
        )
        response: mpb.DeleteInstanceResponse = await call_unary_async(
            self._management.DeleteInstance, request
        )
        return response.deleted_instances

    async def read_changes(self, since: int = 0, limit: int = 100) -> list[Change]:
        """Change feed entries with a sequence above ``since`` (at most ``limit``)."""
        request = mpb.ReadChangeFeedRequest(since=since, limit=limit)
        response = await call_unary_async(self._management.ReadChangeFeed, request)
        return [Change.from_message(e) for e in response.entries]

    async def latest_change(self) -> Change | None:
        """The newest change feed entry, or ``None`` when nothing has changed yet."""
        request = mpb.GetLatestChangeRequest()
        response = await call_unary_async(self._management.GetLatestChange, request)
        return Change.from_message(response.entry) if response.HasField("entry") else None

    def watch_changes(self, since: int = 0) -> AsyncWatch[Change]:
        """Every change after ``since``, then each new one, until closed (``async for``)."""
        call = self._management.WatchChangeFeed(mpb.WatchChangeFeedRequest(since=since))
        return AsyncWatch(call, calls.change_of)

    async def dimse_peers(self) -> list[DimsePeer]:
        """The DIMSE peers the archive's C-MOVE may send to, by name."""
        request = mpb.ListDimsePeersRequest()
        response = await call_unary_async(self._management.ListDimsePeers, request)
        return [DimsePeer.from_message(p) for p in response.peers]

    async def add_dimse_peer(self, name: str, ae_title: str, host: str, port: int) -> DimsePeer:
        """Let the archive's C-MOVE send to ``ae_title`` at ``host:port``, as ``name``."""
        peer = mpb.DimsePeer(name=name, ae_title=ae_title, host=host, port=port)
        request = mpb.AddDimsePeerRequest(peer=peer)
        response = await call_unary_async(self._management.AddDimsePeer, request)
        return DimsePeer.from_message(response.peer)

    async def remove_dimse_peer(self, name: str) -> None:
        """Forget a peer added with :meth:`add_dimse_peer`."""
        request = mpb.RemoveDimsePeerRequest(name=name)
        await call_unary_async(self._management.RemoveDimsePeer, request)

    async def capabilities(self) -> Capabilities:
        """What the server supports: storable syntaxes, transcodings and limits."""
        request = mpb.GetCapabilitiesRequest()
        response = await call_unary_async(self._management.GetCapabilities, request)
        return Capabilities.from_message(response)

    # -- extended query tags -------------------------------------------------------------------

    async def add_query_tags(
        self, tags: Iterable[str | Mapping[str, str]], level: str = ""
    ) -> tuple[list[QueryTag], str]:
        """Have the server index more attributes; see :meth:`dicomrpc.Client.add_query_tags`."""
        request = calls.query_tags_request(tags, level)
        response = await call_unary_async(self._management.AddExtendedQueryTags, request)
        return [QueryTag.from_message(t) for t in response.tags], response.operation_id

    async def query_tags(self) -> list[QueryTag]:
        """The extended query tags, with whether each is ready for searches."""
        request = mpb.ListExtendedQueryTagsRequest()
        response = await call_unary_async(self._management.ListExtendedQueryTags, request)
        return [QueryTag.from_message(t) for t in response.tags]

    async def delete_query_tag(self, tag: str) -> None:
        """Stop indexing an extended query tag and remove its index entries."""
        request = mpb.DeleteExtendedQueryTagRequest(tag=tag)
        await call_unary_async(self._management.DeleteExtendedQueryTag, request)

    async def reindex_status(self, operation_id: str) -> ReindexStatus:
        """The progress of the re-indexing started by :meth:`add_query_tags`."""
        request = mpb.GetReindexStatusRequest(operation_id=operation_id)
        response = await call_unary_async(self._management.GetReindexStatus, request)
        return ReindexStatus.from_message(response)

    async def wait_for_reindex(
        self,
        operation_id: str,
        *,
        poll_s: float = 0.2,
        timeout_s: float | None = None,
        on_status: Callable[[ReindexStatus], None] | None = None,
    ) -> ReindexStatus:
        """Poll a re-indexing operation until it is done (``TimeoutError`` after ``timeout_s``)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            status = await self.reindex_status(operation_id)
            if on_status is not None:
                on_status(status)
            if status.done:
                return status
            calls.check_reindex_deadline(operation_id, deadline, timeout_s)
            await asyncio.sleep(poll_s)


async def _threaded(messages: Iterator[InstanceMessage]) -> AsyncIterator[InstanceMessage]:
    """A blocking iterator read in a worker thread, one item at a time."""
    try:
        while True:
            message = await asyncio.to_thread(next, messages, None)
            if message is None:
                return
            yield message
    finally:
        close = getattr(messages, "close", None)
        if close is not None:
            close()
