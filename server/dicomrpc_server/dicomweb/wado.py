"""WADO-RS: instances, frames, rendered images, metadata and bulk data of what is stored.

Everything that can be checked up front (nothing stored, a syntax that cannot be produced, a
frame outside the instance) fails before the response starts, and so does the first part (its
file opened, or its instance transcoded): those errors are clean HTTP statuses. Then the bytes
stream from the retrieve core chunk by chunk, at the pace the client reads. A failure after
that (a file removed meanwhile, the seventh of ten instances that cannot be decoded) cannot be
answered any more: the response is cut, without its close delimiter and short of its
Content-Length (or without the last chunk of its chunked encoding, when transcoded instances
make its length unknown), so the client sees an incomplete body rather than a short
well-formed one (see :mod:`.logging`, which logs it).

Every transcoding allows lossy targets: PS3.18's default (Explicit VR Little Endian) is never
lossy, so a lossy syntax is only ever produced when the Accept header names it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from dicomrpc.datasets import to_json
from dicomrpc.v1 import dataset_pb2
from dicomrpc_server.dicomweb import dicom_json
from dicomrpc_server.dicomweb.context import archive_of, service_root
from dicomrpc_server.dicomweb.media import (
    AS_STORED,
    DICOM,
    OCTET_STREAM,
    choose_bulk_data,
    choose_frames,
    choose_instances,
    choose_json,
    choose_rendered,
    negotiated,
)
from dicomrpc_server.dicomweb.multipart import closing, content_type, new_boundary, part_header
from dicomrpc_server.dicomweb.sendfile import Part, PartsResponse, offers_zero_copy
from dicomrpc_server.errors import invalid_argument
from dicomrpc_server.retrieve.render import RenderOptions
from dicomrpc_server.retrieve.scope import StoredInstance
from dicomrpc_server.retrieve.service import RetrieveCore, as_stored, read_ahead
from dicomrpc_server.storage.file_reader import FileRegion

ALLOW_LOSSY = True
INSTANCE_HEADER = "DICOMRPC-Instance"
"""The part header naming an instance: ``{study}/{series}/{sop}; sop-class=…; version=…``."""


def _uids(request: Request) -> tuple[str, str, str]:
    params = request.path_params
    return params["study"], params.get("series", ""), params.get("instance", "")


def _core(request: Request) -> RetrieveCore:
    return archive_of(request).retrieve


# -- instances -----------------------------------------------------------------------------


async def started(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``body``, whose first bytes are produced now: what stops it from starting raises here.

    A handler awaits this before it returns its response, so that an error of the first part
    is answered with its own status instead of cutting a response already under way.
    """
    first = await anext(body, None)

    async def resumed() -> AsyncIterator[bytes]:
        if first is None:
            return
        yield first
        async for data in body:
            yield data

    return resumed()


async def retrieve_instances(request: Request) -> Response:
    """A study, series or instance: multipart ``application/dicom``, or one single part.

    Instances sent as stored go from their files by the kernel where the server offers it
    (:mod:`.sendfile`), in a body whose length is known before it starts; a transcoded one is
    produced by the retrieve core and streamed in chunks.
    """
    study, series, sop = _uids(request)
    choice = await negotiated(
        choose_instances, request.headers.get("accept"), single_allowed=bool(sop)
    )
    core = _core(request)
    syntax = choice.transfer_syntax
    found = core.instances(study, series, sop, syntax, ALLOW_LOSSY)
    first = core.file_region(found[0], syntax) if offers_zero_copy(request.scope) else None
    if first is not None and not choice.multipart:
        return PartsResponse(
            _regions([first]),
            media_type=f"{DICOM}; transfer-syntax={found[0].record.transfer_syntax_uid}",
            headers={"Content-Length": str(first.length)},
        )
    if not choice.multipart:
        outgoing = await core.outgoing(found[0], syntax, ALLOW_LOSSY, core.chunk_bytes)
        return StreamingResponse(
            await started(outgoing.chunks),
            media_type=f"{DICOM}; transfer-syntax={outgoing.transfer_syntax_uid}",
            headers={"Content-Length": str(outgoing.size)},
        )
    boundary = new_boundary()
    params = {} if syntax == AS_STORED else {"transfer-syntax": syntax}
    media_type = content_type(DICOM, boundary, **params)
    if first is not None and all(
        as_stored(syntax, instance.record.transfer_syntax_uid) for instance in found
    ):
        heads = [
            _part_head(
                instance,
                instance.record.transfer_syntax_uid,
                instance.record.size_bytes,
                boundary,
                number,
            )
            for number, instance in enumerate(found)
        ]
        length = sum(map(len, heads)) + sum(i.record.size_bytes for i in found)
        return PartsResponse(
            _stored_parts(core, found, heads, first, syntax, boundary),
            media_type=media_type,
            headers={"Content-Length": str(length + len(closing(boundary)))},
        )
    if first is not None:
        first.close()
    return StreamingResponse(
        await started(read_ahead(_instance_parts(core, found, syntax, boundary))),
        media_type=media_type,
    )


def _part_head(
    instance: StoredInstance, syntax_uid: str, size: int, boundary: str, number: int
) -> bytes:
    """What comes before an instance's bytes in a multipart body: the delimiter and headers."""
    record = instance.record
    headers = {
        "Content-Type": f"{DICOM}; transfer-syntax={syntax_uid}",
        "Content-Length": str(size),
        # What the gRPC API's InstanceHeader says, so that a client reading a retrieve
        # grant's URL has all of it (RFC 2046 5.1: other clients ignore the field).
        INSTANCE_HEADER: (
            f"{instance.study_uid}/{instance.series_uid}/{instance.sop_uid}; "
            f"sop-class={record.sop_class_uid}; version={record.version}"
        ),
    }
    return (b"\r\n" if number else b"") + part_header(boundary, headers)


async def _regions(regions: list[FileRegion]) -> AsyncIterator[Part]:
    """Regions already opened, each closed if the response ends before sending it."""
    try:
        for region in regions:
            yield region
    finally:
        for region in regions:
            region.close()


async def _stored_parts(
    core: RetrieveCore,
    found: list[StoredInstance],
    heads: list[bytes],
    first: FileRegion,
    syntax: str,
    boundary: str,
) -> AsyncIterator[Part]:
    """The parts of instances sent as stored: each head, then its file's region.

    The store that gave the first instance as a local file gives every one so; each region is
    the consumer's once yielded (it closes it), and the first is closed here if never yielded.
    """
    region: FileRegion | None = first
    try:
        for head, instance in zip(heads, found, strict=True):
            if region is None:
                region = core.file_region(instance, syntax)
            if region is None:
                raise RuntimeError(f"the file of instance {instance.sop_uid} is not a local file")
            yield head
            yield region
            region = None
        yield closing(boundary)
    finally:
        if region is not None:
            region.close()


async def _instance_parts(
    core: RetrieveCore, found: list[StoredInstance], syntax: str, boundary: str
) -> AsyncIterator[bytes]:
    for number, instance in enumerate(found):
        outgoing = await core.outgoing(instance, syntax, ALLOW_LOSSY, core.chunk_bytes)
        yield _part_head(instance, outgoing.transfer_syntax_uid, outgoing.size, boundary, number)
        async for data in outgoing.chunks:
            yield data
    yield closing(boundary)


# -- frames --------------------------------------------------------------------------------


def _frame_list(text: str) -> list[int]:
    numbers = []
    for item in text.split(","):
        if not item.strip().isdigit():
            raise invalid_argument(
                "frames", f"{text!r} is not a comma-separated list of frame numbers"
            )
        numbers.append(int(item))
    return numbers


async def retrieve_frames(request: Request) -> Response:
    """Frames of one instance: raw (``application/octet-stream``) or compressed image parts."""
    study, series, sop = _uids(request)
    choice = await negotiated(choose_frames, request.headers.get("accept"))
    core = _core(request)
    numbers = core.frame_numbers(_frame_list(request.path_params["frames"]), [])
    instance = core.instances(study, series, sop)[0]
    table = core.check_frames(instance, numbers, choice.transfer_syntax, ALLOW_LOSSY)
    syntax, frames = await core.frames(
        instance, numbers, table, choice.transfer_syntax, ALLOW_LOSSY
    )
    boundary = new_boundary()
    part_type = f"{choice.part_type}; transfer-syntax={syntax}"

    async def parts() -> AsyncIterator[bytes]:
        first = True
        async for _number, data in frames:
            headers = {"Content-Type": part_type, "Content-Length": str(len(data))}
            yield (b"" if first else b"\r\n") + part_header(boundary, headers)
            yield data
            first = False
        yield closing(boundary)

    return StreamingResponse(
        await started(parts()),
        media_type=content_type(choice.part_type, boundary, **{"transfer-syntax": syntax}),
    )


# -- rendered ------------------------------------------------------------------------------


def _int_param(request: Request, name: str) -> int:
    value = request.query_params.get(name, "")
    if not value:
        return 0
    if not value.isdigit():
        raise invalid_argument(name, f"{value!r} is not a whole number")
    return int(value)


def _window(request: Request) -> tuple[float, float] | None:
    value = request.query_params.get("window", "")
    if not value:
        return None
    parts = value.split(",")
    try:
        center, width = float(parts[0]), float(parts[1])
    except (ValueError, IndexError):
        raise invalid_argument("window", f"{value!r} is not center,width[,function]") from None
    if len(parts) > 2 and parts[2].strip().lower() not in ("", "linear"):
        raise invalid_argument("window", f"function {parts[2]!r} is not supported (linear)")
    return center, width


def _max_size(request: Request) -> int:
    value = request.query_params.get("viewport", "")
    if not value:
        return 0
    sizes = value.split(",")
    if not all(s.strip().isdigit() for s in sizes[:2]):
        raise invalid_argument("viewport", f"{value!r} is not width,height")
    return max(int(s) for s in sizes[:2])


async def retrieve_rendered(request: Request) -> Response:
    """One frame (the first, or the one named) rendered as JPEG or PNG."""
    study, series, sop = _uids(request)
    media_type = await negotiated(choose_rendered, request.headers.get("accept"))
    frame = 0
    if "frame" in request.path_params:
        frame = _frame_list(request.path_params["frame"])[0]
    options = RenderOptions(
        frame_number=frame,
        media_type=media_type,
        quality=_int_param(request, "quality"),
        window=_window(request),
        max_size=_max_size(request),
    )
    core = _core(request)
    instance = core.instances(study, series, sop)[0]
    media_type, image = await core.rendered(instance, options)
    return Response(image, media_type=media_type)


# -- metadata ------------------------------------------------------------------------------


def _if_none_match(request: Request) -> list[str]:
    header = request.headers.get("if-none-match", "")
    return [tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()]


def absolute_bulk_data_uris(obj: Any, root: str) -> None:
    """Make the bulk data URIs of a DICOM JSON object absolute, on the gateway's root."""
    if isinstance(obj, dict):
        uri = obj.get("BulkDataURI")
        if isinstance(uri, str) and "://" not in uri:
            obj["BulkDataURI"] = f"{root}/{uri}"
        for value in obj.values():
            if isinstance(value, dict | list):
                absolute_bulk_data_uris(value, root)
    elif isinstance(obj, list):
        for item in obj:
            absolute_bulk_data_uris(item, root)


async def retrieve_metadata(request: Request) -> Response:
    """The metadata of a study, series or instance as DICOM JSON, with an ETag.

    Reading the metadata and writing it as DICOM JSON take time in proportion to its elements
    (a study may have hundreds of thousands): both run in a thread, so that the event loop
    serves other requests meanwhile.
    """
    study, series, sop = _uids(request)
    media_type = await negotiated(choose_json, request.headers.get("accept"))
    tag, body = await asyncio.to_thread(
        _metadata_json,
        _core(request),
        _if_none_match(request),
        service_root(request),
        study,
        series,
        sop,
    )
    if body is None:
        return Response(status_code=304, headers={"ETag": tag})
    return Response(body, media_type=media_type, headers={"ETag": tag})


def _metadata_json(
    core: RetrieveCore,
    if_none_match: Collection[str],
    root: str,
    study: str,
    series: str,
    sop: str,
) -> tuple[str, bytes | None]:
    """The ETag and the DICOM JSON of the metadata (``None`` when the ETag matches)."""
    tag, datasets = core.metadata_unless(if_none_match, study, series, sop)
    if datasets is None:
        return tag, None
    objects = []
    for dataset in datasets:
        obj = to_json(dataset_pb2.Dataset.FromString(dataset))
        absolute_bulk_data_uris(obj, root)
        objects.append(obj)
    return tag, dicom_json.encode(objects)


# -- bulk data -----------------------------------------------------------------------------


async def retrieve_bulk_data(request: Request) -> Response:
    """The value a bulk data URI names, as an ``application/octet-stream`` part."""
    study, series, sop = _uids(request)
    multipart = await negotiated(choose_bulk_data, request.headers.get("accept"))
    core = _core(request)
    instance = core.instances(study, series, sop)[0]
    value = await core.bulk_data(instance, request.path_params["path"], core.chunk_bytes)
    if not multipart:
        return StreamingResponse(
            await started(value.chunks),
            media_type=OCTET_STREAM,
            headers={"Content-Length": str(value.size)},
        )
    boundary = new_boundary()
    headers = {"Content-Type": OCTET_STREAM, "Content-Length": str(value.size)}

    async def body() -> AsyncIterator[bytes]:
        yield part_header(boundary, headers)
        async for data in value.chunks:
            yield data
        yield closing(boundary)

    return StreamingResponse(await started(body()), media_type=content_type(OCTET_STREAM, boundary))


_STUDY = "/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"

ROUTES = [
    Route(_STUDY, retrieve_instances, methods=["GET"]),
    Route(_SERIES, retrieve_instances, methods=["GET"]),
    Route(_INSTANCE, retrieve_instances, methods=["GET"]),
    Route(_STUDY + "/metadata", retrieve_metadata, methods=["GET"]),
    Route(_SERIES + "/metadata", retrieve_metadata, methods=["GET"]),
    Route(_INSTANCE + "/metadata", retrieve_metadata, methods=["GET"]),
    Route(_INSTANCE + "/frames/{frames}", retrieve_frames, methods=["GET"]),
    Route(_INSTANCE + "/rendered", retrieve_rendered, methods=["GET"]),
    Route(_INSTANCE + "/frames/{frame}/rendered", retrieve_rendered, methods=["GET"]),
    Route(_INSTANCE + "/bulkdata/{path}", retrieve_bulk_data, methods=["GET"]),
]
