"""The HTTP server: uvicorn serving the gateway in the gRPC server's process and event loop.

uvicorn runs the application, but connections are accepted by :class:`.connections.Acceptor`
(uvicorn is handed no socket of its own) and spoken to by :class:`.protocol.GatewayProtocol`:
together they hold the connection cap, the head limits and the timeouts the README's Limits
lists, with uvicorn's own idle keep-alive timeout.

It serves TLS (and mutual TLS) when the settings give certificates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import ssl
from collections.abc import Iterator, Sequence
from typing import Any

import uvicorn
from starlette.middleware import Middleware

from dicomrpc_server.access.certificates import subject_of
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


def _listen(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket whose protocol is set, so that asyncio turns Nagle off.

    asyncio sets ``TCP_NODELAY`` only on sockets whose ``proto`` is ``IPPROTO_TCP``;
    ``socket.create_server`` leaves it 0, and its connections would then hold a response's last
    small segment until the client's delayed ACK (40 ms per response on Linux). With
    ``reuse_port`` (the processes of a group) the kernel spreads connections between them.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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


class _TlsProtocol(GatewayProtocol):
    """The gateway's protocol, ending idle TLS connections at once when the server stops.

    Closing a TLS connection sends a close_notify and waits for the client's (asyncio waits
    30 s): a client that keeps an idle connection open without reading it, as HTTP clients
    with a connection pool do, held the server's stop that long. An idle connection has
    nothing in flight, so it is aborted instead; a request being served still finishes.
    """

    def shutdown(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self.transport.abort()
        else:
            super().shutdown()


class _ClientCertificateProtocol(_TlsProtocol):
    """The TLS protocol, telling the application who the client certificate names.

    uvicorn verifies the certificate (mutual TLS) but does not pass it on; this adds the ASGI
    TLS extension's ``client_cert_name`` (the RFC 4514 subject) to every request's scope.
    """

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        certificate = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        self._tls: dict[object, object] = {
            "client_cert_name": subject_of(certificate) if certificate else None
        }

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {**self.scope.get("extensions", {}), "tls": self._tls}


def _tls_options(archive: Archive) -> dict[str, Any]:
    """The uvicorn TLS options for the archive's certificates (none without TLS).

    uvicorn builds the TLS context from them (``config.ssl``); the acceptor wraps each
    connection in it.
    """
    tls = archive.tls
    if tls is None:
        return {}
    options: dict[str, Any] = {
        "ssl_certfile": str(tls.cert_path),
        "ssl_keyfile": str(tls.key_path),
    }
    if tls.client_ca_path is not None:
        options.update(ssl_ca_certs=str(tls.client_ca_path), ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


def _protocol_class(archive: Archive) -> type[GatewayProtocol]:
    """The protocol of each connection.

    With TLS, one that ends idle connections at a stop; with client certificates, one that
    also names the certificate's subject.
    """
    if archive.tls is None:
        return GatewayProtocol
    return _TlsProtocol if archive.tls.client_ca_path is None else _ClientCertificateProtocol


class HttpServer:
    """The archive's DICOMweb endpoint.

    Parameters
    ----------
    archive
        The opened archive (the one the gRPC server serves).
    middleware
        Middleware run inside the audit hook and the access log (an authentication check,
        say): a request one of them refuses is still logged and audited.
    """

    def __init__(self, archive: Archive, middleware: Sequence[Middleware] = ()) -> None:
        settings = archive.settings
        self.settings = settings
        try:
            self._socket = _listen(settings.host, settings.http_port, settings.reuse_port)
        except OSError as exc:
            raise port_unavailable(
                "DICOMweb", settings.host, settings.http_port, "--http-port (-1 for none)", exc
            ) from None
        self.port: int = self._socket.getsockname()[1]
        self.scheme = "https" if archive.tls is not None else "http"
        self._grants = archive.grants
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
        self._protocol = _protocol_class(archive)
        self.app = create_app(archive, middleware)
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_config=None,
            # uvicorn's own start and stop lines repeat what ``serve`` logs; its errors remain.
            log_level="warning",
            access_log=False,
            server_header=False,
            ws="none",
            timeout_keep_alive=settings.http_keep_alive_s,
            timeout_graceful_shutdown=int(settings.shutdown_grace_s),
            **_tls_options(archive),
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
        server, settings, gate, kind = self._server, self.settings, self.gate, self._protocol

        def protocol() -> GatewayProtocol:
            return kind(
                server.config,
                server.server_state,
                server.lifespan.state,
                settings=settings,
                gate=gate,
            )

        self._acceptor = Acceptor(
            self._socket,
            protocol,
            gate,
            tls=server.config.ssl,
            handshake_timeout_s=settings.http_header_timeout_s,
        )
        self._acceptor.start()
        # Retrieve grants name the gateway from now on (see access/grants.py).
        self._grants.offer(self.scheme, self.port)

    async def stop(self) -> None:
        """Stop taking requests; in-flight ones finish within the configured grace."""
        self._grants.withdraw()
        if self._acceptor is not None:
            self._acceptor.stop()
        self.app.state.stopping.set()
        self._server.should_exit = True
        if self._task is not None:
            await self._task
        self.gate.tally.flush()
        self._socket.close()
