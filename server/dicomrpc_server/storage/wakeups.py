"""Commit wake-ups between the processes serving one data folder.

Followers of the change feed and workitem subscribers wait for commits. In one process the
index writer tells them after each commit; with several processes on one index, a commit in one
must wake the followers in the others, or they would notice it only at their next poll (the
change feed) or never (workitem events, which are pushed).

Each process owns a named pipe (FIFO) in ``run/``, named by its process id, and keeps its read
end open for as long as it lives. After each commit the writer writes one byte, without
blocking, to every other process's pipe; a pipe already holding unread bytes has a wake-up
pending, so a full pipe is not an error. A thread in each process reads its pipe and calls the
same listeners a local commit calls. A wake-up carries nothing: listeners re-read the log from
where they are, so one wake-up for many commits loses nothing.

A pipe is created under a temporary name and renamed into place only once its read end is
open: opening a listed pipe for writing fails with ``ENXIO`` only when its owner has exited,
which proves it garbage, and it is then removed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".wake"
# The folder is listed again when its modification time changes, and at least this often: a
# time stamp can stay the same across changes made within one tick of the kernel's clock.
RELIST_S = 1.0
# The listener is also called this often without a wake-up: a safety net for a wake-up lost to
# a process that started between another one's listing and its commit, never the path.
SAFETY_S = 1.0
_STOP = b"\x00"
_WAKE = b"\x01"


class Wakeups:
    """A process's own wake-up pipe, and the sending side to every other process's.

    Parameters
    ----------
    folder
        The folder the pipes live in (created when missing).
    listener
        Called on the wake-up thread when another process has committed; it must not block.
    """

    def __init__(self, folder: Path, listener: Callable[[], None]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._listener = listener
        self.name = f"{os.getpid()}{SUFFIX}"
        temporary = folder / f".{self.name}.{threading.get_ident()}"
        temporary.unlink(missing_ok=True)
        os.mkfifo(temporary, 0o600)
        # Both ends are opened here: the write end keeps reads from ever seeing end of file,
        # and lets close() wake the reading thread.
        self._read_fd = os.open(temporary, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self._own_fd = os.open(temporary, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.set_blocking(self._read_fd, True)
        os.rename(temporary, folder / self.name)
        self._peers: dict[str, int] = {}
        self._listed = -1
        self._listed_at = 0.0
        self._send_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._read, name="wakeups", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """Wake every other process (called after each commit; never blocks)."""
        with self._send_lock:
            if self._closed:
                return
            self._refresh()
            for name, fd in list(self._peers.items()):
                try:
                    os.write(fd, _WAKE)
                except BlockingIOError:
                    pass  # a wake-up is pending there already
                except OSError:  # its reader is gone (EPIPE): it has exited
                    os.close(fd)
                    del self._peers[name]

    def _refresh(self) -> None:
        """Open the pipes of processes started since the last listing (when the folder changed)."""
        try:
            stamp = os.stat(self.folder).st_mtime_ns
        except FileNotFoundError:
            return
        now = time.monotonic()
        if stamp == self._listed and now - self._listed_at < RELIST_S:
            return
        self._listed, self._listed_at = stamp, now
        present: set[str] = set()
        for entry in os.scandir(self.folder):
            name = entry.name
            if not name.endswith(SUFFIX) or name.startswith(".") or name == self.name:
                continue
            present.add(name)
            if name in self._peers:
                continue
            try:
                self._peers[name] = os.open(entry.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # nobody reads it: its owner has exited
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                elif exc.errno != errno.ENOENT:
                    log.warning("cannot open the wake-up pipe %s: %s", entry.path, exc)
        for name in set(self._peers) - present:
            os.close(self._peers.pop(name))

    def _read(self) -> None:
        poller = select.poll()
        poller.register(self._read_fd, select.POLLIN)
        while True:
            if poller.poll(SAFETY_S * 1000):
                try:
                    data = os.read(self._read_fd, 4096)
                except OSError:
                    return
                if not data or _STOP in data:
                    return
            try:
                self._listener()
            except Exception:  # a listener's failure must not end the wake-ups
                log.exception("a wake-up listener failed")

    def close(self) -> None:
        """Stop hearing and sending wake-ups, and remove this process's pipe."""
        with self._send_lock:
            if self._closed:
                return
            self._closed = True
            for fd in self._peers.values():
                os.close(fd)
            self._peers.clear()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.folder / self.name)
        os.set_blocking(self._own_fd, True)
        os.write(self._own_fd, _STOP)
        self._thread.join(10)
        os.close(self._own_fd)
        os.close(self._read_fd)
