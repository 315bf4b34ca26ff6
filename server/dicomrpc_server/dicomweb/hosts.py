"""The ``Host`` check of every DICOMweb request: 400 if not a host and port, 421 if not ours."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from dicomrpc_server.access.hosts import HostPolicy
from dicomrpc_server.dicomweb.errors import error_response


class HostMiddleware:
    """Refuses requests whose ``Host`` names another server (DNS rebinding, misrouting)."""

    def __init__(self, app: ASGIApp, policy: HostPolicy) -> None:
        self.app = app
        self._policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request, or answer 421 Misdirected Request."""
        if scope["type"] == "http":
            host = next((v for k, v in scope["headers"] if k == b"host"), None)
            text = host.decode("latin-1") if host is not None else None
            error = self._policy.check(text)
            if error is not None:
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)
