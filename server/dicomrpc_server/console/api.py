"""The console's API: the reads its pages need that DICOMweb does not give.

Each route is an adapter over a core the gRPC ManagementService uses too (statistics, the
change feed, extended query tags): JSON in the shapes the pages draw, no rules of its own.
Access is checked before routing, by the gateway's access middleware, with the routes'
entries in :data:`~dicomrpc_server.access.scopes.CONSOLE_ROUTE_SCOPES`.

The live pages follow two streams, as server-sent events (``text/event-stream``, HTML Living
Standard §9.2): the change feed (``ChangeFeed.follow``, what gRPC's ``WatchChangeFeed`` serves)
and the workitems' events (``WorkitemCore.follow``, what gRPC's ``SubscribeWorkitems`` and
UPS-RS subscriptions serve). Each event's ``id`` is its sequence, which ``since`` takes to
resume. The pages read them with ``fetch``, which sends the token in ``Authorization`` as every
other call does (``EventSource`` cannot set a header, and a token in the URL would be written
to access logs and browser history).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from dicomrpc.v1 import workitem_service_pb2 as ups_pb
from dicomrpc_server.dicomweb.context import archive_of
from dicomrpc_server.errors import ServiceError, invalid_argument
from dicomrpc_server.lifecycle.feed import DEFAULT_LIMIT
from dicomrpc_server.storage.protocols import Change

_NO_STORE = {"Cache-Control": "no-store"}
_LEVELS = {1: "study", 2: "series", 3: "instance"}


def _json(content: Any) -> Response:
    return JSONResponse(content, headers=_NO_STORE)


def _int_param(request: Request, name: str, default: int | None) -> int | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return default
    if not value.isdigit():
        raise invalid_argument(name, f"{value!r} is not a non-negative integer")
    return int(value)


async def statistics(request: Request) -> Response:
    """Counts, bytes stored, stores in the last minute, uptime and version (the dashboard)."""
    stats = await archive_of(request).statistics.read()
    return _json(
        {
            "version": stats.version,
            "uptime_s": round(stats.uptime_s, 1),
            "studies": stats.studies,
            "series": stats.series,
            "instances": stats.instances,
            "bytes_stored": stats.bytes_stored,
            "bytes_counted_at_us": stats.bytes_counted_at_us,
            "stored_last_minute": stats.stored_last_minute,
            "latest_change": stats.latest_change,
        }
    )


def change_json(change: Change) -> dict[str, Any]:
    """An entry of the change feed as the console's page reads it."""
    return {
        "sequence": change.sequence,
        "action": change.action.value,
        "study": change.study_uid,
        "series": change.series_uid,
        "instance": change.sop_uid,
        "version": change.version,
        "time_us": change.time_us,
        "state": change.state.value,
    }


async def changes(request: Request) -> Response:
    """Entries after ``since`` (oldest first), or without it the newest ``limit`` ones.

    The page follows the feed by asking again with the highest sequence it has seen, as a
    ReadChangeFeed client does (see the ManagementService in the API's protos).
    """
    feed = archive_of(request).feed
    limit = _int_param(request, "limit", DEFAULT_LIMIT) or DEFAULT_LIMIT
    since = _int_param(request, "since", None)
    latest = feed.latest()
    newest = latest.sequence if latest is not None else 0
    if since is None:
        since = max(0, newest - limit)
    entries = await asyncio.to_thread(feed.read, since, limit)
    return _json({"entries": [change_json(c) for c in entries], "latest": newest})


async def query_tags(request: Request) -> Response:
    """The extended query tags with their state, and every re-indexing operation's progress."""
    core = archive_of(request).query_tags
    tags = core.list()
    operations = core.operations()
    return _json(
        {
            "tags": [
                {
                    "tag": t.hex_tag,
                    "keyword": t.keyword,
                    "vr": t.vr,
                    "private_creator": t.private_creator,
                    "level": _LEVELS.get(t.level, str(t.level)),
                    "status": "ready" if t.ready else "reindexing",
                    "operation_id": t.operation_id,
                }
                for t in tags
            ],
            "operations": [
                {
                    "operation_id": o.operation_id,
                    "tags": list(o.hex_tags),
                    "processed_instances": o.processed_instances,
                    "total_instances": max(o.total_instances, o.processed_instances),
                    "done": o.done,
                }
                for o in operations
            ],
        }
    )


# A comment line this often while nothing happens: proxies keep the connection, and a page that
# went away is noticed (its write fails) within this time.
KEEP_ALIVE_S = 15.0
# Events read ahead of what the connection has sent. The change feed then waits (its follower
# reads the log at the reader's pace); the workitem hub's own bounded queue fills behind it
# and ends the stream with SUBSCRIBER_TOO_SLOW, which the page resumes from (``since``).
STREAM_QUEUE = 64
EVENT_STREAM = "text/event-stream"
_STREAM_HEADERS = {
    "Cache-Control": "no-store",
    # Sent as they happen, not gathered by a buffering proxy (nginx's documented header).
    "X-Accel-Buffering": "no",
}

Event = tuple[str, dict[str, Any], int | None]  # type, data, id


def sse(kind: str, data: dict[str, Any], event_id: int | None) -> bytes:
    """One event in the ``text/event-stream`` format (HTML §9.2.5): id, type, one data line."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _events(request: Request, source: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    """``source``'s events as they come, with keep-alive comments between.

    Until the client goes, the source ends (an ``error`` event says why when a core refused to
    go on) or the server stops (``app.state.stopping``: a stream must not hold a shutdown for
    its grace period).
    """
    queue: asyncio.Queue[Event | None] = asyncio.Queue(STREAM_QUEUE)

    async def pump() -> None:
        try:
            async for event in source:
                await queue.put(event)
        except ServiceError as error:
            detail = {"reason": error.reason, "message": error.message, **error.metadata}
            await queue.put(("error", detail, None))
        await queue.put(None)

    stopping: asyncio.Event = request.app.state.stopping
    pumping = asyncio.create_task(pump())
    stopped = asyncio.create_task(stopping.wait())
    taking: asyncio.Task[Event | None] | None = None
    try:
        # At once: the page knows it is connected (the headers are sent with the first chunk).
        yield b": following\n\n"
        while not stopped.done():
            taking = taking or asyncio.create_task(queue.get())
            await asyncio.wait(
                {taking, stopped}, timeout=KEEP_ALIVE_S, return_when=asyncio.FIRST_COMPLETED
            )
            if not taking.done():
                if not stopped.done():
                    yield b": keep-alive\n\n"
                continue  # the same wait goes on: no event is taken and dropped
            event, taking = taking.result(), None
            if event is None:
                return
            yield sse(*event)
    finally:
        # Whichever way it ends (the client gone cancels this generator mid-wait), nothing of
        # it is left running.
        for task in (pumping, stopped, taking):
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *(t for t in (pumping, stopped, taking) if t is not None), return_exceptions=True
        )


def _stream(request: Request, source: AsyncIterator[Event]) -> Response:
    return StreamingResponse(
        _events(request, source), media_type=EVENT_STREAM, headers=_STREAM_HEADERS
    )


async def change_stream(request: Request) -> Response:
    """The change feed live: each entry after ``since`` (default: the newest) as committed.

    Event ``change``, the entry as :func:`change_json` writes it.
    """
    feed = archive_of(request).feed
    since = _int_param(request, "since", None)
    if since is None:
        latest = feed.latest()
        since = latest.sequence if latest is not None else 0

    async def entries() -> AsyncIterator[Event]:
        async for change in feed.follow(since):
            yield "change", change_json(change), change.sequence

    return _stream(request, entries())


def workitem_event_json(event: ups_pb.SubscribeWorkitemsResponse) -> dict[str, Any]:
    """A workitem's event as the worklist board reads it.

    Which workitem, what happened, its Procedure Step State after (PS3.4 CC.1.1), and the
    sequence to resume from.
    """
    return {
        "sequence": event.sequence,
        "type": ups_pb.WorkitemEventType.Name(event.type).removeprefix("WORKITEM_EVENT_TYPE_"),
        "workitem": event.workitem_uid,
        "state": ups_pb.WorkitemState.Name(event.state).removeprefix("WORKITEM_STATE_"),
    }


async def workitem_stream(request: Request) -> Response:
    """Every workitem's events live: after ``since`` when given (replayed from the log).

    Without ``since``, from now. Event ``workitem`` (:func:`workitem_event_json`). A reader
    that falls too far behind gets an ``error`` event naming the ``since`` to resume from, and
    the stream ends.
    """
    core = archive_of(request).workitems
    since = _int_param(request, "since", None)
    followed = core.follow("", {}, since)

    async def events() -> AsyncIterator[Event]:
        async for event in followed:
            yield "workitem", workitem_event_json(event), event.sequence

    return _stream(request, events())


ROUTES = [
    Route("/statistics", statistics, methods=["GET"]),
    Route("/changes", changes, methods=["GET"]),
    Route("/changes/stream", change_stream, methods=["GET"]),
    Route("/workitems/stream", workitem_stream, methods=["GET"]),
    Route("/query-tags", query_tags, methods=["GET"]),
]
