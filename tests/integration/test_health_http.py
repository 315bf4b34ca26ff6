"""The HTTP health probes: open without credentials, not ready when the archive cannot serve."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.conftest import RunningServer, start_server
from tests.postgres import PostgresCluster


def _root(server: RunningServer) -> str:
    return server.dicomweb_url.removesuffix("/dicomweb")


def test_live_and_ready_answer_without_credentials_while_the_archive_asks_for_them(
    tmp_path: Path,
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("")  # authentication on, no key: every call needs one
    server = start_server(tmp_path / "data", auth_api_keys=keys)
    try:
        root = _root(server)
        live = httpx.get(root + "/health/live")
        assert (live.status_code, live.json()) == (200, {"status": "live"})
        ready = httpx.get(root + "/health/ready")
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
        assert ready.headers["cache-control"] == "no-store"
        # The archive itself still wants a token.
        assert httpx.get(server.dicomweb_url + "/studies").status_code == 401
    finally:
        server.stop()


def test_not_ready_while_the_index_cannot_be_read_and_ready_again_after(
    tmp_path: Path, postgres: PostgresCluster, postgres_dsn: str
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    server = start_server(tmp_path / "node", index=postgres_dsn, blobs=str(shared))
    name = postgres_dsn.rsplit("/", 1)[1]
    try:
        root = _root(server)
        assert httpx.get(root + "/health/ready").status_code == 200
        # The database takes no connection any more, and those the node holds are ended.
        postgres.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        postgres.execute(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        )
        answer = httpx.get(root + "/health/ready", timeout=30)
        assert answer.status_code == 503
        body = answer.json()
        assert body["status"] == "not ready" and set(body["problems"]) == {"index"}
        # Alive all the same: the process answers.
        assert httpx.get(root + "/health/live").status_code == 200
        postgres.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        deadline = time.monotonic() + 30
        while httpx.get(root + "/health/ready", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "the node did not become ready again"
            time.sleep(0.2)
    finally:
        postgres.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        server.stop()


def test_a_stopping_server_is_not_ready(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    try:
        stopping = server.http.app.state.stopping
        server.loop.call_soon_threadsafe(stopping.set)
        answer = httpx.get(_root(server) + "/health/ready")
        assert answer.status_code == 503
        assert answer.json()["problems"] == {"server": "stopping"}
    finally:
        server.stop()
