"""The workitem event log keeps records of its own, not the API's messages.

An event is stored as a ``WorkitemEventRecord`` and read back as the API's
``SubscribeWorkitemsResponse``; logs written when the API message itself was stored read as
records, so no stored event is rewritten when either changes.
"""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from dicomrpc.v1 import dataset_pb2
from dicomrpc.v1 import workitem_service_pb2 as pb
from dicomrpc_server.storage.records_pb2 import WorkitemEventRecord, WorkitemStepState
from dicomrpc_server.ups.store import decode_event, encode_event


def _event(kind: int, state: int) -> pb.SubscribeWorkitemsResponse:
    event = pb.SubscribeWorkitemsResponse(
        sequence=7, type=kind, workitem_uid="1.2.3.4", state=state, event_time=Timestamp(seconds=9)
    )
    event.event.attributes["00741000"].CopyFrom(
        dataset_pb2.Attribute(vr="CS", strings=dataset_pb2.StringValues(values=["COMPLETED"]))
    )
    return event


def test_every_event_kind_and_state_reads_back_as_it_was_written() -> None:
    terms = {(0x00741000, b"COMPLETED")}
    for kind in pb.WorkitemEventType.values()[1:]:
        for state in pb.WorkitemState.values()[1:]:
            event = _event(kind, state)
            read, read_terms = decode_event(encode_event(event, terms))
            assert read == event
            assert set(read_terms) == terms


def test_the_log_holds_records_not_api_messages() -> None:
    stored = encode_event(
        _event(pb.WORKITEM_EVENT_TYPE_STATE_REPORT, pb.WORKITEM_STATE_CANCELED), set()
    )
    length = int.from_bytes(stored[:4], "big")
    record = WorkitemEventRecord.FromString(stored[4 : 4 + length])
    assert record.state == WorkitemStepState.WORKITEM_STEP_STATE_CANCELED
    assert record.attributes.attributes["00741000"].strings.values == ["COMPLETED"]


def test_events_stored_as_the_api_message_read_as_records() -> None:
    """What earlier versions wrote: the API message's bytes in place of the record."""
    event = _event(pb.WORKITEM_EVENT_TYPE_ASSIGNED, pb.WORKITEM_STATE_IN_PROGRESS)
    body = event.SerializeToString()
    old = len(body).to_bytes(4, "big") + body
    read, terms = decode_event(old)
    assert read == event
    assert terms == []
