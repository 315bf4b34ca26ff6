"""``GET /metrics`` on the HTTP port: the archive's metrics in Prometheus' text format.

It needs the ``admin`` scope when access control is on (a scrape configuration sends a token or
API key as any client does); the numbers are counts and timings, no patient data. What they are
is :mod:`dicomrpc_server.lifecycle.metrics`.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomrpc_server.dicomweb.context import archive_of
from dicomrpc_server.lifecycle.metrics import CONTENT_TYPE, Holdings

PATH = "/metrics"


async def metrics(request: Request) -> Response:
    """One scrape: the counted metrics and a reading of what the archive holds."""
    archive = archive_of(request)
    statistics = await archive.statistics.read()
    writer = getattr(archive.index, "writer", None)  # the LMDB index's; PostgreSQL has none
    holdings = Holdings(
        studies=statistics.studies,
        series=statistics.series,
        instances=statistics.instances,
        bytes_stored=statistics.bytes_stored,
        uptime_s=statistics.uptime_s,
        workitem_subscriptions=archive.workitems.events.subscriber_count,
        index_queue=writer.pending if writer is not None else None,
    )
    body = await asyncio.to_thread(archive.metrics.exposition, holdings)
    return Response(body, media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})


ROUTES = [Route(PATH, metrics, methods=["GET"])]
