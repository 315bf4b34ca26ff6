"""Whether the archive is alive and ready: what an orchestrator's probes ask over HTTP.

*Live* says the process answers at all (its event loop runs): a process that does not answer
is restarted. *Ready* says it can serve: the index answers a read within
:data:`READY_TIMEOUT_S` and the server is not stopping; a node that is not ready is taken out
of a load balancer's rotation, not restarted (a PostgreSQL index that is down makes every node
unready at once, and restarting them would not help). gRPC's own health service
(``grpc.health.v1``) answers SERVING until the server stops, as before.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from dicomrpc_server.storage.protocols import Change

READY_TIMEOUT_S = 2.0


class ReadableIndex(Protocol):
    """What the readiness check reads: the newest change (one short read of any index)."""

    def latest_change(self) -> Change | None:
        """The newest change of the log, or ``None`` when there is none."""
        ...


@dataclass
class Readiness:
    """The outcome of a readiness check: ready or not, and why not."""

    ready: bool
    problems: dict[str, str] = field(default_factory=dict)


@dataclass
class HealthCheck:
    """The readiness of one archive process.

    Parameters
    ----------
    index
        The archive's index, read once per check (off the event loop).
    """

    index: ReadableIndex

    async def readiness(self, stopping: bool = False) -> Readiness:
        """Check the index with a read; a ``stopping`` server is not ready whatever it answers."""
        problems: dict[str, str] = {}
        if stopping:
            problems["server"] = "stopping"
        try:
            await asyncio.wait_for(asyncio.to_thread(self.index.latest_change), READY_TIMEOUT_S)
        except TimeoutError:
            problems["index"] = f"no answer to a read within {READY_TIMEOUT_S:g} s"
        except Exception as exc:  # any failure of the read is the answer
            problems["index"] = f"{type(exc).__name__}: {exc}"
        return Readiness(not problems, problems)
