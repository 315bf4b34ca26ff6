"""The synchronous SDK client."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

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
from dicomrpc.credentials import TokenChannel, TokenProvider, TokenSource
from dicomrpc.errors import DicomRpcError, call_unary, read_stream
from dicomrpc.results import (
    Capabilities,
    Change,
    DimsePeer,
    QueryTag,
    ReindexStatus,
    StoreResult,
)
from dicomrpc.retries import RetryPolicy, service_config
from dicomrpc.sources import DEFAULT_CHUNK, Item, Sources, iter_items, requests
from dicomrpc.v1 import management_service_pb2 as mpb
from dicomrpc.v1 import (
    management_service_pb2_grpc,
    retrieve_service_pb2_grpc,
    search_service_pb2_grpc,
)
from dicomrpc.v1 import retrieve_service_pb2 as rpb
from dicomrpc.v1 import search_service_pb2 as spb
from dicomrpc.v1 import store_service_pb2 as spb_store
from dicomrpc.watch import Watch
from dicomrpc.wire import chunk_or_message, serialize
from dicomrpc.workitems import Workitems

__all__ = ["STORE_INSTANCES", "Client", "ClientConfig", "RetryPolicy", "TlsConfig", "target_host"]

MAX_MESSAGE = 64 * 1024 * 1024
T = TypeVar("T")


@dataclass(frozen=True)
class TlsConfig:
    """TLS settings: the CA to trust and, for mTLS, the client's certificate and key (PEM).

    With no CA the system's trusted CAs verify the server.
    """

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None

    @classmethod
    def from_files(
        cls,
        ca: str | os.PathLike[str] | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
    ) -> TlsConfig:
        """Read PEM files: the CA of the server's certificate, the client's own and its key.

        The client certificate and key are for mutual TLS.
        """
        if (cert is None) != (key is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")
        return cls(
            Path(ca).read_bytes() if ca else None,
            Path(cert).read_bytes() if cert else None,
            Path(key).read_bytes() if key else None,
        )

    def credentials(self) -> grpc.ChannelCredentials:
        """The gRPC channel credentials of these settings."""
        return grpc.ssl_channel_credentials(
            self.root_certificates, self.private_key, self.certificate_chain
        )


@dataclass(frozen=True)
class ClientConfig:
    """How a client connects and streams.

    Attributes
    ----------
    chunk_size
        Bytes per streamed chunk (64 KiB .. 1 MiB is what the server expects).
    tls
        TLS settings, or ``None`` for a plaintext channel.
    token
        A bearer token sent with every call (an access token or an API key), or ``None``.
    token_provider
        A callable returning a bearer token, called again before the token expires and when
        the server refuses it (see :mod:`dicomrpc.credentials`); async for ``AsyncClient``.
    options
        Extra gRPC channel options.
    http_retrieve
        Read the stored bytes of a study or series from the server's HTTP gateway, with a
        signed URL the gRPC API grants (see :mod:`dicomrpc.http_pull`): faster for large
        studies. The client streams over gRPC when the server offers no gateway or refuses
        the URL, and always when this is off (``DICOMRPC_HTTP_RETRIEVE=0``): one connection.
    timeout
        The deadline of every unary call, in seconds (``None``: none). A call's own
        ``timeout`` can only make it shorter. Streams (store, retrieve, watches) have none.
    retry
        How idempotent calls (reads, searches, deletes by UID) are tried again when they
        fail with UNAVAILABLE before an answer came; ``None``: never. A store or a workitem
        change is never retried (see :mod:`dicomrpc.retries`).
    """

    chunk_size: int = DEFAULT_CHUNK
    tls: TlsConfig | None = None
    token: str | None = None
    options: tuple[tuple[str, object], ...] = field(default_factory=tuple)
    token_provider: TokenProvider | None = None
    http_retrieve: bool = True
    timeout: float | None = None
    retry: RetryPolicy | None = field(default_factory=RetryPolicy)

    @classmethod
    def from_env(cls, **overrides: Any) -> ClientConfig:
        """Settings from the environment, then ``overrides``.

        ``DICOMRPC_TOKEN``; ``DICOMRPC_TLS_CA``, ``DICOMRPC_TLS_CERT``, ``DICOMRPC_TLS_KEY``
        (PEM files), or ``DICOMRPC_TLS=1`` for TLS verified by the system's trusted CAs;
        ``DICOMRPC_HTTP_RETRIEVE=0`` to retrieve over gRPC only.
        """
        values: dict[str, Any] = {}
        if os.environ.get("DICOMRPC_TOKEN"):
            values["token"] = os.environ["DICOMRPC_TOKEN"]
        files = [os.environ.get(f"DICOMRPC_TLS_{name}") or None for name in ("CA", "CERT", "KEY")]
        if any(files) or os.environ.get("DICOMRPC_TLS", "").lower() in ("1", "true", "yes"):
            values["tls"] = TlsConfig.from_files(*files)
        if os.environ.get("DICOMRPC_HTTP_RETRIEVE", "").lower() in ("0", "false", "no"):
            values["http_retrieve"] = False
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def token_source(self) -> TokenSource | None:
        """Where calls get their token, or ``None`` when they send none."""
        if self.token is None and self.token_provider is None:
            return None
        return TokenSource(self.token, self.token_provider)

    def channel_options(self) -> list[tuple[str, object]]:
        """The channel options: message limits, deadlines and retries, then the caller's."""
        options: list[tuple[str, object]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.enable_retries", 1 if self.retry is not None else 0),
        ]
        config = service_config(self.timeout, self.retry)
        if config is not None:
            options.append(("grpc.service_config", config))
        return [*options, *self.options]


class Client:
    """A connection to a dicomrpc server.

    Examples
    --------
    >>> client = Client("localhost:50051")  # doctest: +SKIP
    >>> result = client.store(["study/"])  # doctest: +SKIP
    >>> [r.sop_instance_uid for r in result.stored]  # doctest: +SKIP

    A secured server, with a token from a provider and TLS::

        Client("pacs.example:50051", token_provider=get_token,
               tls=TlsConfig.from_files(ca="ca.pem"))

    ``token``, ``token_provider``, ``tls`` and ``http_retrieve`` replace those of ``config``.
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
        tls = self.config.tls
        if tls is not None:
            channel = grpc.secure_channel(target, tls.credentials(), options)
        else:
            channel = grpc.insecure_channel(target, options)
        source = self.config.token_source()
        self.channel = TokenChannel(channel, source) if source else channel
        self._retrieve = retrieve_service_pb2_grpc.RetrieveServiceStub(self.channel)
        # The calls that move bytes send and receive chunks without protobuf's copies.
        self._store_instances = self.channel.stream_unary(
            STORE_INSTANCES,
            request_serializer=serialize,
            response_deserializer=spb_store.StoreInstancesResponse.FromString,
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
        self._management = management_service_pb2_grpc.ManagementServiceStub(self.channel)
        self._search = search_service_pb2_grpc.SearchServiceStub(self.channel)
        self.workitems = Workitems(self.channel)
        """Workitem (UPS) calls: ``client.workitems.claim(uid)`` and the others."""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def store(
        self,
        sources: Sources | Iterable[Item],
        study_instance_uid: str | None = None,
        *,
        on_bytes: Callable[[Item, int], None] | None = None,
        timeout: float | None = None,
    ) -> StoreResult:
        """Store instances in one stream, reading each in chunks (never whole in memory).

        A store is never retried: the server may have stored what it received before the
        connection failed.

        Parameters
        ----------
        sources
            Files, folders (recursive), bytes or open binary files, or an iterable of them
            (a generator streams as it yields).
        study_instance_uid
            Restrict the request to one study: any instance of another fails with 43265.
        on_bytes
            Called after each chunk is handed to gRPC, for progress reporting.
        timeout
            A deadline for the whole request, in seconds.

        Returns
        -------
        StoreResult
            One result per instance, in order. Per-instance failures are results, not errors.

        Raises
        ------
        DicomRpcError
            When the request as a whole fails.
        """
        stream = requests(iter_items(sources), study_instance_uid, self.config.chunk_size, on_bytes)
        try:
            response = self._store_instances(stream, timeout=timeout)
        except grpc.RpcError as error:
            raise DicomRpcError.from_rpc_error(error) from None
        return StoreResult.from_message(response)

    # -- retrieve ---------------------------------------------------------------------------

    def _instance_stream(
        self,
        study: str,
        series: str | None,
        sop: str | None,
        transfer_syntax: str,
        allow_lossy: bool,
    ) -> Iterator[rpb.RetrieveInstancesResponse | memoryview]:
        if calls.pulls_over_http(self.config.http_retrieve, transfer_syntax, sop):
            pulled = self._pulled(study, series)
            if pulled is not None:
                return pulled
        name, request = calls.instances_request(
            study, series, sop, transfer_syntax, allow_lossy, self.config.chunk_size
        )
        return read_stream(self._retrieve_bytes[name](request))

    def _pulled(
        self, study: str, series: str | None
    ) -> Iterator[rpb.RetrieveInstancesResponse | memoryview] | None:
        """The stored bytes of a study or series over the HTTP gateway, or ``None``.

        ``None`` when the server grants no URL (no gateway, an older server, a refusal) or
        the gateway refuses it before the first byte: the caller streams over gRPC, which
        answers with the server's own error if there is one.
        """
        request = calls.retrieve_url_request(study, series, target_host(self.target))
        try:
            granted = self._retrieve.GetRetrieveUrl(request)
            body = http_pull.open_body(granted.url, self.config.tls)
        except (grpc.RpcError, http_pull.PullRefused):
            return None
        return http_pull.messages(body)

    def iter_instances(
        self,
        study: str,
        series: str | None = None,
        sop: str | None = None,
        *,
        transfer_syntax: str = "*",
        allow_lossy: bool = False,
    ) -> Iterator[retrieval.RetrievedInstance]:
        """Stream the instances of a study, series or instance, one held in memory at a time.

        ``transfer_syntax`` ``"*"`` returns the stored bytes; another syntax is transcoded by
        the server (lossy ones only with ``allow_lossy``).
        """
        return retrieval.instances(
            self._instance_stream(study, series, sop, transfer_syntax, allow_lossy)
        )

    def retrieve_study(
        self, study: str, *, transfer_syntax: str = "*", allow_lossy: bool = False
    ) -> list[retrieval.RetrievedInstance]:
        """Every instance of a study, in memory (:meth:`iter_instances` streams them)."""
        return list(
            self.iter_instances(study, transfer_syntax=transfer_syntax, allow_lossy=allow_lossy)
        )

    def retrieve_series(
        self, study: str, series: str, *, transfer_syntax: str = "*", allow_lossy: bool = False
    ) -> list[retrieval.RetrievedInstance]:
        """Every instance of a series, in memory (:meth:`iter_instances` streams them)."""
        return list(
            self.iter_instances(
                study, series, transfer_syntax=transfer_syntax, allow_lossy=allow_lossy
            )
        )

    def retrieve_instance(
        self,
        study: str,
        series: str,
        sop: str,
        *,
        transfer_syntax: str = "*",
        allow_lossy: bool = False,
    ) -> retrieval.RetrievedInstance:
        """One instance, in memory.

        Raises
        ------
        DicomRpcError
            NOT_FOUND when there is no such instance.
        """
        found = self.iter_instances(
            study, series, sop, transfer_syntax=transfer_syntax, allow_lossy=allow_lossy
        )
        return calls.only_instance(list(found), sop)

    def _save(
        self,
        study: str,
        series: str | None,
        sop: str | None,
        dest_dir: str | os.PathLike[str],
        transfer_syntax: str,
        allow_lossy: bool,
        on_bytes: Callable[[int], None] | None,
    ) -> list[Path]:
        stream = self._instance_stream(study, series, sop, transfer_syntax, allow_lossy)
        return list(retrieval.save(stream, Path(dest_dir), on_bytes))

    def save_study(
        self,
        study: str,
        dest_dir: str | os.PathLike[str],
        *,
        transfer_syntax: str = "*",
        allow_lossy: bool = False,
        on_bytes: Callable[[int], None] | None = None,
    ) -> list[Path]:
        """Write a study as ``<study>/<series>/<sop>.dcm`` files under ``dest_dir``.

        Written chunk by chunk as received, so memory stays bounded whatever the size;
        ``on_bytes`` is called with the size of each chunk written, for progress. Returns
        the files' paths.
        """
        return self._save(study, None, None, dest_dir, transfer_syntax, allow_lossy, on_bytes)

    def save_series(
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
        return self._save(study, series, None, dest_dir, transfer_syntax, allow_lossy, on_bytes)

    def save_instance(
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
        paths = self._save(study, series, sop, dest_dir, transfer_syntax, allow_lossy, on_bytes)
        return calls.only_instance(paths, sop)

    def frames(
        self,
        study: str,
        series: str,
        sop: str,
        numbers: Iterable[int],
        *,
        transfer_syntax: str = "*",
        allow_lossy: bool = False,
    ) -> list[retrieval.Frame]:
        """Retrieve frames (1-based) of an instance; ``Frame.array()`` shapes native ones.

        ``"*"`` returns each frame as stored (the compressed bitstream of an encapsulated
        instance); a native syntax returns decoded raw pixel bytes; another syntax re-encodes.
        """
        request = calls.frames_request(study, series, sop, numbers, transfer_syntax, allow_lossy)
        return list(retrieval.frames(read_stream(self._retrieve_frames(request))))

    def metadata(
        self,
        study: str,
        series: str | None = None,
        sop: str | None = None,
        *,
        if_none_match: str = "",
    ) -> retrieval.MetadataResult:
        """The metadata (``dicomrpc.v1.Dataset`` messages) of a study, series or instance.

        Convert with :func:`dicomrpc.datasets.to_pydicom` or :func:`dicomrpc.datasets.to_json`.
        With the ETag of an earlier answer as ``if_none_match``, an unchanged resource answers
        ``not_modified`` and no datasets.
        """
        name, request = calls.metadata_request(study, series, sop, if_none_match)
        return retrieval.metadata(read_stream(getattr(self._retrieve, name)(request)))

    def rendered(
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
        """One frame (default the first) rendered as JPEG or PNG: (media type, image bytes).

        The modality LUT and the stored window (or ``window`` = (center, width)) are applied.
        """
        request = calls.rendered_request(
            study, series, sop, frame, media_type, quality, window, max_size
        )
        parts = list(read_stream(self._retrieve.RetrieveRendered(request)))
        return calls.rendered_result(parts, media_type)

    # -- search ---------------------------------------------------------------------------

    def search_studies(
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
        """Search studies: ``client.search_studies(PatientName="doe", fuzzy=True)``.

        Match terms are keywords or 8-hex tags with DICOM matching values (wildcards, UID
        lists, date ranges, "" for universal matching).
        """
        query = calls.search_query(
            match, terms, fuzzy, include, limit, offset, page_size, page_token
        )
        request = spb.SearchStudiesRequest(query=query)
        return calls.search_result(call_unary(self._search.SearchStudies, request))

    def search_series(
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
        return calls.search_result(call_unary(self._search.SearchSeries, request))

    def search_instances(
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
        return calls.search_result(call_unary(self._search.SearchInstances, request))

    # -- delete and change feed ----------------------------------------------------------

    def delete_study(self, study: str) -> int:
        """Delete a study; return how many instances were deleted."""
        request = mpb.DeleteStudyRequest(study_instance_uid=study)
        response: mpb.DeleteStudyResponse = call_unary(self._management.DeleteStudy, request)
        return response.deleted_instances

    def delete_series(self, study: str, series: str) -> int:
        """Delete a series; return how many instances were deleted."""
        request = mpb.DeleteSeriesRequest(study_instance_uid=study, series_instance_uid=series)
        response: mpb.DeleteSeriesResponse = call_unary(self._management.DeleteSeries, request)
        return response.deleted_instances

    def delete_instance(self, study: str, series: str, sop: str) -> int:
        """Delete one instance; return 1."""
        request = mpb.DeleteInstanceRequest(
            study_instance_uid=study, series_instance_uid=series, sop_instance_uid=sop
        )
        response: mpb.DeleteInstanceResponse = call_unary(self._management.DeleteInstance, request)
        return response.deleted_instances

    def read_changes(self, since: int = 0, limit: int = 100) -> list[Change]:
        """Change feed entries with a sequence above ``since`` (at most ``limit``)."""
        request = mpb.ReadChangeFeedRequest(since=since, limit=limit)
        response = call_unary(self._management.ReadChangeFeed, request)
        return [Change.from_message(e) for e in response.entries]

    def latest_change(self) -> Change | None:
        """The newest change feed entry, or ``None`` when nothing has changed yet."""
        response = call_unary(self._management.GetLatestChange, mpb.GetLatestChangeRequest())
        return Change.from_message(response.entry) if response.HasField("entry") else None

    def watch_changes(self, since: int = 0) -> Watch[Change]:
        """Every change after ``since``, then each new one as it happens, until closed.

        The handle is the one of :meth:`Workitems.watch`: iterate it, and close it (or leave
        its ``with`` block) to stop.
        """
        call = self._management.WatchChangeFeed(mpb.WatchChangeFeedRequest(since=since))
        return Watch(call, calls.change_of)

    def dimse_peers(self) -> list[DimsePeer]:
        """The DIMSE peers the archive's C-MOVE may send to, by name."""
        response = call_unary(self._management.ListDimsePeers, mpb.ListDimsePeersRequest())
        return [DimsePeer.from_message(p) for p in response.peers]

    def add_dimse_peer(self, name: str, ae_title: str, host: str, port: int) -> DimsePeer:
        """Let the archive's C-MOVE send to ``ae_title`` at ``host:port``, as ``name``.

        The peer is kept across restarts; adding a name again replaces that peer.
        """
        peer = mpb.DimsePeer(name=name, ae_title=ae_title, host=host, port=port)
        response = call_unary(self._management.AddDimsePeer, mpb.AddDimsePeerRequest(peer=peer))
        return DimsePeer.from_message(response.peer)

    def remove_dimse_peer(self, name: str) -> None:
        """Forget a peer added with :meth:`add_dimse_peer`."""
        call_unary(self._management.RemoveDimsePeer, mpb.RemoveDimsePeerRequest(name=name))

    def capabilities(self) -> Capabilities:
        """What the server supports: storable syntaxes, transcodings and limits."""
        request = mpb.GetCapabilitiesRequest()
        return Capabilities.from_message(call_unary(self._management.GetCapabilities, request))

    # -- extended query tags -------------------------------------------------------------------

    def add_query_tags(
        self, tags: Iterable[str | Mapping[str, str]], level: str = ""
    ) -> tuple[list[QueryTag], str]:
        """Have the server index more attributes; return them and the re-indexing operation id.

        Parameters
        ----------
        tags
            Keywords or 8-hex tags (``"SeriesDescription"``, ``"00181000"``), or mappings with
            ``tag`` and optionally ``vr``, ``level`` and ``private_creator`` (a private tag
            needs the last two and its VR).
        level
            ``"study"``, ``"series"`` or ``"instance"`` for tags that do not name their own
            (empty: the level that keeps a standard attribute already).

        The tags are searchable once the operation is done: see :meth:`wait_for_reindex`.
        """
        request = calls.query_tags_request(tags, level)
        response = call_unary(self._management.AddExtendedQueryTags, request)
        return [QueryTag.from_message(t) for t in response.tags], response.operation_id

    def query_tags(self) -> list[QueryTag]:
        """The extended query tags, with whether each is ready for searches."""
        response = call_unary(
            self._management.ListExtendedQueryTags, mpb.ListExtendedQueryTagsRequest()
        )
        return [QueryTag.from_message(t) for t in response.tags]

    def delete_query_tag(self, tag: str) -> None:
        """Stop indexing an extended query tag and remove its index entries."""
        call_unary(
            self._management.DeleteExtendedQueryTag, mpb.DeleteExtendedQueryTagRequest(tag=tag)
        )

    def reindex_status(self, operation_id: str) -> ReindexStatus:
        """The progress of the re-indexing started by :meth:`add_query_tags`."""
        response = call_unary(
            self._management.GetReindexStatus,
            mpb.GetReindexStatusRequest(operation_id=operation_id),
        )
        return ReindexStatus.from_message(response)

    def wait_for_reindex(
        self,
        operation_id: str,
        *,
        poll_s: float = 0.2,
        timeout_s: float | None = None,
        on_status: Callable[[ReindexStatus], None] | None = None,
    ) -> ReindexStatus:
        """Poll a re-indexing operation until it is done (``TimeoutError`` after ``timeout_s``).

        ``on_status`` is called with every status read, for a progress bar.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            status = self.reindex_status(operation_id)
            if on_status is not None:
                on_status(status)
            if status.done:
                return status
            calls.check_reindex_deadline(operation_id, deadline, timeout_s)
            time.sleep(poll_s)


def configured(
    config: ClientConfig | None,
    token: str | None,
    token_provider: TokenProvider | None,
    tls: TlsConfig | None,
    http_retrieve: bool | None = None,
) -> ClientConfig:
    """``config`` (default: none) with the settings given beside it in their place."""
    config = config or ClientConfig()
    overrides: dict[str, Any] = {}
    if token is not None or token_provider is not None:
        overrides.update(token=token, token_provider=token_provider)
    if tls is not None:
        overrides["tls"] = tls
    if http_retrieve is not None:
        overrides["http_retrieve"] = http_retrieve
    return dataclasses.replace(config, **overrides) if overrides else config
