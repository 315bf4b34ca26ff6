"""``dicomrpc serve --processes N``: several server processes on one data folder and its ports.

One Python process uses about one core; a group of them serves the archive from several.

The process that runs ``dicomrpc serve`` becomes the group's supervisor:

1. It locks the data folder (:mod:`~dicomrpc_server.storage.folder_lock`) and runs the start-up
   checks and crash recovery once, while no process of the group runs (only then can every
   upload left in the folder be proved garbage).
2. It reserves the ports (gRPC, DICOMweb, DIMSE): each is first bound as a single server binds
   it, so that a port another program uses is refused, then held by a socket with
   ``SO_REUSEPORT`` that never listens (a port of 0 is chosen here, once, for every process).
3. It starts N processes, each inheriting the folder's locked descriptor, which bind the
   reserved ports with ``SO_REUSEPORT``: the kernel spreads new connections between them. Each
   opens the archive as a group member (:class:`~dicomrpc_server.archive.GroupMember`): the
   index is shared through LMDB, wake-ups cross processes, stores of one instance exclude each
   other through a lock, and each keeps its uploads in a folder of its own.
4. It prints the start-up lines once every process serves, restarts a process that exits
   (a process that starts settles what the one that exited left), forwards SIGHUP (audit log
   rotation) and stops them all on SIGINT or SIGTERM. The processes run in a session of their
   own, so a terminal's Ctrl-C reaches the supervisor only, and each is told to stop when the
   supervisor exits, however it exits; the folder stays locked until the last one has.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from dicomrpc_server.access.setup import check as check_access
from dicomrpc_server.announce import announce
from dicomrpc_server.archive import GroupMember, recover_folder
from dicomrpc_server.config import Settings
from dicomrpc_server.errors import StartupError
from dicomrpc_server.logs import log_to_stderr
from dicomrpc_server.ports import reserve_port
from dicomrpc_server.storage.folder_lock import DataFolderLock

log = logging.getLogger("dicomrpc.server")

# A process that exits this many times within RESTART_WINDOW_S is not restarted again: the
# group stops (a setting or a disk that makes every process fail would otherwise loop).
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
RESTART_DELAY_S = 1.0
# Time a process may take to stop beyond the shutdown grace before it is killed.
STOP_MARGIN_S = 15.0
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class MemberSpec:
    """What a group process is given on its standard input (pickled).

    Attributes
    ----------
    settings
        The settings, with the reserved ports and ``reuse_port`` set.
    lock_fd
        The data folder's locked descriptor, inherited.
    ready_fd
        Where the process writes once it serves (a pipe the supervisor reads).
    supervisor
        The supervisor's process id: a process whose parent is another has lost it.
    log_level
        The supervisor's logging level.
    """

    settings: Settings
    lock_fd: int
    ready_fd: int
    supervisor: int
    log_level: int


class Member:
    """One running process of the group."""

    def __init__(self, slot: int, process: subprocess.Popen[bytes], ready: int) -> None:
        self.slot = slot
        self.process = process
        self.ready_fd = ready

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid


class Group:
    """Starts, watches, restarts and stops the processes of a group.

    Parameters
    ----------
    settings
        The processes' settings (reserved ports, ``reuse_port``).
    lock
        The data folder's lock, whose descriptor the processes inherit.
    count
        How many processes.
    """

    def __init__(self, settings: Settings, lock: DataFolderLock, count: int) -> None:
        self.settings = settings
        self.lock = lock
        self.count = count
        self.members: dict[int, Member] = {}
        # Each process has a thread waiting for its exit and, while it starts, one reading
        # its readiness: a pool of their own, so that they never wait for one another.
        self._threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=2 * count + 2, thread_name_prefix="group"
        )
        self._restarts: list[float] = []
        self.failed: str = ""

    def spawn(self, slot: int) -> Member:
        """Start the process of ``slot``.

        Call from the event loop's thread: a process is told to stop when the thread that
        started it ends.
        """
        read_fd, write_fd = os.pipe()
        lock_fd = self.lock.fileno()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "dicomrpc_server.processes"],
                stdin=subprocess.PIPE,
                stdout=sys.stderr.fileno(),
                pass_fds=(lock_fd, write_fd),
                start_new_session=True,
            )
        finally:
            os.close(write_fd)
        spec = MemberSpec(
            self.settings, lock_fd, write_fd, os.getpid(), logging.getLogger().getEffectiveLevel()
        )
        assert process.stdin is not None
        try:
            process.stdin.write(pickle.dumps(spec))
            process.stdin.close()
        except BrokenPipeError:  # it died at once; its exit is noticed as any other
            pass
        member = Member(slot, process, read_fd)
        self.members[slot] = member
        return member

    async def wait_ready(self, member: Member) -> bool:
        """Whether the process came to serve (False: it exited first)."""
        loop = asyncio.get_running_loop()
        try:
            data = await loop.run_in_executor(self._threads, os.read, member.ready_fd, 64)
        finally:
            os.close(member.ready_fd)
        return bool(data)

    async def start(self) -> None:
        """Start every process and wait until each serves.

        Raises
        ------
        StartupError
            ``PROCESS_FAILED`` when one exits before serving (it said why on standard
            error); the others are stopped.
        """
        members = [self.spawn(slot) for slot in range(self.count)]
        ready = await asyncio.gather(*(self.wait_ready(m) for m in members))
        if not all(ready):
            await self.stop()
            codes = [m.process.wait() for m, ok in zip(members, ready, strict=True) if not ok]
            raise StartupError(
                "PROCESS_FAILED",
                f"{len(codes)} of {self.count} server processes exited before serving "
                f"(exit codes {', '.join(map(str, codes))}); their errors are above",
            )

    async def watch(self, stop: asyncio.Event) -> None:
        """Restart each process that exits until ``stop`` is set, or until restarts fail."""
        loop = asyncio.get_running_loop()
        waits: dict[int, asyncio.Future[Any]] = {
            slot: loop.run_in_executor(self._threads, m.process.wait)
            for slot, m in self.members.items()
        }
        stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        try:
            while True:
                done, _ = await asyncio.wait(
                    [stopped, *waits.values()], return_when=asyncio.FIRST_COMPLETED
                )
                if stopped in done:
                    return
                for slot, waiting in list(waits.items()):
                    if waiting not in done:
                        continue
                    member = self.members[slot]
                    code = waiting.result()
                    how = f"signal {-code}" if code < 0 else f"exit code {code}"
                    if not self._may_restart():
                        self.failed = (
                            f"server process {member.pid} ended ({how}); processes ended "
                            f"{MAX_RESTARTS} times within {RESTART_WINDOW_S:.0f} s, so the "
                            "group stops"
                        )
                        log.error("%s", self.failed)
                        return
                    log.warning(
                        "server process %d ended (%s); starting another in its place",
                        member.pid,
                        how,
                    )
                    await asyncio.sleep(RESTART_DELAY_S)
                    if stop.is_set():
                        return
                    replacement = self.spawn(slot)
                    waits[slot] = loop.run_in_executor(self._threads, replacement.process.wait)
                    if await self.wait_ready(replacement):
                        log.info("server process %d serves", replacement.pid)
        finally:
            stopped.cancel()

    def _may_restart(self) -> bool:
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW_S]
        self._restarts.append(now)
        return len(self._restarts) < MAX_RESTARTS

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every running process."""
        for member in self.members.values():
            if member.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    member.process.send_signal(sig)

    async def stop(self) -> None:
        """Ask every process to stop (SIGTERM), then kill those that outlast the grace."""
        self.signal(signal.SIGTERM)
        deadline = self.settings.shutdown_grace_s + STOP_MARGIN_S
        loop = asyncio.get_running_loop()
        for member in self.members.values():
            try:
                await asyncio.wait_for(
                    loop.run_in_executor(self._threads, member.process.wait), max(deadline, 1.0)
                )
            except TimeoutError:
                log.error("server process %d did not stop in time: killed", member.pid)
                member.process.kill()
                await loop.run_in_executor(self._threads, member.process.wait)
        self._threads.shutdown(wait=False)


async def serve_group(settings: Settings) -> None:
    """Serve the archive from ``settings.processes`` processes until SIGINT or SIGTERM.

    Raises
    ------
    StartupError
        When the folder cannot be opened or recovered, a port cannot be reserved, or a
        process fails before it serves.
    """
    check_access(settings)  # refused before the folder is touched, as one process does
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    lock = DataFolderLock(settings.data_dir, "dicomrpc serve")
    placeholders = []
    try:
        await asyncio.get_running_loop().run_in_executor(None, recover_folder, settings)
        grpc = reserve_port("gRPC", settings.host, settings.grpc_port, "--grpc-port")
        placeholders.append(grpc)
        ports = {"grpc_port": grpc.getsockname()[1]}
        if settings.http_port >= 0:
            http = reserve_port(
                "DICOMweb", settings.host, settings.http_port, "--http-port (-1 for none)"
            )
            placeholders.append(http)
            ports["http_port"] = http.getsockname()[1]
        if settings.dimse_port >= 0:
            dimse = reserve_port("DIMSE", settings.host, settings.dimse_port, "--dimse-port")
            placeholders.append(dimse)
            ports["dimse_port"] = dimse.getsockname()[1]
        member_settings = dataclasses.replace(settings, processes=1, reuse_port=True, **ports)
        group = Group(member_settings, lock, settings.processes)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, group.signal, signal.SIGHUP)
        await group.start()
        announce(
            settings,
            ports["grpc_port"],
            ports.get("http_port", -1),
            ports.get("dimse_port", -1),
        )
        log.info(
            "%d server processes (%s) on data folder %s",
            settings.processes,
            ", ".join(str(m.pid) for m in group.members.values()),
            settings.data_dir,
        )
        await group.watch(stop)
        log.info("shutting down: stopping %d server processes", len(group.members))
        await group.stop()
        if group.failed:
            raise StartupError("PROCESS_FAILED", group.failed)
        log.info("stopped")
    finally:
        for sock in placeholders:
            sock.close()
        lock.release()


def _follow_supervisor(supervisor: int) -> None:
    """Be sent SIGTERM when the supervisor exits; exit now if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:
        raise SystemExit(1)


def member_main() -> int:
    """A group process: read its spec, then serve as :func:`~dicomrpc_server.main.serve`."""
    from dicomrpc_server.main import serve  # the entry module imports this one

    spec: MemberSpec = pickle.load(sys.stdin.buffer)
    _follow_supervisor(spec.supervisor)
    log_to_stderr(spec.log_level, process=True)
    try:
        asyncio.run(serve(spec.settings, GroupMember(spec.lock_fd), spec.ready_fd))
    except StartupError as exc:
        print(f"dicomrpc: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(member_main())
