"""Fixtures: a real server (gRPC on loopback, LMDB in a temporary directory) and clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import grpc
import pytest
from pynetdicom.association import Association
from starlette.middleware import Middleware

from dicomrpc import Client
from dicomrpc_server.archive import Archive
from dicomrpc_server.config import Settings
from dicomrpc_server.dicomweb.context import PREFIX
from dicomrpc_server.dicomweb.server import HttpServer
from dicomrpc_server.dimse.server import DimseServer
from dicomrpc_server.grpc.server import GrpcServer
from tests.postgres import PostgresCluster, start_cluster
from tests.s3emulator import S3_ENV, moto_server

# Set by ``pytest --server-index=postgresql`` (or ``postgresql-s3``): what start_server adds to
# a server's settings when a test names neither an index nor a blob store (see _server_index).
_SHARED_INDEX: list[Callable[[Path], dict[str, object]]] = []
SERVER_INDEX_OPTION = "--server-index"
EMBEDDED_ONLY = "embedded_index"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        SERVER_INDEX_OPTION,
        choices=("embedded", "postgresql", "postgresql-s3"),
        default="embedded",
        help="the storage of the servers tests start without naming one: the embedded LMDB "
        "index and data folder; a PostgreSQL database of the session's cluster (one per data "
        "folder) with the instance files in a shared folder beside the data folder "
        "('postgresql'), or in a bucket of the session's S3 emulator ('postgresql-s3')",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{EMBEDDED_ONLY}: the test looks inside the embedded index or data folder, so it runs "
        "only on the embedded storage (skipped with --server-index=postgresql...)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption(SERVER_INDEX_OPTION) == "embedded":
        return
    skip = pytest.mark.skip(reason="looks inside the embedded index or data folder")
    for item in items:
        if item.get_closest_marker(EMBEDDED_ONLY) is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _server_index(request: pytest.FixtureRequest) -> Iterator[None]:
    """Run the servers of a test run on a PostgreSQL index and a shared store, if asked.

    So that the integration tests that do not look inside the data folder run unchanged
    against the shared index: ``pytest tests/integration/test_search.py
    --server-index=postgresql``.
    """
    mode = request.config.getoption(SERVER_INDEX_OPTION)
    if mode == "embedded":
        yield
        return
    with contextlib.ExitStack() as stack:
        cluster = start_cluster()
        stack.callback(cluster.stop)
        emulator = stack.enter_context(s3_emulator()) if mode == "postgresql-s3" else None
        databases: dict[Path, dict[str, object]] = {}

        def shared(data_dir: Path) -> dict[str, object]:
            # A server started again on its data folder finds its own database and store.
            key = data_dir.resolve()
            if key not in databases:
                settings: dict[str, object] = {"index": cluster.create_database()}
                if emulator is None:
                    folder = data_dir.parent / f"{data_dir.name}.shared"
                    folder.mkdir(parents=True, exist_ok=True)
                    settings["blobs"] = str(folder.resolve())
                else:
                    settings["blobs"] = f"s3://{emulator.new_bucket()}/archive"
                    settings["s3_endpoint"] = emulator.endpoint
                databases[key] = settings
            return dict(databases[key])

        _SHARED_INDEX.append(shared)
        stack.callback(_SHARED_INDEX.clear)
        yield


@dataclass
class RunningServer:
    """A server running on its own event loop in a background thread."""

    settings: Settings
    archive: Archive
    target: str
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    grpc: GrpcServer
    http: HttpServer
    dimse: DimseServer | None = None

    @property
    def dicomweb_url(self) -> str:
        return f"{self.http.scheme}://127.0.0.1:{self.http.port}{PREFIX}"

    @property
    def dimse_port(self) -> int:
        assert self.dimse is not None, "start the server with dimse_port=0"
        return self.dimse.port

    def served(self, requester: Association) -> list[Association]:
        """The archive's side of a requester's association (one, while it is open)."""
        assert self.dimse is not None, "start the server with dimse_port=0"
        transport = requester.dul.socket
        assert transport is not None and transport.socket is not None
        port = transport.socket.getsockname()[1]
        return [
            assoc
            for assoc in self.dimse._ae.active_associations
            if assoc.is_acceptor and assoc.requestor.port == port
        ]

    def stop(self) -> None:
        if self.dimse is not None:
            asyncio.run_coroutine_threadsafe(self.dimse.stop(5), self.loop).result(30)
        asyncio.run_coroutine_threadsafe(self.http.stop(), self.loop).result(30)
        asyncio.run_coroutine_threadsafe(self.grpc.stop(5), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.archive.close()


def start_server(
    data_dir: Path,
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    middleware: Sequence[Middleware] = (),
    **overrides: object,
) -> RunningServer:
    """Serve ``data_dir``; ``interceptors`` and ``middleware`` run inside the server's own.

    DIMSE is served only when asked for (``dimse_port=0`` picks a free port); gRPC on a free
    port unless ``grpc_port`` names one.
    """
    overrides.setdefault("grpc_port", 0)
    overrides.setdefault("http_port", 0)
    overrides.setdefault("dimse_port", -1)
    if _SHARED_INDEX and "index" not in overrides and "blobs" not in overrides:
        overrides.update(_SHARED_INDEX[0](data_dir))
    settings = Settings(data_dir=data_dir, **overrides)  # type: ignore[arg-type]
    archive = Archive(settings)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, GrpcServer | HttpServer | DimseServer] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            server = GrpcServer(archive, interceptors)
            await server.start()
            http = HttpServer(archive, middleware)
            await http.start()
            holder["server"], holder["http"] = server, http
            if settings.dimse_port >= 0:
                dimse = DimseServer(archive)
                await dimse.start()
                holder["dimse"] = dimse
            ready.set()

        loop.run_until_complete(boot())
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30), "server did not start"
    server, http, dimse = holder["server"], holder["http"], holder.get("dimse")
    assert isinstance(server, GrpcServer) and isinstance(http, HttpServer)
    assert dimse is None or isinstance(dimse, DimseServer)
    return RunningServer(
        settings, archive, f"127.0.0.1:{server.port}", loop, thread, server, http, dimse
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path / "data")
    yield running
    running.stop()


@pytest.fixture
def client(server: RunningServer) -> Iterator[Client]:
    with Client(server.target) as c:
        yield c


@dataclass
class ServerProcess:
    """A server in a child process (for tests that kill it)."""

    process: subprocess.Popen[str]
    target: str
    dicomweb_url: str

    def stop(self, sig: signal.Signals | None = signal.SIGTERM, timeout: float = 60) -> int:
        """Stop the server with ``sig`` (``None``: it is already ending) and return its code.

        Nothing is sent to a server that has ended; its output pipe is closed.
        """
        if sig is not None and self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout)
        assert self.process.stdout is not None
        self.process.stdout.close()
        return code


def spawn_server(
    data_dir: Path,
    *serve_args: str,
    prefix: Sequence[str] = (),
    log: IO[bytes] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> ServerProcess:
    """Start ``dicomrpc serve`` on ``data_dir`` in a child process, with ``serve_args``.

    DIMSE is off unless ``serve_args`` name a ``--dimse-port`` (the later flag wins), so that
    servers never contend for its default port.

    ``prefix`` runs it under another command, which must exec it (the process is the server);
    ``log`` receives its standard error (discarded by default); ``preexec_fn`` runs in the
    child before the server starts (to lower a resource limit, say).
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [
            *prefix,
            sys.executable,
            "-m",
            "dicomrpc.cli",
            "serve",
            "--data",
            str(data_dir),
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--log-level",
            "WARNING",
            "--dimse-port",
            "-1",
            *serve_args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL if log is None else log,
        text=True,
        env=env,
        preexec_fn=preexec_fn,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"serving gRPC on (\S+)", line)
    assert match, f"server did not start: {line!r}"
    http_line = process.stdout.readline()
    http_match = re.search(r"serving DICOMweb on (\S+)", http_line)
    assert http_match, f"server did not start DICOMweb: {http_line!r}"
    return ServerProcess(process, match.group(1), http_match.group(1))


@dataclass(frozen=True)
class S3Emulator:
    """The ``moto_server`` S3 emulator on loopback, and the credentials it is called with."""

    endpoint: str

    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client("s3", endpoint_url=self.endpoint)

    def new_bucket(self) -> str:
        name = f"dicomrpc-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> set[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {item["Key"] for page in pages for item in page.get("Contents", ())}


@contextlib.contextmanager
def s3_emulator() -> Iterator[S3Emulator]:
    """moto's standalone S3 server on a free loopback port, with the AWS_* variables set.

    The variables are those it is called with (spawned servers inherit them); moto is an
    emulator, the folder store stays the reference the S3 tests compare to.
    """
    saved = {name: os.environ.get(name) for name in S3_ENV}
    os.environ.update(S3_ENV)
    try:
        with moto_server() as (endpoint, _):
            yield S3Emulator(endpoint)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Emulator]:
    """An S3 emulator for the session (see :func:`s3_emulator`)."""
    with s3_emulator() as emulator:
        yield emulator


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A PostgreSQL server for the session, on a free loopback port (see ``tests/postgres.py``).

    Skipped without PostgreSQL, unless DICOMRPC_REQUIRE_POSTGRES=1 (CI), which fails instead.
    """
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_dsn(postgres: PostgresCluster) -> Iterator[str]:
    """A new, empty database of the session's server, for one test; dropped after it."""
    dsn = postgres.create_database()
    yield dsn
    postgres.drop_database(dsn)
