"""One owner per data folder: an exclusive lock held for as long as an archive is open.

The index and the files are kept consistent by one process (one index writer, start-up
recovery that removes what a crash left): a second server on the same folder would remove the
first one's uploads and commit beside it. ``flock`` on ``<data>/dicomrpc.lock`` enforces one
owner; the kernel releases it when the owner exits, however it exits, so a stale lock never
blocks a restart. The owner writes who it is into the file, so that the refusal names it.

Several processes serve one folder only as a group (``dicomrpc serve --processes N``): the
supervisor takes the lock and its processes inherit the locked descriptor (a ``flock`` belongs
to the open file, shared by every descriptor inherited from it), so the folder stays locked
for as long as any of them lives, and is free once all have exited.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from dicomrpc_server.errors import StartupError

LOCK_NAME = "dicomrpc.lock"


class DataFolderLock:
    """Hold the data folder's lock until :meth:`release` (or the process ends).

    Parameters
    ----------
    data_dir
        The data folder.
    holder
        What holds it, as people call it (``dicomrpc serve``, ``dicomrpc rebuild-index``).

    Raises
    ------
    StartupError
        ``DATA_FOLDER_IN_USE``, naming the process that holds the folder.
    """

    def __init__(self, data_dir: Path, holder: str) -> None:
        self.path = data_dir / LOCK_NAME
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _describe(fd)
            os.close(fd)
            raise StartupError(
                "DATA_FOLDER_IN_USE",
                f"data folder {data_dir} is in use by {owner}; stop it or choose another --data",
            ) from None
        except BaseException:
            os.close(fd)
            raise
        record = {
            "holder": holder,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd: int | None = fd
        # Shared with the other processes of a group: closing leaves it to them.
        self._shared = False

    @classmethod
    def inherited(cls, data_dir: Path, fd: int) -> DataFolderLock:
        """The lock of a group's supervisor, through the descriptor this process inherited.

        Raises
        ------
        StartupError
            ``DATA_FOLDER_NOT_LOCKED`` when the descriptor is not that of the folder's lock.
        """
        lock = cls.__new__(cls)
        lock.path = data_dir / LOCK_NAME
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock.path))
        except OSError:
            same = False
        if not same:
            raise StartupError(
                "DATA_FOLDER_NOT_LOCKED",
                f"descriptor {fd} is not the lock of data folder {data_dir}",
            )
        lock._fd = fd
        lock._shared = True
        return lock

    def fileno(self) -> int:
        """The locked descriptor, for the processes of a group to inherit."""
        if self._fd is None:
            raise ValueError("the lock is released")
        return self._fd

    def release(self) -> None:
        """Let another process open the folder (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            if not self._shared:
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _describe(fd: int) -> str:
    """Who holds the lock, as its holder wrote it (it may not have written yet)."""
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        record = {}
    if not isinstance(record, dict) or "pid" not in record:
        return "another process"
    return (
        f"{record.get('holder', 'another process')} pid {record['pid']} on host "
        f"{record.get('host', '?')} (since {record.get('since', '?')})"
    )
