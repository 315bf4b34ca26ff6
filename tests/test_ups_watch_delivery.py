"""What a DIMSE UPS sender delivers, and what it records as delivered (dimse/watch.py).

A subscription's initial reports come right before the first event after it was taken; an
event two subscriptions of one AE want is reported once; a delivery cut short records only
what was answered, so that the rest is sent again and nothing is skipped; a workitem's final
state report ends its subscription once delivered.
"""

from __future__ import annotations

from dicomrpc.v1 import dataset_pb2
from dicomrpc.v1 import workitem_service_pb2 as pb
from dicomrpc_server.dimse.watch import Step, plan, reached
from dicomrpc_server.storage.records_pb2 import UpsInitialReport, UpsSubscriptionRecord
from dicomrpc_server.ups.index import workitem_terms
from dicomrpc_server.ups.records import Event
from dicomrpc_server.ups.values import set_text

STATE, PATIENT_ID = "00741000", "00100020"


def _event(sequence: int, uid: str, state: str = "SCHEDULED", patient: str = "A") -> Event:
    kinds = {"SCHEDULED": pb.WORKITEM_STATE_SCHEDULED, "COMPLETED": pb.WORKITEM_STATE_COMPLETED}
    event = pb.SubscribeWorkitemsResponse(
        sequence=sequence,
        type=pb.WORKITEM_EVENT_TYPE_STATE_REPORT,
        workitem_uid=uid,
        state=kinds[state],
    )
    set_text(event.event, STATE, "CS", state)
    workitem = dataset_pb2.Dataset()
    set_text(workitem, PATIENT_ID, "LO", patient)
    return event, sorted(workitem_terms(workitem))


def _initial(uid: str, state: str) -> UpsInitialReport:
    information = dataset_pb2.Dataset()
    set_text(information, STATE, "CS", state)
    return UpsInitialReport(workitem_uid=uid, information=information.SerializeToString())


def _reports(items: list[Step]) -> list[tuple[int, str]]:
    return [(i.report.sequence, i.report.workitem_uid) for i in items if i.report is not None]


def test_initial_reports_come_before_the_events_after_the_subscription() -> None:
    everything = UpsSubscriptionRecord(id="g", since=0)
    one = UpsSubscriptionRecord(
        id="w", workitem_uid="1.2.2", since=2, initial=[_initial("1.2.2", "SCHEDULED")]
    )
    page = [_event(1, "1.2.1"), _event(2, "1.2.2"), _event(3, "1.2.2"), _event(4, "1.2.3")]
    items = plan([everything, one], 0, page, True, "DICOMRPC")
    # Event 2 comes before the initial report (taken after it), event 3 once for both.
    assert _reports(items) == [(1, "1.2.1"), (2, "1.2.2"), (0, "1.2.2"), (3, "1.2.2"), (4, "1.2.3")]
    done = reached(items, 5, 0)
    assert (done.delivered, done.initial_done) == (4, {"w"})


def test_a_delivery_cut_short_records_what_was_answered() -> None:
    only = UpsSubscriptionRecord(id="f", since=0, match={"PatientID": "B"})
    page = [_event(1, "1.2.1", patient="A"), _event(2, "1.2.2", patient="B")]
    page += [_event(3, "1.2.3", patient="A"), _event(4, "1.2.4", patient="B")]
    items = plan([only], 0, page, True, "DICOMRPC")
    assert _reports(items) == [(2, "1.2.2"), (4, "1.2.4")]
    assert reached(items, 0, 0).delivered == 1  # passed over event 1, nothing answered
    assert reached(items, 1, 0).delivered == 3  # event 4 is sent again
    assert reached(items, 2, 0).delivered == 4


def test_a_final_state_report_ends_a_workitem_subscription_once_delivered() -> None:
    one = UpsSubscriptionRecord(id="w", workitem_uid="1.2.1", since=0)
    items = plan([one], 0, [_event(1, "1.2.1", "COMPLETED")], True, "DICOMRPC")
    assert reached(items, 0, 0).finished == []
    assert reached(items, 1, 0).finished == [("1.2.1", 1)]
    # Subscribed to a workitem already finished: its initial report is the last.
    late = UpsSubscriptionRecord(
        id="l", workitem_uid="1.2.1", since=1, initial=[_initial("1.2.1", "COMPLETED")]
    )
    items = plan([late], 1, [], True, "DICOMRPC")
    assert _reports(items) == [(0, "1.2.1")]
    done = reached(items, 1, 1)
    assert done.initial_done == {"l"} and done.finished == [("1.2.1", 2)]


def test_a_suspended_global_subscription_reports_what_came_before_its_suspension() -> None:
    suspended = UpsSubscriptionRecord(
        id="g", since=0, suspended=True, suspended_at=2, covered=["1.2.1"]
    )
    page = [_event(1, "1.2.1"), _event(2, "1.2.2"), _event(3, "1.2.1"), _event(4, "1.2.2")]
    items = plan([suspended], 0, page, True, "DICOMRPC")
    assert _reports(items) == [(1, "1.2.1"), (2, "1.2.2"), (3, "1.2.1")]
