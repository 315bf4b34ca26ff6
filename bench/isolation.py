"""Isolation benchmark: how fast small requests are answered while heavy or hostile clients run.

Usage (from the repository root)::

    .venv/bin/python bench/isolation.py            # writes the Isolation section of RESULTS.md
    .venv/bin/python bench/isolation.py --quick    # fewer probes and a smaller study

A real ``dicomrpc serve`` (a child process, fresh data directory, gRPC and DICOMweb on
loopback) holds a study of 300,000 metadata elements (4 instances, each with a
ReferencedImageSequence of 25,000 items of 3 elements) and 1000 small instances of one study
whose ReferencedRequestSequence has 100 items (so a page of 1000 instance results with
``includefield=all`` carries 300,000 elements). Under each load below, one probe client
measures, one after the other and again and again:

- a 1 KB store over gRPC (``Client.store``, one channel kept open);
- a 1 KB store over STOW-RS (one ``POST``, a new connection each time);
- a gRPC health check (``grpc.health.v1.Health/Check``);
- a small search (QIDO-RS ``GET /studies?PatientID=...&limit=1``, a new connection each time).

The loads, each from its own process (so that the probe client shares no interpreter with it),
repeating until the probes are done:

- none;
- the study's metadata (``GET /studies/{uid}/metadata``, 300,000 elements, about 30 MB of JSON);
- a 16 MiB Accept header (``GET /studies``): refused with 431 at the default head limit;
- the same header admitted (a second server with ``--http-max-header-bytes 33554432``): parsed
  and negotiated;
- the huge search (``GET /instances?...&limit=1000&includefield=all``);
- a slowloris crowd: 200 connections each sending its head a byte a second (cut with 408 after
  ``--http-header-timeout``, 10 s, then opened again);
- many idle connections: 3000 connections that send nothing, opened at once and held (above
  the default cap of 1000: the longest idle are closed to make room).

Reported: p50 and p95 of each probe under each load, how many heavy requests completed meanwhile
and their median time, and the server's peak RSS. The goal: every probe answered within 100 ms
(p95) under every load.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import io
import multiprocessing as mp
import os
import platform
import selectors
import socket
import statistics
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event
from pathlib import Path

import grpc
import pydicom
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import ROOT, WORK, ResourceSampler, dicomrpc_server, free_port, machine, write_section
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(ROOT / "client"))
from dicomrpc import Client

SECTION = "## Isolation"
PREFIX = "/dicomweb"
BOUNDARY = "isolation-" + uuid.uuid4().hex
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
PROBES = ("gRPC store 1 KB", "STOW-RS 1 KB", "gRPC health", "small search")
GOAL_MS = 100.0
PROBE_PATIENT = "PROBE-1"


# -- data ----------------------------------------------------------------------------------


def small_instance(
    study: str | None = None, patient_id: str = PROBE_PATIENT, side: int = 16
) -> bytes:
    """A CT image of ``side`` x ``side`` 16-bit pixels as Part 10 bytes (16: about 1 KB)."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Probe^Isolation"
    ds.PatientID = patient_id
    ds.StudyDate, ds.StudyTime = "20240102", "101112"
    ds.Modality = "CT"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes(side * side * 2)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH", group, element) + vr + struct.pack("<H", len(value)) + value


def _with_sequence(base: bytes, before: bytes, tag: tuple[int, int], items: list[bytes]) -> bytes:
    """``base`` with a sequence of ``items`` inserted before the element starting ``before``.

    Written as bytes (explicit VR little endian): far faster than pydicom for 25,000 items.
    """
    body = b"".join(b"\xfe\xff\x00\xe0" + struct.pack("<I", len(item)) + item for item in items)
    sequence = struct.pack("<HH", *tag) + b"SQ\x00\x00" + struct.pack("<I", len(body)) + body
    at = base.index(before)
    return base[:at] + sequence + base[at:]


def metadata_heavy(study: str, items: int) -> bytes:
    """An instance whose ReferencedImageSequence has ``items`` items of 3 elements."""
    sop_class = b"1.2.840.10008.5.1.4.1.1.2\x00"
    return _with_sequence(
        small_instance(study, "HEAVY"),
        b"\x10\x00\x10\x00PN",  # PatientName, the first element after (0008,1140)
        (0x0008, 0x1140),
        [
            _element(0x0008, 0x1150, b"UI", sop_class)
            + _element(0x0008, 0x1155, b"UI", f"1.2.3.{n:06d}".encode())
            + _element(0x0008, 0x1160, b"IS", b"1 ")
            for n in range(items)
        ],
    )


def search_heavy(study: str, items: int) -> bytes:
    """A small instance whose study's ReferencedRequestSequence has ``items`` items."""
    return _with_sequence(
        small_instance(study, "MANY", side=4),
        b"\xe0\x7f\x10\x00",  # Pixel Data, the last element
        (0x0040, 0xA370),
        [
            _element(0x0008, 0x0050, b"SH", f"A{n:07d}".encode())
            + _element(0x0040, 0x1001, b"SH", f"R{n:07d}".encode())
            for n in range(items)
        ],
    )


def stow_body(instance: bytes) -> bytes:
    head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    return head + instance + f"\r\n--{BOUNDARY}--\r\n".encode()


# -- probes --------------------------------------------------------------------------------


@dataclass
class Probe:
    """The probe client: one gRPC channel, a new HTTP connection per request."""

    target: str
    port: int
    client: Client = field(init=False)
    channel: grpc.Channel = field(init=False)

    def __post_init__(self) -> None:
        self.client = Client(self.target)
        self.channel = grpc.insecure_channel(self.target)

    def close(self) -> None:
        self.client.close()
        self.channel.close()

    def http_request(self, method: str, path: str, body: bytes = b"", **headers: str) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            connection.request(method, PREFIX + path, body=body or None, headers=headers)
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    def round(self) -> dict[str, float]:
        """Each probe once: its latency in ms (the instances are built before the timing)."""
        grpc_instance, stow_instance = small_instance(), stow_body(small_instance())
        times: dict[str, float] = {}

        def timed(name: str, call: Callable[[], object]) -> None:
            start = time.perf_counter()
            call()
            times[name] = (time.perf_counter() - start) * 1000

        def grpc_store() -> None:
            assert len(self.client.store([grpc_instance]).stored) == 1

        def stow() -> None:
            status = self._http("POST", "/studies", stow_instance, **{"Content-Type": STOW_TYPE})
            assert status == 200, status

        def health() -> None:
            answer = health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(), timeout=120
            )
            assert answer.status == health_pb2.HealthCheckResponse.SERVING

        def search() -> None:
            status = self._http("GET", f"/studies?PatientID={PROBE_PATIENT}&limit=1")
            assert status == 200, status

        timed(PROBES[0], grpc_store)
        timed(PROBES[1], stow)
        timed(PROBES[2], health)
        timed(PROBES[3], search)
        return times


# -- loads (each in a process of its own) ---------------------------------------------------


def _repeat(port: int, request: bytes, stop: Event, results: mp.Queue[tuple[int, float]]) -> None:
    """Send ``request`` on a new connection, read the answer to the end, again until stopped."""
    while not stop.is_set():
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=300) as sock:
            sock.sendall(request)
            answer = bytearray()
            with contextlib.suppress(ConnectionResetError):
                while data := sock.recv(1 << 20):
                    answer += data
        status = int(answer.split(b" ", 2)[1]) if answer else 0
        results.put((status, (time.perf_counter() - start) * 1000))


def _send_refused(
    port: int, request: bytes, stop: Event, results: mp.Queue[tuple[int, float]]
) -> None:
    """As :func:`_repeat`, sending from a thread: the answer (431) comes before the end of it."""
    import threading

    while not stop.is_set():
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=300) as sock:

            def send(sock: socket.socket = sock) -> None:
                with contextlib.suppress(OSError):
                    sock.sendall(request)

            sender = threading.Thread(target=send)
            sender.start()
            first = b""
            with contextlib.suppress(ConnectionResetError):
                first = sock.recv(65536)
                while sock.recv(1 << 20):
                    pass
            sender.join()
        status = int(first.split(b" ", 2)[1]) if first else 0
        results.put((status, (time.perf_counter() - start) * 1000))


def _crowd(
    port: int, size: int, trickle: bool, stop: Event, results: mp.Queue[tuple[int, float]]
) -> None:
    """``size`` connections that send nothing, or their head a byte a second.

    Idle ones are opened once and held; trickling ones are opened again when cut, as a
    slowloris client does. Each cut is reported as (the status answered, or 0 for a close, 0).
    """
    head = b"GET /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000
    sockets: dict[socket.socket, int] = {}
    watch = selectors.DefaultSelector()

    def open_one() -> None:
        with contextlib.suppress(OSError):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.setblocking(False)
            sockets[sock] = 0
            watch.register(sock, selectors.EVENT_READ)

    for _ in range(size):
        open_one()
    next_byte = time.monotonic()
    while not stop.is_set():
        for key, _ in watch.select(0.2) if sockets else []:
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            data = b""
            with contextlib.suppress(OSError):
                data = sock.recv(65536)
            status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1") else 0
            results.put((status, 0.0))
            watch.unregister(sock)
            del sockets[sock]
            sock.close()
            if trickle:
                open_one()
        if trickle and time.monotonic() >= next_byte:
            next_byte += 1.0
            for sock, sent in list(sockets.items()):
                with contextlib.suppress(OSError):
                    sock.send(head[sent : sent + 1])
                    sockets[sock] = min(sent + 1, len(head) - 1)
        if not sockets:
            time.sleep(0.2)
    for sock in sockets:
        sock.close()


@dataclass
class Load:
    """A load: the function (and arguments) its process runs, its warm-up, its server."""

    name: str
    run: Callable[..., None] | None = None
    args: tuple[object, ...] = ()
    warm_s: float = 2.0
    server: str = "default"


@dataclass
class Outcome:
    """What one load measured."""

    load: Load
    probes: dict[str, list[float]]
    heavy: list[tuple[int, float]]
    peak_rss_mb: float


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def measure(load: Load, target: str, port: int, pid: int, rounds: int) -> Outcome:
    context = mp.get_context("spawn")  # the load's process shares nothing with this one
    stop = context.Event()
    results: mp.Queue[tuple[int, float]] = context.Queue()
    process = None
    if load.run is not None:
        process = context.Process(target=load.run, args=(port, *load.args, stop, results))
        process.start()
        time.sleep(load.warm_s)  # the load is under way
    probe = Probe(target, port)
    probes: dict[str, list[float]] = {name: [] for name in PROBES}
    try:
        with ResourceSampler(pid) as sampler:
            for _ in range(rounds):
                for name, ms in probe.round().items():
                    probes[name].append(ms)
    finally:
        probe.close()
        stop.set()
    heavy: list[tuple[int, float]] = []
    if process is not None:
        deadline = time.monotonic() + 300
        while process.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                heavy.append(results.get(timeout=0.5))
        process.join(10)
        with contextlib.suppress(Exception):
            while True:
                heavy.append(results.get_nowait())
    return Outcome(load, probes, heavy, sampler.peak_rss / 1024**2)


# -- the run -------------------------------------------------------------------------------


def get(path: str, **headers: str) -> bytes:
    lines = [f"GET {PREFIX}{path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def seed(target: str, args: argparse.Namespace) -> str:
    """Store the heavy study and the searched instances; return the heavy study's UID."""
    study, searched = generate_uid(), generate_uid()
    per_instance = args.elements // 4 // 3
    with Client(target) as client:
        heavy = [metadata_heavy(study, per_instance) for _ in range(4)]
        assert len(client.store(heavy).stored) == 4
        for start in range(0, args.searched, 100):
            batch = [
                search_heavy(searched, args.requests)
                for _ in range(min(100, args.searched - start))
            ]
            assert len(client.store(batch).stored) == len(batch)
        assert len(client.store([small_instance()]).stored) == 1  # the small search's study
    return study


def loads(study: str, args: argparse.Namespace) -> list[Load]:
    accept = "text/html, " * ((16 << 20) // 11 + 1)
    admitted = ", ".join(["text/html;q=0.5;level=" + "x" * 48] * ((16 << 20) // 72 + 1))
    admitted += ", application/dicom+json"
    return [
        Load("no load"),
        Load(
            f"metadata of {args.elements:,} elements",
            _repeat,
            (get(f"/studies/{study}/metadata"),),
        ),
        Load("16 MiB Accept header (431)", _send_refused, (get("/studies", Accept=accept),)),
        Load(
            "16 MiB Accept header, admitted and parsed",
            _repeat,
            (get("/studies", Accept=admitted),),
            server="big heads",
        ),
        Load(
            f"huge search ({args.searched} results, {args.searched * args.requests * 3:,} "
            "elements)",
            _repeat,
            (get("/instances?PatientID=MANY&limit=1000&includefield=all"),),
        ),
        # The first cuts (408 after 10 s) come while the probes run.
        Load(f"slowloris crowd of {args.slowloris}", _crowd, (args.slowloris, True), 9.5),
        Load(f"{args.idle} idle connections", _crowd, (args.idle, False)),
    ]


@contextlib.contextmanager
def server(run_dir: Path, name: str, options: tuple[str, ...]) -> Iterator[tuple[str, int, int]]:
    port = free_port()
    with dicomrpc_server(
        run_dir / f"data-{name}", run_dir / f"{name}.log", http_port=port, options=options
    ) as (target, pid):
        yield target, port, pid


def report(outcomes: list[Outcome], args: argparse.Namespace, loads: tuple[float, float]) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        SECTION,
        "",
        "Written by `.venv/bin/python bench/isolation.py`; rerun it to refresh this section.",
        "",
        f"- Date: {now}",
        f"- Machine: {machine()}; {platform.platform()}",
        f"- Software: Python {platform.python_version()}, grpcio {grpc.__version__}, "
        f"pydicom {pydicom.__version__}",
        f"- Data: a study of {args.elements:,} metadata elements (4 instances, each with a "
        f"ReferencedImageSequence of {args.elements // 12:,} items of 3 elements); "
        f"{args.searched} instances of one study whose ReferencedRequestSequence has "
        f"{args.requests} items.",
        f"- Probes: {args.rounds} rounds of a 1 KB store over gRPC (one channel kept), a 1 KB "
        "STOW-RS (a new connection each), a gRPC health check and a small QIDO-RS search (a new "
        "connection each), one after the other, from one client process; each load runs from "
        "another process, repeating until the probes are done. Default settings, except the "
        "admitted Accept header's server (`--http-max-header-bytes 33554432`). Client and "
        "server share the machine's CPUs (with other work running on it: the 1-minute load "
        f"average was {loads[0]:.1f} when the run started, {loads[1]:.1f} when it ended).",
        "",
        "| load | "
        + " | ".join(f"{name} p50 / p95 ms" for name in PROBES)
        + " | heavy requests meanwhile (median ms) | peak RSS MB |",
        "|---|" + "--:|" * len(PROBES) + "--|--:|",
    ]
    for outcome in outcomes:
        cells = [
            f"{statistics.median(v):.1f} / {percentile(v, 95):.1f}" for v in outcome.probes.values()
        ]
        lines.append(
            f"| {outcome.load.name} | {' | '.join(cells)} | {_heavy(outcome)} | "
            f"{outcome.peak_rss_mb:.0f} |"
        )
    lines += ["", f"Goal: every probe answered within {GOAL_MS:.0f} ms (p95) under every load."]
    for outcome in outcomes:
        worst = max(percentile(v, 95) for v in outcome.probes.values())
        verdict = "met" if worst < GOAL_MS else "NOT met"
        lines.append(f"- {outcome.load.name}: slowest probe p95 {worst:.1f} ms — {verdict}.")
    return "\n".join(lines) + "\n"


def _heavy(outcome: Outcome) -> str:
    if outcome.load.run is None:
        return "—"
    statuses: dict[int, int] = {}
    for status, _ in outcome.heavy:
        statuses[status] = statuses.get(status, 0) + 1
    names = {0: "closed"}
    counts = ", ".join(
        f"{count} x {names.get(status, status)}" for status, count in sorted(statuses.items())
    )
    timed = [ms for _, ms in outcome.heavy if ms]
    median = f" ({statistics.median(timed):.0f})" if timed else ""
    return f"{counts or 'none'}{median}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--rounds", type=int, default=40, help="probe rounds per load (40)")
    parser.add_argument("--elements", type=int, default=300_000, help="metadata elements")
    parser.add_argument("--searched", type=int, default=1000, help="instances searched (1000)")
    parser.add_argument("--requests", type=int, default=100, help="sequence items each (100)")
    parser.add_argument("--slowloris", type=int, default=200, help="slowloris crowd (200)")
    parser.add_argument("--idle", type=int, default=3000, help="idle connections (3000)")
    parser.add_argument("--no-write", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.elements, args.searched, args.idle = 5, 30_000, 100, 300
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    outcomes: list[Outcome] = []
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=WORK) as work:
        run_dir = Path(work)
        with server(run_dir, "default", ()) as (target, port, pid):
            print(f"seeding; {machine()}", flush=True)
            study = seed(target, args)
            plan = loads(study, args)
            for load in plan:
                if load.server != "default":
                    continue
                print(f"measuring: {load.name}", flush=True)
                outcomes.append(measure(load, target, port, pid, args.rounds))
        with server(run_dir, "big heads", ("--http-max-header-bytes", str(32 << 20))) as (
            target,
            port,
            pid,
        ):
            with Client(target) as client:  # the small search's study
                assert len(client.store([small_instance()]).stored) == 1
            for load in plan:
                if load.server == "big heads":
                    print(f"measuring: {load.name}", flush=True)
                    outcomes.append(measure(load, target, port, pid, args.rounds))
    order = {load.name: n for n, load in enumerate(plan)}
    outcomes.sort(key=lambda outcome: order[outcome.load.name])
    section = report(outcomes, args, (load_at_start, os.getloadavg()[0]))
    print()
    print(section)
    if not args.no_write:
        write_section(section, SECTION)
        print(f"wrote {(ROOT / 'bench' / 'RESULTS.md').relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
