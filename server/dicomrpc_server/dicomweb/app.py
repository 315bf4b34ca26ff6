"""The DICOMweb ASGI application: every resource's routes under ``/dicomweb``, on one archive.

Routes come from one module per resource, each exposing ``ROUTES``; a new resource is one
more module added to :data:`RESOURCE_ROUTES`. Every route is wrapped by :func:`.url.checked`,
which checks the request URL (the UIDs of its path, the encoding of its query) before the
route reads it. Middleware, outermost first: the audit hook (when the archive audits; so it
sees every request that middleware inside it refuses), the access log (so it sees every
response, errors and CORS answers included), the body read timeout, the ``Host`` check (400,
421), CORS (so preflights are answered without credentials and refusals carry CORS headers a
browser needs to read them), access control (401, 403) before routing, then any middleware
given to :func:`create_app`.

The health probes (:mod:`.health`, ``/health/live`` and ``/health/ready``, open to everyone)
and the metrics (:mod:`.metrics`, ``/metrics``, for the ``admin`` scope) are routed first.
The console (:mod:`dicomrpc_server.console`) is routed next: its API under ``/console/api``
and its pages under ``/console/``, before the viewer's site, which would answer them otherwise.

With the viewer on (``--viewer``, the default), the OHIF viewer's site
(:class:`~dicomrpc_server.viewer.site.ViewerSite`) answers every path outside ``/dicomweb``:
it is routed after the gateway, and the access check lets its public files through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute, Mount, Route

from dicomrpc_server.access.hosts import HostPolicy
from dicomrpc_server.archive import Archive
from dicomrpc_server.console import API_PREFIX, CONSOLE_PREFIX
from dicomrpc_server.console import api as console_api
from dicomrpc_server.console.site import ConsoleSite
from dicomrpc_server.dicomweb import delete, qido, stow, wado, workitems
from dicomrpc_server.dicomweb.audit import AuditMiddleware
from dicomrpc_server.dicomweb.auth import AccessMiddleware
from dicomrpc_server.dicomweb.body_timeout import BodyTimeoutMiddleware
from dicomrpc_server.dicomweb.context import PREFIX
from dicomrpc_server.dicomweb.errors import handle_service_error
from dicomrpc_server.dicomweb.health import ROUTES as HEALTH_ROUTES
from dicomrpc_server.dicomweb.hosts import HostMiddleware
from dicomrpc_server.dicomweb.logging import AccessLogMiddleware
from dicomrpc_server.dicomweb.metrics import ROUTES as METRICS_ROUTES
from dicomrpc_server.dicomweb.url import checked
from dicomrpc_server.errors import ServiceError
from dicomrpc_server.viewer.package import cached_dist
from dicomrpc_server.viewer.site import ViewerSite

RESOURCE_ROUTES: list[Sequence[BaseRoute]] = [
    stow.ROUTES,
    qido.ROUTES,
    wado.ROUTES,
    delete.ROUTES,
    workitems.ROUTES,
]

# What a browser viewer sends and reads across origins.
_CORS_HEADERS = ["Accept", "Content-Type", "If-None-Match", "Authorization"]
_EXPOSED_HEADERS = ["ETag", "Warning", "Content-Length", "Content-Type", "Location"]


def create_app(archive: Archive, inner: Sequence[Middleware] = ()) -> Starlette:
    """The gateway application serving ``archive``, with ``inner`` middleware inside the rest."""
    routes = [checked(route) for resource in RESOURCE_ROUTES for route in resource]
    console_routes = [checked(route) for route in console_api.ROUTES]
    middleware = []
    if archive.auditor.enabled:
        middleware.append(Middleware(AuditMiddleware, auditor=archive.auditor))
    middleware.append(Middleware(AccessLogMiddleware, metrics=archive.metrics))
    middleware.append(
        Middleware(BodyTimeoutMiddleware, seconds=archive.settings.http_body_timeout_s)
    )
    middleware.append(Middleware(HostMiddleware, policy=HostPolicy(archive.settings)))
    origins = list(archive.settings.cors_origins)
    if origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=origins,
                allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
                allow_headers=_CORS_HEADERS,
                expose_headers=_EXPOSED_HEADERS,
                max_age=600,
            )
        )
    viewer = archive.settings.viewer
    middleware.append(
        Middleware(
            AccessMiddleware,
            authenticator=archive.access,
            routes=routes,
            public_outside_prefix=viewer,
            console_routes=console_routes,
            grants=archive.grants,
        )
    )
    middleware.extend(inner)
    console = ConsoleSite()
    mounts: list[BaseRoute] = [
        *HEALTH_ROUTES,
        *METRICS_ROUTES,
        Mount(PREFIX, routes=routes),
        Mount(API_PREFIX, routes=console_routes),
        Route(CONSOLE_PREFIX, console),
        Mount(CONSOLE_PREFIX, app=console),
    ]
    if viewer:
        named = archive.settings.viewer_dir
        site = ViewerSite(named or cached_dist(), explicit=named is not None)
        mounts.append(Mount("", app=site))
    app = Starlette(
        routes=mounts,
        middleware=middleware,
        exception_handlers={ServiceError: handle_service_error},
    )
    app.state.archive = archive
    # Set when the server stops: the console's event streams end then, rather than hold the
    # shutdown for its whole grace period (they never end on their own).
    app.state.stopping = asyncio.Event()
    return app
