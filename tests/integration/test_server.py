"""The server's surroundings: health, reflection, pending RPCs, the CLI, graceful shutdown."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from dicomrpc import Client, DicomRpcError, StoreResult
from dicomrpc.sources import Item, expand
from dicomrpc.v1 import (
    management_service_pb2,
    retrieve_service_pb2,
    retrieve_service_pb2_grpc,
    search_service_pb2,
    store_service_pb2,
    workitem_service_pb2,
)
from dicomrpc_server.archive import Archive
from dicomrpc_server.config import Settings
from tests.conftest import RunningServer, spawn_server
from tests.dicomgen import ct_instance


def test_health_reports_serving(server: RunningServer) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", "dicomrpc.v1.StoreService"):
            answer = stub.Check(health_pb2.HealthCheckRequest(service=name))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_every_service(server: RunningServer) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        answer = next(stub.ServerReflectionInfo(iter([request])))
    names = {s.name for s in answer.list_services_response.service}
    assert {
        "dicomrpc.v1.StoreService",
        "dicomrpc.v1.RetrieveService",
        "dicomrpc.v1.SearchService",
        "dicomrpc.v1.WorkitemService",
        "dicomrpc.v1.ManagementService",
        "grpc.health.v1.Health",
    } <= names


@pytest.mark.slow
@pytest.mark.parametrize(
    "method",
    [
        method
        for module in (
            store_service_pb2,
            retrieve_service_pb2,
            search_service_pb2,
            workitem_service_pb2,
            management_service_pb2,
        )
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ],
    ids=lambda m: m.full_name,
)
def test_every_rpc_of_the_api_is_served(server: RunningServer, method: MethodDescriptor) -> None:
    """An empty request gets an answer or a specific error, never UNIMPLEMENTED."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)
    with grpc.insecure_channel(server.target) as channel:
        kinds = {
            (False, False): channel.unary_unary,
            (False, True): channel.unary_stream,
            (True, False): channel.stream_unary,
            (True, True): channel.stream_stream,
        }
        call = kinds[(method.client_streaming, method.server_streaming)](
            path,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        request = iter([]) if method.client_streaming else request_type()
        try:
            answer = call(request, timeout=2)
            if method.server_streaming:
                next(iter(answer), None)
        except grpc.RpcError as error:
            assert error.code() != grpc.StatusCode.UNIMPLEMENTED, error.details()


@pytest.mark.slow
def test_cli_store_summarizes_and_fails_on_failures(server: RunningServer, tmp_path: Path) -> None:
    folder = tmp_path / "in" / "nested"
    folder.mkdir(parents=True)
    (folder / "a.dcm").write_bytes(ct_instance())
    (folder / "b.dcm").write_bytes(ct_instance())
    (tmp_path / "in" / "junk.txt").write_text("not dicom")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "dicomrpc.cli",
            "store",
            str(tmp_path / "in"),
            "--server",
            server.target,
            "--concurrency",
            "2",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert "2 stored, 0 stored with warnings, 1 failed" in run.stdout
    assert "junk.txt" in run.stdout and "272" in run.stdout
    assert server.archive.index.counts().instances == 2

    again = subprocess.run(
        [sys.executable, "-m", "dicomrpc.cli", "store", str(folder), "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"DICOMRPC_SERVER": server.target, "PATH": ""},
    )
    # A retry of the same files: already stored, not failed (exit 0).
    assert again.returncode == 0, again.stdout
    assert "0 stored, 0 stored with warnings, 2 already stored (identical), 0 failed" in (
        again.stdout
    )


@pytest.mark.slow
def test_graceful_shutdown_finishes_in_flight_stores(tmp_path: Path) -> None:
    proc = spawn_server(tmp_path / "data")
    sent = threading.Semaphore(0)

    def slow_items() -> Iterator[Item]:
        for i in range(20):
            yield from expand(ct_instance(number=i))
            sent.release()
            time.sleep(0.05)

    outcome: list[StoreResult] = []

    def store() -> None:
        with Client(proc.target) as client:
            outcome.append(client.store(slow_items()))

    writer = threading.Thread(target=store)
    writer.start()
    for _ in range(5):
        assert sent.acquire(timeout=30)
    proc.process.send_signal(signal.SIGTERM)  # mid-stream: the stream may finish
    writer.join(60)
    assert proc.process.wait(60) == 0
    assert proc.process.stdout is not None
    proc.process.stdout.close()
    assert outcome and [r.outcome for r in outcome[0].instances] == ["stored"] * 20

    with pytest.raises(DicomRpcError) as caught, Client(proc.target) as client:
        client.store(ct_instance(), timeout=2)
    assert caught.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    archive = Archive(Settings(data_dir=tmp_path / "data"))
    try:
        assert archive.index.counts().instances == 20
    finally:
        archive.close()


def _access_lines(caplog: pytest.LogCaptureFixture, count: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 5
    while True:  # the line is written when the server finishes the call, after the answer
        lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "dicomrpc.access"]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


@pytest.mark.slow
def test_one_access_log_line_per_rpc(
    server: RunningServer, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dicomrpc.access")
    data = ct_instance()
    client.store(data)
    with grpc.insecure_channel(server.target) as channel:
        stub = retrieve_service_pb2_grpc.RetrieveServiceStub(channel)
        with pytest.raises(grpc.RpcError):
            list(stub.RetrieveStudy(retrieve_service_pb2.RetrieveStudyRequest()))
    lines = _access_lines(caplog, 2)
    assert [(line["rpc"], line["code"]) for line in lines] == [
        ("/dicomrpc.v1.StoreService/StoreInstances", "OK"),
        ("/dicomrpc.v1.RetrieveService/RetrieveStudy", "INVALID_ARGUMENT"),
    ]
    assert int(str(lines[0]["bytes_in"])) >= len(data)
    assert int(str(lines[0]["bytes_out"])) > 0
    assert float(str(lines[0]["ms"])) > 0
