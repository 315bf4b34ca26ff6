"""The DIMSE adapter's audit hook: the same records the other adapters write (PS3.15 A.5).

One record per C-FIND, C-GET, C-MOVE and storage commitment transaction, one per UPS
operation (N-CREATE, N-SET, N-GET, N-ACTION, and the UPS and worklist C-FIND) with the
actions the gRPC workitem calls record, and one per association for the instances it stored
(as one gRPC store stream or one STOW-RS request is one record, not one per instance). A
requester has no credential, so the caller is anonymous, known by its calling AE title and
its address.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from pynetdicom.association import Association

from dicomrpc_server.access.caller import ANONYMOUS, Caller
from dicomrpc_server.audit.auditor import Auditor
from dicomrpc_server.audit.records import (
    SUCCESS,
    Action,
    AuditRecord,
    FailedInstance,
    InstanceRef,
    Outcome,
)
from dicomrpc_server.dimse.requesters import calling_ae_title, requester_address
from dicomrpc_server.errors import ServiceError
from dicomrpc_server.retrieve.scope import StoredInstance
from dicomrpc_server.store.ingest import InstanceResult
from dicomrpc_server.store.ingest import Outcome as StoreOutcome

ADAPTER = "dimse"


def caller_of(assoc: Association) -> Caller:
    """The requester: its calling AE title, unproven, at its address."""
    title = calling_ae_title(assoc)
    return Caller(title or ANONYMOUS, ANONYMOUS, frozenset(), requester_address(assoc))


def outcome_of(error: ServiceError | None) -> Outcome:
    """The record's outcome: success, or the core error's code, reason and message."""
    if error is None:
        return SUCCESS
    return Outcome(error.code.value, error.reason, error.message)


@dataclass
class _Stores:
    caller: Caller
    stored: list[InstanceRef] = field(default_factory=list)
    failed: list[FailedInstance] = field(default_factory=list)
    first_failure: ServiceError | None = None


class DimseAudit:
    """Writes the DIMSE operations to the archive's audit trail (when it has one)."""

    def __init__(self, auditor: Auditor) -> None:
        self._auditor = auditor
        self._lock = threading.Lock()
        self._stores: dict[int, _Stores] = {}

    @property
    def enabled(self) -> bool:
        """Whether there is an audit trail to write to."""
        return self._auditor.enabled

    def stored(self, assoc: Association, result: InstanceResult) -> None:
        """Note one C-STORE's result; the association's record is written when it ends."""
        if not self.enabled:
            return
        with self._lock:
            stores = self._stores.setdefault(id(assoc), _Stores(caller_of(assoc)))
            if result.outcome is StoreOutcome.FAILED:
                stores.failed.append(
                    FailedInstance(
                        result.sop_uid or result.client_reference,
                        result.sop_class_uid,
                        result.study_uid,
                        result.failure_reason,
                    )
                )
                stores.first_failure = stores.first_failure or result.failure
            else:
                stores.stored.append(
                    InstanceRef(
                        result.study_uid, result.series_uid, result.sop_uid, result.sop_class_uid
                    )
                )

    def ended(self, assoc: Association) -> None:
        """Write the record of what an association stored, if it stored or tried to."""
        with self._lock:
            stores = self._stores.pop(id(assoc), None)
        if stores is None:
            return
        outcome = SUCCESS if stores.stored else outcome_of(stores.first_failure)
        self._write(
            AuditRecord(
                time=datetime.now(UTC),
                caller=stores.caller,
                action=Action.STORE,
                adapter=ADAPTER,
                endpoint="C-STORE",
                outcome=outcome,
                instances=tuple(stores.stored),
                failed=tuple(stores.failed),
            )
        )

    def searched(
        self,
        assoc: Association,
        model: str,
        level: str,
        match: Mapping[str, str],
        error: ServiceError | None,
    ) -> None:
        """Write the record of one C-FIND: the query's level and matching keys."""
        if not self.enabled:
            return
        self._write(
            AuditRecord(
                time=datetime.now(UTC),
                caller=caller_of(assoc),
                action=Action.SEARCH,
                adapter=ADAPTER,
                endpoint=f"C-FIND {model}",
                outcome=outcome_of(error),
                query=(("QueryRetrieveLevel", level), *sorted(match.items())),
            )
        )

    def workitem(
        self,
        assoc: Association,
        action: Action,
        endpoint: str,
        workitem_uid: str,
        error: ServiceError | None,
        query: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """Write the record of one UPS operation: what it did and to which workitem."""
        if not self.enabled:
            return
        self._write(
            AuditRecord(
                time=datetime.now(UTC),
                caller=caller_of(assoc),
                action=action,
                adapter=ADAPTER,
                endpoint=endpoint,
                outcome=outcome_of(error),
                workitem=workitem_uid,
                query=query,
            )
        )

    def retrieved(
        self,
        assoc: Association,
        endpoint: str,
        instances: Iterable[StoredInstance],
        error: ServiceError | None,
    ) -> None:
        """Write the record of one C-GET or C-MOVE: the instances it was to send."""
        if not self.enabled:
            return
        refs = tuple(
            InstanceRef(i.study_uid, i.series_uid, i.sop_uid, i.record.sop_class_uid)
            for i in instances
        )
        self._write(
            AuditRecord(
                time=datetime.now(UTC),
                caller=caller_of(assoc),
                action=Action.RETRIEVE,
                adapter=ADAPTER,
                endpoint=endpoint,
                outcome=outcome_of(error),
                instances=refs,
            )
        )

    def committed(
        self,
        assoc: Association,
        transaction: str,
        committed: Iterable[StoredInstance],
        failed: Iterable[tuple[str, str, int]],
        problem: str,
    ) -> None:
        """Write the record of one storage commitment transaction (PS3.4 Annex J).

        The instances committed, those failed as ``(SOP Instance UID, SOP Class UID, Failure
        Reason)``, and the Transaction UID; its outcome fails when the report was not
        delivered (``problem`` says why), since then the requester was told nothing.
        """
        if not self.enabled:
            return
        outcome = SUCCESS
        if problem:
            outcome = Outcome("UNAVAILABLE", "REPORT_NOT_DELIVERED", problem)
        self._write(
            AuditRecord(
                time=datetime.now(UTC),
                caller=caller_of(assoc),
                action=Action.COMMITMENT,
                adapter=ADAPTER,
                endpoint="N-ACTION Storage Commitment Push Model",
                outcome=outcome,
                instances=tuple(
                    InstanceRef(i.study_uid, i.series_uid, i.sop_uid, i.record.sop_class_uid)
                    for i in committed
                ),
                failed=tuple(
                    FailedInstance(sop, sop_class, "", reason) for sop, sop_class, reason in failed
                ),
                query=(("TransactionUID", transaction),),
            )
        )

    def _write(self, record: AuditRecord) -> None:
        patients = self._auditor.patients_of(record.studies)
        if patients:
            record = replace(record, patients=patients)
        self._auditor.audit(record)
