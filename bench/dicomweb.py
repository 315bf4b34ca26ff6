"""DICOMweb gateway benchmark: STOW-RS instances/s and WADO-RS MB/s beside gRPC (and Orthanc).

The same generated CT corpus (bench/ingest.py's) goes into a fresh dicomrpc server twice, once
through the gateway's STOW-RS and once through gRPC `StoreInstances`, from the same number of
concurrent clients; then one study of it is retrieved whole through WADO-RS and through
`RetrieveStudy`, both as stored. When Orthanc (with its DICOMweb plugin) is installed or can be
installed, its STOW-RS and WADO-RS run on the same corpus for comparison. The results replace
the `## DICOMweb` section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from corpus import Corpus, corpus
from harness import (
    MB,
    RESULTS,
    ROOT,
    WORK,
    ResourceSampler,
    dicomrpc_server,
    ensure_orthanc,
    free_port,
    machine,
    orthanc_server,
    orthanc_version,
    stow_body,
    write_section,
)

from dicomrpc import Client

SECTION = "## DICOMweb"
BOUNDARY = "bench-boundary-" + uuid.uuid4().hex
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
ACCEPT_AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass
class Measure:
    """One figure measured over several rounds."""

    name: str
    unit: str
    rounds: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0

    @property
    def median(self) -> float:
        return statistics.median(self.rounds) if self.rounds else 0.0


def _batches(files: list[Path], size: int) -> list[list[Path]]:
    return [files[i : i + size] for i in range(0, len(files), size)]


def _parallel(clients: int, batches: list[list[Path]], send: Callable[[list[Path]], int]) -> int:
    """Send every batch from ``clients`` threads; return how many instances were stored."""
    lock = threading.Lock()
    pending = list(batches)
    stored = [0]
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                if not pending:
                    return
                batch = pending.pop()
            try:
                count = send(batch)
            except BaseException as exc:
                errors.append(exc)
                return
            with lock:
                stored[0] += count

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return stored[0]


def _connection(port: int) -> http.client.HTTPConnection:
    """A keep-alive connection with Nagle's algorithm off.

    ``http.client`` sends a request's headers and body in separate writes; with Nagle on, the
    body's last segment waits for the server's delayed ACK (up to 40 ms per request on Linux),
    which would be measured as the server's time.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    connection.connect()
    assert connection.sock is not None
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def _stow_sender(port: int, path: str) -> Callable[[list[Path]], int]:
    local = threading.local()

    def send(batch: list[Path]) -> int:
        if not hasattr(local, "connection"):
            local.connection = _connection(port)
        body = stow_body(batch, BOUNDARY)
        local.connection.request("POST", path, body=body, headers={"Content-Type": STOW_TYPE})
        response = local.connection.getresponse()
        answer = response.read()
        if response.status not in (200, 202):
            raise RuntimeError(f"STOW answered {response.status}: {answer[:300]!r}")
        return len(json.loads(answer).get("00081199", {}).get("Value", []))

    return send


def _grpc_sender(target: str) -> Callable[[list[Path]], int]:
    local = threading.local()

    def send(batch: list[Path]) -> int:
        if not hasattr(local, "client"):
            local.client = Client(target)
        return len(local.client.store(batch).stored)

    return send


def _timed_store(
    pid: int, clients: int, batches: list[list[Path]], send: Callable[[list[Path]], int]
) -> tuple[float, int, float]:
    """(instances/s, stored, peak RSS MB) of storing every batch."""
    with ResourceSampler(pid) as sampler:
        started = time.perf_counter()
        stored = _parallel(clients, batches, send)
        wall = time.perf_counter() - started
    return stored / wall, stored, sampler.peak_rss / MB


def _wado_study(port: int, path: str) -> int:
    """Bytes of one WADO-RS study retrieve (as stored), read into a reused buffer."""
    connection = _connection(port)
    try:
        connection.request("GET", path, headers={"Accept": ACCEPT_AS_STORED})
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"WADO answered {response.status}: {response.read()[:300]!r}")
        buffer = bytearray(MB)
        view = memoryview(buffer)
        total = 0
        while count := response.readinto(view):
            total += count
        return total
    finally:
        connection.close()


def _grpc_study(target: str, study: str) -> int:
    with Client(target) as client:
        return sum(len(instance.data) for instance in client.iter_instances(study))


def _timed_retrieve(pid: int, fetch: Callable[[], int], repeat: int) -> tuple[float, int, float]:
    """(MB/s, bytes per retrieve, peak RSS MB) of ``repeat`` sequential retrieves."""
    with ResourceSampler(pid) as sampler:
        started = time.perf_counter()
        sizes = [fetch() for _ in range(repeat)]
        wall = time.perf_counter() - started
    return sum(sizes) / MB / wall, sizes[0], sampler.peak_rss / MB


@dataclass
class Results:
    """Every figure of the run, by server and measurement."""

    figures: dict[str, dict[str, Measure]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, server: str, name: str, unit: str, value: float, rss: float) -> None:
        measure = self.figures.setdefault(server, {}).setdefault(name, Measure(name, unit))
        measure.rounds.append(value)
        measure.peak_rss_mb = max(measure.peak_rss_mb, rss)


def run_dicomrpc(data: Corpus, study: str, args: argparse.Namespace, results: Results) -> None:
    """STOW-RS and gRPC store, then WADO-RS and RetrieveStudy, on a fresh server each round."""
    batches = _batches(data.files, args.batch)
    for round_number in range(args.rounds):
        for interface in ("DICOMweb", "gRPC"):
            with tempfile.TemporaryDirectory(dir=WORK) as run_dir:
                http_port = free_port()
                log = WORK / "dicomweb-dicomrpc.log"
                with dicomrpc_server(Path(run_dir) / "data", log, http_port) as (target, pid):
                    send = (
                        _stow_sender(http_port, "/dicomweb/studies")
                        if interface == "DICOMweb"
                        else _grpc_sender(target)
                    )
                    rate, stored, rss = _timed_store(pid, args.clients, batches, send)
                    if stored != len(data.files):
                        results.notes.append(f"{interface} stored {stored}/{len(data.files)}")
                    results.add(f"dicomrpc {interface}", "store", "instances/s", rate, rss)
                    path = f"/dicomweb/studies/{study}"

                    def fetch(
                        web: bool = interface == "DICOMweb",
                        port: int = http_port,
                        path: str = path,
                        target: str = target,
                    ) -> int:
                        return _wado_study(port, path) if web else _grpc_study(target, study)

                    mbps, size, rss = _timed_retrieve(pid, fetch, args.retrieves)
                    results.add(f"dicomrpc {interface}", "retrieve", "MB/s", mbps, rss)
                    print(
                        f"[{round_number + 1}/{args.rounds}] dicomrpc {interface}: "
                        f"{rate:.1f} instances/s, {mbps:.0f} MB/s ({size} bytes per study)",
                        flush=True,
                    )


def run_orthanc(data: Corpus, study: str, args: argparse.Namespace, results: Results) -> None:
    """Orthanc's STOW-RS and WADO-RS on the same corpus and study, a fresh Orthanc per round."""
    batches = _batches(data.files, args.batch)
    for round_number in range(args.rounds):
        with tempfile.TemporaryDirectory(dir=WORK) as run_dir:
            log = WORK / "dicomweb-orthanc.log"
            with orthanc_server(Path(run_dir), log) as (port, pid):
                send = _stow_sender(port, "/dicom-web/studies")
                rate, stored, rss = _timed_store(pid, args.clients, batches, send)
                if stored != len(data.files):
                    results.notes.append(f"Orthanc stored {stored}/{len(data.files)}")
                results.add("Orthanc DICOMweb", "store", "instances/s", rate, rss)
                path = f"/dicom-web/studies/{study}"

                def fetch(port: int = port, path: str = path) -> int:
                    return _wado_study(port, path)

                mbps, size, rss = _timed_retrieve(pid, fetch, args.retrieves)
                results.add("Orthanc DICOMweb", "retrieve", "MB/s", mbps, rss)
                print(
                    f"[{round_number + 1}/{args.rounds}] Orthanc: {rate:.1f} instances/s, "
                    f"{mbps:.0f} MB/s ({size} bytes per study)",
                    flush=True,
                )


def report(
    data: Corpus, study_bytes: int, args: argparse.Namespace, results: Results, orthanc: str
) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        SECTION,
        "",
        "Written by `.venv/bin/python bench/dicomweb.py`; rerun it to refresh this section.",
        "",
        f"- Date: {now}",
        f"- Machine: {machine()}; {platform.platform()}",
        f"- Software: Python {platform.python_version()}, pydicom {pydicom.__version__}, {orthanc}",
        f"- Corpus: {len(data.files)} CT instances from bench/ingest.py ({data.megabytes:.0f} MB, "
        f"512x512 16-bit explicit VR LE, 100 per study); the retrieved study has "
        f"{study_bytes / MB:.1f} MB of instance files.",
        f"- Store: {args.clients} concurrent clients, {args.batch} instances per request "
        "(STOW-RS: one `multipart/related` POST on a keep-alive `http.client` connection per "
        "client, `TCP_NODELAY` set; gRPC: one `Client.store()` stream per batch, one channel "
        "per client), into an empty data directory.",
        f"- Retrieve: the study {args.retrieves} times in a row as stored (WADO-RS "
        "`transfer-syntax=*`, body read into a reused 1 MiB buffer, multipart framing counted; "
        "gRPC: the SDK, `Client.iter_instances`).",
        f"- {args.rounds} rounds, each on a fresh server (dicomrpc's DICOMweb and gRPC runs "
        "alternate within a round; Orthanc's rounds follow); the table shows the median (every "
        "round under (rounds)) and the largest peak RSS of the server's process tree.",
        "",
        "| server and interface | STOW / store instances/s | (rounds) | study retrieve MB/s "
        "| (rounds) | peak RSS MB |",
        "|---|--:|--|--:|--|--:|",
    ]
    for server, figures in results.figures.items():
        store, retrieve = figures["store"], figures["retrieve"]
        lines.append(
            f"| {server} | {store.median:.1f} | "
            f"{', '.join(f'{r:.0f}' for r in store.rounds)} | {retrieve.median:.0f} | "
            f"{', '.join(f'{r:.0f}' for r in retrieve.rounds)} | "
            f"{max(store.peak_rss_mb, retrieve.peak_rss_mb):.0f} |"
        )
    web = results.figures.get("dicomrpc DICOMweb")
    native = results.figures.get("dicomrpc gRPC")
    lines.append("")
    if web and native:
        store_ratio = web["store"].median / native["store"].median
        retrieve_ratio = web["retrieve"].median / native["retrieve"].median
        lines.append(
            f"- DICOMweb / gRPC on dicomrpc: store {store_ratio:.2f}x, "
            f"retrieve {retrieve_ratio:.2f}x."
        )
    other = results.figures.get("Orthanc DICOMweb")
    if web and other:
        lines.append(
            f"- dicomrpc DICOMweb / Orthanc DICOMweb: store "
            f"{web['store'].median / other['store'].median:.2f}x, retrieve "
            f"{web['retrieve'].median / other['retrieve'].median:.2f}x."
        )
    lines.extend(f"- Problem: {note}" for note in results.notes)
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="instances (1000)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent store clients (4)")
    parser.add_argument("--batch", type=int, default=10, help="instances per request (10)")
    parser.add_argument("--retrieves", type=int, default=5, help="study retrieves per round (5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (3)")
    parser.add_argument("--no-orthanc", action="store_true", help="skip Orthanc")
    parser.add_argument("--no-write", action="store_true", help="do not write RESULTS.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    data = corpus(args.count)
    first = pydicom.dcmread(data.files[0], stop_before_pixels=True)
    study = str(first.StudyInstanceUID)
    study_bytes = sum(
        f.stat().st_size
        for f in data.files
        if pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID == study
    )
    print(f"corpus: {len(data.files)} instances, {data.megabytes:.0f} MB; {machine()}", flush=True)
    results = Results()
    run_dicomrpc(data, study, args, results)
    missing = "skipped (--no-orthanc)" if args.no_orthanc else ensure_orthanc()
    if missing is None:
        run_orthanc(data, study, args, results)
        orthanc = f"{orthanc_version()} with DICOMweb plugin"
    else:
        orthanc = f"Orthanc not measured: {missing}"
    section = report(data, study_bytes, args, results, orthanc)
    print()
    print(section)
    if not args.no_write:
        write_section(section, SECTION)
        print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0 if not results.notes else 1


if __name__ == "__main__":
    sys.exit(main())
