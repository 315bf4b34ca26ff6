"""The audit record: who did what to which patient data, from where, when, and how it ended.

One :class:`AuditRecord` is written per call that reads or changes patient data, and per call
refused; both outputs (JSON lines and the ATNA syslog messages) are rendered from it, so they
always agree. The record is built by the adapters' hooks from the request and its outcome, and
rendered off the request path.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dicomrpc_server.access.caller import Caller


class Action(enum.Enum):
    """What a call does, in the terms the audit trail is searched by."""

    STORE = "store"
    RETRIEVE = "retrieve"
    METADATA = "metadata"
    FRAMES = "frames"
    RENDERED = "rendered"
    BULKDATA = "bulkdata"
    SEARCH = "search"
    DELETE = "delete"
    WORKITEM_CREATE = "workitem-create"
    WORKITEM_UPDATE = "workitem-update"
    WORKITEM_STATE = "workitem-state"
    WORKITEM_CANCEL_REQUEST = "workitem-cancel-request"
    WORKITEM_RETRIEVE = "workitem-retrieve"
    WORKITEM_SEARCH = "workitem-search"
    WORKITEM_SUBSCRIBE = "workitem-subscribe"
    FEED_READ = "feed-read"
    COMMITMENT = "commitment"  # a storage commitment request answered (PS3.4 Annex J)
    ADMIN = "admin"


@dataclass(frozen=True)
class InstanceRef:
    """A study, series or instance a call named or touched (empty parts are unknown).

    A request names a study, a series of it, or one instance; a store reports each instance it
    stored, with its SOP Class.
    """

    study: str
    series: str = ""
    sop: str = ""
    sop_class: str = ""


@dataclass(frozen=True)
class FailedInstance:
    """An instance of a store that was not stored, and the DICOM failure reason why."""

    sop: str
    sop_class: str = ""
    study: str = ""
    failure_reason: int = 0


@dataclass(frozen=True)
class Patient:
    """The patient of a study, as the index holds it (PatientID, PatientName)."""

    id: str
    name: str = ""


@dataclass(frozen=True)
class Outcome:
    """How a call ended: ``OK``, or the canonical code with its reason and message.

    Codes are named as gRPC names them (the vocabulary of :class:`~dicomrpc_server.errors.Code`
    plus ``CANCELLED``, ``DEADLINE_EXCEEDED`` and ``UNKNOWN``, which only a transport knows).
    """

    code: str = "OK"
    reason: str = ""
    message: str = ""

    @property
    def success(self) -> bool:
        """True when the call did what it was asked."""
        return self.code == "OK"


SUCCESS = Outcome()


def _unique(values: Iterable[str]) -> list[str]:
    """The non-empty values, each once, in first-seen order."""
    return list(dict.fromkeys(v for v in values if v))


@dataclass(frozen=True)
class AuditRecord:
    """One audited call.

    Parameters
    ----------
    time
        When the call ended (UTC): the moment its outcome, and for a store what it stored,
        became known.
    caller
        Who called, from which address.
    action
        What the call does.
    adapter
        ``grpc``, ``http`` or ``dimse``.
    endpoint
        The RPC's full method name, or the HTTP method and path.
    outcome
        How the call ended.
    instances
        The studies, series and instances the request named, or those a store stored.
    workitem
        The workitem UID the call named or created.
    query
        A search's or a feed read's parameters, as sent.
    failed
        The instances of a store that were not stored.
    patients
        The patient of each study of the record whose patient is known, as ``(study,
        patient)``: read from the index before a call that names a study runs (a delete
        removes it), and after a store.
    """

    time: datetime
    caller: Caller
    action: Action
    adapter: str
    endpoint: str
    outcome: Outcome = SUCCESS
    instances: tuple[InstanceRef, ...] = ()
    workitem: str = ""
    query: tuple[tuple[str, str], ...] = ()
    failed: tuple[FailedInstance, ...] = field(default=())
    patients: tuple[tuple[str, Patient], ...] = ()

    @property
    def studies(self) -> list[str]:
        """The Study Instance UIDs of the record, each once."""
        return _unique(i.study for i in self.instances)

    def to_json(self) -> dict[str, Any]:
        """The record as one JSON object (a line of ``--audit-log``): every key always present."""
        return {
            "time": self.time.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "identity": self.caller.identity,
            "kind": self.caller.kind,
            "address": self.caller.address,
            "action": self.action.value,
            "adapter": self.adapter,
            "endpoint": self.endpoint,
            "patients": _unique(patient.id for _, patient in self.patients),
            "studies": self.studies,
            "series": _unique(i.series for i in self.instances),
            "instances": _unique(i.sop for i in self.instances),
            "workitem": self.workitem,
            "query": dict(self.query),
            "outcome": "success" if self.outcome.success else "failure",
            "code": self.outcome.code,
            "reason": self.outcome.reason,
            "message": self.outcome.message,
            "failed_instances": [
                {"sop_instance_uid": f.sop, "failure_reason": f.failure_reason} for f in self.failed
            ],
        }
