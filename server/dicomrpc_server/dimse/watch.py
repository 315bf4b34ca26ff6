"""UPS Watch and UPS Event over DIMSE (PS3.4 CC.2.3, CC.2.4): subscriptions and event reports.

A subscriber is an AE the archive knows as a peer (:mod:`dicomrpc_server.peers`): the archive
opens an association to it to send each N-EVENT-REPORT, so it must know where it listens; a
Receiving AE it does not know is refused with 0xC308 (PS3.4 CC.2.3).

Each subscription is one follow of the workitem core's event stream
(:meth:`~dicomrpc_server.ups.service.WorkitemCore.follow`): of one workitem, of all (the global
subscription, SOP Instance UID 1.2.840.10008.5.1.4.34.5), or of those matching the keys of a
filtered global subscription (1.2.840.10008.5.1.4.34.5.1), with the same matching as a search.
There is no second event mechanism: the events are the ones a gRPC ``SubscribeWorkitems`` reads,
in the same order, resumed without loss when a follow falls behind. Each event becomes the UPS
event report of PS3.4 CC.2.4 (state report, cancel requested, progress report,
assigned) and is queued for its subscriber; one thread per subscriber sends what is queued, on
one association for whatever has piled up, so that a slow or absent subscriber holds up no one
else and never the archive's event loop.

Subscriptions are kept by the process that took them, for as long as it serves.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.presentation import build_context

from dicomrpc.datasets import to_pydicom
from dicomrpc.v1 import dataset_pb2
from dicomrpc.v1 import workitem_service_pb2 as pb
from dicomrpc_server.dimse.contexts import UPS_EVENT, UPS_PUSH
from dicomrpc_server.dimse.loop import on_loop
from dicomrpc_server.dimse.statuses import RECEIVING_AE_UNKNOWN
from dicomrpc_server.errors import Code, ServiceError
from dicomrpc_server.peers import PeerRegistry
from dicomrpc_server.query.engine import MAX_LIMIT
from dicomrpc_server.retrieve.transcode import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from dicomrpc_server.ups.service import PROGRESS, SOP_INSTANCE, WorkitemCore, WorkitemQuery
from dicomrpc_server.ups.values import text

log = logging.getLogger("dicomrpc.dimse")

# The well-known SOP Instance UIDs of the global subscriptions (PS3.4 CC.3.1).
GLOBAL_SUBSCRIPTION = "1.2.840.10008.5.1.4.34.5"
FILTERED_GLOBAL_SUBSCRIPTION = "1.2.840.10008.5.1.4.34.5.1"
GLOBAL_UIDS = frozenset({GLOBAL_SUBSCRIPTION, FILTERED_GLOBAL_SUBSCRIPTION})

# Event Type IDs of the UPS Event SOP Class (PS3.4 CC.2.4).
STATE_REPORT = 1
CANCEL_REQUESTED = 2
PROGRESS_REPORT = 3
ASSIGNED = 5
# The sequences a sender remembers having queued, to send an event once to an AE whose
# subscriptions (one workitem and the global one) both follow it.
_RECENT = 4096
# How long a sender waits for an association to open or a report to be answered, and how long
# it pauses before calling a subscriber again that did not answer (then the reports are dropped).
SEND_TIMEOUT_S = 30
RETRY_PAUSES_S = (1.0, 5.0)


def event_report(
    event: pb.SubscribeWorkitemsResponse, requesting_ae: str
) -> tuple[int, Dataset] | None:
    """The Event Type ID and Event Information of a core event; ``None`` when UPS has none.

    A plain update is no UPS event unless it set the progress information (a progress report);
    one that set the performers is the UPS Assigned event (PS3.4 CC.2.4.3).
    """
    kind = event.type
    if kind == pb.WORKITEM_EVENT_TYPE_STATE_REPORT:
        number = STATE_REPORT
    elif kind == pb.WORKITEM_EVENT_TYPE_CANCEL_REQUESTED:
        number = CANCEL_REQUESTED
    elif kind == pb.WORKITEM_EVENT_TYPE_ASSIGNED:
        number = ASSIGNED
    elif kind == pb.WORKITEM_EVENT_TYPE_UPDATED and PROGRESS in event.event.attributes:
        number = PROGRESS_REPORT
    else:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        information = to_pydicom(event.event)
    if number == CANCEL_REQUESTED and "RequestingAE" not in information:
        # Required (PS3.4 CC.2.4.1); the core does not record which AE asked (a gRPC or UPS-RS
        # request has none), so the archive names itself, which relays the request.
        information.RequestingAE = requesting_ae
    if number == STATE_REPORT:
        _lift_cancellation(information)
    return number, information


def _lift_cancellation(information: Dataset) -> None:
    """A canceled workitem's reason, where a UPS State Report carries it (PS3.4 CC.2.4.1).

    The workitem keeps the Reason For Cancellation and the Procedure Step Discontinuation
    Reason Code Sequence in its progress information; the report has them at its top level.
    """
    progress = information.get("ProcedureStepProgressInformationSequence")  # its items
    if not progress:
        return
    item = progress[0]
    for keyword in ("ReasonForCancellation", "ProcedureStepDiscontinuationReasonCodeSequence"):
        if keyword in item and keyword not in information:
            information[keyword] = item[keyword]


@dataclass(frozen=True)
class Report:
    """One N-EVENT-REPORT to send: the workitem, the event type and its information."""

    sequence: int
    workitem_uid: str
    event_type: int
    information: Dataset


@dataclass
class _Follow:
    """One subscription: its follow of the core's events, its filter, and what it covers.

    ``only`` is set once a global subscription is suspended: the workitems it still covers.
    """

    match: dict[str, str]
    task: asyncio.Task[None] | None = None
    only: frozenset[str] | None = None


@dataclass
class _Subscriber:
    """One AE's subscriptions (by workitem UID, "" for the global one) and its sender."""

    ae_title: str
    follows: dict[str, _Follow] = field(default_factory=dict)
    reports: queue.Queue[Report | None] = field(default_factory=queue.Queue)
    recent: collections.deque[int] = field(default_factory=collections.deque)
    thread: threading.Thread | None = None


def _every(core: WorkitemCore, match: dict[str, str]) -> Iterator[dataset_pb2.Dataset]:
    """Every workitem matching (all without terms), a page at a time."""
    offset = 0
    while True:
        page = core.search(WorkitemQuery(match=match, limit=MAX_LIMIT, offset=offset))
        yield from page
        if len(page) < MAX_LIMIT:
            return
        offset += len(page)


def _initial_report(dataset: dataset_pb2.Dataset, workitem_uid: str) -> Report:
    """The state report a subscription to a workitem starts with (PS3.4 CC.2.3)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = to_pydicom(dataset)
    information = Dataset()
    for keyword in ("ProcedureStepState", "InputReadinessState"):
        if keyword in full:
            information[keyword] = full[keyword]
    return Report(0, workitem_uid, STATE_REPORT, information)


def receiving_ae_unknown(ae_title: str) -> ServiceError:
    """The 0xC308 error of a subscription for an AE the archive cannot reach."""
    return ServiceError(
        Code.FAILED_PRECONDITION,
        "RECEIVING_AE_UNKNOWN",
        f"AE {ae_title!r} is not a known peer: add it (dicomrpc peers add) to subscribe it",
        dicom_status=RECEIVING_AE_UNKNOWN,
        metadata={"ae_title": ae_title},
    )


class Watchers:
    """The AEs subscribed to workitem events, and the senders of their event reports.

    Parameters
    ----------
    core
        The workitem core, whose event stream each subscription follows.
    peers
        Where each subscriber listens, looked up at each send.
    loop
        The archive's event loop, which runs the follows.
    ae_title
        The archive's AE title, as it calls the subscribers.
    """

    def __init__(
        self,
        core: WorkitemCore,
        peers: PeerRegistry,
        loop: asyncio.AbstractEventLoop,
        ae_title: str,
    ) -> None:
        self._core = core
        self._peers = peers
        self._loop = loop
        self._ae_title = ae_title
        self._subscribers: dict[str, _Subscriber] = {}
        self._lock = threading.Lock()

    # -- N-ACTION: subscribe, unsubscribe, suspend (called on an association's thread) ---------

    def subscribe(
        self, ae_title: str, workitem_uid: str, match: Mapping[str, str], lock: bool = False
    ) -> None:
        """Subscribe ``ae_title`` to one workitem, or globally (``workitem_uid`` "").

        A subscription to one workitem starts with a state report of it; a global one asking
        for the Deletion Lock (``lock``) with a state report of every existing workitem it
        covers (PS3.4 CC.2.4.3). Subscribing again replaces the subscription (a new filter,
        say).
        """
        if self._peers.find(ae_title) is None:
            raise receiving_ae_unknown(ae_title)
        # From the newest event on, taken before the workitems are read: what commits meanwhile
        # is in the follow's replay, after the initial reports.
        since = self._core.store.last_sequence()
        initial: list[Report] = []
        if workitem_uid:
            initial = [_initial_report(self._core.retrieve(workitem_uid)[0], workitem_uid)]
        elif lock:
            initial = [
                _initial_report(found, text(found, SOP_INSTANCE))
                for found in _every(self._core, dict(match))
            ]
        on_loop(self._loop, self._subscribe(ae_title, workitem_uid, dict(match), since, initial))

    def unsubscribe(self, ae_title: str, workitem_uid: str) -> bool:
        """End one subscription, or (``workitem_uid`` "") every one of the AE; whether any was."""
        return on_loop(self._loop, self._unsubscribe(ae_title, workitem_uid))

    def suspend(self, ae_title: str) -> bool:
        """Stop subscribing the AE to new workitems, keeping those it is subscribed to.

        The global subscription goes on for the workitems that exist now (each of which it
        subscribed the AE to, PS3.4 CC.2.3), and no longer takes in new ones.
        """
        with self._lock:
            subscriber = self._subscribers.get(ae_title)
            follow = subscriber.follows.get("") if subscriber is not None else None
            if follow is None:
                return False
            match = follow.match
        covered = frozenset(text(found, SOP_INSTANCE) for found in _every(self._core, match))
        with self._lock:
            follow.only = covered if follow.only is None else follow.only & covered
        return True

    def subscriptions(self, ae_title: str) -> list[str]:
        """The workitem UIDs the AE follows ("" for the global subscription)."""
        with self._lock:
            subscriber = self._subscribers.get(ae_title)
            return sorted(subscriber.follows) if subscriber is not None else []

    # -- on the event loop -----------------------------------------------------------------------

    async def _subscribe(
        self,
        ae_title: str,
        workitem_uid: str,
        match: dict[str, str],
        since: int,
        initial: list[Report],
    ) -> None:
        stream = self._core.follow(workitem_uid, match, since)
        follow = _Follow(match)
        with self._lock:
            subscriber = self._subscribers.setdefault(ae_title, _Subscriber(ae_title))
            old = subscriber.follows.pop(workitem_uid, None)
            follow.task = asyncio.ensure_future(
                self._pump(subscriber, workitem_uid, follow, stream, since)
            )
            subscriber.follows[workitem_uid] = follow
            if subscriber.thread is None:
                subscriber.thread = threading.Thread(
                    target=self._send_loop,
                    args=(subscriber,),
                    name=f"ups-events-{ae_title}",
                    daemon=True,
                )
                subscriber.thread.start()
        if old is not None and old.task is not None:
            old.task.cancel()
        # Queued before the follow's first event (its task has not run yet).
        for report in initial:
            self._queue(ae_title, report)

    async def _unsubscribe(self, ae_title: str, workitem_uid: str) -> bool:
        with self._lock:
            subscriber = self._subscribers.get(ae_title)
            if subscriber is None:
                return False
            if workitem_uid:
                ended = [f for f in [subscriber.follows.pop(workitem_uid, None)] if f is not None]
            else:  # unsubscribing globally ends every subscription of the AE (PS3.4 CC.2.3)
                ended = list(subscriber.follows.values())
                subscriber.follows.clear()
        for follow in ended:
            if follow.task is not None:
                follow.task.cancel()
        return bool(ended)

    async def _pump(
        self,
        subscriber: _Subscriber,
        workitem_uid: str,
        follow: _Follow,
        stream: AsyncIterator[pb.SubscribeWorkitemsResponse],
        since: int,
    ) -> None:
        """Queue each event of one follow for the subscriber, resuming a follow that fell behind."""
        while True:
            try:
                async for event in stream:
                    since = event.sequence
                    if follow.only is not None and event.workitem_uid not in follow.only:
                        continue
                    try:
                        report = event_report(event, self._ae_title)
                    except Exception:  # one event that cannot be reported ends nothing
                        log.warning(
                            "UPS event %d of %s for %s not reported",
                            event.sequence,
                            event.workitem_uid,
                            subscriber.ae_title,
                            exc_info=True,
                        )
                        continue
                    if report is not None:
                        number, information = report
                        self._queue(
                            subscriber.ae_title,
                            Report(event.sequence, event.workitem_uid, number, information),
                        )
                return
            except ServiceError as error:
                if error.reason != "SUBSCRIBER_TOO_SLOW":
                    log.warning(
                        "UPS subscription of %s to %s ended: %s",
                        subscriber.ae_title,
                        workitem_uid or "all workitems",
                        error.message,
                    )
                    return
                stream = self._core.follow(workitem_uid, follow.match, since)

    def _queue(self, ae_title: str, report: Report) -> None:
        with self._lock:
            subscriber = self._subscribers.get(ae_title)
            if subscriber is None:
                return
            if report.sequence:
                if report.sequence in subscriber.recent:
                    return
                subscriber.recent.append(report.sequence)
                if len(subscriber.recent) > _RECENT:
                    subscriber.recent.popleft()
        subscriber.reports.put(report)

    # -- the senders -----------------------------------------------------------------------------

    def _send_loop(self, subscriber: _Subscriber) -> None:
        """Send the subscriber's reports in order: what is queued goes on one association."""
        while True:
            first = subscriber.reports.get()
            if first is None:
                return
            batch = [first]
            while True:
                try:
                    more = subscriber.reports.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._send_safely(subscriber.ae_title, batch)
                    return
                batch.append(more)
            self._send_safely(subscriber.ae_title, batch)

    def _send_safely(self, ae_title: str, reports: list[Report]) -> None:
        """Send, logging what fails: the sender goes on with the reports that come next."""
        try:
            self._send(ae_title, reports)
        except Exception:
            log.warning("UPS event reports for %s failed", ae_title, exc_info=True)

    def _send(self, ae_title: str, reports: list[Report]) -> None:
        """Open an association to the subscriber and send each report (PS3.4 CC.2.4)."""
        peer = self._peers.find(ae_title)
        if peer is None:
            log.warning(
                "%d UPS event reports for %s not sent: no longer a known peer",
                len(reports),
                ae_title,
            )
            return
        ae = AE(ae_title=self._ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = SEND_TIMEOUT_S
        ae.requested_contexts = [
            build_context(UPS_EVENT, [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN])
        ]
        # The archive is the UPS Event SCP calling its SCU, so it proposes that role (PS3.7
        # D.3.3.4); a subscriber that ignores the proposal is sent the reports all the same.
        role = build_role(UPS_EVENT, scp_role=True)
        for pause in (*RETRY_PAUSES_S, None):
            assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, ext_neg=[role])
            if assoc.is_established or pause is None:
                break
            time.sleep(pause)  # a subscriber restarting, say: called again shortly
        if not assoc.is_established:
            log.warning(
                "%d UPS event reports for %s not sent: no association with %s:%d",
                len(reports),
                ae_title,
                peer.host,
                peer.port,
            )
            return
        try:
            for number, report in enumerate(reports, 1):
                if not assoc.is_established:  # the subscriber aborted or closed it
                    log.warning(
                        "%d UPS event reports for %s not sent: the association ended",
                        len(reports) - number + 1,
                        ae_title,
                    )
                    return
                status, _ = assoc.send_n_event_report(
                    report.information,
                    report.event_type,
                    UPS_PUSH,
                    report.workitem_uid,
                    msg_id=number % 65536,
                    meta_uid=UPS_EVENT,
                )
                log.info(
                    "N-EVENT-REPORT %d of %s to %s: 0x%04X",
                    report.event_type,
                    report.workitem_uid,
                    ae_title,
                    int(status.get("Status", 0xFFFF)) if status else 0xFFFF,
                )
        finally:
            if assoc.is_established:
                assoc.release()

    def stop(self) -> None:
        """End every subscription and let the senders finish what they hold."""
        with self._lock:
            subscribers = list(self._subscribers.values())
            self._subscribers.clear()
        for subscriber in subscribers:
            for follow in subscriber.follows.values():
                if follow.task is not None:
                    self._loop.call_soon_threadsafe(follow.task.cancel)
            subscriber.reports.put(None)
