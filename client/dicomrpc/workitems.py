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
import enum
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import grpc

from dicomrpc.datasets import from_json, from_pydicom, to_json
from dicomrpc.errors import call_unary, call_unary_async
from dicomrpc.retrieval import SearchResult
from dicomrpc.v1 import dataset_pb2, workitem_service_pb2_grpc
from dicomrpc.v1 import workitem_service_pb2 as pb
from dicomrpc.watch import AsyncWatch, Watch

if TYPE_CHECKING:
    import pydicom

T = TypeVar("T")
DatasetLike: TypeAlias = "dataset_pb2.Dataset | Mapping[str, Any] | pydicom.Dataset"


class WorkitemState(enum.StrEnum):
    """A workitem's Procedure Step State (PS3.4 CC.1.1); each equals its DICOM string."""

    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    CANCELED = "CANCELED"


_STATES: dict[int, WorkitemState] = {
    pb.WORKITEM_STATE_SCHEDULED: WorkitemState.SCHEDULED,
    pb.WORKITEM_STATE_IN_PROGRESS: WorkitemState.IN_PROGRESS,
    pb.WORKITEM_STATE_COMPLETED: WorkitemState.COMPLETED,
    pb.WORKITEM_STATE_CANCELED: WorkitemState.CANCELED,
}
_STATE_CODES = {state: code for code, state in _STATES.items()}
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


def state_of(code: int) -> WorkitemState | None:
    """The state of a ``WorkitemState`` code, ``None`` for unspecified (no state said)."""
    return _STATES.get(code)


@dataclass(frozen=True)
class WorkitemResult:
    """What a change did: the workitem, its state after, and a DICOM warning (0 if none).

    ``state`` is ``None`` after an update, which leaves the state as it was.
    ``warning_status`` is 0xB300 (created with coerced values), 0xB304 (already CANCELED) or
    0xB306 (already COMPLETED).
    """

    workitem_uid: str
    state: WorkitemState | None
    warning_status: int = 0
    warning_message: str = ""


@dataclass(frozen=True)
class Workitem:
    """A retrieved workitem: its data set (never its Transaction UID) and its state."""

    workitem_uid: str
    state: WorkitemState | None
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
    state: WorkitemState | None
    time: datetime.datetime
    dataset: dataset_pb2.Dataset

    @classmethod
    def from_message(cls, m: pb.SubscribeWorkitemsResponse) -> WorkitemEvent:
        """Decode a ``SubscribeWorkitemsResponse``."""
        return cls(
            m.sequence,
            _EVENTS.get(m.type, "unspecified"),
            m.workitem_uid,
            state_of(m.state),
            m.event_time.ToDatetime(tzinfo=datetime.UTC),
            m.event,
        )


WorkitemWatch: TypeAlias = Watch[WorkitemEvent]
"""The handle of ``client.workitems.watch``: iterate it, close it to stop."""

# -- requests and results, shared by the sync and asyncio clients -------------------------


def create_request(dataset: DatasetLike, workitem_uid: str) -> pb.CreateWorkitemRequest:
    """The request of :meth:`Workitems.create`."""
    return pb.CreateWorkitemRequest(workitem_uid=workitem_uid, dataset=as_dataset(dataset))


def created(response: pb.CreateWorkitemResponse) -> WorkitemResult:
    """The result of a create: the workitem is SCHEDULED."""
    return WorkitemResult(
        response.workitem_uid,
        WorkitemState.SCHEDULED,
        response.warning_status,
        response.warning_message,
    )


def update_request(
    workitem_uid: str, dataset: DatasetLike, transaction_uid: str
) -> pb.UpdateWorkitemRequest:
    """The request of :meth:`Workitems.update`."""
    return pb.UpdateWorkitemRequest(
        workitem_uid=workitem_uid, transaction_uid=transaction_uid, dataset=as_dataset(dataset)
    )


def change_request(
    workitem_uid: str,
    state: WorkitemState | str,
    transaction_uid: str,
    dataset: DatasetLike | None,
) -> pb.ChangeWorkitemStateRequest:
    """The request of :meth:`Workitems.change_state`.

    Raises
    ------
    ValueError
        For a string that is not a state (the server judges whether a state may be asked for:
        SCHEDULED never may).
    """
    try:
        target = WorkitemState(state)
    except ValueError:
        names = ", ".join(s.value for s in WorkitemState)
        raise ValueError(f"{state!r} is not one of {names}") from None
    request = pb.ChangeWorkitemStateRequest(
        workitem_uid=workitem_uid,
        state=pb.WorkitemState.ValueType(_STATE_CODES[target]),
        transaction_uid=transaction_uid,
    )
    if dataset is not None:
        request.dataset.CopyFrom(as_dataset(dataset))
    return request


def cancellation_request(
    workitem_uid: str, reason: str, contact_name: str, contact_uri: str
) -> pb.RequestWorkitemCancellationRequest:
    """The request of :meth:`Workitems.request_cancel`."""
    return pb.RequestWorkitemCancellationRequest(
        workitem_uid=workitem_uid,
        reason=reason,
        contact_display_name=contact_name,
        contact_uri=contact_uri,
    )


def search_request(
    match: Mapping[str, str] | None,
    terms: Mapping[str, str],
    fuzzy: bool,
    include: Iterable[str],
    limit: int,
    offset: int,
) -> pb.SearchWorkitemsRequest:
    """The request of :meth:`Workitems.search`."""
    return pb.SearchWorkitemsRequest(
        match={**(match or {}), **terms},
        include_fields=list(include),
        fuzzy_matching=fuzzy,
        limit=limit,
        offset=offset,
    )


def watch_request(
    workitem_uid: str, filter: Mapping[str, str] | None, since: int | None
) -> pb.SubscribeWorkitemsRequest:
    """The request of :meth:`Workitems.watch`."""
    request = pb.SubscribeWorkitemsRequest(workitem_uid=workitem_uid, filter=dict(filter or {}))
    if since is not None:
        request.since = since
    return request


class Workitems:
    """The workitem calls of a client (``client.workitems``)."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._stub = workitem_service_pb2_grpc.WorkitemServiceStub(channel)

    def create(self, dataset: DatasetLike, workitem_uid: str = "") -> WorkitemResult:
        """Create a SCHEDULED workitem; the UID is generated unless given (or in the data set)."""
        return created(call_unary(self._stub.CreateWorkitem, create_request(dataset, workitem_uid)))

    def get(self, workitem_uid: str) -> Workitem:
        """Retrieve a workitem."""
        request = pb.RetrieveWorkitemRequest(workitem_uid=workitem_uid)
        response = call_unary(self._stub.RetrieveWorkitem, request)
        return Workitem(workitem_uid, state_of(response.state), response.dataset)

    def update(
        self, workitem_uid: str, dataset: DatasetLike, transaction_uid: str = ""
    ) -> WorkitemResult:
        """Set attributes (a sequence replaces the stored one whole).

        An IN PROGRESS workitem needs its ``transaction_uid``; a SCHEDULED one none. An update
        leaves the state as it is, so the result's ``state`` is ``None``.
        """
        request = update_request(workitem_uid, dataset, transaction_uid)
        response = call_unary(self._stub.UpdateWorkitem, request)
        return WorkitemResult(workitem_uid, None, response.warning_status, response.warning_message)

    def change_state(
        self,
        workitem_uid: str,
        state: WorkitemState | str,
        transaction_uid: str,
        dataset: DatasetLike | None = None,
    ) -> WorkitemResult:
        """Move a workitem to IN PROGRESS, COMPLETED or CANCELED.

        ``state`` is a :class:`WorkitemState` or its DICOM string. ``dataset`` (finishing
        only) is set in the same change: the attributes and the state apply together, or,
        refused, not at all. Never retried: a change that reached the server before the
        connection failed would be refused the second time.
        """
        request = change_request(workitem_uid, state, transaction_uid, dataset)
        response = call_unary(self._stub.ChangeWorkitemState, request)
        return WorkitemResult(
            workitem_uid,
            state_of(response.state),
            response.warning_status,
            response.warning_message,
        )

    def claim(self, workitem_uid: str, transaction_uid: str = "") -> str:
        """Claim a SCHEDULED workitem (IN PROGRESS); return the Transaction UID, its lock.

        A new Transaction UID is generated unless given. A workitem claimed by another
        performer fails with 0xC302.
        """
        transaction_uid = transaction_uid or new_uid()
        self.change_state(workitem_uid, WorkitemState.IN_PROGRESS, transaction_uid)
        return transaction_uid

    def complete(
        self, workitem_uid: str, transaction_uid: str, dataset: DatasetLike | None = None
    ) -> WorkitemResult:
        """Complete a claimed workitem, setting ``dataset`` in the same change.

        ``dataset`` is the performed procedure. Fails with 0xC304, naming what is missing,
        unless the final-state requirements hold; a refused completion changes nothing.
        """
        return self.change_state(workitem_uid, WorkitemState.COMPLETED, transaction_uid, dataset)

    def cancel(
        self, workitem_uid: str, transaction_uid: str, dataset: DatasetLike | None = None
    ) -> WorkitemResult:
        """Cancel a claimed workitem, setting ``dataset`` in the same change.

        ``dataset`` says why it was discontinued; a refused cancel changes nothing.
        """
        return self.change_state(workitem_uid, WorkitemState.CANCELED, transaction_uid, dataset)

    def request_cancel(
        self, workitem_uid: str, reason: str = "", contact_name: str = "", contact_uri: str = ""
    ) -> WorkitemResult:
        """Cancel a SCHEDULED workitem, or ask the performer of an IN PROGRESS one to."""
        request = cancellation_request(workitem_uid, reason, contact_name, contact_uri)
        response = call_unary(self._stub.RequestWorkitemCancellation, request)
        return WorkitemResult(workitem_uid, state_of(response.state), response.warning_status)

    def search(
        self,
        match: Mapping[str, str] | None = None,
        *,
        fuzzy: bool = False,
        include: Iterable[str] = (),
        limit: int = 0,
        offset: int = 0,
        **terms: str,
    ) -> SearchResult:
        """Search: ``client.workitems.search(ProcedureStepState="SCHEDULED", PatientID="7")``.

        Keys are keywords, tags or ``Sequence.Leaf`` paths, values DICOM matching syntax. The
        result is the :class:`~dicomrpc.SearchResult` of the other searches (workitem
        searches page with ``limit`` and ``offset``: its ``next_page_token`` is always "").
        """
        request = search_request(match, terms, fuzzy, include, limit, offset)
        return SearchResult(list(call_unary(self._stub.SearchWorkitems, request).results), "")

    def watch(
        self,
        workitem_uid: str = "",
        *,
        filter: Mapping[str, str] | None = None,
        since: int | None = None,
    ) -> Watch[WorkitemEvent]:
        """Events of one workitem, of all, or of those matching ``filter``, until closed.

        With ``since`` the events after that sequence come first (0: every event logged, as
        ``watch_changes(since=0)`` replays the whole change feed); without it, new events
        only. A watcher that reads too slowly ends with RESOURCE_EXHAUSTED; watch again with
        ``since`` set to the last sequence seen to resume without loss.
        """
        call = self._stub.SubscribeWorkitems(watch_request(workitem_uid, filter, since))
        return Watch(call, WorkitemEvent.from_message)


class AsyncWorkitems:
    """The workitem calls of an asyncio client (``async_client.workitems``).

    The same calls as :class:`Workitems`, awaited; see there for what each does.
    """

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = workitem_service_pb2_grpc.WorkitemServiceStub(channel)

    async def create(self, dataset: DatasetLike, workitem_uid: str = "") -> WorkitemResult:
        """Create a SCHEDULED workitem (see :meth:`Workitems.create`)."""
        request = create_request(dataset, workitem_uid)
        return created(await call_unary_async(self._stub.CreateWorkitem, request))

    async def get(self, workitem_uid: str) -> Workitem:
        """Retrieve a workitem."""
        request = pb.RetrieveWorkitemRequest(workitem_uid=workitem_uid)
        response = await call_unary_async(self._stub.RetrieveWorkitem, request)
        return Workitem(workitem_uid, state_of(response.state), response.dataset)

    async def update(
        self, workitem_uid: str, dataset: DatasetLike, transaction_uid: str = ""
    ) -> WorkitemResult:
        """Set attributes (see :meth:`Workitems.update`)."""
        request = update_request(workitem_uid, dataset, transaction_uid)
        response = await call_unary_async(self._stub.UpdateWorkitem, request)
        return WorkitemResult(workitem_uid, None, response.warning_status, response.warning_message)

    async def change_state(
        self,
        workitem_uid: str,
        state: WorkitemState | str,
        transaction_uid: str,
        dataset: DatasetLike | None = None,
    ) -> WorkitemResult:
        """Move a workitem to IN PROGRESS, COMPLETED or CANCELED (never retried)."""
        request = change_request(workitem_uid, state, transaction_uid, dataset)
        response = await call_unary_async(self._stub.ChangeWorkitemState, request)
        return WorkitemResult(
            workitem_uid,
            state_of(response.state),
            response.warning_status,
            response.warning_message,
        )

    async def claim(self, workitem_uid: str, transaction_uid: str = "") -> str:
        """Claim a SCHEDULED workitem; return the Transaction UID (see :meth:`Workitems.claim`)."""
        transaction_uid = transaction_uid or new_uid()
        await self.change_state(workitem_uid, WorkitemState.IN_PROGRESS, transaction_uid)
        return transaction_uid

    async def complete(
        self, workitem_uid: str, transaction_uid: str, dataset: DatasetLike | None = None
    ) -> WorkitemResult:
        """Complete a claimed workitem, setting ``dataset`` in the same change."""
        return await self.change_state(
            workitem_uid, WorkitemState.COMPLETED, transaction_uid, dataset
        )

    async def cancel(
        self, workitem_uid: str, transaction_uid: str, dataset: DatasetLike | None = None
    ) -> WorkitemResult:
        """Cancel a claimed workitem, setting ``dataset`` in the same change."""
        return await self.change_state(
            workitem_uid, WorkitemState.CANCELED, transaction_uid, dataset
        )

    async def request_cancel(
        self, workitem_uid: str, reason: str = "", contact_name: str = "", contact_uri: str = ""
    ) -> WorkitemResult:
        """Cancel a SCHEDULED workitem, or ask the performer of an IN PROGRESS one to."""
        request = cancellation_request(workitem_uid, reason, contact_name, contact_uri)
        response = await call_unary_async(self._stub.RequestWorkitemCancellation, request)
        return WorkitemResult(workitem_uid, state_of(response.state), response.warning_status)

    async def search(
        self,
        match: Mapping[str, str] | None = None,
        *,
        fuzzy: bool = False,
        include: Iterable[str] = (),
        limit: int = 0,
        offset: int = 0,
        **terms: str,
    ) -> SearchResult:
        """Search workitems (see :meth:`Workitems.search`)."""
        request = search_request(match, terms, fuzzy, include, limit, offset)
        response = await call_unary_async(self._stub.SearchWorkitems, request)
        return SearchResult(list(response.results), "")

    def watch(
        self,
        workitem_uid: str = "",
        *,
        filter: Mapping[str, str] | None = None,
        since: int | None = None,
    ) -> AsyncWatch[WorkitemEvent]:
        """Events of one workitem, of all, or of those matching ``filter`` (``async for``)."""
        call = self._stub.SubscribeWorkitems(watch_request(workitem_uid, filter, since))
        return AsyncWatch(call, WorkitemEvent.from_message)
