"""``/health/live`` and ``/health/ready`` on the HTTP port: the archive's health for probes.

Open to everyone, as gRPC's health service is (``access.scopes``): a probe holds no token, and
the answers say nothing of what is stored. Each is JSON: ``{"status": "live"}``;
``{"status": "ready"}`` (200) or ``{"status": "not ready", "problems": {...}}`` (503), naming
what failed (:mod:`dicomrpc_server.lifecycle.health`).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dicomrpc_server.dicomweb.context import archive_of

LIVE_PATH = "/health/live"
READY_PATH = "/health/ready"
PATHS = frozenset({LIVE_PATH, READY_PATH})
# A probe's answer is never cached: each asks anew.
_NO_STORE = {"Cache-Control": "no-store"}


async def live(request: Request) -> Response:
    """200 while the event loop answers."""
    return JSONResponse({"status": "live"}, headers=_NO_STORE)


async def ready(request: Request) -> Response:
    """200 when the archive can serve, else 503 with what stands in the way."""
    stopping = request.app.state.stopping.is_set()
    readiness = await archive_of(request).health.readiness(stopping)
    if readiness.ready:
        return JSONResponse({"status": "ready"}, headers=_NO_STORE)
    return JSONResponse(
        {"status": "not ready", "problems": readiness.problems}, status_code=503, headers=_NO_STORE
    )


ROUTES = [
    Route(LIVE_PATH, live, methods=["GET"]),
    Route(READY_PATH, ready, methods=["GET"]),
]
