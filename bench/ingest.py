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
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import queue
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

import grpc
import numpy as np
import psutil
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from dicomrpc import Client, ClientConfig, DicomRpcError

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work"
RESULTS = BENCH / "RESULTS.md"
SECTION = "## Ingest"

MB = 1024 * 1024
CORPUS_VERSION = 1
INSTANCES_PER_STUDY = 100
INSTANCES_PER_SERIES = 50
ROWS = COLUMNS = 512
RSS_INTERVAL_S = 0.05
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 90.0

GOAL_RATIO = 1.5
GOAL_RSS_MB = 300.0

ORTHANC = Path("/usr/sbin/Orthanc")
ORTHANC_PLUGIN = "libOrthancDicomWeb.so"


# --------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------

_FAMILY = ["SMITH", "MUELLER", "GARCIA", "ROSSI", "DUBOIS", "TANAKA", "NOWAK", "SILVA", "KIM"]
_GIVEN = ["ANNA", "JOHN", "MARIA", "PETER", "LENA", "YUKI", "OMAR", "EVA", "LUCA", "SARA"]
_BODY = [
    ("CHEST", "CT THORAX W/O CONTRAST", "CHEST 1.0 B30f"),
    ("ABDOMEN", "CT ABDOMEN PELVIS W CONTRAST", "ABD 1.0 B31f"),
    ("HEAD", "CT HEAD W/O CONTRAST", "HEAD 1.0 H30s"),
]


@dataclass(frozen=True)
class Corpus:
    """The generated files and their total size."""

    directory: Path
    files: list[Path]
    total_bytes: int

    @property
    def megabytes(self) -> float:
        return self.total_bytes / MB


def corpus(count: int) -> Corpus:
    """The cached corpus of ``count`` instances, generated first when missing or stale."""
    directory = WORK / f"corpus-{count}"
    marker = directory / "complete.json"
    expected = {"version": CORPUS_VERSION, "count": count}
    if marker.exists():
        info = json.loads(marker.read_text())
        if {k: info.get(k) for k in expected} == expected:
            files = sorted(directory.glob("*/*.dcm"))
            if len(files) == count:
                return Corpus(directory, files, sum(f.stat().st_size for f in files))
    if directory.exists():
        shutil.rmtree(directory)
    started = time.perf_counter()
    print(f"generating a corpus of {count} CT instances in {directory} ...", flush=True)
    files = generate(directory, count)
    total = sum(f.stat().st_size for f in files)
    marker.write_text(json.dumps({**expected, "bytes": total}))
    print(
        f"  {count} files, {total / MB:.0f} MB in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return Corpus(directory, files, total)


def generate(directory: Path, count: int, seed: int = 1729) -> list[Path]:
    """Write ``count`` CT instances: studies of 100 slices, in series of 50."""
    rng = np.random.default_rng(seed)
    names = random.Random(seed)
    yy, xx = np.mgrid[0:ROWS, 0:COLUMNS]
    body = ((xx - 256) / 210.0) ** 2 + ((yy - 266) / 160.0) ** 2 <= 1.0
    # Hounsfield units: air outside the body, soft tissue (+40) inside.
    base_hu = np.where(body, 40, -1000).astype(np.int16)
    files: list[Path] = []
    study_index = 0
    while len(files) < count:
        in_study = min(INSTANCES_PER_STUDY, count - len(files))
        study = _study_attributes(study_index, names)
        folder = directory / f"study-{study_index:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        signed = study_index % 2 == 1
        for number in range(in_study):
            series_number = number // INSTANCES_PER_SERIES + 1
            if number % INSTANCES_PER_SERIES == 0:
                series = series_attributes(
                    series_number, f"{9 + study_index % 8:02d}{10 + series_number:02d}00"
                )
            slice_number = number % INSTANCES_PER_SERIES + 1
            pixels = _slice_pixels(rng, base_hu, xx, yy, slice_number, signed)
            ds = _instance(study, series, slice_number, pixels, signed)
            path = folder / f"{series_number:02d}-{slice_number:03d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
        study_index += 1
    return files


def _study_attributes(index: int, names: random.Random) -> dict[str, object]:
    body_part, description, kernel = _BODY[index % len(_BODY)]
    birth = dt.date(1940, 1, 1) + dt.timedelta(days=names.randrange(0, 60 * 365))
    day = dt.date(2024, 1, 8) + dt.timedelta(days=index)
    return {
        "PatientName": f"{names.choice(_FAMILY)}^{names.choice(_GIVEN)}",
        "PatientID": f"PAT{100000 + index:06d}",
        "PatientBirthDate": birth.strftime("%Y%m%d"),
        "PatientSex": names.choice("MF"),
        "PatientAge": f"{min(day.year - birth.year, 999):03d}Y",
        "StudyInstanceUID": generate_uid(),
        "StudyDate": day.strftime("%Y%m%d"),
        "StudyTime": f"{8 + index % 10:02d}{index % 60:02d}00",
        "AccessionNumber": f"ACC{20240000 + index}",
        "StudyID": str(1000 + index),
        "StudyDescription": description,
        "BodyPartExamined": body_part,
        "ConvolutionKernel": kernel.split()[-1],
        "ProtocolName": kernel,
    }


def series_attributes(series_number: int, series_time: str) -> dict[str, object]:
    """The attributes of a new generated series."""
    return {
        "SeriesInstanceUID": generate_uid(),
        "FrameOfReferenceUID": generate_uid(),
        "SeriesNumber": series_number,
        "SeriesTime": series_time,
    }


def _slice_pixels(
    rng: np.random.Generator,
    base_hu: np.ndarray,
    xx: np.ndarray,
    yy: np.ndarray,
    slice_number: int,
    signed: bool,
) -> np.ndarray:
    """A slice in stored values: body, a moving 'vertebra' of bone, and noise."""
    hu = base_hu.copy()
    cy = 330 + int(20 * np.sin(slice_number / 8.0))
    hu[(xx - 256) ** 2 + (yy - cy) ** 2 <= 30**2] = 700
    hu += rng.integers(-30, 30, size=hu.shape, dtype=np.int16)
    if signed:
        # Stored = HU (intercept 0), 12 bits signed: -2048 .. 2047.
        return np.clip(hu, -2048, 2047).astype(np.int16)
    # Stored = HU + 1024 (intercept -1024), 12 bits unsigned: 0 .. 4095.
    return np.clip(hu + 1024, 0, 4095).astype(np.uint16)


def _instance(
    study: dict[str, object],
    series: dict[str, object],
    slice_number: int,
    pixels: np.ndarray,
    signed: bool,
) -> Dataset:
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "DICOMRPC_BENCH"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        setattr(ds, keyword, study["StudyDate"])
    ds.StudyTime = study["StudyTime"]
    ds.SeriesTime = series["SeriesTime"]
    ds.AcquisitionTime = ds.ContentTime = f"{series['SeriesTime']}.{slice_number:03d}"
    ds.AccessionNumber = study["AccessionNumber"]
    ds.Modality = "CT"
    ds.Manufacturer = "ACME Medical"
    ds.InstitutionName = "General Hospital"
    ds.ReferringPhysicianName = "WHO^DOCTOR"
    ds.StationName = "CT01"
    ds.StudyDescription = study["StudyDescription"]
    ds.SeriesDescription = f"{study['BodyPartExamined']} 1.0mm {study['ConvolutionKernel']}"
    ds.ManufacturerModelName = "Tomograph 64"
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge"):
        setattr(ds, keyword, study[keyword])
    ds.BodyPartExamined = study["BodyPartExamined"]
    ds.SliceThickness = "1.0"
    ds.KVP = "120"
    ds.ProtocolName = study["ProtocolName"]
    ds.ConvolutionKernel = study["ConvolutionKernel"]
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study["StudyInstanceUID"]
    ds.SeriesInstanceUID = series["SeriesInstanceUID"]
    ds.StudyID = study["StudyID"]
    ds.SeriesNumber = series["SeriesNumber"]
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = slice_number
    z = -100.0 - slice_number * 1.0
    ds.ImagePositionPatient = ["-175.0", "-175.0", f"{z:.1f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = series["FrameOfReferenceUID"]
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{z:.1f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ROWS
    ds.Columns = COLUMNS
    ds.PixelSpacing = ["0.683594", "0.683594"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 1 if signed else 0
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = "0" if signed else "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.PixelData = pixels.tobytes()
    return ds


def warm_cache(files: list[Path]) -> None:
    """Read every file once so that no run pays for cold reads the others do not."""
    for path in files:
        path.read_bytes()


# --------------------------------------------------------------------------------------------
# Processes: memory sampling, starting and stopping servers
# --------------------------------------------------------------------------------------------


class ResourceSampler:
    """Samples process trees' total RSS (peak) and CPU time every ``interval`` seconds.

    Several roots are one server made of several processes that are not one tree (the nodes of
    a cluster, or a database server beside them): their figures add up.
    """

    def __init__(self, pid: int, *more: int, interval: float = RSS_INTERVAL_S) -> None:
        self._roots = [psutil.Process(p) for p in (pid, *more)]
        self._interval = interval
        self._stop = threading.Event()
        self._cpu: dict[int, float] = {}
        self._before: dict[int, float] = {}
        self.peak_rss = 0
        self.samples = 0
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> ResourceSampler:
        self._sample()
        # What the tree had spent before (starting up, importing): not the run's.
        self._before = dict(self._cpu)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def cpu_seconds(self) -> float:
        """The user + system CPU time the tree spent since ``__enter__``, as last sampled."""
        return sum(cpu - self._before.get(pid, 0.0) for pid, cpu in self._cpu.items())

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def _sample(self) -> None:
        processes = []
        for root in self._roots:
            with contextlib.suppress(psutil.NoSuchProcess):
                processes += [root, *root.children(recursive=True)]
        if not processes:
            return
        rss = 0
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                with process.oneshot():
                    rss += process.memory_info().rss
                    times = process.cpu_times()
                self._cpu[process.pid] = times.user + times.system
        self.peak_rss = max(self.peak_rss, rss)
        self.samples += 1


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file."""
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class ServerError(RuntimeError):
    """A server did not start, died, or did not stop cleanly (the message has its log)."""


def stop_process(process: subprocess.Popen[bytes], name: str, log: Path) -> None:
    """SIGTERM, wait for a graceful exit; kill after a timeout. Raise if it was not clean."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise ServerError(
                f"{name} did not stop within {STOP_TIMEOUT_S:.0f} s of SIGTERM (killed); "
                f"log {log}:\n{tail(log)}"
            ) from None
    if process.returncode not in (0, -signal.SIGTERM):
        raise ServerError(f"{name} exited with {process.returncode}; log {log}:\n{tail(log)}")


def _dicomrpc_command() -> list[str]:
    script = Path(sys.executable).with_name("dicomrpc")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "dicomrpc.cli"]


@contextlib.contextmanager
def dicomrpc_server(
    data_dir: Path, log: Path, http_port: int = -1, serve_args: Sequence[str] = ()
) -> Iterator[tuple[str, int]]:
    """Run ``dicomrpc serve`` on ``data_dir`` and a free port; yield (target, pid).

    DICOMweb is off unless ``http_port`` names a port for it, DIMSE unless ``serve_args`` name
    a ``--dimse-port``; ``serve_args`` are more options.
    """
    port = free_port()
    command = [
        *_dicomrpc_command(),
        "serve",
        "--data",
        str(data_dir),
        "--host",
        "127.0.0.1",
        "--grpc-port",
        str(port),
        "--http-port",
        str(http_port),
        "--dimse-port",
        "-1",
        *serve_args,
    ]
    with open(log, "wb") as err:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, cwd=ROOT)
    with _killed_on_error(process):
        assert process.stdout is not None
        line = _read_line(process.stdout, READY_TIMEOUT_S)
        if line is None or "serving gRPC on" not in line:
            process.kill()
            process.wait()
            raise ServerError(
                f"dicomrpc did not report ready (stdout {line!r}, exit {process.returncode}); "
                f"log {log}:\n{tail(log)}"
            )
        yield line.rsplit(" ", 1)[-1], process.pid
    stop_process(process, "dicomrpc", log)


@contextlib.contextmanager
def _killed_on_error(process: subprocess.Popen[bytes]) -> Iterator[None]:
    """Kill ``process`` when the block raises (the exception goes on)."""
    try:
        yield
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait()
        raise


def _read_line(stream: IO[bytes], timeout: float) -> str | None:
    """The first line of ``stream``, or ``None`` at EOF or after ``timeout`` seconds."""
    lines: queue.Queue[bytes] = queue.Queue()
    reader = threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True)
    reader.start()
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        return None
    return line.decode(errors="replace").strip() or None


def dicomrpc_index_counts(data_dir: Path, log: Path) -> tuple[int, int, int] | None:
    """(studies, series, instances) the server logs when it opens ``data_dir`` again."""
    pattern = re.compile(r"(\d+) studies, (\d+) series, (\d+) instances")
    with dicomrpc_server(data_dir, log):
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            match = pattern.search(log.read_text(errors="replace"))
            if match:
                studies, series, instances = (int(g) for g in match.groups())
                return studies, series, instances
            time.sleep(0.05)
    return None


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


def run_workers(
    clients: int,
    connect: Callable[[], object],
    work: Callable[[object], None],
    close: Callable[[object], None],
) -> tuple[float, float]:
    """Connect ``clients`` workers, release them together, return (wall s, client CPU s)."""
    barrier = threading.Barrier(clients + 1)
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            connection = connect()
        except BaseException as exc:
            failures.append(exc)
            barrier.abort()
            return
        try:
            barrier.wait()
            work(connection)
            ends.append(time.perf_counter())  # before close(): closing is not ingest time
        except threading.BrokenBarrierError:
            pass
        except BaseException as exc:
            failures.append(exc)
        finally:
            close(connection)

    ends: list[float] = []
    threads = [threading.Thread(target=worker, name=f"client-{i}") for i in range(clients)]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()
    cpu0, start = time.process_time(), time.perf_counter()
    for thread in threads:
        thread.join()
    cpu = time.process_time() - cpu0
    wall = (max(ends) if ends else time.perf_counter()) - start
    if failures:
        raise failures[0]
    return wall, cpu


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
            spy = _start_py_spy(pid, profile, gil_only) if profile else None
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
                    _stop_py_spy(spy)
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


def orthanc_plugin() -> Path | None:
    """Where the DICOMweb plugin is (per ``dpkg -L orthanc-dicomweb``)."""
    candidates: list[Path] = []
    if shutil.which("dpkg"):
        listing = subprocess.run(
            ["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=False
        ).stdout
        candidates += [Path(p) for p in listing.split() if p.endswith(ORTHANC_PLUGIN)]
    candidates.append(Path("/usr/share/orthanc/plugins") / ORTHANC_PLUGIN)
    return next((p for p in candidates if p.exists()), None)


def ensure_orthanc() -> str | None:
    """Make Orthanc available (installing it with apt-get if needed); None, or why not."""
    if not ORTHANC.exists() or orthanc_plugin() is None:
        print("Orthanc missing: apt-get install -y orthanc orthanc-dicomweb ...", flush=True)
        install = subprocess.run(
            ["apt-get", "install", "-y", "orthanc", "orthanc-dicomweb"],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        if install.returncode != 0:
            return f"apt-get install failed ({install.returncode}): {install.stderr[-500:]}"
        # The package starts a system service; this bench runs its own Orthanc.
        subprocess.run(["service", "orthanc", "stop"], capture_output=True, check=False)
    if not ORTHANC.exists():
        return f"{ORTHANC} is missing"
    if orthanc_plugin() is None:
        return f"{ORTHANC_PLUGIN} is missing"
    return None


def orthanc_version() -> str:
    out = subprocess.run([str(ORTHANC), "--version"], capture_output=True, text=True, check=False)
    return out.stdout.split("\n", 1)[0].strip()


@contextlib.contextmanager
def orthanc_server(
    run_dir: Path, log: Path, settings: dict[str, object] | None = None
) -> Iterator[tuple[int, int]]:
    """Run Orthanc with a temporary configuration; yield (HTTP port, pid).

    ``settings`` override or add configuration options (its DICOM server, say).
    """
    plugin = orthanc_plugin()
    assert plugin is not None
    port = free_port()
    config = {
        "Name": "dicomrpc-bench",
        "StorageDirectory": str(run_dir / "storage"),
        "IndexDirectory": str(run_dir / "index"),
        "HttpServerEnabled": True,
        "HttpPort": port,
        "DicomServerEnabled": False,
        "DicomPort": free_port(),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        **(settings or {}),
    }
    config_path = run_dir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(ORTHANC), str(config_path)], stdout=out, stderr=subprocess.STDOUT, cwd=run_dir
        )
    with _killed_on_error(process):
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise ServerError(f"Orthanc exited with {process.returncode}:\n{tail(log)}")
            if time.monotonic() > deadline:
                raise ServerError(f"Orthanc was not ready in {READY_TIMEOUT_S:.0f} s:\n{tail(log)}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _ = _http(port, "GET", "/system")
                if status == 200:
                    break
            time.sleep(0.1)
        yield port, process.pid
    stop_process(process, "Orthanc", log)


def _http(port: int, method: str, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def stow_body(paths: list[Path], boundary: str) -> bytes:
    """A STOW-RS ``multipart/related`` body, one ``application/dicom`` part per file."""
    delimiter = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    parts: list[bytes] = []
    for path in paths:
        parts += [delimiter, path.read_bytes(), b"\r\n"]
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts)


def _sequence_length(answer: dict[str, dict[str, list[object]]], tag: str) -> int:
    return len(answer.get(tag, {}).get("Value", []))


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
                stored = _sequence_length(answer, "00081199")
                failed = _sequence_length(answer, "00081198")
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
            status, body = _http(port, "GET", "/statistics")
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
# Profiling (py-spy)
# --------------------------------------------------------------------------------------------

PROFILE_RATE = 100


def _py_spy() -> str:
    found = shutil.which(
        "py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    if found is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found


def _start_py_spy(pid: int, output: Path, gil_only: bool) -> subprocess.Popen[bytes]:
    """Attach py-spy to ``pid``, recording collapsed stacks (function-level) to ``output``.

    With ``gil_only`` only the thread holding the GIL is sampled: the server's Python CPU time,
    without the threads that wait (idle pool workers, the event loop in epoll, fsync).
    """
    output.unlink(missing_ok=True)
    log = output.with_suffix(".log")
    with open(log, "wb") as out:
        spy = subprocess.Popen(
            [
                _py_spy(),
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(PROFILE_RATE),
                "--format",
                "raw",
                "--function",
                *(["--gil"] if gil_only else []),
                "--output",
                str(output),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    time.sleep(1.0)  # let it attach before the clock starts
    if spy.poll() is not None:
        raise ServerError(f"py-spy exited with {spy.returncode}:\n{tail(log)}")
    return spy


def _stop_py_spy(spy: subprocess.Popen[bytes]) -> None:
    """Ctrl-C py-spy: it writes its output and exits."""
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(60)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()


def _frame_name(frame: str) -> str:
    """``function (path:line)`` with the path made short."""
    for prefix in (f"{ROOT}/server/", f"{ROOT}/client/", f"{ROOT}/"):
        frame = frame.replace(prefix, "")
    return re.sub(r"\S*/site-packages/", "", re.sub(r"/usr/lib/python3[.\d]*/", "", frame))


def profile_tables(raw: Path, gil_only: bool, top: int = 15) -> str:
    """Top functions by own (leaf) and by cumulative samples, from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            cumulative[frame] += count
    if not total:
        return "py-spy recorded no samples"
    which = "the thread holding the GIL" if gil_only else "active threads, summed"
    lines = [f"{total} samples at {PROFILE_RATE} Hz ({which})"]
    for title, counter in (("own time", own), ("cumulative time", cumulative)):
        lines += ["", f"top {top} by {title}:", f"{'samples':>8} {'%':>6} {'s':>7}  function"]
        lines += [
            f"{n:>8} {100 * n / total:>5.1f}% {n / PROFILE_RATE:>7.2f}  {name}"
            for name, n in counter.most_common(top)
        ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram = psutil.virtual_memory().total / 1024**3
    return f"{os.cpu_count()} CPUs ({model or platform.machine()}), {ram:.1f} GiB RAM"


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


def write_section(section: str, heading: str = SECTION, path: Path = RESULTS) -> None:
    """Replace (or append) the ``heading`` section of ``path``; keep every other section."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\s*$.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


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
        _py_spy()
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
        write_section(section)
        print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0 if all(r.complete for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
