"""ManagementService: capabilities now; delete, change feed and query tags as they land."""

from __future__ import annotations

from typing import Any

import grpc
from pydicom.uid import AllTransferSyntaxes

from dicomrpc.v1 import management_service_pb2 as pb
from dicomrpc_server import __version__
from dicomrpc_server.config import Settings
from dicomrpc_server.retrieve.transcode import capabilities

MAX_SEARCH_LIMIT = 1000


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
        max_search_limit=MAX_SEARCH_LIMIT,
    )


def implemented_handlers(settings: Settings) -> dict[str, grpc.RpcMethodHandler]:
    """The ManagementService methods this server implements, by method name."""

    async def get(request: pb.GetCapabilitiesRequest, context: Any) -> pb.GetCapabilitiesResponse:
        return get_capabilities(settings)

    return {
        "GetCapabilities": grpc.unary_unary_rpc_method_handler(
            get,
            request_deserializer=pb.GetCapabilitiesRequest.FromString,
            response_serializer=pb.GetCapabilitiesResponse.SerializeToString,
        )
    }
