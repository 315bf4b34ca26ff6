"""Storage Commitment Push Model SCP (PS3.4 Annex J): what the archive holds, reported back.

A requester asks, with an N-ACTION (Action Type ID 1, PS3.4 J.3.2), that the archive commit
to keeping the instances its Referenced SOP Sequence names, under a Transaction UID of its
own. The N-ACTION is answered at once: 0x0000 means the request was taken, a failure status
that it never will be (PS3.4 J.3.2.1.3). The result follows in an N-EVENT-REPORT (PS3.4
J.3.3): each instance is decided from the index, the archive's durable record of what it
stored, through the retrieve core's reads (the instance with that SOP Instance UID, and its
record's SOP Class):

====================================================  ==================================
The index holds                                       The instance is
====================================================  ==================================
that SOP Instance UID, with that SOP Class UID        committed (Referenced SOP Sequence)
that SOP Instance UID, with another SOP Class UID     failed: 0x0119 Class / Instance
                                                      conflict
nothing of that UID, and the class is not a storage   failed: 0x0122 Referenced SOP Class
SOP Class the archive accepts                         not supported
nothing of that UID                                   failed: 0x0112 No such object
                                                      instance
====================================================  ==================================

Event Type 1 says every instance is committed, 2 that some failed (PS3.4 J.3.3.1.2). The
report goes on the requester's own association while it is open (the SCP "may attempt" it,
PS3.4 J.3.3.1.2 Note 1), otherwise, or when the requester does not take it there, on a new
association to the requester's AE title as the peer registry knows it
(:mod:`dicomrpc_server.peers`), on which the archive proposes the SCP role (PS3.4 J.3.3.1.3
Note; PS3.7 D.3.3.4). A requester the registry does not know gets no report; the log and the
audit trail say so.

The N-ACTION handler runs on the association's thread and only checks the request; the
instances are decided (index reads, no event loop) and the report sent by a thread of the
transaction's own. The association's reactor is held from the N-ACTION response until the
report there is answered or given up, so that the report never overtakes the response and
the reactor never takes the requester's answer for a request; the new association to a peer,
which may be slow or unreachable, holds neither the requester's association nor the loop.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID
from pynetdicom import AE, build_context, build_role
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import N_ACTION, N_EVENT_REPORT
from pynetdicom.dsutils import encode
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT, A_RELEASE

from dicomrpc_server.dicom.uids import uid_error
from dicomrpc_server.dimse import statuses
from dicomrpc_server.dimse.audit import DimseAudit
from dicomrpc_server.dimse.contexts import STORAGE_COMMITMENT, STORAGE_SOP_CLASSES
from dicomrpc_server.dimse.requesters import calling_ae_title, describe_requester
from dicomrpc_server.errors import ServiceError
from dicomrpc_server.peers import Peer, PeerRegistry
from dicomrpc_server.retrieve.scope import StoredInstance
from dicomrpc_server.retrieve.service import RetrieveCore
from dicomrpc_server.retrieve.syntaxes import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)

log = logging.getLogger("dicomrpc.dimse")

# The well-known SOP Instance the N-ACTION operates on (PS3.4 J.3.5).
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"
# Action Type ID: Request Storage Commitment (PS3.4 Table J.3-1).
REQUEST_COMMITMENT = 1
# Event Type IDs (PS3.4 Table J.3-2): all committed; complete, some failed.
ALL_COMMITTED = 1
SOME_FAILED = 2
# References one request may name: the report lists each, in one data set.
MAX_REFERENCES = 65535
# Transactions whose report is still being decided or sent, at most, at once.
MAX_PENDING = 64
# The Message ID of a report on the requester's association: the archive sends one request
# at a time there, its own numbering apart from the requester's (PS3.7 §9.1.1.1).
_REPORT_MESSAGE_ID = 1
_PAUSE_POLL_S = 0.0005
_ANSWER_POLL_S = 0.005


@dataclass(frozen=True)
class Reference:
    """One instance a request names: its SOP Class UID and SOP Instance UID."""

    sop_class: str
    sop_instance: str


@dataclass
class Decision:
    """The instances committed, and those failed with their Failure Reason (PS3.4 J.3.3)."""

    committed: list[tuple[Reference, StoredInstance]] = field(default_factory=list)
    failed: list[tuple[Reference, int]] = field(default_factory=list)

    @property
    def event_type(self) -> int:
        """Event Type ID 1 when every instance is committed, 2 otherwise."""
        return SOME_FAILED if self.failed else ALL_COMMITTED


class Refusal(Exception):
    """An N-ACTION the archive will not process: its failure status and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def read_request(event: Event) -> tuple[str, list[Reference]]:
    """The Transaction UID and the references of a Storage Commitment Request.

    Raises
    ------
    Refusal
        With the N-ACTION failure status (PS3.7 §10.1.4.1.10) of a request the archive does
        not process: another SOP Class (0x0118), another action (0x0123), another SOP
        Instance than the well-known one (0x0112), Action Information that cannot be read
        (0x0110), a missing or malformed Transaction UID or Referenced SOP Sequence (0x0115
        Invalid argument value), more references than one report may list (0x0213).
    """
    request = event.request
    assert isinstance(request, N_ACTION)
    if str(request.RequestedSOPClassUID or "") != STORAGE_COMMITMENT:
        raise Refusal(statuses.NO_SUCH_SOP_CLASS, f"the SOP class is {STORAGE_COMMITMENT}")
    if request.ActionTypeID != REQUEST_COMMITMENT:
        raise Refusal(statuses.NO_SUCH_ACTION, f"action type {request.ActionTypeID} is not 1")
    if str(request.RequestedSOPInstanceUID or "") != WELL_KNOWN_INSTANCE:
        raise Refusal(statuses.NO_SUCH_SOP_INSTANCE, f"the SOP instance is {WELL_KNOWN_INSTANCE}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's remarks on a value: judged below
            info = event.action_information
            transaction = str(info.get("TransactionUID", "") or "").strip()
            items = info.get("ReferencedSOPSequence", None)
            references = [_reference(item) for item in items or ()]
    except Exception as exc:  # Action Information pydicom cannot decode
        raise Refusal(
            statuses.PROCESSING_FAILURE, f"the action information cannot be read: {exc}"
        ) from None
    if not transaction:
        raise Refusal(statuses.INVALID_ARGUMENT_VALUE, "Transaction UID (0008,1195) is missing")
    error = uid_error("TransactionUID", transaction)
    if error is not None:
        raise Refusal(statuses.INVALID_ARGUMENT_VALUE, error.message)
    if not items:
        raise Refusal(
            statuses.INVALID_ARGUMENT_VALUE, "Referenced SOP Sequence (0008,1150) is empty"
        )
    if len(items) > MAX_REFERENCES:
        raise Refusal(
            statuses.RESOURCE_LIMITATION, f"{len(items)} references, more than {MAX_REFERENCES}"
        )
    for number, reference in enumerate(references, 1):
        if not reference.sop_class or not reference.sop_instance:
            raise Refusal(
                statuses.INVALID_ARGUMENT_VALUE,
                f"reference {number} lacks its SOP Class or SOP Instance UID",
            )
    return transaction, references


def _reference(item: Dataset) -> Reference:
    return Reference(
        str(item.get("ReferencedSOPClassUID", "") or "").strip(),
        str(item.get("ReferencedSOPInstanceUID", "") or "").strip(),
    )


def decide(core: RetrieveCore, references: list[Reference]) -> Decision:
    """Each reference committed or failed, from the index (see the module's table)."""
    decision = Decision()
    for reference in references:
        stored = _stored(core, reference.sop_instance)
        if stored is not None and stored.record.sop_class_uid == reference.sop_class:
            decision.committed.append((reference, stored))
        elif stored is not None:
            decision.failed.append((reference, statuses.CLASS_INSTANCE_CONFLICT))
        elif reference.sop_class not in STORAGE_SOP_CLASSES:
            decision.failed.append((reference, statuses.SOP_CLASS_NOT_SUPPORTED))
        else:
            decision.failed.append((reference, statuses.NO_SUCH_OBJECT_INSTANCE))
    return decision


def _stored(core: RetrieveCore, sop: str) -> StoredInstance | None:
    """The stored instance of a SOP Instance UID, with its index record, or ``None``."""
    where = core.locate(sop)
    if where is None:
        return None
    try:
        found = core.instances(where[0], where[1], sop)
    except ServiceError:  # deleted since, or a UID no request may name
        return None
    return found[0] if found else None


def event_information(transaction: str, decision: Decision, retrieve_ae: str) -> Dataset:
    """The N-EVENT-REPORT's Event Information (PS3.4 Table J.3-2).

    The UIDs go back as the request sent them, the non-conformant ones the archive tolerates
    too (pydicom's remarks on them are not a reason to withhold the report).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = Dataset()
        info.TransactionUID = transaction
        info.RetrieveAETitle = retrieve_ae
        if decision.committed:
            info.ReferencedSOPSequence = Sequence(
                [_item(reference) for reference, _ in decision.committed]
            )
        if decision.failed:
            failed = []
            for reference, reason in decision.failed:
                item = _item(reference)
                item.FailureReason = reason
                failed.append(item)
            info.FailedSOPSequence = Sequence(failed)
    return info


def _item(reference: Reference) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = reference.sop_class
    item.ReferencedSOPInstanceUID = reference.sop_instance
    return item


@dataclass
class _Transaction:
    """One accepted request, from its N-ACTION to its report."""

    assoc: Association
    transaction: str
    references: list[Reference]
    started: float


class CommitmentHandler:
    """The EVT_N_ACTION handler of the Storage Commitment Push Model SOP Class.

    Parameters
    ----------
    core
        The retrieve core: the instances are looked up in the index through it.
    peers
        The registry the requester's AE title is looked up in, for a report on a new
        association.
    ae_title
        The archive's AE title, sent as the report's Retrieve AE Title: where the committed
        instances can be retrieved from (C-GET, C-MOVE).
    audit
        The audit hook: one record per transaction.
    timeout_s
        How long a requester has to answer a report (the DIMSE timeout).
    """

    def __init__(
        self,
        core: RetrieveCore,
        peers: PeerRegistry,
        ae_title: str,
        audit: DimseAudit,
        timeout_s: float,
    ) -> None:
        self._core = core
        self._peers = peers
        self._ae_title = ae_title
        self._audit = audit
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._pending: set[threading.Thread] = set()

    def __call__(self, event: Event) -> tuple[Dataset, Dataset | None]:
        """Answer the N-ACTION: take the request (its report follows) or refuse it."""
        started = time.monotonic()
        assoc = event.assoc
        try:
            transaction, references = read_request(event)
        except Refusal as refusal:
            log.info(
                "N-ACTION storage commitment from %s: 0x%04X (%s)",
                describe_requester(assoc),
                refusal.status,
                refusal.message,
            )
            return _status(refusal.status, refusal.message), None
        work = _Transaction(assoc, transaction, references, started)
        thread = threading.Thread(
            target=self._run, args=(work,), name=f"commitment-{transaction}", daemon=True
        )
        with self._lock:
            full = len(self._pending) >= MAX_PENDING
            if not full:
                self._pending.add(thread)
        if full:
            message = f"{MAX_PENDING} commitment reports are pending"
            log.warning(
                "N-ACTION storage commitment %s from %s: 0x%04X (%s)",
                transaction,
                describe_requester(assoc),
                statuses.RESOURCE_LIMITATION,
                message,
            )
            return _status(statuses.RESOURCE_LIMITATION, message), None
        _hold_reactor(assoc)
        thread.start()
        return _status(statuses.SUCCESS, ""), None

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the reports being decided or sent."""
        deadline = time.monotonic() + timeout
        with self._lock:
            pending = list(self._pending)
        for thread in pending:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self, work: _Transaction) -> None:
        try:
            self._report(work)
        except Exception:
            log.exception("storage commitment %s: the report failed", work.transaction)
        finally:
            with self._lock:
                self._pending.discard(threading.current_thread())

    def _report(self, work: _Transaction) -> None:
        assoc = work.assoc
        try:
            decision = decide(self._core, work.references)
            info = event_information(work.transaction, decision, self._ae_title)
            answered = _report_here(assoc, info, decision.event_type, self._timeout_s)
        finally:
            _resume_reactor(assoc)
        where = "on the same association"
        if answered != statuses.SUCCESS:
            # Not taken there (ended, released, unanswered or refused): the requester's AE
            # title as the registry knows it gets it on an association of its own.
            title = calling_ae_title(assoc)
            peer = self._peers.find(title)
            if peer is None:
                where = "nowhere"
            else:
                where = f"to {peer.ae_title}@{peer.host}:{peer.port}"
                try:
                    answered = _report_to(assoc.ae, peer, info, decision.event_type)
                except Exception as exc:  # the report pynetdicom could not encode, say
                    log.warning("storage commitment %s: %s", work.transaction, exc)
                    answered = None
        problem = ""
        if where == "nowhere":
            problem = (
                f"not taken on its association, and {calling_ae_title(assoc)!r} is not a known peer"
            )
        elif answered is None:
            problem = "the requester could not be reached or did not answer"
        elif answered != statuses.SUCCESS:
            problem = f"the requester answered 0x{answered:04X}"
        self._audit.committed(
            assoc,
            work.transaction,
            [stored for _, stored in decision.committed],
            [(ref.sop_instance, ref.sop_class, reason) for ref, reason in decision.failed],
            problem,
        )
        log.log(
            logging.WARNING if problem else logging.INFO,
            "N-ACTION storage commitment %s from %s: 0x0000, %d committed, %d failed, "
            "reported %s in %.0f ms%s",
            work.transaction,
            describe_requester(assoc),
            len(decision.committed),
            len(decision.failed),
            where,
            (time.monotonic() - work.started) * 1000,
            f" ({problem})" if problem else "",
        )


def _status(status: int, message: str) -> Dataset:
    answer = Dataset()
    answer.Status = status
    if message and status != statuses.SUCCESS:
        answer.ErrorComment = statuses.comment(message)
    return answer


def _report_request(info: Dataset, event_type: int, syntax: str) -> N_EVENT_REPORT | None:
    """The N-EVENT-REPORT request (PS3.7 §10.1.1), its data set in ``syntax``."""
    uid = UID(syntax)
    data = encode(info, uid.is_implicit_VR, uid.is_little_endian, uid.is_deflated)
    if data is None:
        return None
    request = N_EVENT_REPORT()
    request.MessageID = _REPORT_MESSAGE_ID
    request.AffectedSOPClassUID = STORAGE_COMMITMENT
    request.AffectedSOPInstanceUID = WELL_KNOWN_INSTANCE
    request.EventTypeID = event_type
    request.EventInformation = io.BytesIO(data)
    return request


def _hold_reactor(assoc: Association) -> None:
    """Have the association's reactor park once the N-ACTION response is sent.

    pynetdicom serves an association's requests on one thread, its reactor, which parks when
    its checkpoint is cleared; pynetdicom's own ``send_*`` methods clear it and wait for
    ``_is_paused`` before they send and wait for the answer, so that the reactor does not take
    the peer's answer for a request of its own. Cleared here, in the handler, the reactor
    parks right after sending the N-ACTION response, before it reads anything more of the
    requester, until :func:`_resume_reactor`. pynetdicom sets ``_is_paused`` while a handler
    runs (so that a handler may send); it is unset here, so that it means parked again, and
    the report is sent only after the response.
    """
    assoc._reactor_checkpoint.clear()
    assoc._is_paused = False


def _resume_reactor(assoc: Association) -> None:
    """Let the reactor serve the requester again (see :func:`_hold_reactor`)."""
    assoc._reactor_checkpoint.set()


def _ending(assoc: Association) -> bool:
    """Whether the requester asked to release or abort (its request not yet handled)."""
    return not assoc.is_established or isinstance(
        assoc.dul.peek_next_pdu(), (A_RELEASE, A_ABORT, A_P_ABORT)
    )


def _report_here(
    assoc: Association, info: Dataset, event_type: int, timeout_s: float
) -> int | None:
    """Send the report on the requester's association; its answer's status, or ``None``.

    The reactor was held by the N-ACTION handler (:func:`_hold_reactor`); the report goes once
    it has parked, unless the requester has already sent another request, which it would await
    the answer to first. A request it sends after the report (it may invoke one operation while
    the archive invokes its own, PS3.7 D.3.3.3) is handed back to the reactor, in order, to be
    served after. Unlike pynetdicom's ``send_n_event_report``, a release or abort the requester
    sends meanwhile ends the wait at once: the requester may release at any time after the
    N-ACTION response (PS3.4 J.3.2.1.2), and a requester releasing ignores what it receives
    (PS3.8 §7.2.2); the report then goes on a new association instead of waiting out the DIMSE
    timeout.
    """
    context = next(
        (cx for cx in assoc.accepted_contexts if cx.abstract_syntax == STORAGE_COMMITMENT), None
    )
    if context is None or context.context_id is None:
        return None
    request = _report_request(info, event_type, str(context.transfer_syntax[0]))
    if request is None:
        return None
    deadline = time.monotonic() + timeout_s
    while not assoc._is_paused:
        if not assoc.is_established or time.monotonic() > deadline:
            return None
        time.sleep(_PAUSE_POLL_S)
    if _ending(assoc) or not assoc.dimse.msg_queue.empty():
        # Released, aborted, or busy with a request of its own that it awaits the answer to:
        # the report goes on a new association rather than waiting on this one.
        return None
    held: list[tuple[int | None, Any]] = []
    assoc.dimse.send_msg(request, context.context_id)
    try:
        while time.monotonic() < deadline:
            context_id, answer = assoc.dimse.get_msg(block=False)
            if (
                isinstance(answer, N_EVENT_REPORT)
                and answer.MessageIDBeingRespondedTo == _REPORT_MESSAGE_ID
            ):
                return int(answer.Status) if answer.Status is not None else None
            if answer is not None:
                held.append((context_id, answer))
            elif _ending(assoc):
                return None
            else:
                time.sleep(_ANSWER_POLL_S)
        return None
    finally:
        if held:
            _hand_back(assoc, held)


def _hand_back(assoc: Association, held: list[tuple[int | None, Any]]) -> None:
    """Put messages read while waiting back at the head of the reactor's queue, in order."""
    waiting = assoc.dimse.msg_queue
    with waiting.mutex:
        waiting.queue.extendleft(reversed(held))
        waiting.not_empty.notify()


def _report_to(ae: AE, peer: Peer, info: Dataset, event_type: int) -> int | None:
    """Send the report on a new association to ``peer``; its answer's status, or ``None``.

    The archive requests the association as the Storage Commitment SCP: DICOM's default
    makes the requester the SCU, so it proposes the SCP role (PS3.4 J.3.3.1.3 Note).
    """
    context = build_context(
        STORAGE_COMMITMENT, [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN]
    )
    role = build_role(STORAGE_COMMITMENT, scp_role=True)
    assoc = ae.associate(
        peer.host, peer.port, contexts=[context], ae_title=peer.ae_title, ext_neg=[role]
    )
    if not assoc.is_established:
        return None
    try:
        answer, _ = assoc.send_n_event_report(
            info, event_type, STORAGE_COMMITMENT, WELL_KNOWN_INSTANCE
        )
    finally:
        if assoc.is_established:
            assoc.release()
    status = answer.get("Status")
    return int(status) if status is not None else None
