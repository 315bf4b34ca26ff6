"""Deadlines and retries of the SDK, against a real server that answers UNAVAILABLE at first.

A server interceptor makes the first calls of the methods it is given fail with UNAVAILABLE
before they reach the server's handlers, as a server that is shutting down (or a proxy whose
backend is restarting) answers; it counts every call that arrives. An idempotent read is
tried again and succeeds; a store and a workitem state change arrive once and fail, since the
client cannot know whether a call that failed so had been acted on. And a client started
before its server listens gets its answer once the server is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydicom.data import get_testdata_file

from dicomrpc import (
    AsyncClient,
    Capabilities,
    Client,
    ClientConfig,
    DicomRpcError,
    RetryPolicy,
)
from dicomrpc.workitem_templates import template
from tests.conftest import RunningServer, start_server

SEARCH = "/dicomrpc.v1.SearchService/SearchStudies"
RETRIEVE = "/dicomrpc.v1.RetrieveService/RetrieveStudy"
STORE = "/dicomrpc.v1.StoreService/StoreInstances"
CHANGE_STATE = "/dicomrpc.v1.WorkitemService/ChangeWorkitemState"
CAPABILITIES = "/dicomrpc.v1.ManagementService/GetCapabilities"
FAST = RetryPolicy(max_attempts=3, initial_backoff=0.05, max_backoff=0.2)


class Unavailable(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Fails the next ``failures[method]`` calls of each method with UNAVAILABLE; counts all."""

    def __init__(self) -> None:
        self.failures: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.delay: dict[str, float] = {}
        self.lock = threading.Lock()

    def fail(self, method: str, times: int) -> None:
        with self.lock:
            self.failures[method] = times
            self.calls[method] = 0

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        method = details.method
        with self.lock:
            self.calls[method] += 1
            failing = self.failures[method] > 0
            if failing:
                self.failures[method] -= 1
        if method in self.delay:
            await asyncio.sleep(self.delay[method])
        handler = await continuation(details)
        if not failing or handler is None:
            return handler
        return _refusing(handler)


def _refusing(handler: Any) -> Any:
    """A handler of the same shape as ``handler`` that answers UNAVAILABLE at once."""

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is restarting")

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is restarting")
        yield b""  # pragma: no cover - makes this an async generator, as the shape asks

    if handler.request_streaming and not handler.response_streaming:
        return grpc.stream_unary_rpc_method_handler(unary)
    if handler.response_streaming and not handler.request_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming)
    return grpc.unary_unary_rpc_method_handler(unary)


@pytest.fixture(scope="module")
def refusing(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningServer, Unavailable]]:
    interceptor = Unavailable()
    server = start_server(tmp_path_factory.mktemp("retries") / "data", interceptors=[interceptor])
    yield server, interceptor
    server.stop()


def _stored_study(client: Client) -> str:
    result = client.store([get_testdata_file("CT_small.dcm")])
    assert result.stored
    return result.stored[0].study_instance_uid


def test_an_idempotent_read_is_tried_again_until_it_succeeds(
    refusing: tuple[RunningServer, Unavailable],
) -> None:
    server, interceptor = refusing
    with Client(server.target, ClientConfig(retry=FAST, http_retrieve=False)) as client:
        study = _stored_study(client)
        interceptor.fail(SEARCH, 2)
        found = client.search_studies(StudyInstanceUID=study)
        assert [d.attributes["0020000D"].strings.values[0] for d in found] == [study]
        assert interceptor.calls[SEARCH] == 3
        interceptor.fail(RETRIEVE, 2)
        (instance,) = client.retrieve_study(study)
        assert instance.data[128:] == Path(get_testdata_file("CT_small.dcm")).read_bytes()[128:]
        assert interceptor.calls[RETRIEVE] == 3


def test_a_read_gives_up_after_its_attempts_and_without_retries_at_once(
    refusing: tuple[RunningServer, Unavailable],
) -> None:
    server, interceptor = refusing
    with Client(server.target, ClientConfig(retry=FAST)) as client:
        interceptor.fail(CAPABILITIES, 5)
        with pytest.raises(DicomRpcError) as caught:
            client.capabilities()
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        assert interceptor.calls[CAPABILITIES] == FAST.max_attempts
    with Client(server.target, ClientConfig(retry=None)) as client:
        interceptor.fail(CAPABILITIES, 1)
        with pytest.raises(DicomRpcError) as caught:
            client.capabilities()
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        assert interceptor.calls[CAPABILITIES] == 1


def test_a_store_is_never_tried_again(refusing: tuple[RunningServer, Unavailable]) -> None:
    server, interceptor = refusing
    with Client(server.target, ClientConfig(retry=FAST)) as client:
        interceptor.fail(STORE, 1)
        with pytest.raises(DicomRpcError) as caught:
            client.store([get_testdata_file("MR_small.dcm")])
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        assert interceptor.calls[STORE] == 1
        assert client.store([get_testdata_file("MR_small.dcm")]).stored  # the next one is sent


def test_a_workitem_state_change_is_never_tried_again(
    refusing: tuple[RunningServer, Unavailable],
) -> None:
    server, interceptor = refusing
    with Client(server.target, ClientConfig(retry=FAST)) as client:
        uid = client.workitems.create(template("create")).workitem_uid
        interceptor.fail(CHANGE_STATE, 1)
        with pytest.raises(DicomRpcError) as caught:
            client.workitems.claim(uid)
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        assert interceptor.calls[CHANGE_STATE] == 1
        assert client.workitems.get(uid).state == "SCHEDULED"


def test_the_async_client_retries_reads_and_not_stores(
    refusing: tuple[RunningServer, Unavailable],
) -> None:
    server, interceptor = refusing

    async def scenario() -> None:
        async with AsyncClient(server.target, ClientConfig(retry=FAST)) as client:
            interceptor.fail(CAPABILITIES, 2)
            assert (await client.capabilities()).storable_transfer_syntaxes
            assert interceptor.calls[CAPABILITIES] == 3
            interceptor.fail(STORE, 1)
            with pytest.raises(DicomRpcError) as caught:
                await client.store([get_testdata_file("CT_small.dcm")])
            assert caught.value.code == grpc.StatusCode.UNAVAILABLE
            assert interceptor.calls[STORE] == 1

    asyncio.run(scenario())


def test_the_default_deadline_bounds_unary_calls_and_not_streams(
    refusing: tuple[RunningServer, Unavailable],
) -> None:
    server, interceptor = refusing
    config = ClientConfig(timeout=0.5, http_retrieve=False)
    with Client(server.target, config) as client:
        study = _stored_study(client)
        interceptor.delay.update({CAPABILITIES: 1.5, RETRIEVE: 1.0})
        try:
            with pytest.raises(DicomRpcError) as caught:
                client.capabilities()
            assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert len(client.retrieve_study(study)) == 1  # a stream may take its time
        finally:
            interceptor.delay.clear()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class _Forwarder:
    """A listener on ``port`` that relays every connection to ``target``: the server's port.

    Opening it takes a moment, unlike starting a server, so a test can say when the port
    begins to answer without racing the server's start-up against the client's backoffs.
    """

    def __init__(self, port: int, target: int) -> None:
        self.target = target
        self.connections: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            self.connections += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Stop listening and relaying (the shutdowns wake the threads, which then end)."""
        for connection in [self.listener, *self.connections]:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()


def test_a_read_sent_before_the_server_listens_succeeds_once_it_does(tmp_path: Path) -> None:
    """The first tries find nothing listening (connection refused: UNAVAILABLE); a later one
    finds the server.

    The server runs already, on a port of its own; the client's port starts relaying to it
    0.3 s after the call. gRPC waits a random time before each new try (up to 2, then 4 s)
    and the channel reconnects every 0.1 s, so the tries outlast those 0.3 s.
    """
    port = _free_port()
    server = start_server(tmp_path / "data")
    patient = RetryPolicy(max_attempts=5, initial_backoff=2.0, max_backoff=4.0)
    reconnect = tuple(
        (f"grpc.{name}_reconnect_backoff_ms", 100) for name in ("initial", "min", "max")
    )
    config = ClientConfig(retry=patient, options=reconnect)
    try:
        with Client(f"127.0.0.1:{port}", config) as client:
            answers: list[object] = []
            reader = threading.Thread(target=lambda: answers.append(_capabilities_or_error(client)))
            reader.start()
            time.sleep(0.3)  # the first try has been refused
            forwarder = _Forwarder(port, int(server.target.rpartition(":")[2]))
            try:
                reader.join(60)
                (answer,) = answers
                assert isinstance(answer, Capabilities), answer
                with Client(server.target, ClientConfig(retry=None)) as plain:
                    assert plain.capabilities() == answer
            finally:
                forwarder.close()
    finally:
        server.stop()
    with Client(f"127.0.0.1:{port}", ClientConfig(retry=None)) as plain:
        with pytest.raises(DicomRpcError) as caught:  # without retries: at once
            plain.capabilities()
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def _capabilities_or_error(client: Client) -> Capabilities | DicomRpcError:
    try:
        return client.capabilities()
    except DicomRpcError as error:
        return error
