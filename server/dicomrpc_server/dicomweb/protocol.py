"""The gateway's HTTP/1.1 protocol: uvicorn's httptools protocol with the limits it lacks.

uvicorn closes a connection idle between requests after ``timeout_keep_alive`` and has a
connection cap of its own, but it waits as long as a client likes for a request head, buffers
whatever head it is sent, and keeps reading a body nobody wants. This subclass adds, for each
connection:

- the header read timeout: a request's whole head must arrive within ``http_header_timeout_s``
  of the connection, or of the request's first byte on a reused connection; else 408. A client
  trickling its headers a byte at a time (slowloris) holds its connection no longer;
- the head size: past ``http_max_header_bytes`` without the end of the head, 431, decided from
  the byte count before httptools has gathered the rest (it joins a header's pieces by copying,
  which a 16 MiB header would make quadratic);
- the request target: past ``http_max_url_bytes``, 414;
- the connection cap (:class:`~.connections.ConnectionGate`): a connection beyond it closes
  the connection idle the longest, or is answered 503 when none is idle;
- instance files sent by the kernel: each request is offered the ASGI zero-copy send
  extension (:mod:`.sendfile`);
- a response sent before its request body was read whole (an error found in the headers, a
  STOW-RS over its part limit, a body read timeout) leaves the rest of the body to be read and
  dropped for at most :data:`LINGER_S`; a body not over by then ends the connection.

A refusal is the gateway's JSON error (:func:`~.errors.closing_error_response`), written on
the connection itself, which is then closed after a lingering read of at most :data:`LINGER_S`
(RFC 9112 §9.6): the server's side is shut first and what the client was still sending is read
and dropped, so that the client reads the answer rather than a reset. Refusals are counted in
the gate's tally, not logged one by one.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from dicomrpc_server.config import Settings
from dicomrpc_server.dicomweb.connections import ConnectionGate
from dicomrpc_server.dicomweb.errors import closing_error_response, http_status
from dicomrpc_server.dicomweb.sendfile import offer_zero_copy
from dicomrpc_server.errors import Code, ServiceError, invalid_argument, limit_exceeded

# The longest an ended connection is kept open to read what the client still sends.
LINGER_S = 2.0
# The same for a connection refused as it is accepted: only the request it may have sent at
# once is read (the places for refused connections are few and must turn over quickly).
REFUSAL_LINGER_S = 0.25


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; the protocol answers its refusal."""


class GatewayProtocol(HttpToolsProtocol):
    """One HTTP connection of the gateway (see the module's description).

    Parameters
    ----------
    config, server_state, app_state
        What uvicorn gives each of its protocols.
    settings
        The limits (``http_*``).
    gate
        The connection counts; this connection releases its place in :meth:`connection_lost`.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        *,
        settings: Settings,
        gate: ConnectionGate,
    ) -> None:
        super().__init__(config, server_state, app_state)
        self.settings = settings
        self.gate = gate
        self.connected = False  # told of its connection: it releases the gate's count
        self._served = False
        self._refusal: tuple[ServiceError, str] | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._reading_head = True  # the next bytes belong to a request head
        self._began = False  # a request has begun and not been received whole
        self._head_bytes = 0
        self._body_done = True
        self._draining: asyncio.TimerHandle | None = None  # the rest of a body, answered early
        self._ending = False
        self._after_answer = False  # input no longer parsed; the connection ends after the answer

    # -- the connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Serve the connection, or answer 503 when the cap is reached."""
        self.connected = True
        if not self.gate.admit():
            self.transport = transport
            self.flow = FlowControl(transport)
            cap = self.gate.cap
            self._refuse(
                limit_exceeded(
                    "http_max_connections",
                    cap,
                    f"the server is serving {cap} connections, its limit; retry later",
                    code=Code.UNAVAILABLE,
                ),
                f"over the cap of {cap} connections, none idle",
                linger_s=REFUSAL_LINGER_S,
            )
            return
        self._served = True
        super().connection_made(transport)
        self.gate.idle(self)
        self._arm_head_timer()

    def evict(self) -> None:
        """Close this idle connection to make room for a new one (it holds no request)."""
        self._served = False
        self._ending = True
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        """Release the connection's place; uvicorn then ends its request, if any."""
        for timer in (self._head_timer, self._linger_timer, self._draining):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._linger_timer = self._draining = None
        self.gate.busy(self)
        self.gate.release(self._served)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Parse what arrived, refusing a head that grows past its limit."""
        if self._ending or self._after_answer:
            return  # a lingering close: what the client still sends is dropped
        view = memoryview(data)
        if self._reading_head:
            room = self.settings.http_max_header_bytes - self._head_bytes
            if len(view) <= room:
                self._head_bytes += len(view)
            else:
                # The head may end within the room left: parse that much, and refuse if not.
                self._feed(view[:room])
                if self._ending or self.transport.is_closing():
                    return
                if self._reading_head:
                    limit = self.settings.http_max_header_bytes
                    self._refuse(
                        limit_exceeded(
                            "http_max_header_bytes",
                            limit,
                            f"the request head (request line and headers) is larger than "
                            f"{limit} bytes, this server's limit",
                        ),
                        f"head over {limit} bytes",
                    )
                    return
                view = view[room:]
        self._feed(view)

    def _feed(self, data: memoryview) -> None:
        """Parse ``data`` as uvicorn does, with parse errors answered as the gateway's errors.

        The gateway serves no WebSocket, so an upgrade request is served as plain HTTP.
        """
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError as exc:
            if self._refusal is not None:
                self._refuse(*self._refusal)
            else:
                self._refuse(
                    invalid_argument("request", f"is not a valid HTTP/1.1 request: {exc}"),
                    "not a valid request",
                )

    def on_response_complete(self) -> None:
        """Keep the connection alive once the request's body is read whole.

        A response sent before the body was read leaves the rest of it to be read and dropped:
        for at most :data:`LINGER_S`, after which the connection ends (a client may be sending
        gigabytes nobody will read, or nothing at all).
        """
        if self._after_answer:
            self._end()
            return
        if not self._body_done and not self.transport.is_closing():
            if self._draining is None:
                self.flow.resume_reading()
                self._draining = self.loop.call_later(LINGER_S, self._end)
            return
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline and not self._began:
            self.gate.idle(self)

    # -- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        """A request's first byte: its head is timed from here on a reused connection."""
        super().on_message_begin()
        self._began = True
        self.gate.busy(self)
        self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        """A piece of the request target: refuse a target past its limit."""
        super().on_url(url)
        limit = self.settings.http_max_url_bytes
        if len(self.url) > limit:
            error = limit_exceeded(
                "http_max_url_bytes",
                limit,
                f"the request target (path and query) is longer than {limit} bytes, "
                "this server's limit",
            )
            self._refusal = (error, f"target over {limit} bytes")
            raise _Refused

    def on_headers_complete(self) -> None:
        """The head is whole: stop its timer and count; uvicorn starts the request."""
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._reading_head = False
        self._head_bytes = 0
        if self.parser.get_http_version() == "0.9":
            # A request line without a version, which httptools takes for a whole HTTP/0.9
            # request and the lines after it for the next request.
            error = invalid_argument(
                "request",
                "has no HTTP version: the request line must end with HTTP/1.1 "
                "(HTTP/0.9 is not served)",
            )
            self._refusal = (error, "no HTTP version")
            raise _Refused
        self._body_done = False
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # a request, not an upgrade
            offer_zero_copy(cycle)

    def on_message_complete(self) -> None:
        """The body is whole; what follows is the next request's head."""
        self._body_done = True
        self._reading_head = True
        self._began = False
        super().on_message_complete()
        if self._draining is not None:  # the rest of a body answered early: read whole
            self._draining.cancel()
            self._draining = None
            self.on_response_complete()

    # -- refusals ----------------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        if self._head_timer is None and not self._ending:
            self._head_timer = self.loop.call_later(
                self.settings.http_header_timeout_s, self._head_timed_out
            )

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._ending or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # Still answering the previous request (a pipelined client waits on it): the
            # client is not late yet.
            self._arm_head_timer()
            return
        seconds = self.settings.http_header_timeout_s
        self._refuse(
            limit_exceeded(
                "http_header_timeout_s",
                seconds,
                f"the request head (request line and headers) did not arrive within {seconds:g} s",
                code=Code.DEADLINE_EXCEEDED,
            ),
            f"head not received within {seconds:g} s",
        )

    def _refuse(self, error: ServiceError, why: str, linger_s: float = LINGER_S) -> None:
        """Answer ``error`` on the connection itself, then end it.

        While a request is being answered (the refusal is of a request pipelined after it, or
        the answer began before the body was read), that answer is sent whole first and the
        connection ends after it, with nothing more parsed. A body that turns out not to be
        HTTP before its request is answered ends the request: the application is told the
        client has gone (what it still sends is dropped) and ``error`` is the answer.
        """
        self.gate.tally.note(f"{http_status(error)} ({why})")
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started or self._body_done:
                self._after_answer = True
                self.flow.resume_reading()
                return
            cycle.disconnected = True
            cycle.message_event.set()
        if not self.transport.is_closing():
            self.transport.write(closing_error_response(error))
        self._end(linger_s)

    def _end(self, linger_s: float = LINGER_S) -> None:
        """Close after a lingering read: FIN now, the client's last bytes read and dropped."""
        if self._ending:
            return
        self._ending = True
        self.gate.busy(self)
        for timer in (self._head_timer, self._draining):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._draining = None
        self._unset_keepalive_if_required()
        transport = self.transport
        if transport.is_closing():
            return
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self.flow.resume_reading()
        self._linger_timer = self.loop.call_later(linger_s, transport.close)
