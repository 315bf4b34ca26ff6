"""The console's API: the reads its pages need that DICOMweb does not give.

Each route is an adapter over a core the gRPC ManagementService uses too (statistics, the
change feed, extended query tags): JSON in the shapes the pages draw, no rules of its own.
Access is checked before routing, by the gateway's access middleware, with the routes'
entries in :data:`~dicomrpc_server.access.scopes.CONSOLE_ROUTE_SCOPES`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dicomrpc_server.dicomweb.context import archive_of
from dicomrpc_server.errors import invalid_argument
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


ROUTES = [
    Route("/statistics", statistics, methods=["GET"]),
    Route("/changes", changes, methods=["GET"]),
    Route("/query-tags", query_tags, methods=["GET"]),
]
