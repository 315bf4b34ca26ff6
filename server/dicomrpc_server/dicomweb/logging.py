"""One structured log line per HTTP request: method, path, status, caller, bytes in and out, ms.

The same line the gRPC adapter writes per RPC, on the same logger, so one log carries both.
It is written when the response has been sent (or the request failed), so a streamed body's
time and size are whole.

A streamed response that fails after it started (an instance file removed meanwhile, a
transcode that fails on the seventh of ten instances) can no longer carry a status. Its line
is a warning with ``"cut": true`` and the error's reason and message; the request then ends
without completing the response, and uvicorn closes the connection short of the body's
Content-Length or without the last chunk of a chunked body, so the client sees an incomplete
body and not a short, well-formed one.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomrpc_server.dicomweb.auth import caller_of
from dicomrpc_server.dicomweb.sendfile import ZERO_COPY_SEND
from dicomrpc_server.errors import ServiceError
from dicomrpc_server.lifecycle.metrics import Metrics, route_label

log = logging.getLogger("dicomrpc.access")


class AccessLogMiddleware:
    """ASGI middleware that logs every HTTP request once it ends, and counts it in ``metrics``.

    The metrics name a request by its route's template (``GET /dicomweb/studies/{study}``),
    which the router leaves in the request's scope, never by its path.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count what the request moves while the application serves it."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        tally: dict[str, Any] = {"status": 0, "bytes_in": 0, "bytes_out": 0}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                tally["bytes_in"] += len(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                tally["status"] = message["status"]
            elif message["type"] == "http.response.body":
                tally["bytes_out"] += len(message.get("body", b""))
            elif message["type"] == ZERO_COPY_SEND:
                tally["bytes_out"] += message["count"]
            await send(message)

        error = ""
        cut: ServiceError | None = None
        try:
            await self.app(scope, counting_receive, counting_send)
        except BaseException as exc:
            error = type(exc).__name__
            cut = _service_error(exc) if tally["status"] else None
            if cut is None:
                raise
        finally:
            caller = caller_of(scope)
            record: dict[str, Any] = {
                "http": scope["method"],
                "path": scope["path"],
                "status": tally["status"] or (500 if error else 0),
                "caller": caller.identity if caller is not None else "",
                "bytes_in": tally["bytes_in"],
                "bytes_out": tally["bytes_out"],
                "ms": round((time.perf_counter() - start) * 1000, 2),
            }
            if cut is not None:
                record.update(cut=True, error=cut.reason, message=cut.message)
                log.warning(json.dumps(record, separators=(",", ":")))
            else:
                if error:
                    record["error"] = error
                log.info(json.dumps(record, separators=(",", ":")))
            if self.metrics is not None:
                self.metrics.observe(
                    "http",
                    route_label(scope["method"], *_template(scope)),
                    str(record["status"]),
                    time.perf_counter() - start,
                    tally["bytes_in"],
                    tally["bytes_out"],
                )


def _template(scope: Scope) -> tuple[str, str | None]:
    """The mount path and route template of the route that took a request, if one did."""
    route = scope.get("route")
    if isinstance(route, Route):
        return scope.get("root_path", ""), route.path
    if isinstance(route, Mount):  # an application mounted whole: the viewer's or console's files
        return "", (route.path or "") + "/*"
    return "", None


def _service_error(exc: BaseException) -> ServiceError | None:
    """The core error behind ``exc``: itself, or what Starlette wrapped.

    Starlette re-raises an error its handlers map as a ``RuntimeError`` (from the error) when
    the response had already started.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ServiceError):
            return seen
        seen = seen.__cause__
    return None
