"""Deadlines and retries, as gRPC's own service config: which calls may be tried again.

gRPC retries a call only while it is not committed (no response has come back yet), and only
for the methods and status codes its service config names. So the SDK names the idempotent
calls alone, UNAVAILABLE alone: reads, searches, deletes by UID, the watches (before their
first event) and the settings that replace themselves. A store, a workitem's creation,
update or state change and a cancellation request are never retried: UNAVAILABLE may come
after the server acted on them, and the second try would then be refused or store twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

_SERVICE = "dicomrpc.v1."

IDEMPOTENT_STREAMS: dict[str, tuple[str, ...]] = {
    "RetrieveService": (
        "RetrieveStudy",
        "RetrieveSeries",
        "RetrieveInstance",
        "RetrieveFrames",
        "RetrieveRendered",
        "RetrieveStudyMetadata",
        "RetrieveSeriesMetadata",
        "RetrieveInstanceMetadata",
    ),
    "ManagementService": ("WatchChangeFeed",),
    "WorkitemService": ("SubscribeWorkitems",),
}
"""Server streams that may be tried again: reads (and watches) before their first answer."""

IDEMPOTENT_UNARY: dict[str, tuple[str, ...]] = {
    "RetrieveService": ("GetRetrieveUrl",),
    "SearchService": ("SearchStudies", "SearchSeries", "SearchInstances"),
    "ManagementService": (
        "DeleteStudy",
        "DeleteSeries",
        "DeleteInstance",
        "ReadChangeFeed",
        "GetLatestChange",
        "ListExtendedQueryTags",
        "DeleteExtendedQueryTag",
        "GetReindexStatus",
        "GetCapabilities",
        "ListDimsePeers",
        "AddDimsePeer",
        "RemoveDimsePeer",
    ),
    "WorkitemService": ("RetrieveWorkitem", "SearchWorkitems"),
}
"""Unary calls that may be tried again: a second try finds what the first one left."""

ONCE_UNARY: dict[str, tuple[str, ...]] = {
    "ManagementService": ("AddExtendedQueryTags",),
    "WorkitemService": (
        "CreateWorkitem",
        "UpdateWorkitem",
        "ChangeWorkitemState",
        "RequestWorkitemCancellation",
    ),
}
"""Unary calls never retried (they get the default deadline all the same)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How an idempotent call that failed with UNAVAILABLE is tried again.

    gRPC waits a random time up to the backoff before each new try; the backoff starts at
    ``initial_backoff`` and is multiplied by ``backoff_multiplier`` after each, up to
    ``max_backoff`` (seconds).

    Attributes
    ----------
    max_attempts
        Tries in all, the first included (2 to 5: gRPC allows no more than 5).
    initial_backoff, max_backoff, backoff_multiplier
        The backoff, as above.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    backoff_multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not 2 <= self.max_attempts <= 5:
            raise ValueError(f"max_attempts {self.max_attempts} is not 2 to 5")
        if self.initial_backoff <= 0 or self.max_backoff <= 0 or self.backoff_multiplier <= 0:
            raise ValueError("backoffs and their multiplier must be above 0")

    def as_json(self) -> dict[str, object]:
        """The ``retryPolicy`` of a gRPC service config."""
        return {
            "maxAttempts": self.max_attempts,
            "initialBackoff": _duration(self.initial_backoff),
            "maxBackoff": _duration(self.max_backoff),
            "backoffMultiplier": self.backoff_multiplier,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }


def _duration(seconds: float) -> str:
    """A protobuf JSON duration (``"0.25s"``)."""
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


def _names(methods: dict[str, tuple[str, ...]]) -> list[dict[str, str]]:
    return [
        {"service": _SERVICE + service, "method": method}
        for service, names in methods.items()
        for method in names
    ]


def service_config(timeout: float | None, retry: RetryPolicy | None) -> str | None:
    """The JSON service config of these settings, or ``None`` when it would say nothing.

    ``timeout`` is the deadline of every unary call (a call's own ``timeout`` can only make it
    shorter); streams have none of their own, since a study's retrieve or a watch may rightly
    take as long as it takes.
    """
    entries: list[dict[str, object]] = []

    def add(methods: Iterable[dict[str, tuple[str, ...]]], retried: bool, unary: bool) -> None:
        entry: dict[str, object] = {"name": [n for m in methods for n in _names(m)]}
        if retried and retry is not None:
            entry["retryPolicy"] = retry.as_json()
        if unary and timeout is not None:
            entry["timeout"] = _duration(timeout)
        if len(entry) > 1:
            entries.append(entry)

    add((IDEMPOTENT_UNARY,), retried=True, unary=True)
    add((IDEMPOTENT_STREAMS,), retried=True, unary=False)
    add((ONCE_UNARY,), retried=False, unary=True)
    if not entries:
        return None
    return json.dumps({"methodConfig": entries})
