"""UPS-RS: workitems over HTTP (PS3.18 §11), on the same workitem core as the gRPC API.

Each route drives one :class:`~dicomrpc_server.ups.service.WorkitemCore` call exactly as the
gRPC adapter does; this module only reads the request (URI template, query string, DICOM JSON
body) and writes the response (status, ``Location``, ``Warning``, DICOM JSON). Every rule of the
state machine and of the attributes is the core's; core errors become HTTP statuses in
:mod:`.errors`, nowhere else.

Two URI templates are written by clients in the field for create and update, so both are read:
``POST /workitems?{uid}`` and ``?AffectedSOPInstanceUID={uid}``; ``POST /workitems/{uid}?{txn}``
and ``?transaction={txn}`` (also ``transaction-uid=`` in either case, as earlier editions of
PS3.18 spelled it). A DICOM JSON body is one data set, or an array holding exactly one, as the
PS3.18 examples write it.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote_plus

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomrpc.datasets import from_json, parse_json, to_json
from dicomrpc.v1 import dataset_pb2
from dicomrpc_server.dicom.uids import check_request_uid
from dicomrpc_server.dicomweb import dicom_json
from dicomrpc_server.dicomweb.context import archive_of, service_root
from dicomrpc_server.dicomweb.errors import unsupported_media_type, warning_header
from dicomrpc_server.dicomweb.media import DICOM_JSON, choose_json, negotiated, parse_media_type
from dicomrpc_server.dicomweb.qido import query_parameters
from dicomrpc_server.errors import Code, ServiceError, invalid_argument
from dicomrpc_server.paths import workitem_path
from dicomrpc_server.ups.service import (
    CONTACT_NAME,
    CONTACT_URI,
    REASON,
    STATE,
    TRANSACTION,
    Outcome,
    WorkitemCore,
    WorkitemQuery,
)
from dicomrpc_server.ups.states import State
from dicomrpc_server.ups.values import text

# The media types a workitem body may be sent as: DICOM JSON, and plain JSON as the first
# edition of UPS-RS named it.
_BODY_TYPES = (DICOM_JSON, "application/json")
_CREATE_UID = "affectedsopinstanceuid"
_TRANSACTION = ("transaction", "transaction-uid")


def _core(request: Request) -> WorkitemCore:
    return archive_of(request).workitems


def _headers(outcome: Outcome) -> dict[str, str]:
    """The ``Warning`` header of a change the core made with a warning status (PS3.18 §11)."""
    if not outcome.warning_status:
        return {}
    message = f"{outcome.warning_message} (0x{outcome.warning_status:04X})"
    return {"Warning": warning_header(message)}


def _json_response(body: list[dict[str, Any]], media_type: str) -> Response:
    return Response(dicom_json.encode(body), media_type=media_type)


# -- request parts -------------------------------------------------------------------------


def _uid_parameter(request: Request, names: tuple[str, ...], field: str) -> str:
    """The UID a query string carries, bare (``?{uid}``) or as one of ``names`` (any case).

    Any other parameter, or two UIDs, is refused: a UID silently dropped would create a
    workitem under another UID, or update without the lock the client meant to give. A UID no
    request may name is refused under its key (``field`` for the bare form).
    """
    found: list[tuple[str, str]] = []
    for item in filter(None, request.url.query.split("&")):
        name, equals, value = item.partition("=")
        if not equals:
            found.append((field, unquote_plus(name)))
        elif unquote_plus(name).lower() in names:
            found.append((unquote_plus(name), unquote_plus(value)))
        else:
            raise invalid_argument(
                unquote_plus(name), f"is not a parameter of this resource; give the {field}"
            )
    if len(found) > 1:
        raise invalid_argument(field, f"is given {len(found)} times")
    if not found:
        return ""
    key, uid = found[0]
    return check_request_uid(key, uid.strip())


async def _body(request: Request, required: bool = True) -> dataset_pb2.Dataset | None:
    """The DICOM JSON data set of the request body (None when it is empty and not required)."""
    limit = archive_of(request).settings.max_chunk_bytes
    content = bytearray()
    async for chunk in request.stream():
        content.extend(chunk)
        if len(content) > limit:
            raise ServiceError(
                Code.RESOURCE_EXHAUSTED,
                "LIMIT_EXCEEDED",
                f"a workitem body may hold at most {limit} bytes",
                metadata={"limit": str(limit)},
            )
    if not content.strip() and not required:
        return None
    header = request.headers.get("content-type", "")
    if (await negotiated(parse_media_type, header)).type not in _BODY_TYPES:
        raise unsupported_media_type(f"{header!r} is not accepted; send {DICOM_JSON}")
    try:
        obj = parse_json(bytes(content))
    except ValueError as exc:
        raise invalid_argument("body", f"is not JSON: {exc}") from None
    if isinstance(obj, list):
        if len(obj) != 1:
            raise invalid_argument("body", f"holds {len(obj)} data sets; send one workitem")
        obj = obj[0]
    if not isinstance(obj, dict):
        raise invalid_argument("body", f"is a JSON {type(obj).__name__}, not a data set")
    try:
        return from_json(obj)
    except ValueError as exc:
        raise invalid_argument("body", str(exc)) from None


async def _required_body(request: Request) -> dataset_pb2.Dataset:
    dataset = await _body(request)
    assert dataset is not None
    return dataset


def _requested_state(dataset: dataset_pb2.Dataset) -> State:
    """The ProcedureStepState a change-state body asks for."""
    value = text(dataset, STATE)
    try:
        return State(value)
    except ValueError:
        raise invalid_argument(
            "ProcedureStepState", f"{value!r} is not IN PROGRESS, COMPLETED or CANCELED"
        ) from None


# -- routes --------------------------------------------------------------------------------


async def create_workitem(request: Request) -> Response:
    """Create a SCHEDULED workitem: 201 with its ``Location`` (PS3.18 §11.4)."""
    uid = _uid_parameter(request, (_CREATE_UID,), "AffectedSOPInstanceUID")
    root = service_root(request)  # before the workitem is created: a bad Host is refused first
    dataset = await _required_body(request)
    outcome = await _core(request).create(dataset, uid)
    location = f"{root}/{workitem_path(outcome.workitem_uid)}"
    headers = {"Location": location, **_headers(outcome)}
    return Response(status_code=201, headers=headers)


async def retrieve_workitem(request: Request) -> Response:
    """A workitem as DICOM JSON, never with its Transaction UID (PS3.18 §11.5)."""
    media_type = await negotiated(choose_json, request.headers.get("accept"))
    dataset, _ = _core(request).retrieve(request.path_params["workitem"])
    return _json_response([to_json(dataset)], media_type)


async def update_workitem(request: Request) -> Response:
    """Set attributes of a workitem, with its Transaction UID once claimed (PS3.18 §11.6)."""
    transaction = _uid_parameter(request, _TRANSACTION, "transaction")
    dataset = await _required_body(request)
    outcome = await _core(request).update(request.path_params["workitem"], transaction, dataset)
    return Response(status_code=200, headers=_headers(outcome))


async def change_state(request: Request) -> Response:
    """Claim, complete or cancel a workitem (PS3.18 §11.7).

    The body carries ProcedureStepState and TransactionUID, as the N-ACTION Change UPS State
    does; other attributes are set with an update first.
    """
    dataset = await _required_body(request)
    requested = _requested_state(dataset)
    transaction = check_request_uid("TransactionUID", text(dataset, TRANSACTION))
    outcome = await _core(request).change_state(
        request.path_params["workitem"], requested, transaction
    )
    return Response(status_code=200, headers=_headers(outcome))


async def request_cancellation(request: Request) -> Response:
    """Ask for a workitem to be canceled: 202, as PS3.18 §11.8 answers.

    The optional body carries ReasonForCancellation, ContactDisplayName and ContactURI. A
    workitem already CANCELED answers 202 with the 0xB304 ``Warning`` (PS3.18 §11.8.3.2).
    """
    dataset = await _body(request, required=False) or dataset_pb2.Dataset()
    outcome = await _core(request).request_cancellation(
        request.path_params["workitem"],
        text(dataset, REASON),
        text(dataset, CONTACT_NAME),
        text(dataset, CONTACT_URI),
    )
    return Response(status_code=202, headers=_headers(outcome))


async def search_workitems(request: Request) -> Response:
    """Search workitems: a DICOM JSON array, or 204 when nothing matches (PS3.18 §11.9)."""
    media_type = await negotiated(choose_json, request.headers.get("accept"))
    params = query_parameters(request)
    query = WorkitemQuery(
        match=params.match,
        include_fields=params.include_fields,
        fuzzy=params.fuzzy,
        limit=params.limit,
        offset=params.offset,
    )
    core = _core(request)

    def page() -> bytes | None:
        results = core.search(query)
        if not results:
            return None
        return dicom_json.encode([to_json(d) for d in results])

    # Matching and writing a page of up to a thousand workitems: off the event loop.
    body = await asyncio.to_thread(page)
    if body is None:
        return Response(status_code=204)
    return Response(body, media_type=media_type)


ROUTES = [
    Route("/workitems", create_workitem, methods=["POST"]),
    Route("/workitems", search_workitems, methods=["GET"]),
    Route("/workitems/{workitem}", retrieve_workitem, methods=["GET"]),
    Route("/workitems/{workitem}", update_workitem, methods=["POST"]),
    Route("/workitems/{workitem}/state", change_state, methods=["PUT"]),
    Route("/workitems/{workitem}/cancelrequest", request_cancellation, methods=["POST"]),
]
