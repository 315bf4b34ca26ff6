"""The one mapping from core errors to HTTP responses.

Core errors carry a canonical code (named as gRPC names them); the gateway maps that code to an
HTTP status here and nowhere else. Two statuses belong to HTTP alone and are told apart by the
request field at fault: a ``Content-Type`` the gateway cannot read (415) and an ``Accept`` it
cannot satisfy (406). One workitem status is split by HTTP where gRPC has one code: a 0xC301
(Transaction UID not correct) is 400 when the UID is missing (a bad request) and 409 when it
is wrong (a conflict with the workitem's lock), told apart by its ``transaction_uid_problem``.
A lack of space (RESOURCE_EXHAUSTED with reason ``STORAGE_FULL``) is 507 Insufficient Storage
(RFC 4918 §11.5), where another exhausted resource is a request too large (413). A ``Host`` the
server does not go by is 421 Misdirected Request (RFC 9110 §15.5.20). Refused credentials
carry the ``WWW-Authenticate`` challenge of RFC 6750 §3: none named for a request without
any (§3.1), ``invalid_token`` for a bad one (401), ``insufficient_scope`` with the scope for a
caller that lacks it (403).
HTTP also has statuses of its own for two limits of the request head: a request target over
``http_max_url_bytes`` is 414 (RFC 9110 §15.5.15), a head over ``http_max_header_bytes`` is 431
(RFC 6585 §5); a request that does not arrive in time is 408 (RFC 9110 §15.5.9).
"""

from __future__ import annotations

import http
import json
import re

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dicomrpc_server.access.hosts import MISDIRECTED
from dicomrpc_server.access.tokens import TOKEN_PROBLEM
from dicomrpc_server.errors import Code, ServiceError, invalid_argument
from dicomrpc_server.storage.space import STORAGE_FULL
from dicomrpc_server.ups.states import TRANSACTION_UID_PROBLEM

# What a header value cannot hold (RFC 9110 §5.5): control characters, and here anything
# outside printable ASCII.
_NOT_HEADER_TEXT = re.compile(r"[^\x20-\x7e]")

CONTENT_TYPE_FIELD = "Content-Type"
ACCEPT_FIELD = "Accept"

_STATUSES: dict[Code, int] = {
    Code.INVALID_ARGUMENT: 400,
    Code.OUT_OF_RANGE: 400,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.FAILED_PRECONDITION: 409,
    Code.RESOURCE_EXHAUSTED: 413,
    Code.DEADLINE_EXCEEDED: 408,
    Code.UNAUTHENTICATED: 401,
    Code.PERMISSION_DENIED: 403,
    Code.UNAVAILABLE: 503,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
}
_LIMIT_STATUSES = {"http_max_url_bytes": 414, "http_max_header_bytes": 431}

# A Warning header's text: what it keeps of a message (RFC 9111 §5.5 sets no bound; proxies and
# clients cap header lines at a few KiB, and the JSON body has the message whole).
MAX_WARNING_TEXT = 512


def http_status(error: ServiceError) -> int:
    """The HTTP status of a core error."""
    if error.reason == "LIMIT_EXCEEDED" and error.metadata.get("limit") in _LIMIT_STATUSES:
        return _LIMIT_STATUSES[error.metadata["limit"]]
    fields = {v.field for v in error.violations}
    if error.code is Code.INVALID_ARGUMENT and CONTENT_TYPE_FIELD in fields:
        return 415
    if error.metadata.get("host_problem") == MISDIRECTED:
        return 421
    if ACCEPT_FIELD in fields or error.reason == "TRANSFER_SYNTAX_UNSUPPORTED":
        return 406
    if error.metadata.get(TRANSACTION_UID_PROBLEM) == "missing":
        return 400
    if error.reason == STORAGE_FULL:
        return 507
    return _STATUSES[error.code]


def unsupported_media_type(description: str) -> ServiceError:
    """The error of a request body in a media type the gateway does not take (415)."""
    return invalid_argument(CONTENT_TYPE_FIELD, description)


def not_acceptable(description: str) -> ServiceError:
    """The error of an Accept header that names nothing the gateway can send (406)."""
    return invalid_argument(ACCEPT_FIELD, description)


def warning_header(message: str) -> str:
    """A ``Warning`` header value (RFC 9111 §5.5) carrying ``message`` as printable ASCII.

    Messages come from requests, data and codecs (a decoder's error may span lines), and a
    control character in a header would make the server drop the response: white space (line
    breaks included) becomes one space, any other character outside printable ASCII ``?``; the
    text is cut to :data:`MAX_WARNING_TEXT` characters and written as a quoted-string, with
    ``"`` and ``\\`` escaped.
    """
    text = _NOT_HEADER_TEXT.sub("?", " ".join(message.split()))
    if len(text) > MAX_WARNING_TEXT:
        text = text[: MAX_WARNING_TEXT - 3] + "..."
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'299 dicomrpc "{text}"'


def _quoted(text: str) -> str:
    """An RFC 9110 quoted-string of ``text`` in ASCII."""
    return warning_header(text).removeprefix("299 dicomrpc ")


def challenge(error: ServiceError) -> str | None:
    """The ``WWW-Authenticate`` value of a refused request (RFC 6750 §3), or ``None``."""
    if error.code is Code.UNAUTHENTICATED:
        if error.metadata.get(TOKEN_PROBLEM) == "missing":
            return 'Bearer realm="dicomrpc"'
        return (
            f'Bearer realm="dicomrpc", error="invalid_token", '
            f"error_description={_quoted(error.message)}"
        )
    if error.code is Code.PERMISSION_DENIED and "scope" in error.metadata:
        return (
            f'Bearer realm="dicomrpc", error="insufficient_scope", '
            f"scope={_quoted(error.metadata['scope'])}"
        )
    return None


def error_body(error: ServiceError) -> dict[str, object]:
    """The JSON body of a failed request: every detail the gRPC status carries."""
    body: dict[str, object] = {
        "code": error.code.value,
        "reason": error.reason,
        "message": error.message,
        "metadata": dict(error.metadata),
    }
    if error.dicom_status is not None:
        body["dicomStatus"] = error.dicom_status
    if error.violations:
        body["violations"] = [
            {"field": v.field, "description": v.description} for v in error.violations
        ]
    return body


def error_response(error: ServiceError) -> Response:
    """The response of a failed request: the status, a JSON body and a Warning header.

    The body (:func:`error_body`) repeats every detail the gRPC status carries (reason, DICOM
    status, metadata, field violations); the ``Warning`` header (PS3.18 §8.1.2.1) carries the
    message for clients that only look at headers; a refused credential adds the
    ``WWW-Authenticate`` challenge.
    """
    headers = {"Warning": warning_header(error.message)}
    authenticate = challenge(error)
    if authenticate is not None:
        headers["WWW-Authenticate"] = authenticate
    return JSONResponse(error_body(error), status_code=http_status(error), headers=headers)


def closing_error_response(error: ServiceError) -> bytes:
    """The bytes of :func:`error_response` with ``Connection: close``, for the connection itself.

    What answers a request refused before any application sees it (a head too large or too
    slow, a connection over the cap) writes these to the socket and closes it.
    """
    status = http_status(error)
    body = json.dumps(error_body(error), separators=(",", ":")).encode()
    head = (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        f"warning: {warning_header(error.message)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


async def handle_service_error(request: Request, exc: Exception) -> Response:
    """Starlette's exception handler for :class:`ServiceError`."""
    assert isinstance(exc, ServiceError)
    return error_response(exc)
