"""``dicomrpc serve``: open the archive and serve it until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from dicomrpc_server.announce import announce
from dicomrpc_server.archive import Archive, GroupMember
from dicomrpc_server.config import OPTIONS, Settings, config_file
from dicomrpc_server.dicomweb.connections import raise_descriptor_limit
from dicomrpc_server.dicomweb.server import HttpServer
from dicomrpc_server.dimse.server import DimseServer
from dicomrpc_server.errors import StartupError
from dicomrpc_server.grpc.server import GrpcServer
from dicomrpc_server.logs import log_to_stderr
from dicomrpc_server.processes import serve_group

log = logging.getLogger("dicomrpc.server")

SWITCH_INTERVAL_S = 0.001


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the config file, then the environment, then the command line.

    The config file is ``--config`` or else ``DICOMRPC_CONFIG``; each flag is found by the
    name :data:`~dicomrpc_server.config.OPTIONS` gives it, a repeated flag's list made a tuple.
    """
    overrides: dict[str, object] = {}
    for option in OPTIONS:
        if option.dest is None:
            continue
        value = getattr(args, option.dest, None)
        overrides[option.name] = tuple(value) if isinstance(value, list) else value
    return Settings.load(config_file(getattr(args, "config", None)), **overrides)


async def serve(
    settings: Settings, member: GroupMember | None = None, ready_fd: int | None = None
) -> None:
    """Serve until a signal asks to stop, then shut down gracefully.

    With ``settings.processes`` above 1 this process supervises that many server processes
    (:mod:`.processes`), each of which runs this function as a group ``member``: it then
    writes to ``ready_fd`` once it serves instead of printing the start-up lines.

    Raises
    ------
    StartupError
        When the archive cannot be opened, the access settings are refused or a port cannot
        be bound (nothing is served).
    """
    if settings.processes > 1 and member is None:
        await serve_group(settings)
        return
    # Connections and files share the process's descriptors: take all the system allows
    # (the HTTP connection cap is then set within them, see dicomweb/connections.py).
    raise_descriptor_limit()
    # While a thread builds a large response (metadata JSON, a search page), every hand-off
    # to the event loop, the index writer or a file read waits for the interpreter: up to the
    # switch interval each. 1 ms instead of 5 ms halves the median time of a small store or
    # search meanwhile (bench/RESULTS.md, Isolation), for a few per cent of the large one's CPU.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        archive = Archive(settings, member=member)
    except ValueError as exc:  # a setting that cannot be used, named in the message
        raise SystemExit(f"dicomrpc: {exc}") from None
    # Installed before the start-up lines are printed: a script may signal as soon as it reads
    # them.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Rotation tools send SIGHUP once they have moved the audit log away.
    loop.add_signal_handler(signal.SIGHUP, archive.auditor.reopen)
    grpc_server: GrpcServer | None = None
    dimse: DimseServer | None = None
    try:
        grpc_server = GrpcServer(archive)
        http = HttpServer(archive) if settings.http_port >= 0 else None
        if settings.dimse_port >= 0:
            dimse = DimseServer(archive)
            await dimse.start()
    except BaseException:
        if grpc_server is not None:
            await grpc_server.server.stop(None)
        archive.close()
        raise
    server = grpc_server
    await server.start()
    if http is not None:
        await http.start()
    counts = archive.index.counts()
    if ready_fd is not None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
        log.info("serving gRPC on port %d", server.port)
        await stop.wait()
        await _shut_down(settings, archive, server, http, dimse)
        return
    announce(
        settings,
        server.port,
        http.port if http is not None else -1,
        dimse.port if dimse is not None else -1,
    )
    log.info(
        "data folder %s holds %d studies, %d series, %d instances",
        settings.data_dir,
        counts.studies,
        counts.series,
        counts.instances,
    )
    await stop.wait()
    await _shut_down(settings, archive, server, http, dimse)


async def _shut_down(
    settings: Settings,
    archive: Archive,
    server: GrpcServer,
    http: HttpServer | None,
    dimse: DimseServer | None,
) -> None:
    log.info("shutting down: finishing in-flight calls (up to %.0f s)", settings.shutdown_grace_s)
    stopping = [server.stop(settings.shutdown_grace_s)]
    if http is not None:
        stopping.append(http.stop())
    if dimse is not None:
        stopping.append(dimse.stop(settings.shutdown_grace_s))
    await asyncio.gather(*stopping)
    archive.close()
    log.info("stopped")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``dicomrpc serve``."""
    try:
        settings = settings_from_args(args)
    except ValueError as exc:  # a setting out of range, a variable that is not a number, a key
        raise SystemExit(f"dicomrpc: {exc}") from None
    log_to_stderr(settings.log_level)
    try:
        asyncio.run(serve(settings))
    except StartupError as exc:
        print(f"dicomrpc: {exc}", file=sys.stderr)
        return 1
    return 0
