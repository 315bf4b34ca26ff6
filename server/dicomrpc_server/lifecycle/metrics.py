"""The archive's metrics, in Prometheus' text format, for ``GET /metrics`` on the HTTP port.

Two kinds:

- what this process served, counted as it happens: calls by adapter (``grpc``, ``http``),
  operation (the RPC's full name, or the route's template such as
  ``GET /dicomweb/studies/{study}``: never a raw path, so that a scan of random URLs adds no
  series) and status; their latency; the bytes in and out; the instances stored by outcome and
  failure reason;
- what the archive holds, read at each scrape: studies, series, instances (the index's
  counters), bytes stored (counted at most once a minute, as the console's dashboard does),
  open workitem subscriptions and the index writer's queue.

Counts are per process: with ``--processes N`` each process answers for itself (a scrape
reaches one of them), while what the archive holds is the same in every one.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# Seconds: a frame or a search answers in milliseconds, a study retrieve or a store stream in
# seconds to minutes.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0,
)  # fmt: skip
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Holdings:
    """What the archive holds, read for one scrape."""

    studies: int
    series: int
    instances: int
    bytes_stored: int
    uptime_s: float
    workitem_subscriptions: int
    index_queue: int | None


class Metrics:
    """The metrics of one archive process: call counters and histograms, store outcomes.

    Parameters
    ----------
    store_outcomes
        The store core's tally of instances by (outcome, failure reason), which it keeps as it
        answers (read at each scrape).
    """

    def __init__(self, store_outcomes: collections.Counter[tuple[str, str]]) -> None:
        self.registry = CollectorRegistry()
        self._calls = Counter(
            "dicomrpc_calls",
            "Calls ended, by adapter, operation and status (gRPC status name or HTTP status).",
            ["adapter", "operation", "code"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "dicomrpc_call_duration_seconds",
            "Time from a call's start to its end (a stream's whole length), by operation.",
            ["adapter", "operation"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._bytes = Counter(
            "dicomrpc_call_bytes",
            "Bytes received (in) and sent (out) by calls: messages (gRPC) or bodies (HTTP).",
            ["adapter", "direction"],
            registry=self.registry,
        )
        self.registry.register(_StoreOutcomes(store_outcomes))

    def observe(
        self,
        adapter: str,
        operation: str,
        code: str,
        seconds: float,
        bytes_in: int,
        bytes_out: int,
    ) -> None:
        """Count one call that ended."""
        self._calls.labels(adapter, operation, code).inc()
        self._latency.labels(adapter, operation).observe(seconds)
        if bytes_in:
            self._bytes.labels(adapter, "in").inc(bytes_in)
        if bytes_out:
            self._bytes.labels(adapter, "out").inc(bytes_out)

    def exposition(self, holdings: Holdings) -> bytes:
        """The text of a scrape: the counted metrics, then what the archive holds now."""
        now = CollectorRegistry()
        now.register(_Holdings(holdings))
        return generate_latest(self.registry) + generate_latest(now)


class _StoreOutcomes(Collector):
    """Instances stored, by outcome and failure reason, from the store core's tally."""

    def __init__(self, tally: collections.Counter[tuple[str, str]]) -> None:
        self._tally = tally

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "dicomrpc_store_instances",
            "Instances sent to be stored, by outcome (stored, stored_with_warnings, "
            "already_stored, failed) and failure reason (empty unless failed).",
            labels=["outcome", "reason"],
        )
        for (outcome, reason), count in sorted(dict(self._tally).items()):
            family.add_metric([outcome, reason], count)
        yield family


class _Holdings(Collector):
    """Gauges of what the archive holds, from one reading."""

    def __init__(self, holdings: Holdings) -> None:
        self._holdings = holdings

    def collect(self) -> Iterator[Metric]:
        h = self._holdings
        gauges: list[tuple[str, str, float | None]] = [
            ("dicomrpc_studies", "Studies stored.", h.studies),
            ("dicomrpc_series", "Series stored.", h.series),
            ("dicomrpc_instances", "Instances stored.", h.instances),
            (
                "dicomrpc_stored_bytes",
                "Bytes of the stored instance files (counted at most once a minute).",
                h.bytes_stored,
            ),
            ("dicomrpc_uptime_seconds", "Seconds since this process started serving.", h.uptime_s),
            (
                "dicomrpc_workitem_subscriptions",
                "Open subscriptions to workitem events in this process (gRPC, UPS-RS, console).",
                h.workitem_subscriptions,
            ),
            (
                "dicomrpc_index_write_queue",
                "Index writes waiting for the writer's next commit (LMDB index only).",
                h.index_queue,
            ),
        ]
        for name, documentation, value in gauges:
            if value is not None:
                yield GaugeMetricFamily(name, documentation, value=value)


def route_label(method: str, root_path: str, template: str | None) -> str:
    """The operation label of an HTTP request: its method and route template, never its path.

    ``template`` is None for a request no route took (a 404 or a refusal before routing).
    """
    return f"{method} {root_path}{template}" if template is not None else f"{method} (no route)"
