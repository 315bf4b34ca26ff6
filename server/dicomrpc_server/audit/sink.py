"""A bounded queue between the calls and one audit output, drained by a thread of its own.

A call hands its record over with :meth:`AuditSink.put` (an append under a lock) and goes on:
formatting and writing happen on the sink's thread, so a slow disk or a receiver that is gone or
stops reading never slows a call. When the queue is full the oldest record is dropped, and
the drops are counted and reported at most every ``warn_interval`` seconds. An output that
fails is retried with backoff (0.1 s doubling to 5 s) with the same records, which stay queued
meanwhile; the outage is logged once when it starts and once when it ends, with the records
dropped during it.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Protocol

from dicomrpc_server.audit.records import AuditRecord

log = logging.getLogger("dicomrpc.audit")

BATCH = 256
FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0


class Output(Protocol):
    """Where a sink writes: records one at a time, then a flush per batch."""

    name: str

    def write(self, record: AuditRecord) -> None:
        """Write one record; ``OSError`` means the output cannot take it now."""

    def flush(self) -> None:
        """Finish writing the batch; ``OSError`` means the output cannot take it now."""

    def close(self) -> None:
        """Release the output."""


class AuditSink:
    """Feeds one output from a bounded queue, on a thread of its own.

    Parameters
    ----------
    output
        Where the records go.
    capacity
        The most records waiting; past it the oldest is dropped.
    warn_interval
        The fewest seconds between two warnings about dropped records.
    """

    def __init__(self, output: Output, capacity: int, warn_interval: float = 10.0) -> None:
        if capacity < 1:
            raise ValueError(f"--audit-queue {capacity}: the queue must hold at least 1 record")
        self.output = output
        self.capacity = capacity
        self.dropped = 0
        self.written = 0
        self._queue: collections.deque[AuditRecord] = collections.deque()
        self._condition = threading.Condition()
        self._stopping = False
        self._stopped = threading.Event()  # wakes a backoff only for a stop, not for new records
        self._warn_interval = warn_interval
        self._last_warning = -warn_interval
        self._unreported = 0
        self._outage_since: float | None = None
        self._outage_drops = 0
        self._thread = threading.Thread(target=self._run, name=output.name, daemon=True)
        self._thread.start()

    def put(self, record: AuditRecord) -> None:
        """Queue a record; never waits for the output."""
        with self._condition:
            if len(self._queue) >= self.capacity:
                self._queue.popleft()
                self.dropped += 1
                self._unreported += 1
                self._outage_drops += 1
                now = time.monotonic()
                if now - self._last_warning >= self._warn_interval:
                    log.warning(
                        "%s: the audit queue is full (%d records); dropped the %d oldest",
                        self.output.name,
                        self.capacity,
                        self._unreported,
                    )
                    self._last_warning = now
                    self._unreported = 0
            self._queue.append(record)
            self._condition.notify()

    def pending(self) -> int:
        """The records waiting."""
        with self._condition:
            return len(self._queue)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (for at most ``timeout`` seconds), then stop."""
        with self._condition:
            self._stopping = True
            self._condition.notify()
        self._stopped.set()
        self._thread.join(timeout)
        if self.pending():
            log.warning(
                "%s: %d audit records were not written before shutdown",
                self.output.name,
                self.pending(),
            )
        self.output.close()

    def _take(self) -> list[AuditRecord]:
        with self._condition:
            while not self._queue and not self._stopping:
                self._condition.wait()
            count = min(len(self._queue), BATCH)
            return [self._queue.popleft() for _ in range(count)]

    def _run(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return  # stopping, and nothing is left
            if not self._deliver(collections.deque(batch)):
                return  # stopping while the output is down: what is left is reported by close

    def _deliver(self, batch: collections.deque[AuditRecord]) -> bool:
        """Write ``batch``, retrying through an outage; False if the sink stopped first."""
        backoff = FIRST_BACKOFF_S
        while True:
            try:
                while batch:
                    try:
                        self.output.write(batch[0])
                    except OSError:
                        raise
                    except Exception:
                        log.exception("%s: an audit record could not be written", self.output.name)
                    batch.popleft()
                    self.written += 1
                self.output.flush()
            except OSError as exc:
                self._failed(exc)
                if self._stopped.wait(backoff):
                    with self._condition:
                        self._queue.extendleft(reversed(batch))
                    return False
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            self._recovered()
            return True

    def _failed(self, exc: OSError) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            with self._condition:
                self._outage_drops = 0
            log.warning(
                "%s cannot be written (%s); audit records are kept (up to %d) and sent "
                "when it is back",
                self.output.name,
                exc,
                self.capacity,
            )

    def _recovered(self) -> None:
        if self._outage_since is None:
            return
        seconds = time.monotonic() - self._outage_since
        self._outage_since = None
        with self._condition:
            drops = self._outage_drops
        log.warning(
            "%s is back after %.1f s; %d audit records were dropped meanwhile",
            self.output.name,
            seconds,
            drops,
        )
