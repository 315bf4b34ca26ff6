"""STOW-RS: ``POST /studies[/{study}]`` with a multipart/related body of DICOM instances.

Each part goes to the store core as it arrives (the body is never held whole), through the same
:class:`~dicomrpc_server.store.request.StoreRequest` the gRPC adapter drives; this module only
translates parts into instances and results into the PS3.18 response data set.

A body that ends or breaks inside a part (a client cut off, a missing close delimiter, a body
that stops arriving for ``http_body_timeout_s``) stores none of that part: the instances of the
complete parts before it are stored and reported, and the incomplete one is reported as failed
(272). A body without one complete part fails with 400 (408 when it stopped arriving).
However the request ends, no upload of it is left behind (see ``StoreRequest``). A request none
of whose instances was stored, one or more for lack of space (FailureReason 0xA700), answers 507
(RFC 4918 §11.5) with the usual response data set.

A body of more than ``http_max_stow_parts`` parts is answered 413 when the part past the limit
begins: the parts before it are stored as usual (the error's metadata counts the instances
stored), nothing of the rest is read.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from dicomrpc_server.dicomweb import dicom_json
from dicomrpc_server.dicomweb.context import archive_of, service_root
from dicomrpc_server.dicomweb.errors import http_status, unsupported_media_type, warning_header
from dicomrpc_server.dicomweb.media import (
    DICOM,
    DICOM_JSON,
    MULTIPART,
    MediaType,
    negotiated,
    parse_media_type,
)
from dicomrpc_server.dicomweb.multipart import (
    MultipartReader,
    PartData,
    PartStart,
    malformed,
)
from dicomrpc_server.errors import ServiceError, limit_exceeded
from dicomrpc_server.paths import study_path
from dicomrpc_server.store.ingest import InstanceResult, Outcome
from dicomrpc_server.store.request import (
    StoreRequest,
    StoreStatus,
    check_study_restriction,
    overall_status,
    storage_full_refusal,
)

_HTTP_STATUS = {
    StoreStatus.ALL_STORED: 200,
    StoreStatus.PARTIALLY_STORED: 202,
    StoreStatus.NONE_STORED: 409,
}
PROCESSING_FAILURE = 272
# Results written into the response on the event loop; more are written in a thread.
INLINE_RESULTS = 100


async def _boundary(request: Request) -> str:
    """The boundary of a STOW body, after checking that it is multipart/related DICOM."""
    header = request.headers.get("content-type", "")
    return boundary_of(header, await negotiated(parse_media_type, header))


def boundary_of(header: str, media: MediaType) -> str:
    """The boundary of a STOW ``Content-Type`` (``media``, parsed from ``header``)."""
    if media.type != MULTIPART:
        raise unsupported_media_type(
            f'{header!r} is not accepted; send multipart/related; type="{DICOM}"'
        )
    part_type = media.params.get("type", DICOM).lower()
    if part_type != DICOM:
        raise unsupported_media_type(
            f"parts of type {part_type!r} are not accepted; send {DICOM} instances"
        )
    boundary = media.params.get("boundary", "")
    if not boundary:
        raise malformed("the Content-Type has no boundary parameter")
    return boundary


def _declared_size(headers: dict[str, str]) -> int:
    value = headers.get("content-length", "")
    return int(value) if value.isdigit() else 0


class _TooManyParts(Exception):
    """The body has more parts than a request may carry."""


async def _receive(
    request: Request, reader: MultipartReader, store: StoreRequest, max_parts: int
) -> ServiceError | None:
    """Feed the body to the store, part by part; return what broke it, if anything did.

    Raises :class:`_TooManyParts` when a part past ``max_parts`` begins (nothing of it is
    stored).
    """
    number = 0  # the part an event belongs to (the reader has counted a whole chunk's parts)
    try:
        async for chunk in request.stream():
            for event in reader.feed(chunk):
                if isinstance(event, PartStart):
                    number += 1
                    if number > max_parts:
                        raise _TooManyParts
                    await store.begin(f"part {number}", _declared_size(event.headers))
                elif isinstance(event, PartData):
                    store.write(event.data)
    except ServiceError as error:
        return error
    except ClientDisconnect:
        return malformed(f"the client disconnected inside part {reader.parts}")
    if reader.error is not None:  # after the parts the last chunk completed
        return reader.error
    if reader.parts == 0:
        return malformed(f"no part was found (is the boundary {reader.boundary!r} right?)")
    if not reader.complete:
        where = f"inside part {reader.parts}" if reader.in_part else "after the last part"
        return malformed(f"the body ended {where}, without the close delimiter")
    return None


def _too_many_parts(limit: int, results: list[InstanceResult]) -> ServiceError:
    stored = sum(r.outcome is not Outcome.FAILED for r in results)
    return limit_exceeded(
        "http_max_stow_parts",
        limit,
        f"the body has more than {limit} parts, the most one request may carry on this "
        f"server: the first {limit} were processed ({stored} instances stored), the rest was "
        "not read; send the others in another request",
        stored=str(stored),
        processed=str(len(results)),
    )


async def store_instances(request: Request) -> Response:
    """Store every instance of the body; answer with the PS3.18 store response."""
    study = request.path_params.get("study", "")
    boundary = await _boundary(request)
    check_study_restriction(study, "study")
    root = service_root(request)  # before anything is stored: a bad Host is refused first
    archive = archive_of(request)
    max_parts = archive.settings.http_max_stow_parts
    reader = MultipartReader(boundary)
    async with StoreRequest(archive.store, study) as store:
        try:
            problem = await _receive(request, reader, store, max_parts)
        except _TooManyParts:
            raise _too_many_parts(max_parts, await store.finish()) from None
        cut_part = reader.parts if reader.in_part else 0
        if cut_part:
            store.drop_current()
        complete_parts = reader.parts - (1 if cut_part else 0)
        if problem is not None and complete_parts == 0:
            raise problem
        results = await store.finish()
    status = _HTTP_STATUS[overall_status(results)]
    headers: dict[str, str] = {}
    if problem is not None:
        status = 202 if status == 200 else status
        headers["Warning"] = warning_header(problem.message)
    refusal = storage_full_refusal(results)
    if refusal is not None:
        status = http_status(refusal)
        headers["Warning"] = warning_header(refusal.message)
    build = functools.partial(_response_body, root, study, results, cut_part)
    # Writing the response takes time in proportion to the instances: many are written in a
    # thread, so that the event loop serves other requests meanwhile.
    body = await asyncio.to_thread(build) if len(results) > INLINE_RESULTS else build()
    return Response(body, status_code=status, media_type=DICOM_JSON, headers=headers)


def _response_body(root: str, study: str, results: list[InstanceResult], cut_part: int) -> bytes:
    dataset = response_dataset(root, study, results, cut_part)
    return dicom_json.encode(dataset, ensure_ascii=False, allow_nan=False)


def _element(vr: str, *values: Any) -> dict[str, Any]:
    present = [v for v in values if v not in ("", None)]
    return {"vr": vr, "Value": present} if present else {"vr": vr}


def response_dataset(
    root: str, study: str, results: list[InstanceResult], cut_part: int = 0
) -> dict[str, Any]:
    """The store response (PS3.18 §10.5.3): stored and failed instances, warnings, URLs."""
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for result in results:
        item = {
            "00081150": _element("UI", result.sop_class_uid),
            "00081155": _element("UI", result.sop_uid),
        }
        if result.outcome is Outcome.FAILED:
            assert result.failure is not None
            item["00081197"] = _element("US", result.failure_reason)
            item["00000902"] = _element("LO", result.failure.message[:64])
            failed.append(item)
            continue
        item["00081190"] = _element("UR", f"{root}/{result.retrieve_location}")
        if result.outcome is Outcome.STORED_WITH_WARNINGS:
            item["00081196"] = _element("US", result.warning_reason or 1)
            item["00741048"] = {
                "vr": "SQ",
                "Value": [
                    {"00000902": _element("LO", _comment(p.keyword or p.tag, p.comment))}
                    for p in result.problems
                ],
            }
        referenced.append(item)
    if cut_part:
        failed.append(
            {
                "00081197": _element("US", PROCESSING_FAILURE),
                "00000902": _element("LO", f"part {cut_part} is incomplete"),
            }
        )
    body: dict[str, Any] = {}
    studies = {r.study_uid for r in results if r.outcome is not Outcome.FAILED}
    if study or len(studies) == 1:
        body["00081190"] = _element("UR", f"{root}/{study_path(study or studies.pop())}")
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    return body


def _comment(name: str, comment: str) -> str:
    """An ErrorComment (LO: at most 64 characters) naming the attribute first."""
    text = f"{name}: {comment}" if name else comment
    return text[:64]


ROUTES = [
    Route("/studies", store_instances, methods=["POST"]),
    Route("/studies/{study}", store_instances, methods=["POST"]),
]
