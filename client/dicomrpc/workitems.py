"""Workitems (UPS) in the SDK: ``client.workitems.create(...)``, ``.claim(uid)``, ``.watch()``.

A workflow, as a performer runs it::

    uid = client.workitems.create(dataset).workitem_uid
    transaction = client.workitems.claim(uid)           # IN PROGRESS; keep the lock
    client.workitems.complete(uid, transaction, performed)  # set attributes, then COMPLETED

Data sets are ``dicomrpc.v1.Dataset`` messages, DICOM JSON mappings or pydicom data sets.
Failures raise :class:`~dicomrpc.errors.DicomRpcError` with the PS3.4 Annex CC status in
``dicom_status`` (0xC301 also says in ``metadata["transaction_uid_problem"]`` whether the
Transaction UID was ``missing`` or ``wrong``).
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import grpc

from dicomrpc.datasets import from_json, from_pydicom, to_json
from dicomrpc.errors import DicomRpcError
from dicomrpc.v1 import dataset_pb2, workitem_service_pb2_grpc
from dicomrpc.v1 import workitem_service_pb2 as pb

if TYPE_CHECKING:
    import pydicom

T = TypeVar("T")
DatasetLike: TypeAlias = "dataset_pb2.Dataset | Mapping[str, Any] | pydicom.Dataset"

_STATES = {
    pb.WORKITEM_STATE_SCHEDULED: "SCHEDULED",
    pb.WORKITEM_STATE_IN_PROGRESS: "IN PROGRESS",
    pb.WORKITEM_STATE_COMPLETED: "COMPLETED",
    pb.WORKITEM_STATE_CANCELED: "CANCELED",
}
_EVENTS = {
    pb.WORKITEM_EVENT_TYPE_STATE_REPORT: "state_report",
    pb.WORKITEM_EVENT_TYPE_CANCEL_REQUESTED: "cancel_requested",
    pb.WORKITEM_EVENT_TYPE_ASSIGNED: "assigned",
    pb.WORKITEM_EVENT_TYPE_UPDATED: "updated",
}


def new_uid() -> str:
    """A new UID from a random UUID, under the ``2.25`` root (PS3.5 B.2): no registration."""
    return f"2.25.{uuid.uuid4().int}"


def as_dataset(dataset: DatasetLike | None) -> dataset_pb2.Dataset:
    """A ``Dataset`` message from a message, a DICOM JSON mapping or a pydicom data set."""
    if dataset is None:
        return dataset_pb2.Dataset()
    if isinstance(dataset, dataset_pb2.Dataset):
        return dataset
    if isinstance(dataset, Mapping):
        return from_json(dataset)
    return from_pydicom(dataset)  # a pydicom Dataset (not a Mapping)


@dataclass(frozen=True)
class WorkitemResult:
    """What a change did: the workitem, its state after, and a DICOM warning (0 if none).

    ``warning_status`` is 0xB300 (created with coerced values), 0xB304 (already CANCELED) or
    0xB306 (already COMPLETED).
    """

    workitem_uid: str
    state: str
    warning_status: int = 0
    warning_message: str = ""


@dataclass(frozen=True)
class Workitem:
    """A retrieved workitem: its data set (never its Transaction UID) and its state."""

    workitem_uid: str
    state: str
    dataset: dataset_pb2.Dataset

    def as_json(self) -> dict[str, Any]:
        """The data set as DICOM JSON."""
        return to_json(self.dataset)


@dataclass(frozen=True)
class WorkitemEvent:
    """One workitem event.

    ``type`` is ``"state_report"``, ``"cancel_requested"``, ``"assigned"`` or ``"updated"``;
    pass ``sequence`` as ``since`` to resume a watch after it.
    """

    sequence: int
    type: str
    workitem_uid: str
    state: str
    time: datetime.datetime
    dataset: dataset_pb2.Dataset

    @classmethod
    def from_message(cls, m: pb.SubscribeWorkitemsResponse) -> WorkitemEvent:
        """Decode a ``SubscribeWorkitemsResponse``."""
        return cls(
            m.sequence,
            _EVENTS.get(m.type, "unspecified"),
            m.workitem_uid,
            _STATES.get(m.state, "unspecified"),
            m.event_time.ToDatetime(tzinfo=datetime.UTC),
            m.event,
        )


class Workitems:
    """The workitem calls of a client (``client.workitems``)."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._stub = workitem_service_pb2_grpc.WorkitemServiceStub(channel)

    def _call(self, method: Callable[..., T], request: object) -> T:
        try:
            return method(request)
        except grpc.RpcError as error:
            raise DicomRpcError.from_rpc_error(error) from None

    def create(self, dataset: DatasetLike, workitem_uid: str = "") -> WorkitemResult:
        """Create a SCHEDULED workitem; the UID is generated unless given (or in the data set)."""
        request = pb.CreateWorkitemRequest(workitem_uid=workitem_uid, dataset=as_dataset(dataset))
        response = self._call(self._stub.CreateWorkitem, request)
        return WorkitemResult(
            response.workitem_uid, "SCHEDULED", response.warning_status, response.warning_message
        )

    def get(self, workitem_uid: str) -> Workitem:
        """Retrieve a workitem."""
        request = pb.RetrieveWorkitemRequest(workitem_uid=workitem_uid)
        response = self._call(self._stub.RetrieveWorkitem, request)
        return Workitem(workitem_uid, _STATES.get(response.state, ""), response.dataset)

    def update(
        self, workitem_uid: str, dataset: DatasetLike, transaction_uid: str = ""
    ) -> WorkitemResult:
        """Set attributes (a sequence replaces the stored one whole).

        An IN PROGRESS workitem needs its ``transaction_uid``; a SCHEDULED one none. An update
        leaves the state as it is, so the result's ``state`` is empty.
        """
        request = pb.UpdateWorkitemRequest(
            workitem_uid=workitem_uid,
            transaction_uid=transaction_uid,
            dataset=as_dataset(dataset),
        )
        response = self._call(self._stub.UpdateWorkitem, request)
        return WorkitemResult(workitem_uid, "", response.warning_status, response.warning_message)

    def change_state(
        self,
        workitem_uid: str,
        state: str,
        transaction_uid: str,
        dataset: DatasetLike | None = None,
    ) -> WorkitemResult:
        """Move a workitem to ``"IN PROGRESS"``, ``"COMPLETED"`` or ``"CANCELED"``.

        ``dataset`` (finishing only) is set in the same change: the attributes and the state
        apply together, or, refused, not at all.
        """
        codes = {name: code for code, name in _STATES.items()}
        if state not in codes:
            raise ValueError(f"{state!r} is not one of {', '.join(codes)}")
        request = pb.ChangeWorkitemStateRequest(
            workitem_uid=workitem_uid, state=codes[state], transaction_uid=transaction_uid
        )
        if dataset is not None:
            request.dataset.CopyFrom(as_dataset(dataset))
        response = self._call(self._stub.ChangeWorkitemState, request)
        return WorkitemResult(
            workitem_uid,
            _STATES.get(response.state, ""),
            response.warning_status,
            response.warning_message,
        )

    def claim(self, workitem_uid: str, transaction_uid: str = "") -> str:
        """Claim a SCHEDULED workitem (IN PROGRESS); return the Transaction UID, its lock.

        A new Transaction UID is generated unless given. A workitem claimed by another
        performer fails with 0xC302.
        """
        transaction_uid = transaction_uid or new_uid()
        self.change_state(workitem_uid, "IN PROGRESS", transaction_uid)
        return transaction_uid

    def complete(
        self, workitem_uid: str, transaction_uid: str, dataset: DatasetLike | None = None
    ) -> WorkitemResult:
        """Complete a claimed workitem, setting ``dataset`` in the same change.

        ``dataset`` is the performed procedure. Fails with 0xC304, naming what is missing,
        unless the final-state requirements hold; a refused completion changes nothing.
        """
        return self.change_state(workitem_uid, "COMPLETED", transaction_uid, dataset)

    def cancel(
        self, workitem_uid: str, transaction_uid: str, dataset: DatasetLike | None = None
    ) -> WorkitemResult:
        """Cancel a claimed workitem, setting ``dataset`` in the same change.

        ``dataset`` says why it was discontinued; a refused cancel changes nothing.
        """
        return self.change_state(workitem_uid, "CANCELED", transaction_uid, dataset)

    def request_cancel(
        self, workitem_uid: str, reason: str = "", contact_name: str = "", contact_uri: str = ""
    ) -> WorkitemResult:
        """Cancel a SCHEDULED workitem, or ask the performer of an IN PROGRESS one to."""
        request = pb.RequestWorkitemCancellationRequest(
            workitem_uid=workitem_uid,
            reason=reason,
            contact_display_name=contact_name,
            contact_uri=contact_uri,
        )
        response = self._call(self._stub.RequestWorkitemCancellation, request)
        return WorkitemResult(
            workitem_uid, _STATES.get(response.state, ""), response.warning_status
        )

    def search(
        self,
        match: Mapping[str, str] | None = None,
        *,
        fuzzy: bool = False,
        include: Iterable[str] = (),
        limit: int = 0,
        offset: int = 0,
        **terms: str,
    ) -> list[dataset_pb2.Dataset]:
        """Search: ``client.workitems.search(ProcedureStepState="SCHEDULED", PatientID="7")``.

        Keys are keywords, tags or ``Sequence.Leaf`` paths, values DICOM matching syntax.
        """
        request = pb.SearchWorkitemsRequest(
            match={**(match or {}), **terms},
            include_fields=list(include),
            fuzzy_matching=fuzzy,
            limit=limit,
            offset=offset,
        )
        return list(self._call(self._stub.SearchWorkitems, request).results)

    def watch(
        self,
        workitem_uid: str = "",
        *,
        filter: Mapping[str, str] | None = None,
        since: int | None = None,
    ) -> WorkitemWatch:
        """Events of one workitem, of all, or of those matching ``filter``, until closed.

        With ``since`` the events after that sequence come first (0: every event logged, as
        ``watch_changes(since=0)`` replays the whole change feed); without it, new events
        only. A watcher that reads too slowly ends with RESOURCE_EXHAUSTED; watch again with
        ``since`` set to the last sequence seen to resume without loss.
        """
        request = pb.SubscribeWorkitemsRequest(workitem_uid=workitem_uid, filter=dict(filter or {}))
        if since is not None:
            request.since = since
        return WorkitemWatch(self._stub.SubscribeWorkitems(request))


class WorkitemWatch:
    """An iterator of :class:`WorkitemEvent`; :meth:`close` ends it from any thread."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._closed = False

    def __iter__(self) -> WorkitemWatch:
        return self

    def __next__(self) -> WorkitemEvent:
        try:
            return WorkitemEvent.from_message(next(self._call))
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.CANCELLED and self._closed:
                raise StopIteration from None
            raise DicomRpcError.from_rpc_error(error) from None

    def close(self) -> None:
        """Stop watching (a reader blocked in ``next`` ends the iteration)."""
        self._closed = True
        self._call.cancel()

    def __enter__(self) -> WorkitemWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
