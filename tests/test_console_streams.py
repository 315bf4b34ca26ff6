"""The console's event streams, without a server: the ``text/event-stream`` framing, the
``error`` event a core's refusal becomes (a workitem reader too far behind), and the end of a
stream when the server stops (``app.state.stopping``). The integration tests
(``tests/integration/test_console.py``, ``test_console_browser.py``) follow real commits."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

from starlette.requests import Request

from dicomrpc_server.console import api
from dicomrpc_server.ups.events import too_slow


def _request(stopping: asyncio.Event) -> Request:
    app = SimpleNamespace(state=SimpleNamespace(stopping=stopping))
    return cast(Request, SimpleNamespace(app=app))


def _parse(chunks: list[bytes]) -> list[tuple[str, str, dict[str, Any]]]:
    events = []
    for block in b"".join(chunks).decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line[:1] != ":")
        if "data" in fields:
            events.append((fields["event"], fields.get("id", ""), json.loads(fields["data"])))
    return events


def test_an_event_is_one_block_with_its_id_type_and_data() -> None:
    assert api.sse("change", {"sequence": 7, "study": "1.2"}, 7) == (
        b'id: 7\nevent: change\ndata: {"sequence":7,"study":"1.2"}\n\n'
    )
    assert api.sse("error", {"message": "x"}, None) == b'event: error\ndata: {"message":"x"}\n\n'


def test_a_reader_too_slow_gets_an_error_event_naming_where_to_resume() -> None:
    async def source() -> AsyncIterator[api.Event]:
        yield "workitem", {"sequence": 3}, 3
        raise too_slow(1024, 3)

    async def run() -> list[bytes]:
        return [c async for c in api._events(_request(asyncio.Event()), source())]

    chunks = asyncio.run(run())
    assert chunks[0] == b": following\n\n"
    events = _parse(chunks)
    assert events[0] == ("workitem", "3", {"sequence": 3})
    kind, event_id, detail = events[1]
    assert (kind, event_id) == ("error", "")
    assert detail["reason"] == "SUBSCRIBER_TOO_SLOW" and detail["since"] == "3"
    assert "since=3" in detail["message"]


def test_a_stopping_server_ends_a_waiting_stream_and_its_follower() -> None:
    followed = asyncio.Event()
    closed = asyncio.Event()

    async def source() -> AsyncIterator[api.Event]:
        try:
            followed.set()
            await asyncio.Event().wait()  # nothing ever comes
            yield "change", {}, 1
        finally:
            closed.set()

    async def run() -> list[bytes]:
        stopping = asyncio.Event()
        stream = api._events(_request(stopping), source())
        chunks = [await anext(stream)]
        reading = asyncio.ensure_future(anext(stream))
        await followed.wait()
        stopping.set()
        with contextlib.suppress(StopAsyncIteration):
            await asyncio.wait_for(reading, 5)
        await asyncio.wait_for(closed.wait(), 5)
        return chunks

    assert asyncio.run(run()) == [b": following\n\n"]
