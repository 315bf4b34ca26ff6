"""The audit trail's parts: the table, the A.5 messages, syslog framing, the log file, the sink."""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from starlette.routing import Route

from dicomrpc.v1 import (
    management_service_pb2,
    retrieve_service_pb2,
    search_service_pb2,
    store_service_pb2,
    workitem_service_pb2,
)
from dicomrpc_server.access.caller import Caller
from dicomrpc_server.audit import atna
from dicomrpc_server.audit.jsonl import JsonLinesOutput
from dicomrpc_server.audit.records import (
    Action,
    AuditRecord,
    FailedInstance,
    InstanceRef,
    Outcome,
    Patient,
)
from dicomrpc_server.audit.sink import AuditSink
from dicomrpc_server.audit.syslog import frame, parse_address
from dicomrpc_server.audit.table import (
    CONSOLE,
    CONSOLE_EXEMPT,
    GRPC,
    GRPC_EXEMPT,
    GRPC_EXEMPT_SERVICES,
    HTTP,
    HTTP_EXEMPT,
)
from dicomrpc_server.console.api import ROUTES as CONSOLE_ROUTES
from dicomrpc_server.dicomweb.app import RESOURCE_ROUTES
from dicomrpc_server.dicomweb.audit import match_route
from dicomrpc_server.dicomweb.context import PREFIX
from dicomrpc_server.grpc.auth import peer_address
from tests.auditcheck import check_message, parse_syslog, split_octet_counted

SOURCE = atna.AuditSource("archive-1", "host-1", 4242)
CALLER = Caller("alice", "token", frozenset({"dicom.read"}), "10.1.2.3:40000")
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


def record(action: Action, **fields: object) -> AuditRecord:
    return AuditRecord(
        time=datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC),
        caller=CALLER,
        action=action,
        adapter="grpc",
        endpoint="/dicomrpc.v1.Service/Method",
        **fields,  # type: ignore[arg-type]
    )


# -- the table -------------------------------------------------------------------------------


def _grpc_methods() -> list[str]:
    services = [
        store_service_pb2.DESCRIPTOR.services_by_name["StoreService"],
        retrieve_service_pb2.DESCRIPTOR.services_by_name["RetrieveService"],
        search_service_pb2.DESCRIPTOR.services_by_name["SearchService"],
        management_service_pb2.DESCRIPTOR.services_by_name["ManagementService"],
        workitem_service_pb2.DESCRIPTOR.services_by_name["WorkitemService"],
        health_pb2.DESCRIPTOR.services_by_name["Health"],
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
    ]
    return [f"/{s.full_name}/{m.name}" for s in services for m in s.methods]


def test_every_rpc_is_audited_or_exempted_by_name() -> None:
    methods = _grpc_methods()
    missing = [
        m
        for m in methods
        if m not in GRPC and m not in GRPC_EXEMPT and m.split("/")[1] not in GRPC_EXEMPT_SERVICES
    ]
    assert not missing, f"RPCs without an audit entry: {missing}"
    assert set(GRPC) <= set(methods), "the table names RPCs that do not exist"
    assert set(methods) >= GRPC_EXEMPT


def _routes() -> list[tuple[str, str]]:
    found = []
    for resource in RESOURCE_ROUTES:
        for route in resource:
            assert isinstance(route, Route)
            found.extend((m, route.path) for m in sorted(route.methods or ()) if m != "HEAD")
    return found


def test_every_console_route_is_audited_or_exempted_by_name() -> None:
    routes = []
    for route in CONSOLE_ROUTES:
        assert isinstance(route, Route)
        routes.extend((m, route.path) for m in sorted(route.methods or ()) if m != "HEAD")
    missing = [r for r in routes if r not in CONSOLE and r not in CONSOLE_EXEMPT]
    assert not missing, f"console routes without an audit entry: {missing}"
    assert set(CONSOLE) <= set(routes), "the table names console routes that do not exist"
    assert match_route("GET", "/console/api/changes/stream") == (
        CONSOLE["GET", "/changes/stream"],
        {},
    )
    assert match_route("GET", "/console/api/statistics") is None


def test_every_route_is_audited_or_exempted_by_name() -> None:
    routes = _routes()
    missing = [r for r in routes if r not in HTTP and r not in HTTP_EXEMPT]
    assert not missing, f"routes without an audit entry: {missing}"
    assert set(HTTP) <= set(routes), "the table names routes that do not exist"


@pytest.mark.parametrize(("method", "template"), list(HTTP))
def test_a_request_finds_its_own_route_entry(method: str, template: str) -> None:
    path = PREFIX + template.format(
        study="1.2.3", series="1.2.4", instance="1.2.5", workitem="1.2.6", frames="1,2",
        frame="1", path="7FE00010",
    )  # fmt: skip
    found = match_route(method, path)
    assert found is not None
    entry, params = found
    assert entry is HTTP[(method, template)]
    assert params.get("study", "1.2.3") == "1.2.3"


def test_unlisted_requests_are_not_audited() -> None:
    assert match_route("GET", PREFIX + "/nowhere") is None
    assert match_route("OPTIONS", PREFIX + "/studies") is None


def test_peer_addresses_are_ip_and_port() -> None:
    assert peer_address("ipv4:127.0.0.1:5000") == "127.0.0.1:5000"
    assert peer_address("ipv6:%5B::1%5D:5000") == "[::1]:5000"
    assert peer_address("unix:/tmp/socket") == "unix:/tmp/socket"


# -- the A.5 messages ------------------------------------------------------------------------

STUDY, SERIES, SOP = "1.2.3", "1.2.3.4", "1.2.3.4.5"
NAMED = (InstanceRef(STUDY, SERIES, SOP),)
QUERY = (("PatientName", "doe*"), ("limit", "10"))


@pytest.mark.parametrize(
    ("action", "fields", "event", "action_code"),
    [
        (Action.STORE, {"instances": (InstanceRef(STUDY, SERIES, SOP, CT),)}, "transferred", "C"),
        (Action.RETRIEVE, {"instances": NAMED}, "transferred", "R"),
        (Action.METADATA, {"instances": NAMED}, "accessed", "R"),
        (Action.FRAMES, {"instances": NAMED}, "accessed", "R"),
        (Action.RENDERED, {"instances": NAMED}, "accessed", "R"),
        (Action.BULKDATA, {"instances": NAMED}, "accessed", "R"),
        (Action.COMMITMENT, {"instances": NAMED}, "accessed", "R"),
        (Action.DELETE, {"instances": (InstanceRef(STUDY),)}, "study-deleted", "D"),
        (Action.DELETE, {"instances": (InstanceRef(STUDY, SERIES),)}, "accessed", "D"),
        (Action.SEARCH, {"query": QUERY}, "query", "E"),
        (Action.WORKITEM_SEARCH, {"query": QUERY}, "query", "E"),
        (Action.WORKITEM_SUBSCRIBE, {"workitem": "1.9", "query": QUERY}, "query", "E"),
        (Action.FEED_READ, {"query": (("offset", "5"),)}, "query", "E"),
        (Action.WORKITEM_CREATE, {"workitem": "1.9"}, "procedure", "C"),
        (Action.WORKITEM_UPDATE, {"workitem": "1.9"}, "procedure", "U"),
        (Action.WORKITEM_STATE, {"workitem": "1.9"}, "procedure", "U"),
        (Action.WORKITEM_CANCEL_REQUEST, {"workitem": "1.9"}, "procedure", "U"),
        (Action.WORKITEM_RETRIEVE, {"workitem": "1.9"}, "procedure", "R"),
    ],
)
@pytest.mark.parametrize("outcome", [Outcome(), Outcome("PERMISSION_DENIED", "SCOPE", "no")])
def test_every_action_is_its_a53_event(
    action: Action, fields: dict[str, object], event: str, action_code: str, outcome: Outcome
) -> None:
    (xml,) = atna.messages(record(action, outcome=outcome, **fields), SOURCE)
    message = check_message(xml, event)
    assert message.action_code == action_code
    assert message.outcome == ("0" if outcome.success else "4")
    requestor = message.requestor()
    assert requestor.get("UserID") == "alice"
    assert requestor.get("NetworkAccessPointID") == "10.1.2.3"
    archive = [p for p in message.participants() if p.get("UserIsRequestor") == "false"]
    assert archive[0].get("AlternativeUserID") == "4242"
    source = message.root.find("AuditSourceIdentification")
    assert source is not None and source.get("AuditSourceID") == "archive-1"
    if event == "query" and action is not Action.FEED_READ:
        assert message.query()["PatientName"] == "doe*"


def test_a_commitment_that_committed_nothing_accessed_no_study() -> None:
    failed = (FailedInstance("3.3.1.1", CT, "", 0x0112),)
    assert atna.messages(record(Action.COMMITMENT, failed=failed), SOURCE) == []


def test_admin_calls_have_no_a53_event() -> None:
    assert atna.messages(record(Action.ADMIN), SOURCE) == []


def test_an_anonymous_caller_is_known_by_its_address() -> None:
    anonymous = Caller("anonymous", "anonymous", frozenset(), "[::1]:5000")
    retrieve = AuditRecord(
        datetime.now(UTC), anonymous, Action.RETRIEVE, "http", "GET /x", instances=NAMED
    )
    xml = atna.messages(retrieve, SOURCE)[0]
    assert check_message(xml, "transferred").requestor().get("UserID") == "::1"


def test_a_store_lists_sop_classes_per_study_and_splits_failures() -> None:
    stored = (
        InstanceRef("1.1", "1.1.1", "1.1.1.1", CT),
        InstanceRef("1.1", "1.1.1", "1.1.1.2", CT),
        InstanceRef("1.1", "1.1.2", "1.1.2.1", MR),
        InstanceRef("2.2", "2.2.1", "2.2.1.1", CT),
    )
    failed = (FailedInstance("3.3.1.1", CT, "3.3", 0xA700),)
    ok, bad = atna.messages(record(Action.STORE, instances=stored, failed=failed), SOURCE)
    good = check_message(ok, "transferred")
    assert (good.outcome, sorted(good.studies())) == ("0", ["1.1", "2.2"])
    assert good.sop_classes("1.1") == {CT: 2, MR: 1}
    wrong = check_message(bad, "transferred")
    assert wrong.outcome == "4"
    assert wrong.studies() == ["3.3"]
    assert "3.3.1.1 (0xA700)" in wrong.description


def test_each_patient_is_a_message_of_its_own() -> None:
    stored = (
        InstanceRef("1.1", "1.1.1", "1.1.1.1", CT),
        InstanceRef("2.2", "2.2.1", "2.2.1.1", CT),
        InstanceRef("3.3", "3.3.1", "3.3.1.1", CT),
    )
    patients = (("1.1", Patient("P-1", "Doe^Jane")), ("3.3", Patient("P-1", "Doe^Jane")))
    patients += (("2.2", Patient("P-2")),)
    first, second = (
        check_message(xml, "transferred")
        for xml in atna.messages(record(Action.STORE, instances=stored, patients=patients), SOURCE)
    )
    assert (first.studies(), second.studies()) == (["1.1", "3.3"], ["2.2"])
    assert (first.patient(), second.patient()) == (("P-1", "Doe^Jane"), ("P-2", "P-2"))
    assert record(Action.STORE, instances=stored, patients=patients).to_json()["patients"] == [
        "P-1",
        "P-2",
    ]


def test_characters_xml_cannot_carry_never_break_a_message() -> None:
    odd = "1.2.3\x00\x1b<&>\"'"
    failed = Outcome("NOT_FOUND", "STUDY_NOT_FOUND", f"no study {odd}")
    (xml,) = atna.messages(
        record(Action.DELETE, instances=(InstanceRef(odd),), outcome=failed), SOURCE
    )
    message = check_message(xml, "study-deleted")
    assert message.studies() == ["1.2.3??<&>\"'"]


def test_server_failures_are_serious() -> None:
    failed = record(Action.RETRIEVE, instances=NAMED, outcome=Outcome("INTERNAL"))
    (xml,) = atna.messages(failed, SOURCE)
    assert check_message(xml, "transferred").outcome == "8"


def test_json_record_has_every_key() -> None:
    line = record(
        Action.STORE,
        instances=(InstanceRef(STUDY, SERIES, SOP, CT),),
        failed=(FailedInstance("9.9", CT, "", 272),),
    ).to_json()
    assert json.loads(json.dumps(line)) == {
        "time": "2024-05-01T12:00:00.123456Z",
        "identity": "alice",
        "kind": "token",
        "address": "10.1.2.3:40000",
        "action": "store",
        "adapter": "grpc",
        "endpoint": "/dicomrpc.v1.Service/Method",
        "patients": [],
        "studies": [STUDY],
        "series": [SERIES],
        "instances": [SOP],
        "workitem": "",
        "query": {},
        "outcome": "success",
        "code": "OK",
        "reason": "",
        "message": "",
        "failed_instances": [{"sop_instance_uid": "9.9", "failure_reason": 272}],
    }


# -- syslog ----------------------------------------------------------------------------------


def test_syslog_frames_are_rfc5424_with_authpriv_and_a_bom() -> None:
    xml = atna.messages(record(Action.RETRIEVE, instances=NAMED), SOURCE)[0]
    data = frame(xml, datetime(2024, 5, 1, tzinfo=UTC), 5, "host 1", 42)
    pri, message = parse_syslog(data)
    assert (pri, message) == (85, xml)
    assert b" host-1 dicomrpc 42 " in data
    assert parse_syslog(frame(xml, datetime.now(UTC), 4, "h", 1))[0] == 84


def test_octet_counting_splits_a_stream() -> None:
    frames, rest = split_octet_counted(b"3 abc5 hello2 x")
    assert (frames, rest) == ([b"abc", b"hello"], b"2 x")


@pytest.mark.parametrize("text", ["host", "host:0", "host:70000", ":514", "host:port"])
def test_a_bad_syslog_address_is_named(text: str) -> None:
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        parse_address(text)


def test_syslog_addresses_parse() -> None:
    assert parse_address("audit.example:6514") == ("audit.example", 6514)
    assert parse_address("[::1]:514") == ("::1", 514)


# -- the JSON lines file ---------------------------------------------------------------------


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_log_is_reopened_after_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    output = JsonLinesOutput(path)
    output.write(record(Action.RETRIEVE, workitem="1"))
    output.flush()
    path.rename(tmp_path / "audit" / "audit.jsonl.1")  # what logrotate does
    output.write(record(Action.RETRIEVE, workitem="2"))
    output.flush()
    assert [r["workitem"] for r in _lines(tmp_path / "audit" / "audit.jsonl.1")] == ["1"]
    assert [r["workitem"] for r in _lines(path)] == ["2"]
    assert path.stat().st_mode & 0o777 == 0o600
    # SIGHUP after a copy-and-truncate: reopened all the same, appending.
    output.reopen()
    output.write(record(Action.RETRIEVE, workitem="3"))
    output.flush()
    output.close()
    assert [r["workitem"] for r in _lines(path)] == ["2", "3"]


# -- the sink --------------------------------------------------------------------------------


class _Blocking:
    """An output that blocks until released, then records what it was given."""

    name = "test output"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.seen: list[str] = []

    def write(self, record: AuditRecord) -> None:
        self.entered.set()
        self.release.wait(30)
        self.seen.append(record.workitem)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_full_queue_drops_the_oldest_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    output = _Blocking()
    sink = AuditSink(output, capacity=10)
    with caplog.at_level(logging.WARNING, logger="dicomrpc.audit"):
        sink.put(record(Action.RETRIEVE, workitem="first"))
        assert output.entered.wait(10)  # the sink thread holds "first", blocked in the output
        for n in range(100):
            sink.put(record(Action.RETRIEVE, workitem=str(n)))
        # Every put returned while the output was blocked: the hand-off never waits for it.
        assert sink.pending() == 10 and sink.dropped == 90
        output.release.set()
        sink.close()
    assert output.seen == ["first", *[str(n) for n in range(90, 100)]]
    warnings = [r for r in caplog.records if "queue is full" in r.getMessage()]
    assert len(warnings) == 1


class _Flaky:
    """An output that fails its first ``failures`` writes, as a receiver that is down."""

    name = "flaky output"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.seen: list[str] = []

    def write(self, record: AuditRecord) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionRefusedError(111, "Connection refused")
        self.seen.append(record.workitem)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.slow
def test_an_outage_is_retried_with_the_same_records_and_logged_twice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    output = _Flaky(failures=4)
    with caplog.at_level(logging.WARNING, logger="dicomrpc.audit"):
        sink = AuditSink(output, capacity=100)
        for n in range(5):
            sink.put(record(Action.RETRIEVE, workitem=str(n)))
        deadline = time.monotonic() + 30
        while len(output.seen) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        sink.close()
    assert output.seen == ["0", "1", "2", "3", "4"]
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "cannot be written" in m]) == 1
    assert len([m for m in messages if "is back after" in m]) == 1
