"""HTTP connections: a cap kept below the descriptor limit, and the accept loop that keeps it.

Every connection holds a descriptor, and so does every file a request opens. A process out of
descriptors can neither open an instance file nor accept a gRPC call, and asyncio's own accept
loop, meeting ``EMFILE``, logs every failed accept of its batch with a traceback (megabytes a
second). So the gateway accepts its connections itself:

- at start-up the soft ``RLIMIT_NOFILE`` is raised to the hard limit, and the connection cap
  lowered, if it must be, to a third of the descriptors then free: each connection may hold an
  open file as well, and the last third stays for gRPC, its files and the index;
- at most ``cap`` connections are served at once. When a connection arrives at the cap, the
  connection idle the longest (none of a request received, before its first request or
  between two) is closed to make room, as an idle keep-alive connection would be after its
  timeout; only when every connection is inside a request is the new one answered 503 and
  closed (by the protocol, :mod:`.protocol`), up to :data:`REFUSING` at a time;
- beyond that, accepting pauses until a connection closes: new connections wait in the kernel's
  backlog, where they hold no descriptor;
- an accept that fails for want of descriptors all the same pauses accepting for a second.

Each kind of event is logged when it first happens, then at most once a minute as a count
(:class:`Tally`), so a crowd of clients never floods the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import socket
import ssl
import time
import typing
from collections.abc import Callable

log = logging.getLogger("dicomrpc.http")

# Connections accepted beyond the cap, to be answered 503 and closed, before accepting pauses.
REFUSING = 16
# Connections accepted per wake-up of the listening socket, so other work interleaves.
ACCEPT_BATCH = 16
# How long accepting pauses after an accept failed for want of descriptors or memory.
ACCEPT_RETRY_S = 1.0
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def raise_descriptor_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return the soft limit now in force.

    The soft limit is often 1024 while the hard one is far higher: the hard one is what the
    administrator allows, the soft one only a default.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):  # refused (a sandbox): keep the soft one
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


def open_descriptors() -> int:
    """How many descriptors the process has open (0 where ``/proc`` cannot tell)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def connection_cap(requested: int, soft_limit: int, in_use: int) -> int:
    """The connections to serve at once: ``requested``, or less if the descriptors are short.

    HTTP gets a third of the descriptors free (``soft_limit - in_use``), :data:`REFUSING` of
    them for connections being refused; the rest is left for the files requests open, gRPC and
    the index. At least one connection is always served.
    """
    share = (soft_limit - in_use) // 3 - REFUSING
    return max(1, min(requested, share))


class Tally:
    """Counts of connection events, logged when first seen, then at most once per interval.

    An event is logged at once when no line was written for ``interval_s``; otherwise it is
    counted and the counts are logged together when the interval ends.

    Parameters
    ----------
    interval_s
        The shortest time between two log lines.
    """

    def __init__(self, interval_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self.totals: dict[str, int] = {}
        self._counts: dict[str, int] = {}
        self._last: float | None = None
        self._due: asyncio.TimerHandle | None = None

    def note(self, event: str) -> None:
        """Count one ``event`` (a short description, such as ``503 (over the cap)``)."""
        self._counts[event] = self._counts.get(event, 0) + 1
        self.totals[event] = self.totals.get(event, 0) + 1
        if self._due is not None:
            return
        wait = 0.0 if self._last is None else self._last + self.interval_s - time.monotonic()
        if wait <= 0:
            self.flush()
        else:
            self._due = asyncio.get_running_loop().call_later(wait, self.flush)

    def flush(self) -> None:
        """Log the counts gathered since the last line, if any."""
        if self._due is not None:
            self._due.cancel()
            self._due = None
        if not self._counts:
            return
        now = time.monotonic()
        since = "" if self._last is None else f" in the last {now - self._last:.0f} s"
        summary = "; ".join(f"{event}: {count}" for event, count in self._counts.items())
        log.warning("HTTP connections refused or cut%s: %s", since, summary)
        self._counts.clear()
        self._last = now


class Idle(typing.Protocol):
    """A served connection between requests, which the gate may close to make room."""

    def evict(self) -> None:
        """Close the connection; it no longer holds a place among those served."""


class ConnectionGate:
    """The count of open HTTP sockets and of connections served, shared by accept and protocol.

    Parameters
    ----------
    cap
        The most connections served at once.
    tally
        Where refusals are counted for the log.
    """

    def __init__(self, cap: int, tally: Tally) -> None:
        self.cap = cap
        self.tally = tally
        self.sockets = 0  # accepted and not yet closed: served, refused, or being set up
        self.served = 0
        self.on_release: Callable[[], None] = lambda: None
        self._idle: dict[Idle, None] = {}  # served connections between requests, oldest first

    @property
    def idle_count(self) -> int:
        """How many served connections wait between requests."""
        return len(self._idle)

    @property
    def full(self) -> bool:
        """Whether no further socket may be accepted now."""
        return self.sockets >= self.cap + REFUSING

    def accepted(self) -> None:
        """A socket was accepted (its protocol calls :meth:`admit` when it is set up)."""
        self.sockets += 1

    def admit(self) -> bool:
        """Whether a new connection is served (else it is answered 503 and closed).

        At the cap, the connection idle the longest is closed to make room, if there is one.
        """
        if self.served >= self.cap and self._idle:
            oldest = next(iter(self._idle))
            del self._idle[oldest]
            self.served -= 1
            self.tally.note("idle connection closed for a new one")
            oldest.evict()
        if self.served >= self.cap:
            return False
        self.served += 1
        return True

    def idle(self, connection: Idle) -> None:
        """A served connection waits for a request: it may be closed to make room."""
        self._idle[connection] = None

    def busy(self, connection: Idle) -> None:
        """A served connection receives a request, or is closing: it keeps its place."""
        self._idle.pop(connection, None)

    def release(self, served: bool) -> None:
        """A connection closed (``served``: it held a place among those served)."""
        self.sockets -= 1
        if served:
            self.served -= 1
        self.on_release()


class Acceptor:
    """Accepts connections on a listening socket while the gate has room for them.

    Parameters
    ----------
    sock
        The listening socket (non-blocking mode is set here).
    protocol_factory
        Builds the protocol of each connection. Once told of its connection it sets its
        ``connected`` attribute and calls ``gate.release`` when the connection is lost.
    gate
        The counts that decide whether to accept.
    tls
        The TLS context each connection is wrapped in, or ``None`` for plaintext.
    handshake_timeout_s
        How long a TLS handshake may take (a client that starts one and stalls is cut).
    """

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        gate: ConnectionGate,
        *,
        tls: ssl.SSLContext | None = None,
        handshake_timeout_s: float = 60.0,
    ) -> None:
        self._sock = sock
        self._factory = protocol_factory
        self._gate = gate
        self._tls = tls
        self._handshake_timeout_s = handshake_timeout_s
        self._loop = asyncio.get_running_loop()
        self._reading = False
        self._stopped = False
        self._retry: asyncio.TimerHandle | None = None
        self._setups: set[asyncio.Task[None]] = set()
        gate.on_release = self._resume

    def start(self) -> None:
        """Start accepting."""
        self._sock.setblocking(False)
        self._resume()

    def stop(self) -> None:
        """Stop accepting (connections already accepted go on)."""
        self._stopped = True
        self._pause()
        if self._retry is not None:
            self._retry.cancel()

    def _pause(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False

    def _resume(self) -> None:
        if not self._reading and not self._stopped and not self._gate.full and not self._retry:
            self._loop.add_reader(self._sock.fileno(), self._accept)
            self._reading = True

    def _retry_later(self) -> None:
        def retry() -> None:
            self._retry = None
            self._resume()

        self._pause()
        self._retry = self._loop.call_later(ACCEPT_RETRY_S, retry)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            if self._gate.full:
                self._pause()  # resumed by the next release
                return
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                self._gate.tally.note(f"accept failed ({errno.errorcode[exc.errno]})")
                self._retry_later()
                return
            conn.setblocking(False)
            self._gate.accepted()
            task = self._loop.create_task(self._set_up(conn))
            self._setups.add(task)
            task.add_done_callback(self._setups.discard)

    async def _set_up(self, conn: socket.socket) -> None:
        made: list[asyncio.Protocol] = []

        def factory() -> asyncio.Protocol:
            made.append(self._factory())
            return made[0]

        try:
            if self._tls is None:
                await self._loop.connect_accepted_socket(factory, conn)
            else:
                await self._loop.connect_accepted_socket(
                    factory,
                    conn,
                    ssl=self._tls,
                    ssl_handshake_timeout=self._handshake_timeout_s,
                )
        except Exception as exc:  # memory ran short, say
            log.debug("an accepted HTTP connection could not be set up: %s", exc)
            # A protocol told of its connection releases the count when it is lost; if none
            # was, the socket is this method's to close and count.
            if not (made and getattr(made[0], "connected", False)):
                conn.close()
                self._gate.release(served=False)
