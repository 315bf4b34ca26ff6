"""ManagementService: delete, the change feed, extended query tags, capabilities, DIMSE peers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

from pydicom.uid import AllTransferSyntaxes

from dicomrpc.v1 import management_service_pb2 as pb
from dicomrpc.v1 import management_service_pb2_grpc
from dicomrpc_server import __version__
from dicomrpc_server.config import Settings
from dicomrpc_server.errors import ServiceError
from dicomrpc_server.grpc.errors import abort
from dicomrpc_server.lifecycle.delete import DeleteCore
from dicomrpc_server.lifecycle.feed import ChangeFeed
from dicomrpc_server.peers import Peer, PeerRegistry, PeerSource
from dicomrpc_server.query.engine import MAX_LIMIT
from dicomrpc_server.query.extended import RequestedTag
from dicomrpc_server.query.reindexing import ExtendedQueryTags
from dicomrpc_server.retrieve.transcode import capabilities
from dicomrpc_server.storage import records_pb2
from dicomrpc_server.storage.protocols import Change, ChangeAction, ChangeState


def get_capabilities(settings: Settings) -> pb.GetCapabilitiesResponse:
    """What this server accepts and can produce, computed from the installed codecs."""
    return pb.GetCapabilitiesResponse(
        server_version=__version__,
        storable_transfer_syntax_uids=sorted(str(uid) for uid in AllTransferSyntaxes),
        transcodings=[
            pb.TranscodingCapability(
                source_transfer_syntax_uid=source, target_transfer_syntax_uids=targets
            )
            for source, targets in sorted(capabilities().items())
        ],
        max_instance_bytes=settings.max_instance_bytes,
        max_chunk_bytes=settings.max_chunk_bytes,
        max_search_limit=MAX_LIMIT,
    )


class ManagementServicer(management_service_pb2_grpc.ManagementServiceServicer):
    """Translates ManagementService calls to the lifecycle, query-tag and peer cores."""

    def __init__(
        self,
        settings: Settings,
        delete: DeleteCore,
        feed: ChangeFeed,
        query_tags: ExtendedQueryTags,
        peers: PeerRegistry,
    ) -> None:
        self._settings = settings
        self._delete = delete
        self._feed = feed
        self._query_tags = query_tags
        self._peers = peers

    async def _deleted(self, context: Any, study: str, series: str = "", sop: str = "") -> int:
        try:
            return await self._delete.delete(study, series, sop)
        except ServiceError as error:
            await abort(context, error)

    async def DeleteStudy(
        self, request: pb.DeleteStudyRequest, context: Any
    ) -> pb.DeleteStudyResponse:
        """Delete a study."""
        count = await self._deleted(context, request.study_instance_uid)
        return pb.DeleteStudyResponse(deleted_instances=count)

    async def DeleteSeries(
        self, request: pb.DeleteSeriesRequest, context: Any
    ) -> pb.DeleteSeriesResponse:
        """Delete a series."""
        count = await self._deleted(
            context, request.study_instance_uid, request.series_instance_uid
        )
        return pb.DeleteSeriesResponse(deleted_instances=count)

    async def DeleteInstance(
        self, request: pb.DeleteInstanceRequest, context: Any
    ) -> pb.DeleteInstanceResponse:
        """Delete an instance."""
        count = await self._deleted(
            context,
            request.study_instance_uid,
            request.series_instance_uid,
            request.sop_instance_uid,
        )
        return pb.DeleteInstanceResponse(deleted_instances=count)

    async def ReadChangeFeed(
        self, request: pb.ReadChangeFeedRequest, context: Any
    ) -> pb.ReadChangeFeedResponse:
        """Read a page of the change feed."""
        try:
            entries = self._feed.read(request.since, request.limit)
        except ServiceError as error:
            await abort(context, error)
        return pb.ReadChangeFeedResponse(entries=[change_entry(e) for e in entries])

    async def GetLatestChange(
        self, request: pb.GetLatestChangeRequest, context: Any
    ) -> pb.GetLatestChangeResponse:
        """Return the newest entry (unset for an empty feed)."""
        latest = self._feed.latest()
        if latest is None:
            return pb.GetLatestChangeResponse()
        return pb.GetLatestChangeResponse(entry=change_entry(latest))

    async def WatchChangeFeed(
        self, request: pb.WatchChangeFeedRequest, context: Any
    ) -> AsyncIterator[pb.WatchChangeFeedResponse]:
        """Replay the feed after ``since``, then follow it live."""
        try:
            async for entry in self._feed.follow(request.since):
                yield pb.WatchChangeFeedResponse(entry=change_entry(entry))
        except ServiceError as error:
            await abort(context, error)

    async def GetCapabilities(
        self, request: pb.GetCapabilitiesRequest, context: Any
    ) -> pb.GetCapabilitiesResponse:
        """Describe transfer syntaxes, transcodings and limits."""
        return get_capabilities(self._settings)

    async def AddExtendedQueryTags(
        self, request: pb.AddExtendedQueryTagsRequest, context: Any
    ) -> pb.AddExtendedQueryTagsResponse:
        """Register query tags and start re-indexing for them."""
        requested = [
            RequestedTag(t.tag, t.vr, t.private_creator, int(t.level)) for t in request.tags
        ]
        try:
            tags, operation_id = await self._query_tags.add(requested)
        except ServiceError as error:
            await abort(context, error)
        return pb.AddExtendedQueryTagsResponse(
            tags=[_query_tag(t) for t in tags], operation_id=operation_id
        )

    async def ListExtendedQueryTags(
        self, request: pb.ListExtendedQueryTagsRequest, context: Any
    ) -> pb.ListExtendedQueryTagsResponse:
        """List the extended query tags with their status."""
        return pb.ListExtendedQueryTagsResponse(
            tags=[_query_tag(t) for t in self._query_tags.list()]
        )

    async def DeleteExtendedQueryTag(
        self, request: pb.DeleteExtendedQueryTagRequest, context: Any
    ) -> pb.DeleteExtendedQueryTagResponse:
        """Remove an extended query tag and its index entries."""
        try:
            await self._query_tags.delete(request.tag)
        except ServiceError as error:
            await abort(context, error)
        return pb.DeleteExtendedQueryTagResponse()

    async def ListDimsePeers(
        self, request: pb.ListDimsePeersRequest, context: Any
    ) -> pb.ListDimsePeersResponse:
        """List the DIMSE peers C-MOVE may send to."""
        return pb.ListDimsePeersResponse(peers=[peer_message(p) for p in self._peers.list()])

    async def AddDimsePeer(
        self, request: pb.AddDimsePeerRequest, context: Any
    ) -> pb.AddDimsePeerResponse:
        """Add a DIMSE peer, or replace the registry peer of its name."""
        given = request.peer
        try:
            peer = await self._peers.add(given.name, given.ae_title, given.host, given.port)
        except ServiceError as error:
            await abort(context, error)
        return pb.AddDimsePeerResponse(peer=peer_message(peer))

    async def RemoveDimsePeer(
        self, request: pb.RemoveDimsePeerRequest, context: Any
    ) -> pb.RemoveDimsePeerResponse:
        """Remove a DIMSE peer added at run time."""
        try:
            await self._peers.remove(request.name)
        except ServiceError as error:
            await abort(context, error)
        return pb.RemoveDimsePeerResponse()

    async def GetReindexStatus(
        self, request: pb.GetReindexStatusRequest, context: Any
    ) -> pb.GetReindexStatusResponse:
        """Report the progress of a re-indexing operation."""
        try:
            operation = self._query_tags.status(request.operation_id)
        except ServiceError as error:
            await abort(context, error)
        return pb.GetReindexStatusResponse(
            operation_id=operation.operation_id,
            processed_instances=operation.processed_instances,
            total_instances=max(operation.total_instances, operation.processed_instances),
            done=operation.done,
        )


def _query_tag(tag: records_pb2.QueryTagRecord) -> pb.ExtendedQueryTag:
    return pb.ExtendedQueryTag(
        tag=tag.hex_tag,
        vr=tag.vr,
        private_creator=tag.private_creator,
        level=cast(pb.QueryTagLevel.ValueType, tag.level),
        status=pb.QUERY_TAG_STATUS_READY if tag.ready else pb.QUERY_TAG_STATUS_REINDEXING,
    )


_ACTIONS = {
    ChangeAction.CREATED: pb.CHANGE_ACTION_CREATED,
    ChangeAction.DELETED: pb.CHANGE_ACTION_DELETED,
}
_STATES = {
    ChangeState.CURRENT: pb.CHANGE_STATE_CURRENT,
    ChangeState.REPLACED: pb.CHANGE_STATE_REPLACED,
    ChangeState.DELETED: pb.CHANGE_STATE_DELETED,
}


def change_entry(change: Change) -> pb.ChangeFeedEntry:
    """The API's entry for a change of the log."""
    entry = pb.ChangeFeedEntry(
        sequence=change.sequence,
        action=_ACTIONS[change.action],
        study_instance_uid=change.study_uid,
        series_instance_uid=change.series_uid,
        sop_instance_uid=change.sop_uid,
        version=change.version,
        state=_STATES[change.state],
    )
    entry.commit_time.FromMicroseconds(change.time_us)
    return entry


_PEER_SOURCES = {
    PeerSource.SETTINGS: pb.DIMSE_PEER_SOURCE_SETTINGS,
    PeerSource.REGISTRY: pb.DIMSE_PEER_SOURCE_REGISTRY,
}


def peer_message(peer: Peer) -> pb.DimsePeer:
    """The API message of a DIMSE peer."""
    return pb.DimsePeer(
        name=peer.name,
        ae_title=peer.ae_title,
        host=peer.host,
        port=peer.port,
        source=_PEER_SOURCES[peer.source],
    )
