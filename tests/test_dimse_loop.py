"""Handing DIMSE work to the archive's loop: a closed loop leaves no coroutine unawaited."""

from __future__ import annotations

import asyncio
import threading

import pytest

from dicomrpc_server.dimse.loop import on_loop


async def _answer() -> int:
    return 42


def test_the_result_comes_back_from_a_running_loop() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        assert on_loop(loop, _answer()) == 42
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_a_closed_loop_refuses_and_the_coroutine_is_closed() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    coroutine = _answer()
    with pytest.raises(RuntimeError, match="closed"):
        on_loop(loop, coroutine)
    assert coroutine.cr_frame is None  # closed: no "was never awaited" warning at collection
