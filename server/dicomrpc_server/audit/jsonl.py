"""The audit trail as JSON lines (``--audit-log FILE``): one object per record, append-only.

Records are written a batch at a time with one ``write`` on a descriptor opened ``O_APPEND``, so
lines are never interleaved or torn by another writer, and nothing waits in a user-space buffer
once a batch is written. The file is reopened when a rotation tool asks (SIGHUP, through
:meth:`JsonLinesOutput.reopen`) or has moved it away (its path no longer names the open file),
so that ``logrotate`` works with or without ``copytruncate``.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from dicomrpc_server.audit.records import AuditRecord


class JsonLinesOutput:
    """Appends records to a file as JSON lines.

    Parameters
    ----------
    path
        The file; created (with its folder) if missing, mode 0600: it names patients' studies.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = f"audit log {path}"
        self._fd = -1
        self._identity: tuple[int, int] = (0, 0)
        self._pending = bytearray()
        self._reopen = threading.Event()
        self._open()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        status = os.fstat(fd)
        self._identity = (status.st_dev, status.st_ino)

    def reopen(self) -> None:
        """Ask for the file to be reopened before the next batch (safe from any thread)."""
        self._reopen.set()

    def _moved(self) -> bool:
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (status.st_dev, status.st_ino) != self._identity

    def write(self, record: AuditRecord) -> None:
        """Add a record to the batch being written."""
        line = json.dumps(record.to_json(), separators=(",", ":"), ensure_ascii=False)
        self._pending += line.encode() + b"\n"

    def flush(self) -> None:
        """Write the batch; raises ``OSError`` (the batch kept) when the file cannot take it."""
        if self._reopen.is_set() or self._moved():
            self._reopen.clear()
            self._open()
        while self._pending:
            written = os.write(self._fd, self._pending)
            del self._pending[:written]

    def close(self) -> None:
        """Close the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
