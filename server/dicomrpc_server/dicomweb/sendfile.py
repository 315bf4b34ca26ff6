"""Instance files sent by the kernel: the ASGI zero-copy send extension, and responses using it.

A study retrieve is mostly stored files sent as they are. Read into Python and written to the
socket, each byte is copied four times (page cache to a buffer, to ``bytes``, into the HTTP
framing, into the socket) by the one thread that serves every connection; ``sendfile(2)`` hands
the file's pages to the socket without a copy in user space, which is what keeps the gateway's
CPU per byte sent below what the copies cost (bench/RESULTS.md, "Retrieve").

The gateway's protocol offers the ASGI "Zero Copy Send" extension
(``http.response.zerocopysend``, in the ASGI HTTP specification's extensions): a message naming
a file object, an offset and a count, which it sends with ``loop.sendfile`` once what was
written before it has left (asyncio falls back to reads and writes where the transport cannot
send a file, as over TLS). :class:`PartsResponse` streams bytes and :class:`FileRegion` items:
a region goes as one such message when the server offers the extension, and as chunks read from
the file otherwise, so the same route serves any ASGI server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from dicomrpc_server.storage.file_reader import FileRegion

ZERO_COPY_SEND = "http.response.zerocopysend"
# Chunks a region is read in when the server cannot send files (the retrieve core's default).
FALLBACK_CHUNK = 1 << 20

Part = bytes | FileRegion


def offers_zero_copy(scope: Scope) -> bool:
    """Whether the server serving ``scope`` takes zero-copy send messages."""
    return ZERO_COPY_SEND in scope.get("extensions", {})


class PartsResponse(StreamingResponse):
    """A streamed response whose items are bytes or regions of local files.

    Each region is closed once sent, or when the response ends before it is (the client went
    away, a later part failed): no descriptor outlives the response.
    """

    def __init__(
        self,
        parts: AsyncIterator[Part],
        media_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(_never(), media_type=media_type, headers=headers)
        self.parts = parts

    async def stream_response(self, send: Send) -> None:
        """Send the head, then each part: regions by the kernel when the server can."""
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        zero_copy = self._zero_copy
        async for part in self.parts:
            if isinstance(part, FileRegion):
                try:
                    if zero_copy:
                        with part.file() as file:
                            await send(
                                {
                                    "type": ZERO_COPY_SEND,
                                    "file": file,
                                    "offset": part.offset,
                                    "count": part.length,
                                    "more_body": True,
                                }
                            )
                    else:
                        async for data in part.chunks(FALLBACK_CHUNK):
                            await send(
                                {"type": "http.response.body", "body": data, "more_body": True}
                            )
                finally:
                    part.close()
            elif part:
                await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the response, noting first whether the server can send files."""
        self._zero_copy = offers_zero_copy(scope)
        await super().__call__(scope, receive, send)


async def _never() -> AsyncIterator[bytes]:
    """The body iterator StreamingResponse requires; :class:`PartsResponse` sends its own."""
    return
    yield b""


class ShortFile(Exception):
    """A file ended before the count of bytes a zero-copy send message promised."""


def offer_zero_copy(cycle: Any) -> None:
    """Offer the extension to one request: its scope says so, its ``send`` takes the message.

    ``cycle`` is uvicorn's httptools ``RequestResponseCycle``, before its application starts
    (it reads ``cycle.send`` when it does). A message is framed as the cycle's body writes are
    (counted against Content-Length, or one chunk of a chunked body), and the last one ends
    the response through the cycle's own ``send``.
    """
    cycle.scope.setdefault("extensions", {})[ZERO_COPY_SEND] = {}
    cycle.send = _zero_copy_send(cycle, cycle.send)


def _zero_copy_send(cycle: Any, send: Callable[[Message], Awaitable[None]]) -> Send:
    """``send`` of one request cycle, taking zero-copy send messages as well."""

    async def sending(message: Message) -> None:
        if message["type"] != ZERO_COPY_SEND:
            await send(message)
            return
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()
        transport: asyncio.WriteTransport = cycle.transport
        if cycle.disconnected or transport.is_closing():
            return
        if not cycle.response_started or cycle.response_complete:
            raise RuntimeError(f"unexpected ASGI message {ZERO_COPY_SEND!r}")
        count: int = message["count"]
        offset: int = message.get("offset", 0)
        if cycle.scope["method"] != "HEAD" and count:
            if cycle.chunked_encoding:
                transport.write(b"%x\r\n" % count)
            else:
                if count > cycle.expected_content_length:
                    raise RuntimeError("Response content longer than Content-Length")
                cycle.expected_content_length -= count
            try:
                sent = await asyncio.get_running_loop().sendfile(
                    transport, message["file"], offset, count
                )
            except ConnectionError:
                # The client went away: as uvicorn treats a write to a lost connection, the
                # response ends quietly (its connection is closed, so the cycle stops sending).
                transport.abort()
                return
            if sent < count:
                raise ShortFile(f"the file ended after {sent} of {count} bytes")
            if cycle.chunked_encoding:
                transport.write(b"\r\n")
        if not message.get("more_body", False):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    return sending
