"""The DICOMweb adapter's audit hook: one record per request of the audit table.

The outermost middleware, so that it sees the requests that middleware inside it refuses (an
authentication check, say) as well as those the routes answer. The route is matched here from
:data:`dicomrpc_server.audit.table.HTTP` (and ``CONSOLE``, the console's API), the one table
of what is audited, so that a request refused before routing is still recorded with its action
and UIDs. UIDs are read from the path,
a search's terms from the query string, and what a call produced from its response: a STOW-RS
response data set (PS3.18 §10.5.3) lists the instances stored and failed, a created workitem's
``Location`` names it. The outcome is the response status, with the reason and message of the
error body the gateway answers failures with.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomrpc_server.access.caller import ANONYMOUS, Caller
from dicomrpc_server.audit.auditor import Auditor
from dicomrpc_server.audit.records import (
    AuditRecord,
    FailedInstance,
    InstanceRef,
    Outcome,
    Patient,
)
from dicomrpc_server.audit.table import CONSOLE, HTTP, Entry
from dicomrpc_server.console import API_PREFIX
from dicomrpc_server.dicomweb.auth import address_of
from dicomrpc_server.dicomweb.auth import caller_of as authenticated_caller
from dicomrpc_server.dicomweb.context import PREFIX

log = logging.getLogger("dicomrpc.audit")

# The most response bytes read for an outcome or a store's results (a STOW response names
# each instance in about 300 bytes).
_BODY_LIMIT = 32 * 1024 * 1024
# What an error status means when its body does not say (the inverse of .errors).
_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    406: "INVALID_ARGUMENT",
    409: "FAILED_PRECONDITION",
    413: "RESOURCE_EXHAUSTED",
    415: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    507: "RESOURCE_EXHAUSTED",
}
# STOW-RS response attributes (PS3.18 §10.5.3, PS3.3 C.12.1 and C.12.4.)
_REFERENCED_SOPS, _FAILED_SOPS = "00081199", "00081198"
_SOP_CLASS, _SOP_INSTANCE, _RETRIEVE_URL, _FAILURE = "00081150", "00081155", "00081190", "00081197"
_INSTANCE_URL = re.compile(r"/studies/([^/]+)/series/([^/]+)/instances/([^/]+)$")

_ROUTES = [
    (method, compile_path(PREFIX + template)[0], entry)
    for (method, template), entry in HTTP.items()
] + [
    (method, compile_path(API_PREFIX + template)[0], entry)
    for (method, template), entry in CONSOLE.items()
]


def caller_of(scope: Scope) -> Caller:
    """Who is calling, as the access check admitted or refused them.

    The check sets it while the request runs; a request it never saw is an anonymous caller at
    the client's address.
    """
    caller = authenticated_caller(scope)
    if caller is not None:
        return caller
    return Caller(ANONYMOUS, ANONYMOUS, frozenset(), address_of(scope))


def match_route(method: str, path: str) -> tuple[Entry, dict[str, str]] | None:
    """The table entry of a request and its path parameters, or None when it has none."""
    method = "GET" if method == "HEAD" else method
    for route_method, pattern, entry in _ROUTES:
        if route_method == method:
            found = pattern.match(path)
            if found is not None:
                return entry, found.groupdict()
    return None


def _merged(pairs: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Query parameters with the values of a repeated one joined by commas."""
    merged: dict[str, list[str]] = {}
    for name, value in pairs:
        merged.setdefault(name, []).append(value)
    return tuple((name, ",".join(values)) for name, values in merged.items())


def _first(item: dict[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _stored(body: Any) -> tuple[tuple[InstanceRef, ...], tuple[FailedInstance, ...]]:
    """The instances a STOW-RS response data set reports stored and failed."""
    stored, failed = [], []
    for item in body.get(_REFERENCED_SOPS, {}).get("Value", []):
        where = _INSTANCE_URL.search(_first(item, _RETRIEVE_URL))
        study, series = (where.group(1), where.group(2)) if where else ("", "")
        stored.append(
            InstanceRef(study, series, _first(item, _SOP_INSTANCE), _first(item, _SOP_CLASS))
        )
    for item in body.get(_FAILED_SOPS, {}).get("Value", []):
        reason = _first(item, _FAILURE)
        failed.append(
            FailedInstance(
                _first(item, _SOP_INSTANCE),
                _first(item, _SOP_CLASS),
                failure_reason=int(reason) if reason.isdigit() else 0,
            )
        )
    return tuple(stored), tuple(failed)


class _Response:
    """What the audit needs of a response: its status, its headers, and a bounded body."""

    def __init__(self, keep_body: bool) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._keep_body = keep_body
        self.body = bytearray()

    def see(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            self.headers = list(message.get("headers", []))
            return
        keep = self._keep_body or self.status >= 400
        if message["type"] == "http.response.body" and keep and len(self.body) < _BODY_LIMIT:
            self.body += message.get("body", b"")

    def header(self, name: bytes) -> str:
        for key, value in self.headers:
            if key.lower() == name:
                return value.decode("latin-1")
        return ""

    def json(self) -> Any:
        try:
            return json.loads(bytes(self.body))
        except ValueError:
            return None


def _outcome(response: _Response, body: Any, error: BaseException | None) -> Outcome:
    if error is not None and response.status < 400:
        gone = isinstance(error, (asyncio.CancelledError, ClientDisconnect))
        return Outcome("CANCELLED" if gone else "INTERNAL", "", str(error) or type(error).__name__)
    if 0 < response.status < 400:
        return Outcome()
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        return Outcome(body["code"], str(body.get("reason", "")), str(body.get("message", "")))
    if isinstance(body, dict) and (_REFERENCED_SOPS in body or _FAILED_SOPS in body):
        return Outcome()  # a store answered per instance (409, 507): the failures are listed
    return Outcome(_CODES.get(response.status, "INTERNAL" if response.status else "UNKNOWN"))


def _record(
    auditor: Auditor,
    scope: Scope,
    entry: Entry,
    params: dict[str, str],
    caller: Caller,
    response: _Response,
    error: BaseException | None,
    patients: tuple[tuple[str, Patient], ...],
) -> AuditRecord:
    body = response.json() if response.body else None
    instances: tuple[InstanceRef, ...] = ()
    failed: tuple[FailedInstance, ...] = ()
    workitem = ""
    query: tuple[tuple[str, str], ...] = ()
    if entry.uids:
        if params.get("study"):
            instances = (
                InstanceRef(params["study"], params.get("series", ""), params.get("instance", "")),
            )
        workitem = params.get("workitem", "")
    if entry.query:
        text = scope.get("query_string", b"").decode("latin-1")
        query = _merged(parse_qsl(text, keep_blank_values=True))
    if entry.results and isinstance(body, dict):
        instances, failed = _stored(body)
        patients = auditor.patients_of(i.study for i in instances)
    if entry.results and not workitem and 200 <= response.status < 300:
        location = response.header(b"location")
        workitem = location.rstrip("/").rpartition("/")[2] if "/workitems/" in location else ""
    return AuditRecord(
        time=datetime.now(UTC),
        caller=caller,
        action=entry.action,
        adapter="http",
        endpoint=f"{scope['method']} {scope['path']}",
        outcome=_outcome(response, body, error),
        instances=instances,
        workitem=workitem,
        query=query,
        failed=failed,
        patients=patients,
    )


class AuditMiddleware:
    """ASGI middleware that audits every request the audit table lists, however it ends.

    Parameters
    ----------
    app
        The application inside.
    auditor
        Where records go.
    """

    def __init__(self, app: ASGIApp, auditor: Auditor) -> None:
        self.app = app
        self._auditor = auditor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request, then audit it."""
        found = match_route(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        entry, params = found
        # Read before the request runs: a delete removes what names the patient.
        patients = self._auditor.patients_of([params.get("study", "")]) if entry.uids else ()
        response = _Response(keep_body=entry.results)

        async def watching_send(message: Message) -> None:
            response.see(message)
            await send(message)

        error: BaseException | None = None
        try:
            await self.app(scope, receive, watching_send)
        except BaseException as exc:
            error = exc
            raise
        finally:
            try:
                record = _record(
                    self._auditor, scope, entry, params, caller_of(scope), response, error, patients
                )
                self._auditor.audit(record)
            except Exception:
                log.exception("the audit record of %s %s failed", scope["method"], scope["path"])
