"""Named locks shared by the processes serving one data folder, released when a holder dies.

Each name is one byte of a lock file, at an offset derived from the name (a 62-bit hash: two
names meet on one byte with odds far below any other failure), locked with ``fcntl`` record
locks. The kernel drops a process's locks when it exits, however it exits, so a lock is never
left behind by a crash, and taking one costs a system call, not a write to the index.

Record locks belong to a process, not to a thread or a file descriptor: within one process they
never conflict, so callers keep their own in-process bookkeeping (the store's in-flight table,
the re-indexer's tasks) and use these locks only to exclude the other processes. Closing any
descriptor of the file drops every lock the process holds on it, so the file is opened once per
:class:`KeyLocks` and closed only by :meth:`KeyLocks.close`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from pathlib import Path
from typing import Protocol

# Offsets stay below 2**62: off_t is signed 64-bit, and the range never reaches its end.
_OFFSET_BITS = 62


def _offset(name: str) -> int:
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - _OFFSET_BITS)


class NamedLocks(Protocol):
    """Exclusive, non-blocking locks on names among the holders of one archive.

    :class:`KeyLocks` for the processes of one data folder; with a PostgreSQL index, whose
    nodes share no file, :class:`~dicomrpc_server.storage.postgres.locks.AdvisoryLocks`.
    """

    def acquire(self, name: str) -> bool:
        """Lock ``name`` unless another holder has it; whether this process holds it."""

    def release(self, name: str) -> None:
        """Give back one take of ``name``."""


class KeyLocks:
    """Exclusive, non-blocking locks on names, across processes.

    Parameters
    ----------
    path
        The lock file (created when missing; it stays empty: record locks need no data).
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        # How many holders in this process each name has: the byte is unlocked with the last.
        self._held: dict[str, int] = {}
        self._mutex = threading.Lock()

    def acquire(self, name: str) -> bool:
        """Lock ``name`` unless another process holds it; return whether this process holds it.

        Within this process a name can be taken again (each take needs its :meth:`release`).
        """
        with self._mutex:
            if self._fd is None:
                raise RuntimeError("the locks are closed")
            if name in self._held:
                self._held[name] += 1
                return True
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _offset(name))
            except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: held elsewhere
                return False
            self._held[name] = 1
            return True

    def release(self, name: str) -> None:
        """Give back one take of ``name`` (the lock goes with the last)."""
        with self._mutex:
            count = self._held.get(name, 0)
            if count > 1:
                self._held[name] = count - 1
                return
            if count == 1:
                del self._held[name]
                if self._fd is not None:
                    fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, _offset(name))

    def held(self, name: str) -> bool:
        """Whether this process holds ``name``."""
        with self._mutex:
            return name in self._held

    def close(self) -> None:
        """Drop every lock of this process on the file (idempotent)."""
        with self._mutex:
            fd, self._fd = self._fd, None
            self._held.clear()
        if fd is not None:
            os.close(fd)
