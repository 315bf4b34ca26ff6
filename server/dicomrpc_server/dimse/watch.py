"""UPS Watch and UPS Event over DIMSE (PS3.4 CC.2.3, CC.2.4): subscriptions and event reports.

A subscriber is an AE the archive knows as a peer (:mod:`dicomrpc_server.peers`): the archive
opens an association to it to send each N-EVENT-REPORT, so it must know where it listens; a
Receiving AE it does not know is refused with 0xC308 (PS3.4 CC.2.3).

Subscriptions last until the subscriber unsubscribes (PS3.4 CC.2.3), not as long as one server
process: each is a record of the index, kept by the workitem role
(:meth:`~dicomrpc_server.ups.records.WorkitemRecords.subscribe`), so that a restart keeps it and
every process of the data folder (``--processes N``) and every node of a PostgreSQL index sees
it: of one workitem, of all (the global subscription, SOP Instance UID
1.2.840.10008.5.1.4.34.5), or of those matching the keys of a filtered global subscription
(1.2.840.10008.5.1.4.34.5.1), with the same matching as a search.

Delivery follows the workitem event log, the one a gRPC ``SubscribeWorkitems`` reads: each
Receiving AE has a record saying up to which event it was delivered, and its events are
matched against its subscriptions (a filter on the workitem as the event left it) and become
the UPS event reports of PS3.4 CC.2.4 (state report, cancel requested, progress report,
assigned); a report wanted by two subscriptions of one AE (one workitem and the global one) is
sent once. A subscription starts with its initial reports (PS3.4 CC.2.3, CC.2.4.3), made in the
transaction that took it, so that they come right before the events after it.

One sender per Receiving AE, across processes and nodes
    The sender is whichever process holds the AE's lease: its id and an expiry in the AE's
    record, claimed and renewed every :data:`RENEW_S` by a change of that record, which the
    index applies one at a time (LMDB's write lock across the processes of a folder; the
    record's row lock on PostgreSQL, judged by the database's clock). The holder renews it
    while it serves, and gives it up when it stops; a process that is killed stops renewing,
    and another takes the lease over once it expires, within :data:`LEASE_S` and one renewal
    period. Each process runs one thread per AE it sends to, so that a slow or absent
    subscriber holds up no one else and never the archive's event loop.

At least once, in order
    A sender reads the events after the AE's delivered sequence, sends what is wanted on one
    association, and only then moves the delivered sequence on, past the reports the
    subscriber answered (a move the index refuses when the lease is no longer the sender's).
    So a report is sent again when its sender stops between sending it and recording it (a
    killed process, a lost lease), and never skipped; reports come in event sequence order. A
    subscriber that cannot be reached is called again, after pauses of :data:`RETRY_PAUSES_S`
    (the last repeated), until it answers; its events wait in the log meanwhile. Only a
    Receiving AE that is no longer a known peer has its reports passed over (logged).

A workitem subscription ends once the final state report of its workitem (COMPLETED or
CANCELED) is delivered: nothing changes a workitem in a final state any more (PS3.4 CC.1.1), so
it has nothing left to report. The Deletion Lock is kept with the subscription and holds nothing
back, as the archive never deletes a workitem.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from google.protobuf.timestamp_pb2 import Timestamp
from pydicom.dataset import Dataset
from pynetdicom import build_role
from pynetdicom.presentation import build_context

from dicomrpc.datasets import to_pydicom
from dicomrpc.v1 import dataset_pb2
from dicomrpc.v1 import workitem_service_pb2 as pb
from dicomrpc_server.dimse.contexts import UPS_EVENT, UPS_PUSH
from dicomrpc_server.dimse.loop import on_loop
from dicomrpc_server.dimse.statuses import RECEIVING_AE_UNKNOWN
from dicomrpc_server.dimse.transport import ArchiveAE
from dicomrpc_server.errors import Code, ServiceError
from dicomrpc_server.peers import PeerRegistry
from dicomrpc_server.query.engine import MAX_LIMIT, MatchTerm
from dicomrpc_server.retrieve.syntaxes import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
from dicomrpc_server.storage.records_pb2 import UpsSubscriptionRecord
from dicomrpc_server.ups.index import TermSet, match_terms
from dicomrpc_server.ups.records import Event, SubscriberState
from dicomrpc_server.ups.service import (
    PROGRESS,
    READINESS,
    SOP_INSTANCE,
    STATE,
    WorkitemCore,
    WorkitemQuery,
    public,
)
from dicomrpc_server.ups.states import State
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
# How long a sender waits for an association to open or a report to be answered, and how long
# it pauses before calling again a subscriber that did not answer (the last pause repeated,
# until it answers).
SEND_TIMEOUT_S = 30
RETRY_PAUSES_S = (1.0, 5.0, 30.0)
# How long a lease on a subscriber's delivery lasts unless renewed, and how often its holder
# renews it (and every process looks for leases nobody holds).
LEASE_S = 10.0
RENEW_S = 2.5
# How long a stopping process waits for its senders before giving up their leases.
STOP_WAIT_S = 5.0
# The events a sender reads at a time: at most this many reports go on one association.
PAGE = 256
_FINAL_STATES = frozenset({pb.WORKITEM_STATE_COMPLETED, pb.WORKITEM_STATE_CANCELED})
_FINAL_VALUES = frozenset({State.COMPLETED.value, State.CANCELED.value})


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


def _every(core: WorkitemCore, match: dict[str, str]) -> Iterator[dataset_pb2.Dataset]:
    """Every workitem matching (all without terms), a page at a time."""
    offset = 0
    while True:
        page = core.search(WorkitemQuery(match=match, limit=MAX_LIMIT, offset=offset))
        yield from page
        if len(page) < MAX_LIMIT:
            return
        offset += len(page)


def receiving_ae_unknown(ae_title: str) -> ServiceError:
    """The 0xC308 error of a subscription for an AE the archive cannot reach."""
    return ServiceError(
        Code.FAILED_PRECONDITION,
        "RECEIVING_AE_UNKNOWN",
        f"AE {ae_title!r} is not a known peer: add it (dicomrpc peers add) to subscribe it",
        dicom_status=RECEIVING_AE_UNKNOWN,
        metadata={"ae_title": ae_title},
    )


def _reachable(host: str, port: int) -> bool:
    """Whether a TCP connection to the subscriber opens (closed again at once)."""
    try:
        with socket.create_connection((host, port), timeout=SEND_TIMEOUT_S):
            return True
    except OSError:
        return False


def initial_information(dataset: dataset_pb2.Dataset) -> dataset_pb2.Dataset:
    """What the state report a subscription starts with holds (PS3.4 CC.2.3, CC.2.4.3)."""
    return public(dataset, {STATE, READINESS})


def wants(
    subscription: UpsSubscriptionRecord,
    terms: list[MatchTerm],
    event: pb.SubscribeWorkitemsResponse,
    event_terms: list[tuple[int, bytes]],
) -> bool:
    """Whether a subscription reports an event (``terms``: its filter, resolved).

    It reports the events after it was taken: of its workitem, or (the global one) of every
    workitem, of those its filter matches as the event left them, and of the events after its
    suspension only those of the workitems it covered then.
    """
    if event.sequence <= subscription.since:
        return False
    if subscription.workitem_uid:
        return event.workitem_uid == subscription.workitem_uid
    if (
        subscription.suspended
        and event.sequence > subscription.suspended_at
        and event.workitem_uid not in subscription.covered
    ):
        return False
    return not terms or TermSet(event.workitem_uid.encode("ascii"), event_terms).matches(
        terms, False
    )


@dataclass
class Step:
    """One step of a delivery: a report to send, or an event passed over (``report`` None).

    ``sequence`` is the event the step passes (0 for an initial report); ``initial_of`` names
    the subscription whose initial reports end with it; ``finished`` is a workitem whose final
    state report it is, with the sequence a subscription must predate to end with it.
    """

    report: Report | None
    sequence: int = 0
    initial_of: str = ""
    finished: tuple[str, int] | None = None


@dataclass
class Delivery:
    """Where a delivery stands: what it delivered, to record.

    The sequence delivered, the subscriptions whose initial reports were, and the workitems
    whose final state report was (with the sequence a subscription must predate to end).
    """

    delivered: int
    initial_done: set[str] = field(default_factory=set)
    finished: list[tuple[str, int]] = field(default_factory=list)


def plan(
    subscriptions: list[UpsSubscriptionRecord],
    delivered: int,
    page: list[Event],
    at_end: bool,
    requesting_ae: str,
) -> list[Step]:
    """The steps of one delivery to one AE, in order: its events after ``delivered``.

    The initial reports of a subscription come right before the first event after it was
    taken (or at the end, when the log has none yet); an event is reported once, however many
    of the AE's subscriptions want it.
    """
    filters = {s.id: match_terms(dict(s.match)) for s in subscriptions}
    pending = sorted((s for s in subscriptions if s.initial), key=lambda s: s.since)
    items: list[Step] = []

    def initial_before(sequence: int | None) -> None:
        while pending and (sequence is None or pending[0].since < sequence):
            subscription = pending.pop(0)
            for n, initial in enumerate(subscription.initial, 1):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    information = to_pydicom(dataset_pb2.Dataset.FromString(initial.information))
                last = n == len(subscription.initial)
                finished = None
                if subscription.workitem_uid and information.get("ProcedureStepState") in (
                    _FINAL_VALUES
                ):
                    finished = (subscription.workitem_uid, subscription.since + 1)
                items.append(
                    Step(
                        Report(0, initial.workitem_uid, STATE_REPORT, information),
                        initial_of=subscription.id if last else "",
                        finished=finished if last else None,
                    )
                )

    for event, terms in page:
        if event.sequence <= delivered:
            continue
        initial_before(event.sequence)
        report = None
        if any(wants(s, filters[s.id], event, terms) for s in subscriptions):
            try:
                made = event_report(event, requesting_ae)
            except Exception:  # one event that cannot be reported ends nothing
                log.warning(
                    "UPS event %d of %s not reported",
                    event.sequence,
                    event.workitem_uid,
                    exc_info=True,
                )
                made = None
            if made is not None:
                report = Report(event.sequence, event.workitem_uid, *made)
        finished = None
        if event.type == pb.WORKITEM_EVENT_TYPE_STATE_REPORT and event.state in _FINAL_STATES:
            finished = (event.workitem_uid, event.sequence)
        items.append(Step(report, event.sequence, finished=finished))
    if at_end:
        initial_before(None)
    return items


def reached(items: list[Step], sent: int, delivered: int) -> Delivery:
    """Where a delivery stands once the first ``sent`` reports of ``items`` were answered."""
    out = Delivery(delivered)
    for item in items:
        if item.report is not None:
            if sent <= 0:
                break
            sent -= 1
        if item.sequence:
            out.delivered = item.sequence
        if item.initial_of:
            out.initial_done.add(item.initial_of)
        if item.finished is not None:
            out.finished.append(item.finished)
    return out


@dataclass
class _Sender:
    """The sender of one Receiving AE's reports in this process: what wakes or stops it."""

    ae_title: str
    wake: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    renewed: float = 0.0
    thread: threading.Thread | None = None


class Watchers:
    """The AEs subscribed to workitem events, and the senders of their event reports.

    Parameters
    ----------
    core
        The workitem core: its records keep the subscriptions and the event log.
    peers
        Where each subscriber listens, looked up at each send.
    loop
        The archive's event loop, where the records are written.
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
        self._store = core.store
        self._peers = peers
        self._loop = loop
        self._ae_title = ae_title
        # This process's name on the leases it holds: unique, also after a restart.
        self.owner = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:12]}"
        self._senders: dict[str, _Sender] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._store.on_commit(self._committed)

    def start(self) -> None:
        """Start looking for subscribers to send to (the leases nobody holds)."""
        self._thread = threading.Thread(target=self._dispatch, name="ups-watch", daemon=True)
        self._thread.start()

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
        if workitem_uid:
            self._core.retrieve(workitem_uid)  # 0xC307 for a workitem there is none of
        else:
            match_terms(match)  # a bad filter is refused before anything is written
        created = Timestamp()
        created.GetCurrentTime()
        record = UpsSubscriptionRecord(
            ae_title=ae_title,
            workitem_uid=workitem_uid,
            match=dict(match),
            deletion_lock=lock,
            created=created,
            id=uuid.uuid4().hex,
        )
        initial = initial_information if workitem_uid or lock else None
        on_loop(self._loop, self._store.subscribe(record, initial))
        self._wake.set()  # claimed here at once, unless another process sends to the AE

    def unsubscribe(self, ae_title: str, workitem_uid: str) -> bool:
        """End one subscription, or (``workitem_uid`` "") every one of the AE; whether any was."""

        def end(state: SubscriberState) -> bool:
            if not workitem_uid:  # unsubscribing globally ends every subscription (PS3.4 CC.2.3)
                ended = bool(state.subscriptions)
                state.subscriptions.clear()
                return ended
            return state.subscriptions.pop(workitem_uid, None) is not None

        return on_loop(self._loop, self._store.change_subscriber(ae_title, end))

    def suspend(self, ae_title: str) -> bool:
        """Stop subscribing the AE to new workitems, keeping those it is subscribed to.

        The global subscription goes on for the workitems that exist now (each of which it
        subscribed the AE to, PS3.4 CC.2.3), and no longer takes in new ones.
        """
        found = {s.workitem_uid: s for s in self._store.subscriptions(ae_title)}
        if "" not in found:
            return False
        # Read before the workitems: one created meanwhile may be covered, none is missed.
        suspended_at = self._store.last_sequence()
        covered = {
            text(dataset, SOP_INSTANCE) for dataset in _every(self._core, dict(found[""].match))
        }

        def suspend(state: SubscriberState) -> bool:
            subscription = state.subscriptions.get("")
            if subscription is None:
                return False
            if subscription.suspended:
                keep = covered & set(subscription.covered)
            else:
                keep = covered
                subscription.suspended_at = suspended_at
            subscription.suspended = True
            del subscription.covered[:]
            subscription.covered.extend(sorted(keep))
            return True

        return on_loop(self._loop, self._store.change_subscriber(ae_title, suspend))

    def subscriptions(self, ae_title: str) -> list[str]:
        """The workitem UIDs the AE follows ("" for the global subscription)."""
        return sorted(s.workitem_uid for s in self._store.subscriptions(ae_title))

    # -- the leases ------------------------------------------------------------------------------

    def _committed(self) -> None:
        """After a commit (this process's or another's): the senders look for new events."""
        with self._lock:
            senders = list(self._senders.values())
        for sender in senders:
            sender.wake.set()

    def _dispatch(self) -> None:
        """Claim the leases nobody holds, renew this process's, every :data:`RENEW_S`."""
        while not self._stopping.is_set():
            try:
                self._round()
            except Exception:  # the index unavailable for a moment, say: tried again
                log.warning("UPS subscriptions not looked up", exc_info=True)
            self._wake.wait(RENEW_S)
            self._wake.clear()

    def _round(self) -> None:
        now_ms = time.time() * 1000
        for record in self._store.subscribers():
            if self._stopping.is_set():
                return
            with self._lock:
                sender = self._senders.get(record.ae_title)
            if sender is not None:
                if time.monotonic() - sender.renewed >= RENEW_S and not self._claim(sender):
                    log.warning("UPS event delivery to %s taken over", sender.ae_title)
                    sender.stop.set()
                    sender.wake.set()
                continue
            # By this process's clock, to spare a write; the index's decides the claim.
            held = record.owner and record.owner != self.owner
            if held and record.lease_expires_ms > now_ms:
                continue
            sender = _Sender(record.ae_title)
            if self._claim(sender):
                self._start_sender(sender)

    def _claim(self, sender: _Sender) -> bool:
        """Take or renew the lease on the AE's delivery; whether this process holds it."""
        owner = self.owner
        lease_ms = int(LEASE_S * 1000)

        def claim(state: SubscriberState) -> bool:
            record = state.subscriber
            if record is None or not state.subscriptions:
                return False
            if record.owner and record.owner != owner and record.lease_expires_ms > state.now_ms:
                return False
            record.owner = owner
            record.lease_expires_ms = state.now_ms + lease_ms
            return True

        started = time.monotonic()
        held = on_loop(self._loop, self._store.change_subscriber(sender.ae_title, claim))
        if held:
            sender.renewed = started
        return held

    def _start_sender(self, sender: _Sender) -> None:
        sender.thread = threading.Thread(
            target=self._send_loop,
            args=(sender,),
            name=f"ups-events-{sender.ae_title}",
            daemon=True,
        )
        with self._lock:
            self._senders[sender.ae_title] = sender
        sender.thread.start()

    # -- the senders -----------------------------------------------------------------------------

    def _send_loop(self, sender: _Sender) -> None:
        """Deliver the AE's reports while this process holds its lease."""
        failures = 0
        try:
            while not sender.stop.is_set() and not self._stopping.is_set():
                try:
                    outcome = self._deliver(sender)
                except Exception:
                    log.warning("UPS event delivery to %s failed", sender.ae_title, exc_info=True)
                    outcome = "failed"
                if outcome == "ended":
                    return
                if outcome == "more":
                    failures = 0
                    continue
                if outcome == "failed":
                    pause = RETRY_PAUSES_S[min(failures, len(RETRY_PAUSES_S) - 1)]
                    failures += 1
                    sender.stop.wait(pause)
                    continue
                failures = 0
                sender.wake.wait(RENEW_S)
                sender.wake.clear()
        finally:
            with self._lock:
                if self._senders.get(sender.ae_title) is sender:
                    del self._senders[sender.ae_title]

    def _deliver(self, sender: _Sender) -> str:
        """Send one page of the AE's reports and record what was delivered.

        Returns "more" to go on at once, "idle" when everything is delivered, "failed" when the
        subscriber did not take it all, "ended" when the lease or the subscriptions are gone.
        """
        ae_title = sender.ae_title
        record = next((r for r in self._store.subscribers() if r.ae_title == ae_title), None)
        if record is None or record.owner != self.owner:
            return "ended"
        subscriptions = self._store.subscriptions(ae_title)
        if not subscriptions:
            return "ended"
        page = self._store.events_after(record.delivered, PAGE)
        items = plan(subscriptions, record.delivered, page, len(page) < PAGE, self._ae_title)
        if not items:
            return "idle"
        reports = [item.report for item in items if item.report is not None]
        sent = self._send(ae_title, reports) if reports else 0
        delivery = reached(items, sent, record.delivered)
        if not self._advance(ae_title, delivery):
            return "ended"
        if sent < len(reports):
            return "failed"
        return "more"

    def _advance(self, ae_title: str, delivery: Delivery) -> bool:
        """Record what was delivered, if this process still holds the lease; whether it does."""
        owner = self.owner
        lease_ms = int(LEASE_S * 1000)

        def advance(state: SubscriberState) -> bool:
            record = state.subscriber
            if record is None or record.owner != owner:
                return False
            record.delivered = max(record.delivered, delivery.delivered)
            record.lease_expires_ms = state.now_ms + lease_ms
            for subscription in state.subscriptions.values():
                if subscription.id in delivery.initial_done:
                    del subscription.initial[:]
            for workitem_uid, sequence in delivery.finished:
                ended = state.subscriptions.get(workitem_uid)
                if ended is not None and ended.since < sequence and not ended.initial:
                    del state.subscriptions[workitem_uid]
                suspended = state.subscriptions.get("")
                if suspended is not None and workitem_uid in suspended.covered:
                    suspended.covered.remove(workitem_uid)
            return True

        return on_loop(self._loop, self._store.change_subscriber(ae_title, advance))

    def _send(self, ae_title: str, reports: list[Report]) -> int:
        """Send each report on one association (PS3.4 CC.2.4); how many were answered.

        A Receiving AE that is no longer a known peer has them passed over (all count).
        """
        peer = self._peers.find(ae_title)
        if peer is None:
            log.warning(
                "%d UPS event reports for %s passed over: no longer a known peer",
                len(reports),
                ae_title,
            )
            return len(reports)
        ae = ArchiveAE(ae_title=self._ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = SEND_TIMEOUT_S
        ae.requested_contexts = [
            build_context(UPS_EVENT, [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN])
        ]
        # The archive is the UPS Event SCP calling its SCU, so it proposes that role (PS3.7
        # D.3.3.4); a subscriber that ignores the proposal is sent the reports all the same.
        role = build_role(UPS_EVENT, scp_role=True)
        # A subscriber that is down is called until it answers, so its refusals are expected:
        # they are found with a connection of our own, as pynetdicom lets go of the socket of
        # a refused connection without closing it.
        if not _reachable(peer.host, peer.port):
            log.warning(
                "%d UPS event reports for %s not sent yet: %s:%d does not answer",
                len(reports),
                ae_title,
                peer.host,
                peer.port,
            )
            return 0
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, ext_neg=[role])
        if not assoc.is_established:
            log.warning(
                "%d UPS event reports for %s not sent yet: no association with %s:%d",
                len(reports),
                ae_title,
                peer.host,
                peer.port,
            )
            return 0
        answered = 0
        try:
            for number, report in enumerate(reports, 1):
                if not assoc.is_established:  # the subscriber aborted or closed it
                    break
                status, _ = assoc.send_n_event_report(
                    report.information,
                    report.event_type,
                    UPS_PUSH,
                    report.workitem_uid,
                    msg_id=number % 65536,
                    meta_uid=UPS_EVENT,
                )
                if not status:  # no answer (timed out, aborted): not known to be delivered
                    break
                answered += 1
                log.info(
                    "N-EVENT-REPORT %d of %s to %s: 0x%04X",
                    report.event_type,
                    report.workitem_uid,
                    ae_title,
                    int(status.get("Status", 0xFFFF)),
                )
        finally:
            if assoc.is_established:
                assoc.release()
        if answered < len(reports):
            log.warning(
                "%d UPS event reports for %s not sent yet: the association ended",
                len(reports) - answered,
                ae_title,
            )
        return answered

    async def stop(self) -> None:
        """Stop sending, and give up the leases, so that another process takes over at once."""
        self._stopping.set()
        self._wake.set()
        with self._lock:
            senders = list(self._senders.values())
        for sender in senders:
            sender.stop.set()
            sender.wake.set()

        def join() -> None:
            # A sender in the middle of a send is not waited for long: what it sends is sent
            # again by the next holder of the lease, as a report may be (at least once).
            deadline = time.monotonic() + STOP_WAIT_S
            threads = [self._thread, *(sender.thread for sender in senders)]
            for thread in threads:
                if thread is not None:
                    thread.join(max(0.0, deadline - time.monotonic()))

        await asyncio.to_thread(join)
        owner = self.owner

        def release(state: SubscriberState) -> None:
            record = state.subscriber
            if record is not None and record.owner == owner:
                record.owner = ""
                record.lease_expires_ms = 0

        for sender in senders:
            try:
                await self._store.change_subscriber(sender.ae_title, release)
            except Exception:  # it expires instead
                log.warning("UPS lease of %s not given up", sender.ae_title, exc_info=True)
