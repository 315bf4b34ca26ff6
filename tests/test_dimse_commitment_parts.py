"""The parts of the storage commitment SCP (dimse/commitment.py) a requester cannot reach alone.

The whole exchange is driven by a pynetdicom requester in
``tests/integration/test_dimse_commitment.py``; here, what no pynetdicom requester can make
happen on demand: a request arriving while the archive waits for its report's answer, and
the per-instance decision against an index that changes between its two reads.
"""

from __future__ import annotations

import queue
from typing import Any

from dicomrpc_server.dimse import commitment, statuses
from dicomrpc_server.retrieve.scope import StoredInstance, not_found
from dicomrpc_server.storage import records_pb2

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


class _Dimse:
    def __init__(self) -> None:
        self.msg_queue: queue.Queue[tuple[int | None, Any]] = queue.Queue()


class _Assoc:
    def __init__(self) -> None:
        self.dimse = _Dimse()


def test_requests_read_while_waiting_go_back_first_and_in_order() -> None:
    assoc = _Assoc()
    assoc.dimse.msg_queue.put((3, "arrived later"))
    commitment._hand_back(assoc, [(1, "first"), (1, "second")])  # type: ignore[arg-type]
    got = [assoc.dimse.msg_queue.get_nowait() for _ in range(3)]
    assert got == [(1, "first"), (1, "second"), (3, "arrived later")]


class _Core:
    """The two reads the decision makes: where a SOP instance is, then its record."""

    def __init__(self, stored: dict[str, str], gone: frozenset[str] = frozenset()) -> None:
        self.stored = stored
        self.gone = gone  # located, then deleted before its record is read

    def locate(self, sop: str) -> tuple[str, str] | None:
        return ("1.1", "1.1.1") if sop in self.stored else None

    def instances(self, study: str, series: str, sop: str) -> list[StoredInstance]:
        if sop in self.gone:
            raise not_found(f"instance {sop}")
        record = records_pb2.InstanceRecord(sop_class_uid=self.stored[sop])
        return [StoredInstance(study, series, sop, record)]


def _decide(core: _Core, *references: tuple[str, str]) -> commitment.Decision:
    refs = [commitment.Reference(*r) for r in references]
    return commitment.decide(core, refs)  # type: ignore[arg-type]


def test_each_instance_is_committed_or_failed_with_its_reason() -> None:
    core = _Core({"9.1": CT, "9.2": MR, "9.3": CT}, gone=frozenset({"9.3"}))
    decision = _decide(core, (CT, "9.1"), (CT, "9.2"), (CT, "9.3"), (CT, "9.4"), ("1.2.3.4", "9.5"))
    assert [(r.sop_instance, s.record.sop_class_uid) for r, s in decision.committed] == [
        ("9.1", CT)
    ]
    assert [(r.sop_instance, reason) for r, reason in decision.failed] == [
        ("9.2", statuses.CLASS_INSTANCE_CONFLICT),
        ("9.3", statuses.NO_SUCH_OBJECT_INSTANCE),  # deleted between the two reads
        ("9.4", statuses.NO_SUCH_OBJECT_INSTANCE),
        ("9.5", statuses.SOP_CLASS_NOT_SUPPORTED),
    ]
    assert decision.event_type == commitment.SOME_FAILED
    assert _decide(core, (MR, "9.2")).event_type == commitment.ALL_COMMITTED


def test_the_report_lists_every_reference_once() -> None:
    decision = _decide(_Core({"9.1": CT}), (CT, "9.1"), (MR, "9.9"))
    info = commitment.event_information("1.2.3", decision, "ARCHIVE")
    assert (info.TransactionUID, info.RetrieveAETitle) == ("1.2.3", "ARCHIVE")
    assert [i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence] == ["9.1"]
    (failed,) = info.FailedSOPSequence
    assert (failed.ReferencedSOPClassUID, failed.ReferencedSOPInstanceUID) == (MR, "9.9")
    assert failed.FailureReason == statuses.NO_SUCH_OBJECT_INSTANCE
    none_committed = commitment.event_information("1.2.3", _decide(_Core({}), (CT, "9.9")), "A")
    assert "ReferencedSOPSequence" not in none_committed
