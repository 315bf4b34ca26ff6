"""Scale benchmark: the embedded archive served by 1 and by 2 processes, beside Orthanc.

Usage (from the repository root)::

    .venv/bin/python bench/scale.py            # all measurements, writes RESULTS.md
    .venv/bin/python bench/scale.py --quick    # a smaller corpus and fewer rounds

What is measured, for ``dicomrpc serve --processes 1`` and ``--processes 2`` on LMDB and a
local folder, and for Orthanc (its default SQLite index) on the same files:

- ingest instances/s: the ingest corpus (CT slices of 0.5 MB) stored by 4 concurrent clients,
  10 instances per request (``Client.store`` on a channel each; STOW-RS for Orthanc), into a
  fresh store each round; with the server's CPU time per instance (every process of the server
  counted: the group, its parse and codec workers);
- study retrieve MB/s: a 500-instance study pulled whole by 1 and by 4 concurrent clients,
  through the SDK (``Client.iter_instances``) and through the DICOMweb gateway (WADO-RS, the
  body counted as it streams), against Orthanc's WADO-RS; with the server's CPU time per MiB
  sent.

Rounds alternate the configurations, so that a drift of the shared machine touches all alike;
each figure is the median of the rounds. The number of processes ``dicomrpc serve`` starts by
default is chosen from these figures (README, "Several processes").
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import platform
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from ingest import (
    MB,
    WORK,
    ResourceSampler,
    RunResult,
    corpus,
    dicomrpc_server,
    ensure_orthanc,
    free_port,
    median_run,
    orthanc_server,
    run_dicomrpc,
    run_orthanc,
    write_section,
)
from retrieve import (
    ACCEPT_DICOM,
    READ_BUFFER,
    Study,
    Throughput,
    big_study,
    connect_grpc,
    connect_http,
    grpc_study_bytes,
    http_get,
    load_dicomrpc,
    load_orthanc,
    throughput_run,
)

SECTION = "## Scale"
STREAMS = 4
BATCH = 10
PROCESSES = (1, 2)


@dataclass
class RetrieveFigures:
    """Study retrieve MB/s by clients, and the server's CPU seconds per MiB sent."""

    rates: dict[int, Throughput] = field(default_factory=dict)
    cpu_per_mib_ms: list[float] = field(default_factory=list)

    def median(self, clients: int) -> float:
        return self.rates[clients].median if clients in self.rates else 0.0


def ingest(rounds: int, count: int, orthanc: bool) -> dict[str, RunResult]:
    """Median ingest run of each configuration."""
    data = corpus(count)
    runs: dict[str, list[RunResult]] = {}
    for round_ in range(rounds):
        order: list[tuple[str, Callable[[], RunResult]]] = [
            (
                f"dicomrpc, {n} process{'es' * (n > 1)}",
                lambda n=n: run_dicomrpc(  # type: ignore[misc]
                    data,
                    STREAMS,
                    BATCH,
                    serve_args=("--processes", str(n)),
                    label=f"dicomrpc, {n} process{'es' * (n > 1)}",
                ),
            )
            for n in PROCESSES
        ]
        if orthanc:
            order.append(("Orthanc", lambda: run_orthanc(data, STREAMS, BATCH)))
        if round_ % 2:
            order.reverse()
        for name, run in order:
            result = run()
            print(
                f"ingest round {round_ + 1}: {name}: {result.per_second:.0f} inst/s "
                f"{'(' + '; '.join(result.problems[:2]) + ')' if result.problems else ''}",
                flush=True,
            )
            runs.setdefault(name, []).append(result)
    return {name: median_run(r) for name, r in runs.items()}


def _retrieve_rounds(
    fetch_with: Callable[[], tuple[Callable[[], object], Callable[[object, str], int]]],
    study: Study,
    pid: int,
    figures: RetrieveFigures,
    repeats: int,
) -> None:
    connect, fetch = fetch_with()
    for clients in (1, 4):
        result = figures.rates.setdefault(clients, Throughput())
        with ResourceSampler(pid) as sampler:
            throughput_run(
                clients,
                repeats,
                connect,
                lambda c: fetch(c, study.uid),
                lambda c: c.close(),  # type: ignore[attr-defined]
                result,
            )
        sent = clients * repeats * study.total_bytes / MB
        figures.cpu_per_mib_ms.append(1000 * sampler.cpu_seconds / sent)


@contextlib.contextmanager
def _dicomrpc(data_dir: Path, processes: int) -> Iterator[tuple[str, int, int]]:
    port = free_port()
    log = WORK / f"scale-retrieve-{processes}.log"
    with dicomrpc_server(
        data_dir, log, http_port=port, serve_args=("--processes", str(processes))
    ) as (target, pid):
        yield target, port, pid


def retrieve(rounds: int, repeats: int, orthanc: bool) -> dict[str, RetrieveFigures]:
    """Study retrieve figures of each configuration and path."""
    study = big_study()
    figures: dict[str, RetrieveFigures] = {}
    run_dir = Path(tempfile.mkdtemp(prefix="scale-", dir=WORK))
    data_dir = run_dir / "data"
    try:
        with _dicomrpc(data_dir, 1) as (target, _, _):
            load_dicomrpc(target, study.files)
        with contextlib.ExitStack() as stack:
            orthanc_port = 0
            orthanc_pid = 0
            if orthanc:
                orthanc_port, orthanc_pid = stack.enter_context(
                    orthanc_server(run_dir, WORK / "scale-orthanc.log")
                )
                load_orthanc(orthanc_port, study.files)
            for round_ in range(rounds):
                for processes in PROCESSES if round_ % 2 == 0 else reversed(PROCESSES):
                    with _dicomrpc(data_dir, processes) as (target, http_port, pid):
                        name = f"dicomrpc, {processes} process{'es' * (processes > 1)}"

                        def sdk(
                            target: str = target,
                        ) -> tuple[Callable[[], object], Callable[[object, str], int]]:
                            return (
                                lambda: connect_grpc(target),
                                lambda c, uid: grpc_study_bytes(c, uid),  # type: ignore[arg-type]
                            )

                        def gateway(
                            port: int = http_port,
                        ) -> tuple[Callable[[], object], Callable[[object, str], int]]:
                            buffer = bytearray(READ_BUFFER)
                            return (
                                lambda: connect_http(port),
                                lambda c, uid: http_get(
                                    c,  # type: ignore[arg-type]
                                    f"/dicomweb/studies/{uid}",
                                    ACCEPT_DICOM,
                                    bytearray(len(buffer)),
                                ),
                            )

                        for path, how in (("SDK (gRPC)", sdk), ("gateway (WADO-RS)", gateway)):
                            key = f"{name}, {path}"
                            _retrieve_rounds(
                                how, study, pid, figures.setdefault(key, RetrieveFigures()), repeats
                            )
                            print(
                                f"retrieve round {round_ + 1}: {key}: "
                                f"{figures[key].rates[1].rates[-1]:.0f} / "
                                f"{figures[key].rates[4].rates[-1]:.0f} MB/s (1 / 4 clients)",
                                flush=True,
                            )
                if orthanc:

                    def wado(
                        port: int = orthanc_port,
                    ) -> tuple[Callable[[], object], Callable[[object, str], int]]:
                        return (
                            lambda: connect_http(port),
                            lambda c, uid: http_get(
                                c,  # type: ignore[arg-type]
                                f"/dicom-web/studies/{uid}",
                                ACCEPT_DICOM,
                                bytearray(READ_BUFFER),
                            ),
                        )

                    key = "Orthanc, WADO-RS"
                    _retrieve_rounds(
                        wado,
                        study,
                        orthanc_pid,
                        figures.setdefault(key, RetrieveFigures()),
                        repeats,
                    )
                    print(
                        f"retrieve round {round_ + 1}: {key}: "
                        f"{figures[key].rates[1].rates[-1]:.0f} / "
                        f"{figures[key].rates[4].rates[-1]:.0f} MB/s (1 / 4 clients)",
                        flush=True,
                    )
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return figures


def _ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs else "n/a"


def report(
    ingested: dict[str, RunResult], retrieved: dict[str, RetrieveFigures], args: argparse.Namespace
) -> str:
    orthanc_ingest = ingested.get("Orthanc")
    lines = [
        SECTION,
        "",
        f"Measured {dt.date.today().isoformat()} on {platform.machine()}, "
        f"{psutil.cpu_count()} cores, by `bench/scale.py{' --quick' if args.quick else ''}` "
        f"({args.rounds} rounds, medians; configurations alternate within each round).",
        "",
        f"**Ingest**: {ingested[next(iter(ingested))].sent} CT instances of 0.5 MB, "
        f"{STREAMS} clients, {BATCH} instances per request, a fresh store each round.",
        "",
        "| server | inst/s | ratio to Orthanc | server CPU per instance | peak RSS | rounds |",
        "|---|--:|--:|--:|--:|---|",
    ]
    for name, run in ingested.items():
        cpu = 1000 * run.server_cpu_s / run.stored if run.stored else 0.0
        rounds = ", ".join(f"{r:.0f}" for r in run.rates)
        ratio = _ratio(run.per_second, orthanc_ingest.per_second) if orthanc_ingest else "n/a"
        flag = "" if run.complete else " (incomplete: " + "; ".join(run.problems[:2]) + ")"
        lines.append(
            f"| {name}{flag} | {run.per_second:.0f} | {ratio} | {cpu:.1f} ms | "
            f"{run.peak_rss_mb:.0f} MB | {rounds} |"
        )
    orthanc = retrieved.get("Orthanc, WADO-RS")
    lines += [
        "",
        "**Study retrieve**: a 500-instance CT study (250 MB) pulled whole, each client "
        f"{args.repeats} times per round.",
        "",
        "| server, path | 1 client MB/s | ratio | 4 clients MB/s | ratio | server CPU per MiB |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for name, fig in retrieved.items():
        one, four = fig.median(1), fig.median(4)
        lines.append(
            f"| {name} | {one:.0f} | {_ratio(one, orthanc.median(1)) if orthanc else 'n/a'} | "
            f"{four:.0f} | {_ratio(four, orthanc.median(4)) if orthanc else 'n/a'} | "
            f"{statistics.median(fig.cpu_per_mib_ms):.2f} ms |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller corpus, fewer rounds")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    args.rounds = 2 if args.quick else 3
    args.repeats = 1 if args.quick else 2
    count = 300 if args.quick else 1000
    WORK.mkdir(parents=True, exist_ok=True)
    orthanc = ensure_orthanc() is None
    if not orthanc:
        print("Orthanc is not installed: measuring dicomrpc alone", flush=True)
    ingested = ingest(args.rounds, count, orthanc)
    retrieved = retrieve(args.rounds, args.repeats, orthanc)
    section = report(ingested, retrieved, args)
    print(section)
    if not args.no_write:
        write_section(section, SECTION)
        print("wrote bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
