"""WorkitemCore: the UPS operations of PS3.4 Annex CC, for every adapter to translate.

Each change is one decision about one workitem, applied atomically by the workitem role
(:meth:`~dicomrpc_server.ups.records.WorkitemRecords.mutate`): given the workitem as stored, it
looks its step up in the :mod:`.states` tables, checks the :mod:`.requirements` table, and
returns the new data set and its event. Because no other change of that workitem comes in
between, sixteen performers racing to claim a workitem see one SCHEDULED and fifteen IN
PROGRESS (0xC302), and no update is lost to another.

The Transaction UID is kept in the stored data set (it is the workitem's lock) and taken out
of everything that leaves the core: retrieve, search results and events.

Every UID an operation is given is checked before it reaches the index
(:mod:`dicomrpc_server.dicom.uids`), named as the API names it; a data set to create or update
is checked for its sequence nesting (:mod:`dicomrpc_server.dicom.nesting`) and its UIDs
(:func:`~dicomrpc_server.ups.requirements.uid_violations`), so that whatever is stored can be
read back by every operation.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from pydicom.uid import generate_uid

from dicomrpc.v1 import dataset_pb2
from dicomrpc.v1 import workitem_service_pb2 as pb
from dicomrpc_server.dicom.nesting import check_depth
from dicomrpc_server.dicom.uids import check_request_uid
from dicomrpc_server.errors import Code, FieldViolation, ServiceError, invalid_argument
from dicomrpc_server.query.engine import DEFAULT_LIMIT, MAX_LIMIT
from dicomrpc_server.ups import states
from dicomrpc_server.ups.events import EventHub
from dicomrpc_server.ups.index import match_terms, returned_tags
from dicomrpc_server.ups.records import Mutation, WorkitemRecords
from dicomrpc_server.ups.requirements import (
    BY_KEYWORD,
    Operation,
    check,
    final_state_missing,
    uid_violations,
)
from dicomrpc_server.ups.states import Kind, State, Status
from dicomrpc_server.ups.values import first_item, now_dt, set_text, text

T = TypeVar("T")
UPS_PUSH_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.1"
# Procedure Discontinuation Reasons (CID 9300): what a cancellation the archive performs records.
UNSPECIFIED_DISCONTINUATION = ("110513", "DCM", "Discontinued for unspecified reason")

SOP_CLASS = BY_KEYWORD["SOPClassUID"].hex_tag
SOP_INSTANCE = BY_KEYWORD["SOPInstanceUID"].hex_tag
STATE = BY_KEYWORD["ProcedureStepState"].hex_tag
TRANSACTION = BY_KEYWORD["TransactionUID"].hex_tag
MODIFIED = BY_KEYWORD["ScheduledProcedureStepModificationDateTime"].hex_tag
READINESS = BY_KEYWORD["InputReadinessState"].hex_tag
PROGRESS = BY_KEYWORD["ProcedureStepProgressInformationSequence"].hex_tag
PERFORMERS = BY_KEYWORD["ScheduledHumanPerformersSequence"].hex_tag
CANCELED_AT = "00404052"  # ProcedureStepCancellationDateTime
REASON = "00741238"  # ReasonForCancellation
DISCONTINUATION = "0074100E"  # ProcedureStepDiscontinuationReasonCodeSequence
COMMUNICATIONS = "00741008"  # ProcedureStepCommunicationsURISequence
CONTACT_URI = "0074100A"  # ContactURI
CONTACT_NAME = "0074100C"  # ContactDisplayName

_PB_STATES = {
    State.SCHEDULED: pb.WORKITEM_STATE_SCHEDULED,
    State.IN_PROGRESS: pb.WORKITEM_STATE_IN_PROGRESS,
    State.COMPLETED: pb.WORKITEM_STATE_COMPLETED,
    State.CANCELED: pb.WORKITEM_STATE_CANCELED,
}


def state_message(state: State) -> pb.WorkitemState.ValueType:
    """The API's enum value of a state."""
    return _PB_STATES[state]


def state_of(dataset: dataset_pb2.Dataset) -> State:
    """The state a stored workitem is in."""
    return State(text(dataset, STATE))


def public(dataset: dataset_pb2.Dataset, tags: set[str] | None = None) -> dataset_pb2.Dataset:
    """A copy without the Transaction UID, limited to ``tags`` when given."""
    out = dataset_pb2.Dataset()
    for tag, attribute in dataset.attributes.items():
        if tag != TRANSACTION and (tags is None or tag in tags):
            out.attributes[tag].CopyFrom(attribute)
    return out


@dataclass(frozen=True)
class Outcome:
    """What a change did: the workitem, its state after, and a warning when there is one."""

    workitem_uid: str
    state: State
    warning_status: int = 0
    warning_message: str = ""


@dataclass(frozen=True)
class WorkitemQuery:
    """A workitem search: match terms, returned attributes and the page."""

    match: Mapping[str, str] = field(default_factory=dict)
    include_fields: Sequence[str] = ()
    fuzzy: bool = False
    limit: int = 0
    offset: int = 0


class WorkitemCore:
    """The workitem operations over the archive's index.

    Parameters
    ----------
    store
        Where workitems are kept (the workitem role).
    queue_size
        The most events a subscriber may have waiting before its subscription is ended.
    max_sequence_depth
        The most levels sequences may nest in a data set to create or update.
    """

    def __init__(self, store: WorkitemRecords, queue_size: int, max_sequence_depth: int) -> None:
        self.max_sequence_depth = max_sequence_depth
        self.store = store
        self.events = EventHub(store, queue_size)

    # -- create and read -------------------------------------------------------------------

    async def create(self, dataset: dataset_pb2.Dataset, workitem_uid: str = "") -> Outcome:
        """Create a SCHEDULED workitem (UID given, from SOPInstanceUID, or generated).

        Raises INVALID_ARGUMENT (with a field violation per attribute) when the data set does
        not meet the create requirements, 0xC309 when it is not SCHEDULED, and 0x0111
        (ALREADY_EXISTS) when the UID is taken.
        """
        check_request_uid("workitem_uid", workitem_uid)
        check_depth(dataset, self.max_sequence_depth)
        _check_uids(dataset, Operation.CREATE, workitem_uid)
        new = dataset_pb2.Dataset()
        new.CopyFrom(dataset)
        uid = _workitem_uid(workitem_uid, text(new, SOP_INSTANCE))
        given_state = text(new, STATE)
        if given_state and given_state != State.SCHEDULED.value:
            raise ServiceError(
                Code.INVALID_ARGUMENT,
                "WORKITEM_ATTRIBUTES_INVALID",
                f"a workitem is created SCHEDULED, not {given_state} (0xC309)",
                dicom_status=int(Status.CREATE_STATE_NOT_SCHEDULED),
                metadata={"workitem_uid": uid, "state": given_state},
                violations=(FieldViolation("ProcedureStepState", "must be absent or SCHEDULED"),),
            )
        _raise_violations(check(new, Operation.CREATE), "create", uid)
        warning = ""
        sop_class = text(new, SOP_CLASS)
        if sop_class and sop_class != UPS_PUSH_SOP_CLASS:
            warning = f"SOPClassUID {sop_class} was replaced by {UPS_PUSH_SOP_CLASS}"
        set_text(new, SOP_CLASS, "UI", UPS_PUSH_SOP_CLASS)
        set_text(new, SOP_INSTANCE, "UI", uid)
        set_text(new, STATE, "CS", State.SCHEDULED.value)
        set_text(new, MODIFIED, "DT", now_dt())
        new.attributes.pop(TRANSACTION, None)

        def decide(stored: dataset_pb2.Dataset | None) -> Mutation[None]:
            if stored is not None:
                raise states.already_exists(uid)
            return _state_changed(None, uid, new)

        await self.store.mutate(uid, decide)
        if warning:
            return Outcome(uid, State.SCHEDULED, int(Status.CREATED_WITH_MODIFICATIONS), warning)
        return Outcome(uid, State.SCHEDULED)

    def retrieve(self, workitem_uid: str) -> tuple[dataset_pb2.Dataset, State]:
        """A workitem's data set (without its Transaction UID) and state; 0xC307 if missing."""
        check_request_uid("workitem_uid", workitem_uid)
        stored = self.store.get(workitem_uid) if workitem_uid else None
        if stored is None:
            raise states.not_found(workitem_uid)
        return public(stored), state_of(stored)

    def search(self, query: WorkitemQuery) -> list[dataset_pb2.Dataset]:
        """The workitems matching every term, in UID order, one page of them."""
        if query.limit < 0 or query.limit > MAX_LIMIT:
            raise invalid_argument("limit", f"{query.limit} is outside 0..{MAX_LIMIT}")
        if query.offset < 0:
            raise invalid_argument("offset", f"{query.offset} is negative")
        terms = match_terms(query.match)
        returned = returned_tags(terms, query.include_fields)
        page = self.store.search(terms, query.fuzzy, query.offset, query.limit or DEFAULT_LIMIT)
        return [public(stored, returned) for stored in page]

    # -- changes ---------------------------------------------------------------------------

    async def update(
        self, workitem_uid: str, transaction_uid: str, dataset: dataset_pb2.Dataset
    ) -> Outcome:
        """Set attributes of a SCHEDULED workitem, or of an IN PROGRESS one with its lock.

        A sequence replaces the stored one whole. The state, the Transaction UID and the
        attributes the create fixed cannot be changed (INVALID_ARGUMENT).
        """
        check_request_uid("workitem_uid", workitem_uid)
        check_request_uid("transaction_uid", transaction_uid)
        if not dataset.attributes:
            raise invalid_argument("dataset", "is empty: name the attributes to set")
        check_depth(dataset, self.max_sequence_depth)
        _check_uids(dataset, Operation.UPDATE, workitem_uid)
        _raise_violations(check(dataset, Operation.UPDATE), "update", workitem_uid)

        def decide(found: dataset_pb2.Dataset | None) -> Mutation[Outcome]:
            stored, state = _existing(found, workitem_uid)
            step = states.UPDATES[state]
            if step.kind is Kind.REFUSE:
                assert step.status is not None
                raise states.refusal(step.status, workitem_uid, state)
            if step.kind is Kind.LOCKED:
                states.check_lock(workitem_uid, state, text(stored, TRANSACTION), transaction_uid)
            new = dataset_pb2.Dataset()
            new.CopyFrom(stored)
            for tag, attribute in dataset.attributes.items():
                new.attributes[tag].CopyFrom(attribute)
            set_text(new, MODIFIED, "DT", now_dt())
            kind = (
                pb.WORKITEM_EVENT_TYPE_ASSIGNED
                if PERFORMERS in dataset.attributes
                else pb.WORKITEM_EVENT_TYPE_UPDATED
            )
            return Mutation(
                Outcome(workitem_uid, state), new, (_event(kind, workitem_uid, new, dataset),)
            )

        return await self.store.mutate(workitem_uid, decide)

    async def change_state(
        self,
        workitem_uid: str,
        requested: State,
        transaction_uid: str,
        dataset: dataset_pb2.Dataset | None = None,
    ) -> Outcome:
        """Claim (IN PROGRESS, with a new Transaction UID), complete or cancel a workitem.

        ``dataset`` (finishing only) is set in the same change, as an update would set it: the
        final state's requirements are checked with it, and a refused change writes nothing,
        neither the attributes nor the state. Its subscribers see the update's event, then the
        state report, both of the workitem in its new state.
        """
        check_request_uid("workitem_uid", workitem_uid)
        check_request_uid("transaction_uid", transaction_uid)
        if dataset is not None and dataset.attributes:
            if requested is State.IN_PROGRESS:
                raise invalid_argument(
                    "dataset", "is set when finishing a workitem, not when claiming it"
                )
            check_depth(dataset, self.max_sequence_depth)
            _check_uids(dataset, Operation.UPDATE, workitem_uid)
            _raise_violations(check(dataset, Operation.UPDATE), "update", workitem_uid)
        else:
            dataset = None

        def decide(found: dataset_pb2.Dataset | None) -> Mutation[Outcome]:
            stored, state = _existing(found, workitem_uid)
            step = states.TRANSITIONS[(state, requested)]
            already = _refused_or_already(step, workitem_uid, state)
            if already is not None:
                return Mutation(already)
            new = dataset_pb2.Dataset()
            new.CopyFrom(stored)
            if dataset is not None:
                for tag, attribute in dataset.attributes.items():
                    new.attributes[tag].CopyFrom(attribute)
            set_text(new, STATE, "CS", requested.value)
            set_text(new, MODIFIED, "DT", now_dt())
            if step.kind is Kind.CLAIM:
                if not transaction_uid:
                    raise states.claim_needs_uid(workitem_uid)
                set_text(new, TRANSACTION, "UI", transaction_uid)
            else:  # finishing: the lock, then the final state's requirements
                states.check_lock(workitem_uid, state, text(stored, TRANSACTION), transaction_uid)
                if requested is State.CANCELED:
                    _stamp_cancellation(new)
                missing = final_state_missing(new, requested.value)
                if missing:
                    raise states.final_state_unmet(workitem_uid, requested, missing)
            changed = _state_changed(Outcome(workitem_uid, requested), workitem_uid, new)
            if dataset is None:
                return changed
            # One change: the update's event, then the state report, each of the workitem as
            # the change left it (a subscription filter sees no moment between them).
            updated = _event(pb.WORKITEM_EVENT_TYPE_UPDATED, workitem_uid, new, dataset)
            return Mutation(changed.result, new, (updated, *changed.events))

        return await self.store.mutate(workitem_uid, decide)

    async def request_cancellation(
        self, workitem_uid: str, reason: str = "", contact_name: str = "", contact_uri: str = ""
    ) -> Outcome:
        """Cancel a SCHEDULED workitem, or ask the performer of an IN PROGRESS one to.

        The request (reason and contact) is recorded in the workitem's progress information
        and sent to subscribers; an IN PROGRESS workitem stays as it is until its performer
        decides. A COMPLETED one answers 0xC311, a CANCELED one the warning 0xB304.
        """
        check_request_uid("workitem_uid", workitem_uid)

        def decide(found: dataset_pb2.Dataset | None) -> Mutation[Outcome]:
            stored, state = _existing(found, workitem_uid)
            step = states.CANCEL_REQUESTS[state]
            already = _refused_or_already(step, workitem_uid, state)
            if already is not None:
                return Mutation(already)
            new = dataset_pb2.Dataset()
            new.CopyFrom(stored)
            _record_request(new, reason, contact_name, contact_uri)
            set_text(new, MODIFIED, "DT", now_dt())
            if step.kind is Kind.FREE:  # SCHEDULED: nobody performs it, the archive cancels
                _stamp_cancellation(new)
                _discontinue(new)
                set_text(new, STATE, "CS", State.CANCELED.value)
                return _state_changed(Outcome(workitem_uid, State.CANCELED), workitem_uid, new)
            request = _cancel_request(reason, contact_name, contact_uri)
            event = _event(pb.WORKITEM_EVENT_TYPE_CANCEL_REQUESTED, workitem_uid, new, request)
            return Mutation(Outcome(workitem_uid, state), new, (event,))

        return await self.store.mutate(workitem_uid, decide)

    def follow(
        self, workitem_uid: str, filter_: Mapping[str, str], since: int | None
    ) -> AsyncIterator[pb.SubscribeWorkitemsResponse]:
        """Subscribe to events (see :meth:`EventHub.follow`)."""
        check_request_uid("workitem_uid", workitem_uid)
        match_terms(filter_)  # a bad filter is refused before the workitem is looked up
        if workitem_uid and self.store.get(workitem_uid) is None:
            raise states.not_found(workitem_uid)
        return self.events.follow(workitem_uid, filter_, since)


def _existing(stored: dataset_pb2.Dataset | None, uid: str) -> tuple[dataset_pb2.Dataset, State]:
    """A workitem as stored and its state; 0xC307 when there is none."""
    if stored is None or not uid:
        raise states.not_found(uid)
    return stored, state_of(stored)


def _state_changed(result: T, uid: str, new: dataset_pb2.Dataset) -> Mutation[T]:
    """The mutation of a workitem whose state changed (or was created): a state report."""
    return Mutation(
        result, new, (_event(pb.WORKITEM_EVENT_TYPE_STATE_REPORT, uid, new, _state_report(new)),)
    )


def _event(
    kind: pb.WorkitemEventType.ValueType,
    uid: str,
    workitem: dataset_pb2.Dataset,
    attributes: dataset_pb2.Dataset,
) -> pb.SubscribeWorkitemsResponse:
    """The event of a change, carrying ``attributes`` (never the lock)."""
    event = pb.SubscribeWorkitemsResponse(
        type=kind, workitem_uid=uid, state=state_message(state_of(workitem))
    )
    event.event_time.FromMicroseconds(time.time_ns() // 1000)
    event.event.CopyFrom(public(attributes))
    return event


def _refused_or_already(step: states.Step, uid: str, state: State) -> Outcome | None:
    """Raise the refusal of a refused step; the warning outcome of a step already taken."""
    if step.kind is Kind.REFUSE:
        assert step.status is not None
        raise states.refusal(step.status, uid, state)
    if step.kind is Kind.ALREADY:
        assert step.status is not None
        message = f"workitem {uid} {states.meaning(step.status, state)}"
        return Outcome(uid, state, int(step.status), message)
    return None


def _state_report(workitem: dataset_pb2.Dataset) -> dataset_pb2.Dataset:
    """The attributes of a UPS State Report (PS3.4 CC.2.4.3).

    The state and input readiness, and for a canceled workitem its progress information (why).
    """
    tags = [STATE, READINESS]
    if state_of(workitem) is State.CANCELED:
        tags.append(PROGRESS)
    return public(workitem, set(tags))


def _cancel_request(reason: str, contact_name: str, contact_uri: str) -> dataset_pb2.Dataset:
    """The attributes of a UPS Cancel Requested event."""
    out = dataset_pb2.Dataset()
    if reason:
        set_text(out, REASON, "LT", reason)
    if contact_uri:
        set_text(out, CONTACT_URI, "UR", contact_uri)
    if contact_name:
        set_text(out, CONTACT_NAME, "LO", contact_name)
    return out


def _workitem_uid(given: str, in_dataset: str) -> str:
    """The UID a create uses: the request's, the data set's SOPInstanceUID, or a new one."""
    if given and in_dataset and given != in_dataset:
        raise ServiceError(
            Code.INVALID_ARGUMENT,
            "WORKITEM_ATTRIBUTES_INVALID",
            f"SOPInstanceUID {in_dataset} differs from the workitem UID {given}",
            metadata={"workitem_uid": given, "sop_instance_uid": in_dataset},
            violations=(FieldViolation("SOPInstanceUID", f"differs from {given}"),),
        )
    return given or in_dataset or str(generate_uid())


def _check_uids(dataset: dataset_pb2.Dataset, operation: Operation, workitem_uid: str) -> None:
    """Refuse a data set holding what no workitem may (see ``uid_violations``)."""
    violations = uid_violations(dataset)
    if violations:
        summary = "; ".join(f"{v.field} {v.description}" for v in violations)
        raise ServiceError(
            Code.INVALID_ARGUMENT,
            "WORKITEM_ATTRIBUTES_INVALID",
            f"the {operation.value} data set holds what no workitem may: {summary}",
            dicom_status=0x0106,  # Invalid Attribute Value (PS3.7 C.4)
            metadata={"workitem_uid": workitem_uid, "operation": operation.value},
            violations=tuple(violations),
        )


def _raise_violations(violations: list[FieldViolation], operation: str, uid: str) -> None:
    if not violations:
        return
    missing = any("missing" in v.description for v in violations)
    summary = "; ".join(f"{v.field} {v.description}" for v in violations)
    raise ServiceError(
        Code.INVALID_ARGUMENT,
        "WORKITEM_ATTRIBUTES_INVALID",
        f"the {operation} data set does not meet PS3.4 Table CC.2.5-3: {summary}",
        # Missing Attribute / Invalid Attribute Value (PS3.7 C.4).
        dicom_status=0x0120 if missing else 0x0106,
        metadata={"workitem_uid": uid, "operation": operation},
        violations=tuple(violations),
    )


def _stamp_cancellation(workitem: dataset_pb2.Dataset) -> None:
    """Record when the workitem was canceled, in its progress information."""
    item = first_item(workitem, PROGRESS)
    if not text(item, CANCELED_AT):
        set_text(item, CANCELED_AT, "DT", now_dt())


def _record_request(
    workitem: dataset_pb2.Dataset, reason: str, contact_name: str, contact_uri: str
) -> None:
    """Record a cancellation request: its reason and its requester."""
    item = first_item(workitem, PROGRESS)
    if reason:
        set_text(item, REASON, "LT", reason)
    if contact_name or contact_uri:
        contact = dataset_pb2.Dataset()
        if contact_uri:
            set_text(contact, CONTACT_URI, "UR", contact_uri)
        if contact_name:
            set_text(contact, CONTACT_NAME, "LO", contact_name)
        item.attributes[COMMUNICATIONS].Clear()
        item.attributes[COMMUNICATIONS].vr = "SQ"
        item.attributes[COMMUNICATIONS].sequence.items.append(contact)


def _discontinue(workitem: dataset_pb2.Dataset) -> None:
    """Give a workitem the archive cancels a discontinuation reason, unless it has one."""
    item = first_item(workitem, PROGRESS)
    if DISCONTINUATION not in item.attributes:
        code = dataset_pb2.Dataset()
        value, scheme, meaning = UNSPECIFIED_DISCONTINUATION
        set_text(code, "00080100", "SH", value)
        set_text(code, "00080102", "SH", scheme)
        set_text(code, "00080104", "LO", meaning)
        item.attributes[DISCONTINUATION].vr = "SQ"
        item.attributes[DISCONTINUATION].sequence.items.append(code)
