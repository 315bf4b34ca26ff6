"""The gRPC adapter's audit hook: one record per call of the audit table, refusals included.

An observer of :class:`~.interception.ObservingInterceptor`, the outermost interceptor, so that
it sees the calls that interceptors inside it refuse. What a call does and which UIDs it names
come from :data:`dicomrpc_server.audit.table.GRPC`; this module only reads them from the
request and response messages, and the outcome from the call's status.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from dicomrpc.v1 import store_service_pb2
from dicomrpc_server.access.caller import ANONYMOUS, Caller
from dicomrpc_server.audit.auditor import Auditor
from dicomrpc_server.audit.records import (
    AuditRecord,
    FailedInstance,
    InstanceRef,
    Outcome,
    Patient,
)
from dicomrpc_server.audit.table import GRPC, Entry
from dicomrpc_server.grpc.auth import current_caller, peer_address
from dicomrpc_server.grpc.logging import status_name

# The request fields that name what a call reads or changes.
_STUDY, _SERIES, _SOP, _WORKITEM = (
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "workitem_uid",
)
_UID_FIELDS = frozenset({_STUDY, _SERIES, _SOP, _WORKITEM})
_STATUS_DETAILS = "grpc-status-details-bin"


def caller_of(context: Any) -> Caller:
    """Who is calling, as the access check admitted or refused them.

    The check sets it while the call runs; a call it never saw is an anonymous caller at
    the peer's address.
    """
    caller = current_caller()
    if caller is not None:
        return caller
    return Caller(ANONYMOUS, ANONYMOUS, frozenset(), peer_address(str(context.peer())))


def _reason(context: Any) -> str:
    """The ErrorInfo reason of the status a call was aborted with, if it carries one."""
    metadata = context.trailing_metadata() if hasattr(context, "trailing_metadata") else None
    for key, value in metadata or ():
        if key == _STATUS_DETAILS:
            try:
                status = status_pb2.Status.FromString(value)
            except DecodeError:
                return ""
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return str(info.reason)
    return ""


def outcome_of(context: Any, error: BaseException | None) -> Outcome:
    """How a call ended, from its status."""
    code = status_name(context, error)
    if code == "OK":
        return Outcome()
    details = context.details() if hasattr(context, "details") else None
    message = details or (str(error) if error is not None else "")
    return Outcome(code, _reason(context), message)


def _query(message: Any) -> list[tuple[str, str]]:
    """A request's parameters: match terms by their keys, other fields by their names."""
    terms: list[tuple[str, str]] = []
    for field, value in message.ListFields():
        if field.name in _UID_FIELDS:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            terms.extend((str(k), str(v)) for k, v in sorted(value.items()))
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if not field.is_repeated:
                terms.extend(_query(value))
        elif field.is_repeated:
            terms.append((field.name, ",".join(str(v) for v in value)))
        else:
            terms.append((field.name, str(value)))
    return terms


def _stored(
    response: store_service_pb2.StoreInstancesResponse,
) -> tuple[tuple[InstanceRef, ...], tuple[FailedInstance, ...]]:
    stored, failed = [], []
    for result in response.results:
        if result.outcome == store_service_pb2.INSTANCE_STORE_OUTCOME_FAILED:
            failed.append(
                FailedInstance(
                    result.sop_instance_uid,
                    result.sop_class_uid,
                    result.study_instance_uid,
                    result.failure_reason,
                )
            )
        else:
            stored.append(
                InstanceRef(
                    result.study_instance_uid,
                    result.series_instance_uid,
                    result.sop_instance_uid,
                    result.sop_class_uid,
                )
            )
    return tuple(stored), tuple(failed)


class _AuditWatch:
    """One audited call: its first request, its response, then its record.

    The patient of a study the request names is read when the request arrives, before the
    handler runs: a delete removes what names it.
    """

    def __init__(self, auditor: Auditor, method: str, entry: Entry) -> None:
        self._auditor = auditor
        self._method = method
        self._entry = entry
        self._request: Any = None
        self._response: Any = None
        self._patients: tuple[tuple[str, Patient], ...] = ()

    def request(self, message: Any) -> None:
        if self._request is None and not isinstance(message, memoryview):
            self._request = message
            if self._entry.uids:
                self._patients = self._auditor.patients_of([getattr(message, _STUDY, "")])

    def response(self, message: Any) -> None:
        if self._entry.results:
            self._response = message

    def end(self, context: Any, error: BaseException | None) -> None:
        entry, request, response = self._entry, self._request, self._response
        instances: tuple[InstanceRef, ...] = ()
        failed: tuple[FailedInstance, ...] = ()
        workitem = ""
        query: list[tuple[str, str]] = []
        if request is not None and entry.uids:
            study = str(getattr(request, _STUDY, ""))
            if study:
                instances = (
                    InstanceRef(
                        study, str(getattr(request, _SERIES, "")), str(getattr(request, _SOP, ""))
                    ),
                )
            workitem = str(getattr(request, _WORKITEM, ""))
        if request is not None and entry.query:
            query = _query(request)
        patients = self._patients
        if entry.results and isinstance(response, store_service_pb2.StoreInstancesResponse):
            instances, failed = _stored(response)
            patients = self._auditor.patients_of(i.study for i in instances)
        elif entry.results and response is not None and not workitem:
            workitem = str(getattr(response, _WORKITEM, ""))
        self._auditor.audit(
            AuditRecord(
                time=datetime.now(UTC),
                caller=caller_of(context),
                action=entry.action,
                adapter="grpc",
                endpoint=self._method,
                outcome=outcome_of(context, error),
                instances=instances,
                workitem=workitem,
                query=tuple(query),
                failed=failed,
                patients=patients,
            )
        )


class AuditObserver:
    """Writes an audit record for every call the audit table lists.

    Parameters
    ----------
    auditor
        Where records go.
    """

    def __init__(self, auditor: Auditor) -> None:
        self._auditor = auditor

    def watch(self, method: str, context: Any) -> _AuditWatch | None:
        """Follow a call of ``method`` if the table lists it."""
        entry = GRPC.get(method)
        if entry is None:
            return None
        return _AuditWatch(self._auditor, method, entry)
