"""Ingest benchmark: dicomrpc (gRPC, 1 and N streams) side by side with Orthanc (STOW-RS).

Usage (from the repository root)::

    .venv/bin/python bench/ingest.py            # 2,000 CT instances, all runs, writes RESULTS.md
    .venv/bin/python bench/ingest.py --quick    # 200 instances, a smoke run
    .venv/bin/python bench/ingest.py --profile  # the N-stream dicomrpc ingest under py-spy

The corpus (512x512 16-bit CT slices, explicit VR little endian Part 10 files) is generated
once with pydicom and cached under ``bench/.work/``. Every run starts its server as a
subprocess on a fresh data directory, warms the page cache with the corpus, ingests it, and
samples the server's resident memory (its children included) every 50 ms. Every instance is
checked: the per-instance outcomes of the store calls, then an independent count (dicomrpc: the
index counts it logs when restarted on the same data directory; Orthanc: ``GET /statistics``).

``--profile`` needs py-spy (``.venv/bin/pip install py-spy``); nothing else does.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import queue
import shutil
import sys
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import pydicom
from corpus import INSTANCES_PER_SERIES, INSTANCES_PER_STUDY, Corpus, corpus, warm_cache
from harness import (
    MB,
    RESULTS,
    ROOT,
    WORK,
    ResourceSampler,
    dicomrpc_index_counts,
    dicomrpc_server,
    ensure_orthanc,
    http_request,
    machine,
    orthanc_server,
    orthanc_version,
    profile_tables,
    py_spy,
    run_workers,
    sequence_length,
    start_py_spy,
    stop_py_spy,
    stow_body,
    write_section,
)

from dicomrpc import Client, ClientConfig, DicomRpcError

SECTION = "## Ingest"

GOAL_RATIO = 1.5
GOAL_RSS_MB = 300.0


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """What one ingest run measured."""

    name: str
    clients: int
    sent: int
    megabytes: float
    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    verified: int | None = None
    verified_by: str = ""
    problems: list[str] = field(default_factory=list)
    # Instances/s of every repetition, when this is the median of several.
    rates: list[float] = field(default_factory=list)

    @property
    def stored(self) -> int:
        return self.outcomes["stored"] + self.outcomes["stored_with_warnings"]

    @property
    def per_second(self) -> float:
        return self.stored / self.wall_s if self.wall_s else 0.0

    @property
    def mb_per_second(self) -> float:
        return self.megabytes * self.stored / self.sent / self.wall_s if self.wall_s else 0.0

    @property
    def complete(self) -> bool:
        return self.stored == self.sent and self.verified == self.sent and not self.problems


def median_run(runs: list[RunResult]) -> RunResult:
    """The run with the median instances/s, with the largest peak RSS and every problem."""
    ordered = sorted(runs, key=lambda r: r.per_second)
    median = ordered[(len(ordered) - 1) // 2]
    return replace(
        median,
        peak_rss_mb=max(r.peak_rss_mb for r in runs),
        problems=[p for r in runs for p in r.problems],
        rates=[r.per_second for r in runs],
    )


def batches(files: list[Path], size: int) -> queue.SimpleQueue[list[Path]]:
    work: queue.SimpleQueue[list[Path]] = queue.SimpleQueue()
    for start in range(0, len(files), size):
        work.put(files[start : start + size])
    return work


def batch_storer(
    work: queue.SimpleQueue[list[Path]], result: RunResult
) -> Callable[[object], None]:
    """A client's work: ``Client.store`` the batches left in ``work``, counting outcomes.

    The clients share ``work`` and ``result``; a failed request or instance is a problem of the
    run, not an error that stops it.
    """
    lock = threading.Lock()

    def store(client: object) -> None:
        assert isinstance(client, Client)
        while True:
            try:
                paths = work.get_nowait()
            except queue.Empty:
                return
            try:
                outcome = client.store([str(p) for p in paths])
            except DicomRpcError as error:
                with lock:
                    result.problems.append(f"a store of {len(paths)} instances failed: {error}")
                continue
            with lock:
                for instance in outcome.instances:
                    result.outcomes[instance.outcome] += 1
                    if instance.outcome == "failed" and len(result.problems) < 10:
                        result.problems.append(
                            f"{instance.client_reference}: {instance.failure_reason} "
                            f"{instance.failure_reason_name}: {instance.failure_message}"
                        )

    return store


def run_dicomrpc(
    data: Corpus,
    streams: int,
    batch: int,
    profile: Path | None = None,
    gil_only: bool = True,
    serve_args: Sequence[str] = (),
    label: str = "dicomrpc",
) -> RunResult:
    """Ingest the corpus into a fresh dicomrpc with ``streams`` concurrent store streams
    (``serve_args``: more ``dicomrpc serve`` options, ``--processes 2`` say)."""
    result = RunResult(
        f"{label}, {streams} stream{'s' * (streams > 1)}", streams, len(data.files), data.megabytes
    )
    run_dir = Path(tempfile.mkdtemp(prefix="dicomrpc-", dir=WORK))
    log = WORK / f"dicomrpc-{streams}.log"
    work = batches(data.files, batch)
    # One channel (one HTTP/2 connection) per stream, like one HTTP connection per STOW client.
    config = ClientConfig(options=(("grpc.use_local_subchannel_pool", 1),))

    def connect() -> Client:
        client = Client(target, config)
        grpc.channel_ready_future(client.channel).result(timeout=30)
        return client

    store = batch_storer(work, result)

    try:
        warm_cache(data.files)
        with dicomrpc_server(run_dir / "data", log, serve_args=serve_args) as (target, pid):
            spy = start_py_spy(pid, profile, gil_only) if profile else None
            try:
                with ResourceSampler(pid) as sampler:
                    result.wall_s, result.client_cpu_s = run_workers(
                        streams,
                        connect,
                        store,
                        lambda c: c.close(),  # type: ignore[attr-defined]
                    )
            finally:
                if spy is not None:
                    stop_py_spy(spy)
        result.peak_rss_mb = sampler.peak_rss / MB
        result.server_cpu_s = sampler.cpu_seconds
        counts = dicomrpc_index_counts(run_dir / "data", WORK / f"dicomrpc-{streams}-reopen.log")
        if counts is None:
            result.problems.append("the restarted server did not log its index counts")
        else:
            result.verified = counts[2]
            result.verified_by = f"index after restart: {counts[0]} studies, {counts[1]} series"
    except Exception as error:  # a crashed server or client: reported, not fatal
        result.problems.append(f"{type(error).__name__}: {error}")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return result


def run_orthanc(data: Corpus, clients: int, batch: int) -> RunResult:
    """STOW-RS the corpus into a fresh Orthanc from ``clients`` concurrent HTTP clients."""
    result = RunResult(
        f"Orthanc STOW-RS, {clients} clients", clients, len(data.files), data.megabytes
    )
    run_dir = Path(tempfile.mkdtemp(prefix="orthanc-", dir=WORK))
    log = WORK / f"orthanc-{clients}.log"
    lock = threading.Lock()
    work = batches(data.files, batch)
    port = 0

    def connect() -> http.client.HTTPConnection:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        connection.connect()
        return connection

    def post(connection: object) -> None:
        assert isinstance(connection, http.client.HTTPConnection)
        boundary = uuid.uuid4().hex
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        }
        while True:
            try:
                paths = work.get_nowait()
            except queue.Empty:
                return
            body = stow_body(paths, boundary)
            connection.request("POST", "/dicom-web/studies", body, headers)
            response = connection.getresponse()
            payload = response.read()
            try:
                answer = json.loads(payload) if payload else {}
            except ValueError:
                answer = {}
            with lock:
                stored = sequence_length(answer, "00081199")
                failed = sequence_length(answer, "00081198")
                result.outcomes["stored"] += stored
                result.outcomes["failed"] += len(paths) - stored
                if (response.status != 200 or failed) and len(result.problems) < 10:
                    result.problems.append(
                        f"STOW of {len(paths)} returned {response.status}, {stored} stored, "
                        f"{failed} failed: {payload[:300]!r}"
                    )

    try:
        warm_cache(data.files)
        with orthanc_server(run_dir, log) as (port, pid):
            with ResourceSampler(pid) as sampler:
                result.wall_s, result.client_cpu_s = run_workers(
                    clients,
                    connect,
                    post,
                    lambda c: c.close(),  # type: ignore[attr-defined]
                )
            status, body = http_request(port, "GET", "/statistics")
            if status == 200:
                statistics = json.loads(body)
                result.verified = int(statistics["CountInstances"])
                result.verified_by = (
                    f"GET /statistics: {statistics['CountStudies']} studies, "
                    f"{statistics['CountSeries']} series"
                )
            else:
                result.problems.append(f"GET /statistics returned {status}")
        result.peak_rss_mb = sampler.peak_rss / MB
        result.server_cpu_s = sampler.cpu_seconds
    except Exception as error:  # a crashed server or client: reported, not fatal
        result.problems.append(f"{type(error).__name__}: {error}")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return result


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def table(results: list[RunResult]) -> str:
    header = (
        "| run | stored / sent | verified | wall s | instances/s | (all runs) | MB/s "
        "| peak RSS MB | server CPU s | client CPU s |"
    )
    lines = [header, "|---|---|---|--:|--:|--|--:|--:|--:|--:|"]
    for r in results:
        verified = "—" if r.verified is None else str(r.verified)
        spread = ", ".join(f"{rate:.0f}" for rate in r.rates) or "—"
        warned = r.outcomes["stored_with_warnings"]
        stored = f"{r.stored} / {r.sent}" + (f" ({warned} with warnings)" if warned else "")
        lines.append(
            f"| {r.name} | {stored} | {verified} | {r.wall_s:.2f} "
            f"| {r.per_second:.1f} | {spread} | {r.mb_per_second:.1f} | {r.peak_rss_mb:.0f} "
            f"| {r.server_cpu_s:.1f} | {r.client_cpu_s:.1f} |"
        )
    return "\n".join(lines)


def cpu_limit(ours: RunResult, theirs: RunResult) -> str:
    """By how much the ratio goal is missed, and the CPU budget that stands in the way.

    Server and clients share the machine's CPUs: at the goal's rate, what they may spend per
    instance together is the CPUs' time divided by that rate, set beside what this run spent.
    """
    cpus = os.cpu_count() or 1
    goal_rate = GOAL_RATIO * theirs.per_second
    busy = (ours.server_cpu_s + ours.client_cpu_s) / ours.wall_s
    spent_ms = 1000 * (ours.server_cpu_s + ours.client_cpu_s) / ours.stored
    budget_ms = 1000 * cpus / goal_rate
    return (
        f"- Missed by {goal_rate - ours.per_second:.0f} instances/s (the goal is "
        f"{goal_rate:.0f}/s). The limit measured: CPU. dicomrpc's server and clients kept "
        f"{busy:.2f} of the machine's {cpus} CPUs busy (the kernel's writeback besides), "
        f"spending {spent_ms:.1f} ms of CPU per instance (server "
        f"{1000 * ours.server_cpu_s / ours.stored:.1f} ms; Orthanc's server "
        f"{1000 * theirs.server_cpu_s / theirs.stored:.1f} ms); at the goal's rate the "
        f"machine has {budget_ms:.1f} ms per instance for both (see Ingest cost breakdown)."
    )


def verdicts(results: list[RunResult], orthanc_missing: str | None) -> list[str]:
    """The goal checks: the throughput ratio and dicomrpc's memory."""
    ours = [r for r in results if r.name.startswith("dicomrpc")]
    multi = next((r for r in ours if r.clients > 1), None)
    theirs = next((r for r in results if r.name.startswith("Orthanc")), None)
    out: list[str] = []
    if multi and theirs and theirs.per_second and multi.complete and theirs.complete:
        ratio = multi.per_second / theirs.per_second
        verdict = "met" if ratio >= GOAL_RATIO else "NOT met"
        out.append(
            f"- **Ratio dicomrpc ({multi.clients} streams) / Orthanc ({theirs.clients} clients "
            f"STOW-RS): {ratio:.2f}x** (instances/s) — goal ≥ {GOAL_RATIO}x: {verdict}."
        )
        if ratio < GOAL_RATIO:
            out.append(cpu_limit(multi, theirs))
    elif orthanc_missing:
        out.append(f"- Ratio: not measured, Orthanc unavailable ({orthanc_missing}).")
    else:
        out.append("- Ratio: not computed, a run was incomplete (see problems).")
    for r in ours:
        verdict = "met" if r.peak_rss_mb < GOAL_RSS_MB else "NOT met"
        out.append(
            f"- dicomrpc peak RSS, {r.clients} stream(s): {r.peak_rss_mb:.0f} MB — goal "
            f"< {GOAL_RSS_MB:.0f} MB: {verdict}."
        )
    return out


def report(
    data: Corpus, results: list[RunResult], args: argparse.Namespace, orthanc_missing: str | None
) -> str:
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    versions = (
        f"Python {platform.python_version()}, grpcio {grpc.__version__}, "
        f"pydicom {pydicom.__version__}"
        + ("" if orthanc_missing else f", {orthanc_version()} with DICOMweb plugin")
    )
    problems = [f"- {r.name}: {p}" for r in results for p in r.problems]
    body = [
        SECTION,
        "",
        "Written by `.venv/bin/python bench/ingest.py`; rerun it to refresh this section.",
        "",
        f"- Date: {now}{' (quick run)' if args.quick else ''}",
        f"- Machine: {machine()}; {platform.platform()}",
        f"- Software: {versions}",
        f"- Corpus: {len(data.files)} CT instances (512x512, 16-bit, 12 stored, explicit VR "
        f"little endian, {INSTANCES_PER_STUDY} per study, {INSTANCES_PER_SERIES} per series), "
        f"{data.megabytes:.0f} MB",
        f"- dicomrpc: `Client.store()` batches of {args.batch} instances per stream, one channel "
        f"per stream. Orthanc: STOW-RS `POST /dicom-web/studies`, {args.stow_batch} instances "
        "per request, one keep-alive HTTP connection per client, default settings otherwise "
        "(SQLite index; `SyncStorageArea` on, so both servers fsync what they store).",
        f"- Each configuration ran {args.repeat} time(s), interleaved; the table shows the run "
        "with the median instances/s (every run's rate under (all runs)), the largest peak RSS "
        "of all runs. Each run starts its server on an empty data directory; the corpus is in "
        "the page cache.",
        "- MB = 2^20 bytes. Peak RSS: the server's process tree, sampled every 50 ms. "
        "CPU s: user + system during the run (not the servers' start-up). Client and servers share "
        "the machine's CPUs.",
        "",
        table(results),
        "",
        "Verified: the store outcomes, then an independent count — "
        + "; ".join(f"{r.name}: {r.verified_by or 'not verified'}" for r in results)
        + ".",
        "",
        "Goals: dicomrpc with 4 streams ≥ 1.5x Orthanc's instances/s (4 STOW-RS clients); "
        "dicomrpc server peak RSS < 300 MB.",
        "",
        *verdicts(results, orthanc_missing),
    ]
    if orthanc_missing:
        body += ["", f"Orthanc: unavailable — {orthanc_missing}."]
    if problems:
        body += ["", "Problems seen:", "", *problems]
    return "\n".join(body) + "\n"


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="instances (2000)")
    parser.add_argument("--quick", action="store_true", help="a 200-instance smoke run")
    parser.add_argument(
        "--profile", action="store_true", help="only the N-stream dicomrpc ingest, under py-spy"
    )
    parser.add_argument(
        "--profile-threads",
        choices=("gil", "active"),
        default="gil",
        help="sample the GIL holder only (gil, the default) or every active thread (active)",
    )
    parser.add_argument("--streams", type=int, default=4, help="concurrent streams/clients (4)")
    parser.add_argument("--batch", type=int, default=25, help="instances per store() call (25)")
    parser.add_argument(
        "--stow-batch", type=int, default=10, help="instances per STOW-RS request (10)"
    )
    parser.add_argument(
        "--repeat", type=int, help="runs of each configuration, the median reported (3; quick 1)"
    )
    parser.add_argument("--no-orthanc", action="store_true", help="skip the Orthanc run")
    parser.add_argument(
        "--no-write", action="store_true", help="print only, leave RESULTS.md alone"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.count = 200
    if args.repeat is None:
        args.repeat = 1 if args.quick or args.profile else 3
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    data = corpus(args.count)
    print(f"corpus: {len(data.files)} instances, {data.megabytes:.0f} MB; {machine()}", flush=True)

    if args.profile:
        py_spy()
        raw = WORK / "profile.txt"
        print(f"profiling dicomrpc, {args.streams} streams, under py-spy ...", flush=True)
        gil_only = args.profile_threads == "gil"
        result = run_dicomrpc(data, args.streams, args.batch, raw, gil_only)
        print(table([result]))
        for problem in result.problems:
            print(f"problem: {problem}")
        print(f"\nprofile of the server during ingest ({raw}):")
        print(profile_tables(raw, gil_only) if raw.exists() else "py-spy wrote no profile")
        return 0 if result.complete else 1

    orthanc_missing = "skipped (--no-orthanc)" if args.no_orthanc else ensure_orthanc()
    runs: dict[str, Callable[[], RunResult]] = {
        f"dicomrpc-{n}": lambda n=n: run_dicomrpc(data, n, args.batch)  # type: ignore[misc]
        for n in dict.fromkeys((1, args.streams))
    }
    if orthanc_missing is None:
        runs["orthanc"] = lambda: run_orthanc(data, args.streams, args.stow_batch)
    measured: dict[str, list[RunResult]] = {key: [] for key in runs}
    # Repetitions are interleaved, so that a drift of the machine touches every server alike.
    for repetition in range(args.repeat):
        for key, run in runs.items():
            print(f"[{repetition + 1}/{args.repeat}] {key} ...", flush=True)
            measured[key].append(run())
            print(table(measured[key][-1:]).splitlines()[-1], flush=True)
    results = [median_run(repeats) for repeats in measured.values()]

    section = report(data, results, args, orthanc_missing)
    print()
    print(section)
    if not args.no_write:
        write_section(section, SECTION)
        print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0 if all(r.complete for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
