"""The HTTP server: uvicorn serving the gateway in the gRPC server's process and event loop.

uvicorn runs the application, but connections are accepted by :class:`.connections.Acceptor`
(uvicorn is handed no socket of its own) and spoken to by :class:`.protocol.GatewayProtocol`:
together they hold the connection cap, the head limits and the timeouts the README's Limits
lists, with uvicorn's own idle keep-alive timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
from collections.abc import Iterator

import uvicorn

from dicomrpc_server.archive import Archive
from dicomrpc_server.dicomweb.app import create_app
from dicomrpc_server.dicomweb.connections import (
    Acceptor,
    ConnectionGate,
    Tally,
    connection_cap,
    open_descriptors,
)
from dicomrpc_server.dicomweb.protocol import GatewayProtocol
from dicomrpc_server.ports import port_unavailable

log = logging.getLogger("dicomrpc.http")

# Connections the kernel holds for the gateway while it is not accepting (at its cap).
BACKLOG = 512


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket whose protocol is set, so that asyncio turns Nagle off.

    asyncio sets ``TCP_NODELAY`` only on sockets whose ``proto`` is ``IPPROTO_TCP``;
    ``socket.create_server`` leaves it 0, and its connections would then hold a response's last
    small segment until the client's delayed ACK (40 ms per response on Linux).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers.

    ``dicomrpc serve`` owns the process's signals and stops both servers in order.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """The archive's DICOMweb endpoint.

    Parameters
    ----------
    archive
        The opened archive (the one the gRPC server serves).
    """

    def __init__(self, archive: Archive) -> None:
        settings = archive.settings
        self.settings = settings
        try:
            self._socket = _listen(settings.host, settings.http_port)
        except OSError as exc:
            raise port_unavailable(
                "DICOMweb", settings.host, settings.http_port, "--http-port (-1 for none)", exc
            ) from None
        self.port: int = self._socket.getsockname()[1]
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        in_use = open_descriptors()
        cap = connection_cap(settings.http_max_connections, soft, in_use)
        if cap < settings.http_max_connections:
            log.warning(
                "HTTP serves at most %d connections at once, not %d: the process may open %d "
                "descriptors (%d are open), and files and gRPC need theirs; raise the limit "
                "(ulimit -n, systemd LimitNOFILE=) to serve more",
                cap,
                settings.http_max_connections,
                soft,
                in_use,
            )
        self.gate = ConnectionGate(cap, Tally())
        config = uvicorn.Config(
            create_app(archive),
            lifespan="off",
            log_config=None,
            # uvicorn's own start and stop lines repeat what ``serve`` logs; its errors remain.
            log_level="warning",
            access_log=False,
            server_header=False,
            ws="none",
            timeout_keep_alive=settings.http_keep_alive_s,
            timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None
        self._acceptor: Acceptor | None = None

    async def start(self) -> None:
        """Start serving on the bound socket; return once connections are accepted."""
        # No socket for uvicorn: it runs the application, the acceptor feeds it connections.
        self._task = asyncio.create_task(self._server.serve(sockets=[]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
            await asyncio.sleep(0.01)
        server, settings, gate = self._server, self.settings, self.gate

        def protocol() -> GatewayProtocol:
            return GatewayProtocol(
                server.config,
                server.server_state,
                server.lifespan.state,
                settings=settings,
                gate=gate,
            )

        self._acceptor = Acceptor(self._socket, protocol, gate)
        self._acceptor.start()

    async def stop(self) -> None:
        """Stop taking requests; in-flight ones finish within the configured grace."""
        if self._acceptor is not None:
            self._acceptor.stop()
        self._server.should_exit = True
        if self._task is not None:
            await self._task
        self.gate.tally.flush()
        self._socket.close()
