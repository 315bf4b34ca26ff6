"""DELETE of a study, series or instance: 204 when it is gone, 404 when it was never there."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomrpc_server.dicomweb.context import archive_of


async def delete(request: Request) -> Response:
    """Delete what the path names (one index transaction; files after)."""
    params = request.path_params
    await archive_of(request).delete.delete(
        params["study"], params.get("series", ""), params.get("instance", "")
    )
    return Response(status_code=204)


ROUTES = [
    Route("/studies/{study}", delete, methods=["DELETE"]),
    Route("/studies/{study}/series/{series}", delete, methods=["DELETE"]),
    Route("/studies/{study}/series/{series}/instances/{instance}", delete, methods=["DELETE"]),
]
