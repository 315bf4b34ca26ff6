"""The index writer: group commit, isolated failures, and callers that stop waiting."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from dicomrpc_server.storage.writer import IndexWriter


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[tuple[IndexWriter, lmdb.Environment]]:
    env = lmdb.open(str(tmp_path / "index"), max_dbs=2)
    w = IndexWriter(
        env,
        before_commit=lambda: None,
        grow=lambda: None,
        adopt=lambda: None,
        hold=contextlib.nullcontext,
        max_batch=64,
    )
    yield w, env
    w.close()
    env.close()


def _put(key: bytes, hold: threading.Event | None = None) -> object:
    def write(txn: lmdb.Transaction) -> bytes:
        if hold is not None:
            hold.wait(10)
        txn.put(key, b"1")
        return key

    return write


def _stored(env: lmdb.Environment, key: bytes) -> bool:
    with env.begin() as txn:
        return txn.get(key) is not None


def test_a_caller_that_stops_waiting_breaks_nothing(
    writer: tuple[IndexWriter, lmdb.Environment],
) -> None:
    w, env = writer
    hold = threading.Event()

    async def scenario() -> bytes:
        first = asyncio.create_task(w.run(_put(b"first", hold)))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)  # the writer is inside "first"
        queued = asyncio.create_task(w.run(_put(b"queued")))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        queued.cancel()  # e.g. a client that hung up while its write waited
        hold.set()
        await first
        return await asyncio.wait_for(w.run(_put(b"after")), 5)  # type: ignore[arg-type]

    assert asyncio.run(scenario()) == b"after"
    # The abandoned write still committed: a persisted file is indexed, never orphaned.
    assert _stored(env, b"queued") and _stored(env, b"after")


def test_a_cancelled_thread_future_breaks_nothing(
    writer: tuple[IndexWriter, lmdb.Environment],
) -> None:
    w, env = writer
    hold = threading.Event()
    first = w.submit(_put(b"first", hold))  # type: ignore[arg-type]
    queued = w.submit(_put(b"queued"))  # type: ignore[arg-type]
    assert queued.cancel()
    hold.set()
    assert first.result(5) == b"first"
    assert w.submit(_put(b"after")).result(5) == b"after"  # type: ignore[arg-type]
    assert _stored(env, b"queued")


def test_one_failing_write_fails_alone(writer: tuple[IndexWriter, lmdb.Environment]) -> None:
    w, env = writer

    def broken(txn: lmdb.Transaction) -> None:
        txn.put(b"half", b"1")
        raise ValueError("no")

    async def scenario() -> list[object]:
        return await asyncio.gather(
            w.run(_put(b"a")),  # type: ignore[arg-type]
            w.run(broken),
            w.run(_put(b"b")),  # type: ignore[arg-type]
            return_exceptions=True,
        )

    a, failed, b = asyncio.run(scenario())
    assert (a, b) == (b"a", b"b")
    assert isinstance(failed, ValueError)
    assert _stored(env, b"a") and _stored(env, b"b") and not _stored(env, b"half")


def test_what_a_listener_hands_the_loop_goes_ahead_of_the_batch_callers(
    writer: tuple[IndexWriter, lmdb.Environment],
) -> None:
    # A subscriber woken by a commit's listener (a workitem event) resumes before the callers
    # of that commit's batch do: it is not queued behind every answer the batch lets go.
    w, _ = writer
    hold = threading.Event()
    order: list[str] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()

        def listener() -> None:
            if w.commits == 2:  # the batch's commit, after the first one's
                loop.call_soon_threadsafe(woken.set)

        w.add_listener(listener)

        async def subscriber() -> None:
            await woken.wait()
            order.append("subscriber")

        async def caller(key: bytes, hold: threading.Event | None = None) -> None:
            await w.run(_put(key, hold))  # type: ignore[arg-type]
            order.append(key.decode())

        first = asyncio.create_task(caller(b"first", hold))
        await asyncio.sleep(0.05)  # the writer is inside "first": the rest make one batch
        waiting = asyncio.create_task(subscriber())
        batch = [asyncio.create_task(caller(f"k{n}".encode())) for n in range(8)]
        await asyncio.sleep(0.05)
        hold.set()
        await asyncio.gather(first, waiting, *batch)
        assert order.index("subscriber") < min(order.index(f"k{n}") for n in range(8))

    asyncio.run(scenario())
