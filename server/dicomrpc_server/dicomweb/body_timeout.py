"""The body read timeout: a request body that stops arriving ends its request with 408.

A handler reading a body waits for the client's next bytes; a client that stalls would hold the
request (and, for STOW-RS, a partial upload) forever. This middleware bounds each wait for the
next part of a body to ``http_body_timeout_s``. It times only the waits the application makes
for the client, so a slow store (which pauses reading) never counts against the client, and it
stops timing once the body is whole: a streamed response's wait for a disconnect is not a body
read. The error raised is the one every handler already maps: STOW-RS keeps the complete
instances before it and removes the partial one, any other request answers 408; the protocol
then ends the connection, since the rest of the body was never read.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomrpc_server.errors import Code, limit_exceeded


class BodyTimeoutMiddleware:
    """ASGI middleware: each wait for the next part of a request body lasts at most ``seconds``.

    Parameters
    ----------
    app
        The application.
    seconds
        The longest wait for the client's next bytes.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request with a receive that gives up on a stalled body."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout(self.seconds):
                    message = await receive()
            except TimeoutError:
                raise limit_exceeded(
                    "http_body_timeout_s",
                    self.seconds,
                    f"no byte of the request body arrived for {self.seconds:g} s",
                    code=Code.DEADLINE_EXCEEDED,
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await self.app(scope, timed_receive, send)
