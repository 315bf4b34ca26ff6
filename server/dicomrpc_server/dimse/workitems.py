"""UPS over DIMSE (PS3.4 Annex CC): the Push, Pull and Watch SOP classes on the workitem core.

Each N-CREATE, N-SET, N-GET, N-ACTION and UPS C-FIND is one
:class:`~dicomrpc_server.ups.service.WorkitemCore` call, exactly as a gRPC ``WorkitemService``
call or a UPS-RS request is: a DIMSE performer and a gRPC or DICOMweb one work on one worklist,
under one state machine, with one set of status codes. This module only reads the request
(the attribute list, the Transaction UID it carries, the action information) and writes the
response; a core error becomes its DIMSE status in :func:`.statuses.workitem_status`.

What DIMSE puts where (PS3.4 CC.2):

- N-CREATE (UPS Push): the Affected SOP Instance UID is the workitem UID (generated when the
  requester sends none, and returned in the response); the attribute list is the data set.
- N-SET (UPS Pull): the modification list, less its Transaction UID (0008,1195), which is the
  lock of an IN PROGRESS workitem and is passed as the core's ``transaction_uid``.
- N-GET (any of the three): the attributes of the Attribute Identifier List, or all; never the
  Transaction UID.
- N-ACTION Change UPS State, Action Type ID 1 (UPS Pull): Procedure Step State and Transaction
  UID of the action information.
- N-ACTION Request UPS Cancel, Action Type ID 2 (UPS Push and Watch): Reason For
  Cancellation, Contact URI and Contact Display Name.
- N-ACTION Subscribe, Unsubscribe, Suspend Global Subscription, Action Type IDs 3, 4 and 5 (UPS
  Watch): :mod:`.watch`.
- C-FIND (UPS Pull and Watch): the identifier's keys the workitem index matches on are matching
  keys, with the search core's rules; every key is a return key.

The core's rules run on the archive's event loop (``run_coroutine_threadsafe``), reads on the
association's own thread, as the C-STORE and C-FIND handlers do.
"""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar, cast

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import N_ACTION, N_CREATE, N_GET, N_SET
from pynetdicom.events import Event

from dicomrpc.datasets import from_pydicom, to_pydicom
from dicomrpc.v1 import dataset_pb2
from dicomrpc_server.audit.records import Action
from dicomrpc_server.dimse import statuses
from dicomrpc_server.dimse.audit import DimseAudit
from dicomrpc_server.dimse.contexts import UPS_PULL, UPS_PUSH, UPS_WATCH
from dicomrpc_server.dimse.find import Answer, failure, logged_find, reply
from dicomrpc_server.dimse.identifiers import FindQuery, match_value, response
from dicomrpc_server.dimse.loop import on_loop
from dicomrpc_server.dimse.pacing import make_way
from dicomrpc_server.dimse.requesters import describe_requester
from dicomrpc_server.dimse.watch import FILTERED_GLOBAL_SUBSCRIPTION, GLOBAL_UIDS, Watchers
from dicomrpc_server.errors import ServiceError, invalid_argument
from dicomrpc_server.query.engine import MAX_LIMIT
from dicomrpc_server.ups.index import is_matching_key
from dicomrpc_server.ups.service import WorkitemCore, WorkitemQuery
from dicomrpc_server.ups.states import State

log = logging.getLogger("dicomrpc.dimse")

T = TypeVar("T")
Reply = tuple[int | Dataset, Dataset | None]

# Action Type IDs (PS3.4 CC.2.1.1, CC.2.2.1, CC.2.3.1).
CHANGE_STATE = 1
REQUEST_CANCEL = 2
SUBSCRIBE = 3
UNSUBSCRIBE = 4
SUSPEND_GLOBAL = 5
# The SOP classes whose presentation context each action is offered on (PS3.4 CC.2, the DIMSE
# service groups of UPS Push, Pull and Watch). The request's own Requested SOP Class UID is UPS
# Push whichever context it comes on (PS3.4 CC.2.1.2, CC.3.1: every UPS is an instance of UPS
# Push), so the SOP class is the context's.
_ACTION_CLASSES = {
    CHANGE_STATE: frozenset({UPS_PULL}),
    REQUEST_CANCEL: frozenset({UPS_PUSH, UPS_WATCH}),
    SUBSCRIBE: frozenset({UPS_WATCH}),
    UNSUBSCRIBE: frozenset({UPS_WATCH}),
    SUSPEND_GLOBAL: frozenset({UPS_WATCH}),
}
_ACTION_NAMES = {
    CHANGE_STATE: "Change UPS State",
    REQUEST_CANCEL: "Request UPS Cancel",
    SUBSCRIBE: "Subscribe",
    UNSUBSCRIBE: "Unsubscribe",
    SUSPEND_GLOBAL: "Suspend Global Subscription",
}

TRANSACTION_UID = 0x00081195
SPECIFIC_CHARACTER_SET = 0x00080005
_NOT_KEYS = frozenset({SPECIFIC_CHARACTER_SET})


def _hex(tag: int) -> str:
    return f"{int(tag):08X}"


def _text(ds: Dataset | None, keyword: str) -> str:
    """A single value of the request as text ("" when absent or empty)."""
    if ds is None or keyword not in ds:
        return ""
    value = ds[keyword].value
    return "" if value is None else str(value).strip()


def as_pydicom(dataset: dataset_pb2.Dataset) -> Dataset:
    """A workitem as pydicom holds it, to answer with.

    pydicom remarks on values it finds unusual; they were accepted at create, and are returned
    as stored.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return to_pydicom(dataset)


def workitem_match(identifier: Dataset) -> dict[str, str]:
    """The workitem search's match terms of a C-FIND identifier or a subscription filter.

    A key the workitem index does not match on is a return key only (PS3.4 C.2.2.1.2); a key
    inside a sequence is matched when the identifier sends the sequence with one item (PS3.4
    C.2.2.2.6).
    """
    match: dict[str, str] = {}
    for element in identifier:
        tag = int(element.tag)
        if tag in _NOT_KEYS or element.tag.group in (0x0000, 0x0002):
            continue
        if element.VR == "SQ":
            items = element.value or []
            if len(items) != 1:
                continue
            for leaf in items[0]:
                name = f"{_hex(tag)}.{_hex(int(leaf.tag))}"
                if leaf.VR != "SQ" and is_matching_key(name) and (value := match_value(leaf)):
                    match[name] = value
            continue
        name = _hex(tag)
        if is_matching_key(name) and (value := match_value(element)):
            match[name] = value
    return match


def searched_pages(
    core: WorkitemCore, audit: DimseAudit, event: Event, endpoint: str, match: dict[str, str]
) -> tuple[dataset_pb2.Dataset | None, Iterator[dataset_pb2.Dataset]]:
    """The first match of a workitem C-FIND and the rest, the search audited once.

    The first page is read before anything is sent, so a refused query fails with its status
    and no pending response (UPS Pull and Modality Worklist C-FIND alike).
    """
    pages = workitem_pages(core, match)
    first = next(pages, None)
    audit.workitem(
        event.assoc, Action.WORKITEM_SEARCH, endpoint, "", None, tuple(sorted(match.items()))
    )
    return first, pages


def workitem_pages(core: WorkitemCore, match: dict[str, str]) -> Iterator[dataset_pb2.Dataset]:
    """Every workitem matching, a page at a time, with all its attributes.

    The core refuses a malformed match value (a bad date range, a wildcard in a UID) when the
    first page is asked for.
    """
    offset = 0
    while True:
        page = core.search(
            WorkitemQuery(match=match, include_fields=("all",), limit=MAX_LIMIT, offset=offset)
        )
        yield from page
        if len(page) < MAX_LIMIT:
            return
        offset += len(page)


class WorkitemHandlers:
    """The EVT_N_CREATE, EVT_N_SET, EVT_N_GET and EVT_N_ACTION handlers, and the UPS C-FIND.

    Parameters
    ----------
    core
        The workitem core.
    loop
        The archive's event loop: the core's changes run there.
    audit
        The audit hook: one record per operation.
    watchers
        The subscriptions of the UPS Watch SOP class.
    ae_title
        The archive's AE title (Retrieve AE Title, when a C-FIND asks for it).
    """

    def __init__(
        self,
        core: WorkitemCore,
        loop: asyncio.AbstractEventLoop,
        audit: DimseAudit,
        watchers: Watchers,
        ae_title: str,
    ) -> None:
        self._core = core
        self._loop = loop
        self._audit = audit
        self._watchers = watchers
        self._ae_title = ae_title

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return on_loop(self._loop, coroutine)

    # -- N-CREATE ------------------------------------------------------------------------------

    def n_create(self, event: Event) -> Reply:
        """Create a SCHEDULED workitem (PS3.4 CC.2.5): its UID in the response."""
        started = time.monotonic()
        uid = str(cast(N_CREATE, event.request).AffectedSOPInstanceUID or "")
        try:
            dataset = self._read(lambda: event.attribute_list)
            outcome = self._run(self._core.create(dataset, uid))
        except ServiceError as error:
            self._audit.workitem(event.assoc, Action.WORKITEM_CREATE, "N-CREATE", uid, error)
            status = statuses.workitem_status(error)
            return reply(event, "N-CREATE", uid, status, error.message, started), None
        self._audit.workitem(
            event.assoc, Action.WORKITEM_CREATE, "N-CREATE", outcome.workitem_uid, None
        )
        answer = reply(
            event,
            "N-CREATE",
            outcome.workitem_uid,
            outcome.warning_status or statuses.SUCCESS,
            outcome.warning_message,
            started,
        )
        answer.AffectedSOPInstanceUID = outcome.workitem_uid
        if uid or outcome.warning_status:
            return answer, None
        # pynetdicom takes a UID it must answer (PS3.7 10.1.5.1.4) from the attribute list of
        # a successful response, and sends that list only if anything else is left in it.
        made = Dataset()
        made.AffectedSOPInstanceUID = outcome.workitem_uid
        return answer, made

    # -- N-SET ---------------------------------------------------------------------------------

    def n_set(self, event: Event) -> Reply:
        """Set attributes of a workitem (PS3.4 CC.2.6): with its lock once IN PROGRESS."""
        started = time.monotonic()
        uid = str(cast(N_SET, event.request).RequestedSOPInstanceUID or "")
        try:
            transaction = ""

            def modifications() -> Dataset:
                nonlocal transaction
                ds = event.modification_list
                transaction = _text(ds, "TransactionUID")
                if TRANSACTION_UID in ds:
                    del ds[TRANSACTION_UID]
                return ds

            dataset = self._read(modifications)
            outcome = self._run(self._core.update(uid, transaction, dataset))
        except ServiceError as error:
            self._audit.workitem(event.assoc, Action.WORKITEM_UPDATE, "N-SET", uid, error)
            status = statuses.workitem_status(error)
            return reply(event, "N-SET", uid, status, error.message, started), None
        self._audit.workitem(event.assoc, Action.WORKITEM_UPDATE, "N-SET", uid, None)
        status = outcome.warning_status or statuses.SUCCESS
        return reply(event, "N-SET", uid, status, outcome.warning_message, started), None

    # -- N-GET ---------------------------------------------------------------------------------

    def n_get(self, event: Event) -> Reply:
        """A workitem's attributes (PS3.4 CC.2.7): those asked for, or all; no Transaction UID.

        An attribute asked for that the workitem does not hold is returned empty.
        """
        started = time.monotonic()
        uid = str(cast(N_GET, event.request).RequestedSOPInstanceUID or "")
        try:
            wanted = [int(tag) for tag in event.attribute_identifiers or []]
            stored, _ = self._core.retrieve(uid)
        except ServiceError as error:
            self._audit.workitem(event.assoc, Action.WORKITEM_RETRIEVE, "N-GET", uid, error)
            status = statuses.workitem_status(error)
            return reply(event, "N-GET", uid, status, error.message, started), None
        full = as_pydicom(stored)
        if wanted:
            out = Dataset()
            for tag in wanted:
                if tag == TRANSACTION_UID:
                    continue
                if tag in full:
                    out[tag] = full[tag]
                else:
                    element = DataElement(tag, _vr(tag), None)
                    out[tag] = element
        else:
            out = full
        self._audit.workitem(event.assoc, Action.WORKITEM_RETRIEVE, "N-GET", uid, None)
        return reply(event, "N-GET", uid, statuses.SUCCESS, "", started), out

    # -- N-ACTION ------------------------------------------------------------------------------

    def n_action(self, event: Event) -> Reply:
        """Change the state, request a cancel, or (un)subscribe (PS3.4 CC.2.1 to CC.2.3)."""
        started = time.monotonic()
        request = cast(N_ACTION, event.request)
        uid = str(request.RequestedSOPInstanceUID or "")
        sop_class = str(event.context.abstract_syntax)
        action = int(request.ActionTypeID or 0)
        name = f"N-ACTION {_ACTION_NAMES.get(action, action)}"
        if sop_class not in _ACTION_CLASSES.get(action, ()):
            message = f"Action Type ID {action} is not an action of SOP class {sop_class}"
            return reply(event, name, uid, statuses.NO_SUCH_ACTION, message, started), None
        audit_action = {
            CHANGE_STATE: Action.WORKITEM_STATE,
            REQUEST_CANCEL: Action.WORKITEM_CANCEL_REQUEST,
        }.get(action, Action.WORKITEM_SUBSCRIBE)
        try:
            information = self._information(event)
            status, message = self._act(action, uid, information)
        except ServiceError as error:
            self._audit.workitem(event.assoc, audit_action, name, uid, error)
            status = statuses.workitem_status(error, statuses.INVALID_ARGUMENT_VALUE)
            return reply(event, name, uid, status, error.message, started), None
        self._audit.workitem(event.assoc, audit_action, name, uid, None)
        return reply(event, name, uid, status, message, started), None

    @staticmethod
    def _information(event: Event) -> Dataset:
        try:
            request = cast(N_ACTION, event.request)
            return event.action_information if request.ActionInformation else Dataset()
        except Exception as exc:  # an action information pydicom cannot decode
            raise invalid_argument("ActionInformation", f"cannot be read: {exc}") from None

    def _act(self, action: int, uid: str, information: Dataset) -> tuple[int, str]:
        """Do one action; its status (success or warning) and the warning's message."""
        if action == CHANGE_STATE:
            value = _text(information, "ProcedureStepState")
            try:
                requested = State(value)
            except ValueError:
                raise invalid_argument(
                    "ProcedureStepState", f"{value!r} is not IN PROGRESS, COMPLETED or CANCELED"
                ) from None
            transaction = _text(information, "TransactionUID")
            outcome = self._run(self._core.change_state(uid, requested, transaction))
        elif action == REQUEST_CANCEL:
            outcome = self._run(
                self._core.request_cancellation(
                    uid,
                    _text(information, "ReasonForCancellation"),
                    _text(information, "ContactDisplayName"),
                    _text(information, "ContactURI"),
                )
            )
        else:
            return self._watch(action, uid, information), ""
        return outcome.warning_status or statuses.SUCCESS, outcome.warning_message

    def _watch(self, action: int, uid: str, information: Dataset) -> int:
        """Subscribe, unsubscribe or suspend (PS3.4 CC.2.3): the Receiving AE's subscriptions."""
        receiving = _text(information, "ReceivingAE")
        if not receiving:
            raise invalid_argument("ReceivingAE", "is required (Type 1) and missing")
        workitem = "" if uid in GLOBAL_UIDS else uid
        if action == SUSPEND_GLOBAL:
            if workitem:
                raise invalid_argument(
                    "RequestedSOPInstanceUID", "suspending names the global subscription"
                )
            self._watchers.suspend(receiving)
        elif action == UNSUBSCRIBE:
            self._watchers.unsubscribe(receiving, workitem)
        else:
            match = workitem_match(information) if uid == FILTERED_GLOBAL_SUBSCRIPTION else {}
            lock = _text(information, "DeletionLock").upper() == "TRUE"
            self._watchers.subscribe(receiving, workitem, match, lock)
        return statuses.SUCCESS

    # -- C-FIND --------------------------------------------------------------------------------

    def find(self, event: Event) -> Iterator[Answer]:
        """Search workitems (PS3.4 CC.2.8): a pending response per match, then the status."""
        return logged_find("C-FIND (UPS)", event, self._find(event))

    def _find(self, event: Event) -> Iterator[Answer]:
        endpoint = f"C-FIND {event.request.AffectedSOPClassUID}"
        try:
            identifier = event.identifier
            match = workitem_match(identifier)
            query = FindQuery("", match, identifier)
            first, pages = searched_pages(self._core, self._audit, event, endpoint, match)
            if first is not None:
                yield statuses.PENDING, response(query, as_pydicom(first), self._ae_title)
            for found in pages:
                make_way(event.assoc)
                if event.is_cancelled:
                    yield statuses.CANCEL, None
                    return
                yield statuses.PENDING, response(query, as_pydicom(found), self._ae_title)
        except ServiceError as error:
            self._audit.workitem(event.assoc, Action.WORKITEM_SEARCH, endpoint, "", error)
            yield failure(statuses.query_failure_status(error), error.message), None
            return
        except Exception as exc:  # an identifier (or a value in it) pydicom cannot decode
            log.warning("C-FIND from %s failed", describe_requester(event.assoc), exc_info=True)
            yield failure(statuses.CANNOT_UNDERSTAND, f"the query cannot be answered: {exc}"), None
            return
        yield statuses.SUCCESS, None

    @staticmethod
    def _read(read: Any) -> dataset_pb2.Dataset:
        """The request's data set as the core takes it; a data set that cannot be read is 0x0106."""
        try:
            return from_pydicom(read())
        except Exception as exc:
            raise invalid_argument("AttributeList", f"cannot be read: {exc}") from None


def _vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"
