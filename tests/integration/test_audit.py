"""The audit trail of a real server: JSON lines and ATNA syslog over UDP, TCP and TLS, both
adapters.

Each test starts syslog receivers of its own (a UDP socket, a TCP or TLS listener), a server
auditing to them and to a file, makes calls over gRPC and DICOMweb, and checks the records: the
JSON lines parsed, every audit message validated against PS3.15 A.5 (``tests/auditcheck.py``).
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from pydicom.uid import CTImageStorage, generate_uid
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomrpc import Client, DicomRpcError
from dicomrpc.v1 import management_service_pb2, management_service_pb2_grpc
from dicomrpc_server.dicomweb.errors import error_response
from dicomrpc_server.errors import Code, ServiceError
from dicomrpc_server.grpc.errors import abort
from tests.auditcheck import Message, check_message, parse_syslog, split_octet_counted
from tests.authgen import Pki, make_pki
from tests.conftest import RunningServer, spawn_server, start_server
from tests.dicomgen import ct_instance
from tests.integration.test_dicomweb_http import STOW_TYPE, multipart
from tests.upsgen import dataset, workitem

REFUSE = "x-test-refuse"
DENIED = ServiceError(
    Code.PERMISSION_DENIED, "SCOPE_MISSING", "the caller lacks the scope dicom.delete"
)


# -- a refusal inside the audit hook, as authentication will refuse ----------------------------


class Refuser(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses unary calls that ask to be refused, with PERMISSION_DENIED."""

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        metadata = details.invocation_metadata or ()
        if handler is None or not any(k == REFUSE and v == "1" for k, v in metadata):
            return handler

        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await abort(context, DENIED)

        return grpc.unary_unary_rpc_method_handler(
            refuse, handler.request_deserializer, handler.response_serializer
        )


class RefuserMiddleware:
    """Refuses HTTP requests that ask to be refused, with 403."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (REFUSE.encode(), b"1") in scope["headers"]:
            await error_response(DENIED)(scope, receive, send)
            return
        await self.app(scope, receive, send)


# -- syslog receivers ------------------------------------------------------------------------


class UdpReceiver:
    """Collects the datagrams sent to it."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.port = self.socket.getsockname()[1]
        self.datagrams: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.datagrams.append(self.socket.recv(65536))
            except TimeoutError:
                continue

    def messages(self) -> list[bytes]:
        return list(self.datagrams)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.socket.close()


class TcpReceiver:
    """A listener that reads octet-counted syslog frames, or (``stalled``) never reads.

    With ``tls``, each connection is a TLS one (RFC 5425) served with that context: the
    subjects of the client certificates presented are kept, and handshakes that fail counted.
    """

    def __init__(
        self, port: int = 0, stalled: bool = False, tls: ssl.SSLContext | None = None
    ) -> None:
        self.tls = tls
        self.client_subjects: list[Any] = []
        self.failed_handshakes = 0
        self.listener = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stalled = stalled
        self.frames: list[bytes] = []
        self.bytes_read = 0
        self.accepted = 0
        self._connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            if self.tls is not None:
                try:
                    connection.settimeout(5)
                    connection = self.tls.wrap_socket(connection, server_side=True)
                except (OSError, ssl.SSLError):
                    self.failed_handshakes += 1
                    connection.close()
                    continue
                certificate = connection.getpeercert()
                self.client_subjects.append(certificate.get("subject") if certificate else None)
            self.accepted += 1
            self._connections.append(connection)
            if not self.stalled:
                thread = threading.Thread(target=self._read, args=(connection,), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _read(self, connection: socket.socket) -> None:
        connection.settimeout(0.2)
        pending = b""
        while not self._stop.is_set():
            try:
                data = connection.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            self.bytes_read += len(data)
            frames, pending = split_octet_counted(pending + data)
            self.frames.extend(frames)

    def messages(self) -> list[bytes]:
        return list(self.frames)

    def close(self) -> None:
        """Stop listening first, so that a sender that reconnects is refused, not queued."""
        self.listener.close()
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        for connection in self._connections:
            connection.close()


# -- helpers ---------------------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def atna(raw: list[bytes]) -> list[tuple[int, bytes]]:
    return [parse_syslog(data) for data in raw]


def find(records: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    found = [r for r in records if all(r[k] == v for k, v in fields.items())]
    assert len(found) == 1, f"{len(found)} records with {fields}: {records}"
    return found[0]


def event_of(messages: list[tuple[int, bytes]], event: str, **checks: Any) -> Message:
    """The one message of ``event`` whose properties match ``checks``, validated."""
    found = []
    for pri, xml in messages:
        message = check_message_if(xml, event)
        if message is None:
            continue
        message.pri = pri
        if all(_value(message, k) == v for k, v in checks.items()):
            found.append(message)
    assert len(found) == 1, f"{len(found)} {event} messages with {checks}"
    return found[0]


def _value(message: Message, key: str) -> Any:
    if key == "workitem":
        objects = message.objects("12")
        return objects[0].find("ParticipantObjectName").text if objects else ""  # type: ignore[union-attr]
    attribute = getattr(message, key)
    return attribute() if callable(attribute) else attribute


def check_message_if(xml: bytes, event: str) -> Message | None:
    from tests.auditcheck import EVENTS

    if f'csd-code="{EVENTS[event][0]}"'.encode() not in xml:
        return None
    return check_message(xml, event)


def stow(http: httpx.Client, parts: list[bytes]) -> httpx.Response:
    return http.post("/studies", content=multipart(parts), headers={"Content-Type": STOW_TYPE})


# -- the calls every adapter makes -------------------------------------------------------------


def grpc_calls(server: RunningServer, study: str, tmp_path: Path) -> dict[str, str]:
    """A store, a retrieve, metadata, a search, two refused deletes and a workitem claim."""
    sops = [str(generate_uid()), str(generate_uid())]
    # The retrieve streams over gRPC: these are the gRPC adapter's records (a retrieve over a
    # grant is audited twice, the grant and the read: see test_retrieve_http_pull.py).
    with Client(server.target, http_retrieve=False) as client:
        result = client.store([ct_instance(study, sop=sop) for sop in sops])
        assert len(result.stored) == 2
        client.save_study(study, tmp_path / "grpc-retrieved")
        client.metadata(study)
        client.search_studies({"PatientID": "PAT-1"})
        with pytest.raises(DicomRpcError) as missing:
            client.delete_study("1.2.3.999")
        assert missing.value.code == grpc.StatusCode.NOT_FOUND
        uid = client.workitems.create(workitem(PatientID="W-GRPC")).workitem_uid
        client.workitems.claim(uid)
    with grpc.insecure_channel(server.target) as channel:
        stub = management_service_pb2_grpc.ManagementServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.DeleteStudy(
                management_service_pb2.DeleteStudyRequest(study_instance_uid=study),
                metadata=[(REFUSE, "1")],
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    return {"sop0": sops[0], "sop1": sops[1], "workitem": uid}


def http_calls(server: RunningServer, study: str) -> dict[str, str]:
    """The same over DICOMweb."""
    sops = [str(generate_uid()), str(generate_uid())]
    uid = str(generate_uid())
    with httpx.Client(base_url=server.dicomweb_url, timeout=60) as http:
        stored = stow(http, [ct_instance(study, sop=sop) for sop in sops])
        assert stored.status_code == 200, stored.text
        retrieved = http.get(
            f"/studies/{study}", headers={"Accept": 'multipart/related; type="application/dicom"'}
        )
        assert retrieved.status_code == 200
        assert http.get(f"/studies/{study}/metadata").status_code == 200
        assert http.get("/studies", params={"PatientID": "PAT-1"}).status_code == 200
        assert http.delete("/studies/1.2.3.998").status_code == 404
        assert http.delete(f"/studies/{study}", headers={REFUSE: "1"}).status_code == 403
        body = json.dumps(workitem(PatientID="W-HTTP"))
        json_type = {"Content-Type": "application/dicom+json"}
        assert http.post(f"/workitems?{uid}", content=body, headers=json_type).status_code == 201
        claim = dataset(ProcedureStepState="IN PROGRESS", TransactionUID=str(generate_uid()))
        response = http.put(f"/workitems/{uid}/state", content=json.dumps(claim), headers=json_type)
        assert response.status_code == 200, response.text
    return {"sop0": sops[0], "sop1": sops[1], "workitem": uid}


# -- the tests -------------------------------------------------------------------------------


@pytest.fixture
def tcp() -> Iterator[TcpReceiver]:
    receiver = TcpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def udp() -> Iterator[UdpReceiver]:
    receiver = UdpReceiver()
    yield receiver
    receiver.close()


def audited_server(tmp_path: Path, port: int, protocol: str, **overrides: Any) -> RunningServer:
    return start_server(
        tmp_path / "data",
        interceptors=[Refuser()],
        middleware=[Middleware(RefuserMiddleware)],
        audit_log=tmp_path / "audit" / "audit.jsonl",
        audit_syslog=f"127.0.0.1:{port}",
        audit_syslog_protocol=protocol,
        audit_source_id="test-archive",
        **overrides,
    )


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_both_adapters_write_the_same_records_to_both_outputs(
    tmp_path: Path, protocol: str, request: pytest.FixtureRequest
) -> None:
    receiver: TcpReceiver | UdpReceiver = request.getfixturevalue(protocol)
    server = audited_server(tmp_path, receiver.port, protocol)
    try:
        studies = {"grpc": str(generate_uid()), "http": str(generate_uid())}
        made = {
            "grpc": grpc_calls(server, studies["grpc"], tmp_path),
            "http": http_calls(server, studies["http"]),
        }
        log = tmp_path / "audit" / "audit.jsonl"
        wait_for(lambda: len(json_lines(log)) >= 16, "16 JSON lines")
        wait_for(lambda: len(receiver.messages()) >= 16, "16 syslog messages")
        # The refused deletes deleted nothing.
        with Client(server.target) as client:
            assert len(client.metadata(studies["grpc"]).datasets) == 2
            assert len(client.metadata(studies["http"]).datasets) == 2
    finally:
        server.stop()
    records, messages = json_lines(log), atna(receiver.messages())
    # 8 calls per adapter, and the two metadata reads just above.
    assert len(records) == len(messages) == 18
    for adapter in ("grpc", "http"):
        study, calls = studies[adapter], made[adapter]
        mine = [r for r in records if r["adapter"] == adapter]
        assert all(r["identity"] == "anonymous" and r["kind"] == "anonymous" for r in mine)
        assert all(r["address"].startswith("127.0.0.1:") for r in mine)

        # A store: the instances stored, read from the results.
        store = find(mine, action="store")
        assert (store["outcome"], store["code"]) == ("success", "OK")
        assert store["studies"] == [study]
        assert sorted(store["instances"]) == sorted([calls["sop0"], calls["sop1"]])
        assert store["patients"] == ["PAT-1"]
        stored = event_of(messages, "transferred", action_code="C", studies=[study])
        assert stored.outcome == "0" and stored.pri == 85
        assert stored.patient() == ("PAT-1", "Doe^John")
        assert stored.sop_classes(study) == {CTImageStorage: 2}
        assert stored.requestor().get("NetworkAccessPointID") == "127.0.0.1"

        # A retrieve, metadata, a search.
        retrieve = find(mine, action="retrieve")
        assert (retrieve["studies"], retrieve["outcome"]) == ([study], "success")
        sent = event_of(messages, "transferred", action_code="R", studies=[study])
        assert sent.patient() == ("PAT-1", "Doe^John")
        metadata = [r for r in mine if r["action"] == "metadata"]
        assert len(metadata) == (3 if adapter == "grpc" else 1)
        assert all(r["studies"] for r in metadata)
        search = find(mine, action="search")
        assert search["query"]["PatientID"] == "PAT-1"
        queries = [m for p, m in messages if b'csd-code="110112"' in m]
        assert len(queries) == 2
        assert all(check_message(m, "query").query()["PatientID"] == "PAT-1" for m in queries)

        # Refused deletes: a study that is not there, and a caller refused.
        deletes = [r for r in mine if r["action"] == "delete"]
        missing = next(r for r in deletes if r["code"] == "NOT_FOUND")
        assert missing["outcome"] == "failure" and missing["reason"]
        denied = next(r for r in deletes if r["code"] == "PERMISSION_DENIED")
        assert (denied["reason"], denied["studies"]) == ("SCOPE_MISSING", [study])
        assert denied["message"] == DENIED.message
        assert denied["patients"] == ["PAT-1"]
        refusal = event_of(messages, "study-deleted", studies=[study])
        assert refusal.outcome == "4" and refusal.pri == 84
        assert refusal.patient() == ("PAT-1", "Doe^John")
        assert "PERMISSION_DENIED" in refusal.description

        # A workitem created, then claimed.
        created = find(mine, action="workitem-create")
        assert (created["workitem"], created["outcome"]) == (calls["workitem"], "success")
        claim = find(mine, action="workitem-state")
        assert (claim["workitem"], claim["outcome"]) == (calls["workitem"], "success")
        event_of(messages, "procedure", action_code="C", workitem=calls["workitem"])
        event_of(messages, "procedure", action_code="U", workitem=calls["workitem"])


def test_a_receiver_that_is_down_loses_no_record_and_is_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = TcpReceiver()
    port = receiver.port
    server = audited_server(tmp_path, port, "tcp")
    try:
        with Client(server.target) as client, caplog.at_level(logging.WARNING, "dicomrpc.audit"):
            client.latest_change()
            wait_for(lambda: len(receiver.messages()) == 1, "the first message")
            receiver.close()
            for _ in range(5):  # answered while the receiver is gone
                client.latest_change()
            wait_for(
                lambda: any("cannot be written" in r.getMessage() for r in caplog.records),
                "the outage warning",
            )
            receiver = TcpReceiver(port)
            client.latest_change()
            wait_for(lambda: len(receiver.messages()) >= 6, "the queued messages")
            wait_for(
                lambda: any("is back after" in r.getMessage() for r in caplog.records),
                "the recovery message",
            )
        outage = [r for r in caplog.records if "cannot be written" in r.getMessage()]
        assert len(outage) == 1
        assert len(json_lines(tmp_path / "audit" / "audit.jsonl")) == 7
    finally:
        server.stop()
        receiver.close()
    for _, xml in atna(receiver.messages()):
        check_message(xml, "query")


@pytest.mark.slow
def test_a_receiver_that_never_reads_never_slows_a_call(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = TcpReceiver(stalled=True)
    server = audited_server(tmp_path, receiver.port, "tcp", audit_queue=500)
    calls = 10_000
    try:
        with (
            grpc.insecure_channel(server.target) as channel,
            caplog.at_level(logging.WARNING, "dicomrpc.audit"),
        ):
            stub = management_service_pb2_grpc.ManagementServiceStub(channel)
            request = management_service_pb2.GetLatestChangeRequest()
            for _ in range(calls // 250):
                futures = [stub.GetLatestChange.future(request) for _n in range(250)]
                for future in futures:
                    future.result(timeout=60)
            # Every call has answered, and the receiver has still read nothing: the calls did
            # not wait for it. Its output holds a full queue and has dropped the rest.
            assert receiver.accepted >= 1 and receiver.bytes_read == 0
            log = tmp_path / "audit" / "audit.jsonl"
            wait_for(lambda: len(json_lines(log)) == calls, "every JSON line")
            assert any("queue is full" in r.getMessage() for r in caplog.records)
    finally:
        server.stop()
        receiver.close()
    full = [r for r in caplog.records if "queue is full" in r.getMessage()]
    assert 1 <= len(full) <= 10, "drops are reported at most every 10 s"


@pytest.mark.slow
def test_serve_flags_audit_and_sighup_reopens_the_log(tmp_path: Path, udp: UdpReceiver) -> None:
    log = tmp_path / "audit.jsonl"
    server = spawn_server(
        tmp_path / "data",
        "--audit-log",
        str(log),
        "--audit-syslog",
        f"127.0.0.1:{udp.port}",
        "--audit-syslog-protocol",
        "udp",
        "--audit-source-id",
        "archive-7",
    )
    try:
        with Client(server.target) as client:
            client.latest_change()
            wait_for(lambda: len(json_lines(log)) == 1, "the first line")
            log.rename(tmp_path / "audit.jsonl.1")
            server.process.send_signal(signal.SIGHUP)
            time.sleep(0.5)  # the reopen is asked for before the next record is written
            client.latest_change()
            wait_for(lambda: len(json_lines(log)) == 1, "a line in the new file")
        wait_for(lambda: len(udp.messages()) == 2, "two datagrams")
    finally:
        assert server.stop() == 0
    assert len(json_lines(tmp_path / "audit.jsonl.1")) == 1
    for _, xml in atna(udp.messages()):
        message = check_message(xml, "query")
        source = message.root.find("AuditSourceIdentification")
        assert source is not None and source.get("AuditSourceID") == "archive-7"


def _tls_receiver(pki: Pki, client_ca: bool) -> TcpReceiver:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    if client_ca:
        context.load_verify_locations(cafile=pki.ca_pem)
        context.verify_mode = ssl.CERT_REQUIRED
    return TcpReceiver(tls=context)


def test_records_reach_a_tls_receiver_that_authenticates_the_archive(tmp_path: Path) -> None:
    # RFC 5425, as IHE ATNA requires: the archive checks the receiver's certificate against
    # --audit-syslog-ca and presents its own, which the receiver requires.
    pki = make_pki(tmp_path / "pki", client="archive-node")
    receiver = _tls_receiver(pki, client_ca=True)
    server = audited_server(
        tmp_path,
        receiver.port,
        "tls",
        audit_syslog_ca=pki.ca_pem,
        audit_syslog_cert=pki.client_cert,
        audit_syslog_key=pki.client_key,
    )
    try:
        with Client(server.target) as client:
            for _ in range(3):
                client.latest_change()
            wait_for(lambda: len(receiver.messages()) == 3, "three messages over TLS")
            assert receiver.accepted == 1  # one connection kept for every message
            receiver._connections[0].close()  # the receiver ends it: the next send reconnects
            time.sleep(0.2)
            client.latest_change()
            wait_for(lambda: len(receiver.messages()) == 4, "a message on a new connection")
    finally:
        server.stop()
        receiver.close()
    assert receiver.accepted == 2
    assert (("commonName", "archive-node"),) in receiver.client_subjects[0]
    for _, xml in atna(receiver.messages()):
        check_message(xml, "query")


def test_a_tls_receiver_the_ca_does_not_vouch_for_gets_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other")  # a CA that did not issue the receiver's certificate
    receiver = _tls_receiver(pki, client_ca=False)
    server = audited_server(tmp_path, receiver.port, "tls", audit_syslog_ca=other.ca_pem)
    try:
        with Client(server.target) as client, caplog.at_level(logging.WARNING, "dicomrpc.audit"):
            client.latest_change()
            wait_for(
                lambda: any("cannot be written" in r.getMessage() for r in caplog.records),
                "the outage warning",
            )
            assert "CERTIFICATE_VERIFY_FAILED" in caplog.text
    finally:
        server.stop()
        receiver.close()
    assert receiver.messages() == []
    assert receiver.failed_handshakes >= 1
    assert len(json_lines(tmp_path / "audit" / "audit.jsonl")) == 1  # the file still has it


TLS_SYSLOG = ["--audit-syslog", "127.0.0.1:6514", "--audit-syslog-protocol", "tls"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (["--audit-syslog", "nowhere"], "--audit-syslog 'nowhere' is not HOST:PORT"),
        (["--audit-log", "/proc/audit.jsonl"], "--audit-log /proc/audit.jsonl: cannot be opened"),
        (
            ["--audit-syslog", "127.0.0.1:514", "--audit-queue", "0"],
            "--audit-queue 0: the queue must hold at least 1 record",
        ),
        (
            ["--audit-syslog", "127.0.0.1:514", "--audit-syslog-ca", "/etc/hostname"],
            "--audit-syslog-ca, --audit-syslog-cert and --audit-syslog-key are for "
            "--audit-syslog-protocol tls, not udp",
        ),
        (
            [*TLS_SYSLOG, "--audit-syslog-ca", "/nonexistent/ca.pem"],
            "--audit-syslog-ca /nonexistent/ca.pem: cannot be used",
        ),
        (
            [*TLS_SYSLOG, "--audit-syslog-cert", "/etc/hostname"],
            "--audit-syslog-cert and --audit-syslog-key go together",
        ),
    ],
)
def test_an_audit_setting_that_cannot_be_used_stops_the_start(
    tmp_path: Path, flags: list[str], error: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dicomrpc.cli", "serve", "--data", str(tmp_path), *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert error in result.stderr


def test_the_consoles_reads_are_audited_as_the_rpcs_that_serve_the_same(tmp_path: Path) -> None:
    # The console's API shows the change feed and the workitem events: each read is recorded as
    # gRPC's ReadChangeFeed / WatchChangeFeed / SubscribeWorkitems are; its counts are not.
    server = start_server(tmp_path / "data", audit_log=tmp_path / "audit.jsonl")
    root = server.dicomweb_url.removesuffix("/dicomweb")
    try:
        with httpx.Client(base_url=root, timeout=30) as http:
            assert http.get("/console/api/changes", params={"since": "0"}).status_code == 200
            assert http.get("/console/api/query-tags").status_code == 200
            assert http.get("/console/api/statistics").status_code == 200
            for stream in ("/console/api/changes/stream", "/console/api/workitems/stream"):
                with http.stream("GET", stream, params={"since": "0"}) as response:
                    assert response.status_code == 200
        log = tmp_path / "audit.jsonl"
        wait_for(lambda: len(json_lines(log)) >= 4, "4 JSON lines")
        time.sleep(0.5)  # nothing more comes (the statistics are not audited)
    finally:
        server.stop()
    records = json_lines(log)
    assert sorted(r["action"] for r in records) == [
        "admin",
        "feed-read",
        "feed-read",
        "workitem-subscribe",
    ]
    assert all(r["adapter"] == "http" for r in records)
    feed = [r for r in records if r["action"] == "feed-read"]
    assert all(r["query"]["since"] == "0" for r in feed)
