"""RetrieveService: instances, frames and metadata translated onto the retrieve core."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from dicomrpc.v1 import retrieve_service_pb2 as pb
from dicomrpc.wire import encode_chunk, encode_fields
from dicomrpc_server.access.grants import RetrieveGrants, checked_host
from dicomrpc_server.dicom.uids import check_request_uid
from dicomrpc_server.errors import ServiceError
from dicomrpc_server.grpc.auth import current_caller
from dicomrpc_server.grpc.errors import abort
from dicomrpc_server.retrieve.render import RenderOptions
from dicomrpc_server.retrieve.scope import StoredInstance
from dicomrpc_server.retrieve.service import Outgoing, RetrieveCore, clamp_chunk, read_ahead

# Chunks are sent encoded by hand (see dicomrpc.wire): the messages' bytes fields.
_INSTANCE_DATA = pb.RetrieveInstancesResponse.DATA_FIELD_NUMBER
_FRAME_DATA = pb.RetrieveFramesResponse.DATA_FIELD_NUMBER
_ETAG = pb.RetrieveMetadataResponse.ETAG_FIELD_NUMBER
_DATASETS = pb.RetrieveMetadataResponse.DATASETS_FIELD_NUMBER
# Metadata datasets per response message.
METADATA_BATCH = 64
_MEDIA_TYPES = {pb.RENDERED_FORMAT_JPEG: "image/jpeg", pb.RENDERED_FORMAT_PNG: "image/png"}


class RetrieveServicer:
    """Streams what is stored: every instance as a header then its bytes in chunks.

    Registered by :func:`~dicomrpc_server.grpc.wire.add_chunked_servicer`, so its streams may
    yield chunks already encoded (``bytes``) besides messages.
    """

    def __init__(self, core: RetrieveCore, grants: RetrieveGrants) -> None:
        self._core = core
        self._grants = grants

    async def _instances(
        self,
        context: Any,
        options: pb.TransferOptions,
        study: str,
        series: str = "",
        sop: str = "",
    ) -> AsyncIterator[pb.RetrieveInstancesResponse | bytes]:
        core = self._core
        target, lossy = options.transfer_syntax_uid, options.allow_lossy
        try:
            found = core.instances(study, series, sop, target, lossy)
        except ServiceError as error:
            await abort(context, error)
            return
        chunk = clamp_chunk(options.chunk_size, core.chunk_bytes)

        async def messages() -> AsyncIterator[pb.RetrieveInstancesResponse | bytes]:
            for instance in found:
                outgoing = await core.outgoing(instance, target, lossy, chunk)
                yield pb.RetrieveInstancesResponse(instance=_header(instance, outgoing))
                async for data in outgoing.chunks:
                    yield encode_chunk(_INSTANCE_DATA, data)

        try:
            async for message in read_ahead(messages()):
                yield message
        except ServiceError as error:  # deleted or undecodable: end with a clear status
            await abort(context, error)

    def RetrieveStudy(
        self, request: pb.RetrieveStudyRequest, context: Any
    ) -> AsyncIterator[pb.RetrieveInstancesResponse | bytes]:
        """Stream every instance of a study."""
        return self._instances(context, request.options, request.study_instance_uid)

    def RetrieveSeries(
        self, request: pb.RetrieveSeriesRequest, context: Any
    ) -> AsyncIterator[pb.RetrieveInstancesResponse | bytes]:
        """Stream every instance of a series."""
        return self._instances(
            context, request.options, request.study_instance_uid, request.series_instance_uid
        )

    def RetrieveInstance(
        self, request: pb.RetrieveInstanceRequest, context: Any
    ) -> AsyncIterator[pb.RetrieveInstancesResponse | bytes]:
        """Stream one instance."""
        return self._instances(
            context,
            request.options,
            request.study_instance_uid,
            request.series_instance_uid,
            request.sop_instance_uid,
        )

    async def RetrieveFrames(
        self, request: pb.RetrieveFramesRequest, context: Any
    ) -> AsyncIterator[pb.RetrieveFramesResponse | bytes]:
        """Stream frames of one instance: each a header then its bytes."""
        core = self._core
        target, lossy = request.options.transfer_syntax_uid, request.options.allow_lossy
        try:
            numbers = core.frame_numbers(
                list(request.frame_numbers), [(r.first, r.last) for r in request.frame_ranges]
            )
            instance = core.instances(
                request.study_instance_uid, request.series_instance_uid, request.sop_instance_uid
            )[0]
            table = core.check_frames(instance, numbers, target, lossy)
            syntax, frames = await core.frames(instance, numbers, table, target, lossy)
        except ServiceError as error:
            await abort(context, error)
            return
        chunk = clamp_chunk(request.options.chunk_size, core.chunk_bytes)
        metadata = core.frame_metadata(instance)
        shape = _frame_shape(metadata)
        async for number, data in frames:
            header = pb.FrameHeader(
                frame_number=number, transfer_syntax_uid=syntax, size_bytes=len(data), **shape
            )
            yield pb.RetrieveFramesResponse(frame=header)
            view = memoryview(data)
            for start in range(0, len(data), chunk):
                yield encode_chunk(_FRAME_DATA, view[start : start + chunk])

    async def RetrieveRendered(
        self, request: pb.RetrieveRenderedRequest, context: Any
    ) -> AsyncIterator[pb.RetrieveRenderedResponse]:
        """Render one frame as JPEG or PNG and stream the image."""
        window = None
        if request.HasField("window"):
            window = (request.window.center, request.window.width)
        options = RenderOptions(
            frame_number=request.frame_number,
            media_type=_MEDIA_TYPES.get(request.format, "image/jpeg"),
            quality=request.quality,
            window=window,
            max_size=request.max_size,
        )
        try:
            instance = self._core.instances(
                request.study_instance_uid, request.series_instance_uid, request.sop_instance_uid
            )[0]
            media_type, image = await self._core.rendered(instance, options)
        except ServiceError as error:
            await abort(context, error)
            return
        chunk = self._core.chunk_bytes
        for start in range(0, max(len(image), 1), chunk):
            yield pb.RetrieveRenderedResponse(
                media_type=media_type if start == 0 else "", data=image[start : start + chunk]
            )

    async def _metadata(
        self, context: Any, if_none_match: str, study: str, series: str = "", sop: str = ""
    ) -> AsyncIterator[pb.RetrieveMetadataResponse | bytes]:
        core = self._core
        try:
            matches = [if_none_match] if if_none_match else []
            tag, datasets = core.metadata_unless(matches, study, series, sop)
        except ServiceError as error:
            await abort(context, error)
            return
        if datasets is None:
            yield pb.RetrieveMetadataResponse(etag=tag, not_modified=True)
            return
        # The stored datasets go out as they are, without being parsed (see dicomrpc.wire).
        for start in range(0, max(len(datasets), 1), METADATA_BATCH):
            fields = [(_ETAG, tag.encode())] if start == 0 and tag else []
            fields += ((_DATASETS, d) for d in datasets[start : start + METADATA_BATCH])
            yield encode_fields(fields)

    def RetrieveStudyMetadata(
        self, request: pb.RetrieveStudyMetadataRequest, context: Any
    ) -> AsyncIterator[pb.RetrieveMetadataResponse | bytes]:
        """Stream the metadata of every instance of a study."""
        return self._metadata(context, request.if_none_match, request.study_instance_uid)

    def RetrieveSeriesMetadata(
        self, request: pb.RetrieveSeriesMetadataRequest, context: Any
    ) -> AsyncIterator[pb.RetrieveMetadataResponse | bytes]:
        """Stream the metadata of every instance of a series."""
        return self._metadata(
            context, request.if_none_match, request.study_instance_uid, request.series_instance_uid
        )

    def RetrieveInstanceMetadata(
        self, request: pb.RetrieveInstanceMetadataRequest, context: Any
    ) -> AsyncIterator[pb.RetrieveMetadataResponse | bytes]:
        """Stream the metadata of one instance."""
        return self._metadata(
            context,
            request.if_none_match,
            request.study_instance_uid,
            request.series_instance_uid,
            request.sop_instance_uid,
        )

    async def GetRetrieveUrl(
        self, request: pb.GetRetrieveUrlRequest, context: Any
    ) -> pb.GetRetrieveUrlResponse:
        """Grant a signed gateway URL that reads the study or series (see access/grants.py)."""
        try:
            check_request_uid("study_instance_uid", request.study_instance_uid)
            if request.series_instance_uid:
                check_request_uid("series_instance_uid", request.series_instance_uid)
            grant = self._grants.issue(
                current_caller(),
                request.study_instance_uid,
                request.series_instance_uid,
                checked_host(request.host),
            )
        except ServiceError as error:
            await abort(context, error)
        response = pb.GetRetrieveUrlResponse(url=grant.url)
        response.expire_time.FromSeconds(grant.expires)
        return response


def _header(instance: StoredInstance, outgoing: Outgoing) -> pb.InstanceHeader:
    record = instance.record
    return pb.InstanceHeader(
        study_instance_uid=instance.study_uid,
        series_instance_uid=instance.series_uid,
        sop_instance_uid=instance.sop_uid,
        sop_class_uid=record.sop_class_uid,
        transfer_syntax_uid=outgoing.transfer_syntax_uid,
        size_bytes=outgoing.size,
        version=record.version,
    )


def _frame_shape(metadata: Any) -> dict[str, Any]:
    """Rows, columns and sample layout of an instance's frames, from its metadata."""
    if metadata is None:
        return {}
    attributes = metadata.attributes

    def integer(tag: str) -> int:
        attribute = attributes.get(tag)
        if attribute is None:
            return 0
        values = attribute.integers.values or attribute.numbers.values
        return int(values[0]) if values else 0

    photometric = attributes.get("00280004")
    return {
        "rows": integer("00280010"),
        "columns": integer("00280011"),
        "samples_per_pixel": integer("00280002"),
        "bits_allocated": integer("00280100"),
        "pixel_representation": integer("00280103"),
        "photometric_interpretation": (
            photometric.strings.values[0] if photometric and photometric.strings.values else ""
        ),
    }
