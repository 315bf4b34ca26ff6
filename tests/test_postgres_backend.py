"""The PostgreSQL connection layer: schema steps applied once however many nodes start, a
transaction aborted by a serialization failure or a deadlock run again (then UNAVAILABLE),
PostgreSQL out of reach reported as such, and the tests' own PostgreSQL requirement."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import asyncpg
import pytest

from dicomrpc_server.errors import Code, ServiceError, StartupError
from dicomrpc_server.storage.postgres import PostgresBackend
from dicomrpc_server.storage.postgres.migrations import MIGRATIONS, Migration, migrate
from dicomrpc_server.storage.postgres.signing_keys import shared_key
from tests import postgres

STEPS = (
    # Not idempotent: a second run fails, and a second row would be counted.
    Migration(1, "a table", "CREATE TABLE once (n integer); SELECT pg_sleep(0.2)"),
    Migration(2, "a row", "INSERT INTO once VALUES (1)"),
)


def _query(dsn: str, sql: str) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(dsn)
        try:
            return list(await connection.fetch(sql))
        finally:
            await connection.close()

    return asyncio.run(run())


def test_migrations_run_together_apply_each_step_once(postgres_dsn: str) -> None:
    async def both() -> list[list[int]]:
        connections = [await asyncpg.connect(postgres_dsn) for _ in range(2)]
        try:
            return list(await asyncio.gather(*(migrate(c, STEPS) for c in connections)))
        finally:
            for connection in connections:
                await connection.close()

    assert sorted(asyncio.run(both())) == [[], [1, 2]]
    assert [r["n"] for r in _query(postgres_dsn, "SELECT n FROM once")] == [1]
    versions = _query(postgres_dsn, "SELECT version FROM schema_version ORDER BY version")
    assert [r["version"] for r in versions] == [1, 2]


def test_nodes_starting_together_migrate_once(postgres_dsn: str) -> None:
    backends: list[PostgresBackend] = []
    lock = threading.Lock()

    def start() -> None:
        backend = PostgresBackend(postgres_dsn, pool_size=1)
        with lock:
            backends.append(backend)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert len(backends) == 3
        everything = [m.version for m in MIGRATIONS]
        assert sorted(b.applied for b in backends) == [[], [], everything]
    finally:
        for backend in backends:
            backend.close()


def test_nodes_share_one_signing_key(postgres_dsn: str) -> None:
    """Retrieve grants of one node verify on every other: the first node's key is everyone's."""
    backends = [PostgresBackend(postgres_dsn, pool_size=1) for _ in range(2)]
    try:
        keys = {shared_key(backend, "retrieve-grant") for backend in backends for _ in range(2)}
        assert len(keys) == 1 and len(next(iter(keys))) == 32
        assert shared_key(backends[0], "another") not in keys
    finally:
        for backend in backends:
            backend.close()


def test_a_database_migrated_by_a_newer_release_is_refused(postgres_dsn: str) -> None:
    async def run(steps: tuple[Migration, ...]) -> list[int]:
        connection = await asyncpg.connect(postgres_dsn)
        try:
            return await migrate(connection, steps)
        finally:
            await connection.close()

    assert asyncio.run(run(STEPS)) == [1, 2]
    with pytest.raises(StartupError) as raised:
        asyncio.run(run(STEPS[:1]))
    assert raised.value.reason == "INDEX_SCHEMA_NEWER" and "[2]" in raised.value.message


@pytest.fixture
def backend(postgres_dsn: str) -> Iterator[PostgresBackend]:
    backend = PostgresBackend(postgres_dsn, pool_size=4)
    yield backend
    backend.close()


async def _setup(backend: PostgresBackend) -> None:
    async def create(connection: asyncpg.Connection) -> None:
        await connection.execute(
            "DROP TABLE IF EXISTS doctors; CREATE TABLE doctors (name text PRIMARY KEY, "
            "on_call boolean NOT NULL); INSERT INTO doctors VALUES ('alice', true), ('bob', true)"
        )

    await backend.transact(create)


def _write_skew(backend: PostgresBackend) -> tuple[list[object], list[str]]:
    """Two SERIALIZABLE transactions that each take a doctor off call if two are on call.

    Both read before either writes (on their first run): PostgreSQL must abort one.
    """
    runs: list[str] = []

    async def go_off(name: str, barrier: asyncio.Barrier) -> int:
        async def work(connection: asyncpg.Connection) -> int:
            runs.append(name)
            on_call = int(await connection.fetchval("SELECT count(*) FROM doctors WHERE on_call"))
            if runs.count(name) == 1:
                await barrier.wait()
            if on_call >= 2:
                await connection.execute("UPDATE doctors SET on_call = false WHERE name = $1", name)
            return on_call

        return await backend.transact(work, isolation="serializable")

    async def both() -> list[object]:
        await _setup(backend)
        barrier = asyncio.Barrier(2)
        races = (go_off("alice", barrier), go_off("bob", barrier))
        return list(await asyncio.gather(*races, return_exceptions=True))

    return backend.run(both()), runs


def test_a_serialization_failure_is_run_again(backend: PostgresBackend) -> None:
    results, runs = _write_skew(backend)
    # The one aborted ran again, and then saw the other's change: one doctor stays on call.
    assert sorted(results) == [1, 2]  # type: ignore[type-var]
    assert len(runs) == 3
    on_call = backend.run(backend.fetchval("SELECT count(*) FROM doctors WHERE on_call"))
    assert on_call == 1


def test_a_deadlock_is_run_again(backend: PostgresBackend) -> None:
    runs: list[str] = []

    async def lock_both(first: str, second: str, barrier: asyncio.Barrier) -> str:
        async def work(connection: asyncpg.Connection) -> str:
            runs.append(first)
            update = "UPDATE doctors SET on_call = NOT on_call WHERE name = $1"
            await connection.execute(update, first)
            if runs.count(first) == 1:
                await barrier.wait()
            await connection.execute(update, second)
            return first

        return await backend.transact(work)

    async def both() -> list[str]:
        await _setup(backend)
        barrier = asyncio.Barrier(2)
        races = (lock_both("alice", "bob", barrier), lock_both("bob", "alice", barrier))
        return list(await asyncio.gather(*races))

    assert sorted(backend.run(both())) == ["alice", "bob"]
    assert len(runs) == 3


def test_conflicts_beyond_the_retries_are_unavailable(postgres_dsn: str) -> None:
    backend = PostgresBackend(postgres_dsn, pool_size=4, retries=0)
    try:
        results, runs = _write_skew(backend)
    finally:
        backend.close()
    assert len(runs) == 2
    errors = [r for r in results if isinstance(r, ServiceError)]
    assert len(errors) == 1 and results.count(2) == 1
    assert errors[0].code == Code.UNAVAILABLE and errors[0].reason == "SERVER_UNAVAILABLE"


def test_an_unreachable_database_is_a_startup_error() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        with pytest.raises(StartupError) as raised:
            PostgresBackend(f"postgresql://postgres@127.0.0.1:{port}/none")
    assert raised.value.reason == "INDEX_UNAVAILABLE"


def test_a_lost_connection_is_unavailable(
    postgres: postgres.PostgresCluster, backend: PostgresBackend
) -> None:
    async def hold(connection: asyncpg.Connection) -> None:
        await connection.execute("SELECT pg_sleep(30)")

    name = backend.dsn.rsplit("/", 1)[1]
    future = asyncio.run_coroutine_threadsafe(backend.arun(backend.transact(hold)), backend.loop)
    terminate = (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{name}' AND query LIKE 'SELECT pg_sleep%'"
    )
    for _ in range(200):
        if _query(postgres.dsn(), terminate):
            break
        time.sleep(0.05)
    with pytest.raises(ServiceError) as raised:
        future.result(30)
    assert raised.value.code == Code.UNAVAILABLE
    assert backend.run(backend.fetchval("SELECT 1")) == 1  # the pool opens a new connection


def test_a_blocking_call_on_the_backends_own_loop_is_refused(backend: PostgresBackend) -> None:
    async def nested() -> object:
        return backend.run(backend.fetchval("SELECT 1"))

    with pytest.raises(RuntimeError, match="own loop"):
        backend.run(nested())


def test_missing_postgres_skips_or_fails_as_ci_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(postgres, "postgres_bin", lambda: None)
    monkeypatch.delenv("DICOMRPC_REQUIRE_POSTGRES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="initdb"):
        postgres.require_postgres()
    monkeypatch.setenv("DICOMRPC_REQUIRE_POSTGRES", "1")
    with pytest.raises(pytest.fail.Exception, match="apt-get install postgresql"):
        postgres.require_postgres()


def test_advisory_locks_exclude_other_nodes_until_released_or_closed(postgres_dsn: str) -> None:
    from dicomrpc_server.storage.postgres.locks import AdvisoryLocks

    nodes = [PostgresBackend(postgres_dsn, pool_size=1) for _ in range(2)]
    first, second = (AdvisoryLocks(backend) for backend in nodes)
    try:
        assert first.acquire("reindex op") and first.acquire("reindex op")  # taken again here
        assert not second.acquire("reindex op") and second.acquire("reindex other")
        first.release("reindex op")
        assert not second.acquire("reindex op")  # one take is still held
        first.release("reindex op")
        assert second.acquire("reindex op") and second.held("reindex op")
        second.close()  # a node that ends drops its locks with its connection
        assert first.acquire("reindex op") and first.acquire("reindex other")
    finally:
        first.close()
        second.close()
        for backend in nodes:
            backend.close()
