"""DIMSE benchmark: dcmtk's storescu, findscu, getscu and movescu against dicomrpc and Orthanc.

Usage (from the repository root)::

    .venv/bin/python bench/dimse.py              # 1,000 CT instances, 3 runs each, RESULTS.md
    .venv/bin/python bench/dimse.py --quick      # 200 instances, 1 run, 10 queries: a smoke run
    .venv/bin/python bench/dimse.py --profile    # the N-association dicomrpc store, cProfiled

A PACS is mostly fed and queried over DIMSE, by modalities and workstations running tools like
dcmtk's, so this measures what they see: the corpus of the ingest benchmark (512x512 16-bit CT
slices, explicit VR little endian, ~0.5 MB each, cached under ``bench/.work/``) sent by
``storescu`` over 1 association, then over N concurrent associations (N ``storescu`` processes,
each sending its share of the files), into a fresh dicomrpc (its DIMSE port) and a fresh
Orthanc (its DICOM port, any calling AE allowed, a temporary configuration as the other
benchmarks start it). Every run starts its server on an empty data folder, with the corpus in
the page cache; the instances stored are counted independently afterwards (a study-level
C-FIND summing Number of Study Related Instances, through pynetdicom).

Then both servers, holding the same corpus, answer study-level C-FINDs from ``findscu``
(alternately, one query to each in turn): a Patient ID match and a wildcard on Patient Name,
p50 / p95 of each, the matches of each query compared between the servers. A C-ECHO from
``echoscu`` is timed the same way: each tool's start, its association and release are in every
figure, so the difference between a C-FIND and a C-ECHO is the query itself. Last, each server
sends one study back: to ``getscu`` on its own association (C-GET), and to dcmtk's ``storescp``
on an association the server requests (C-MOVE).

dcmtk's tools run with ``TCP_NODELAY=1``: without it each message waits ~40 ms on Nagle's
algorithm. ``--profile`` runs dicomrpc's serve under cProfile, every thread
(``threading.setprofile``), and prints its top functions.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import os
import platform
import pstats
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pynetdicom
from corpus import Corpus, corpus, warm_cache
from harness import (
    ROOT,
    WORK,
    ResourceSampler,
    ServerError,
    dicomrpc_server,
    ensure_orthanc,
    free_port,
    machine,
    orthanc_server,
    orthanc_version,
    write_section,
)
from ingest import RunResult, median_run
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

SECTION = "## DIMSE"
CALLING_AE = "BENCHSCU"
DICOMRPC_AE = "DICOMRPC"
ORTHANC_AE = "ORTHANC"
# The C-MOVE destination: dcmtk's storescp, known to both servers by this title.
DESTINATION_AE = "BENCHDEST"
GOAL_RATIO = 1.0
READY_TIMEOUT_S = 60.0
TOOL_TIMEOUT_S = 600.0
# dcmtk waits ~40 ms on each small message without it (Nagle's algorithm); Orthanc, whose
# DICOM server is dcmtk's, inherits it from main().
DCMTK_ENV = dict(os.environ, TCP_NODELAY="1")
RETURN_KEYS = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyDescription",
    "AccessionNumber",
    "PatientName",
    "PatientID",
    "ModalitiesInStudy",
)


@dataclass(frozen=True)
class Target:
    """A DIMSE service provider: its name in the tables, AE title and port."""

    name: str
    ae_title: str
    port: int


# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------


def _wait_for_port(port: int, what: str) -> None:
    """Wait until ``port`` takes connections (a server prints it is ready before DIMSE is)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise ServerError(f"{what}'s DIMSE port {port} took no connection") from None
            time.sleep(0.05)


@contextlib.contextmanager
def dicomrpc_dimse(
    run_dir: Path, log: Path, serve_args: Sequence[str] = (), destination: int | None = None
) -> Iterator[tuple[Target, int]]:
    """A fresh dicomrpc serving DIMSE on a free port; yield (target, pid).

    ``destination``: the port of the C-MOVE destination ``DESTINATION_AE`` on this host.
    """
    port = free_port()
    args = ["--dimse-port", str(port), "--ae-title", DICOMRPC_AE, *serve_args]
    if destination is not None:
        args += ["--dimse-peer", f"{DESTINATION_AE}={DESTINATION_AE}@127.0.0.1:{destination}"]
    with dicomrpc_server(run_dir / "data", log, serve_args=args) as (_, pid):
        _wait_for_port(port, "dicomrpc")
        yield Target("dicomrpc", DICOMRPC_AE, port), pid


@contextlib.contextmanager
def orthanc_dimse(
    run_dir: Path, log: Path, destination: int | None = None
) -> Iterator[tuple[Target, int]]:
    """A fresh Orthanc with its DICOM server on a free port, any calling AE allowed.

    ``destination``: the port of the C-MOVE destination ``DESTINATION_AE`` on this host.
    """
    port = free_port()
    modalities: dict[str, list[object]] = {}
    if destination is not None:
        modalities[DESTINATION_AE] = [DESTINATION_AE, "127.0.0.1", destination]
    settings: dict[str, object] = {
        "DicomServerEnabled": True,
        "DicomAet": ORTHANC_AE,
        "DicomPort": port,
        # Any requester may echo, store and query, from any host and whatever it calls us.
        "DicomCheckCalledAet": False,
        "DicomCheckModalityHost": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowMove": True,
        "DicomModalities": modalities,
    }
    with orthanc_server(run_dir, log, settings) as (_, pid):
        _wait_for_port(port, "Orthanc")
        yield Target("Orthanc", ORTHANC_AE, port), pid


def _server(
    name: str, run_dir: Path, log: Path, destination: int | None = None
) -> contextlib.AbstractContextManager[tuple[Target, int]]:
    if name == "dicomrpc":
        return dicomrpc_dimse(run_dir, log, destination=destination)
    return orthanc_dimse(run_dir, log, destination)


# --------------------------------------------------------------------------------------------
# dcmtk
# --------------------------------------------------------------------------------------------


def _peer(target: Target) -> list[str]:
    return ["-aet", CALLING_AE, "-aec", target.ae_title, "127.0.0.1", str(target.port)]


def _shares(files: list[Path], parts: int) -> list[list[Path]]:
    """``files`` in ``parts`` contiguous shares of (nearly) equal size."""
    size, extra = divmod(len(files), parts)
    out, start = [], 0
    for number in range(parts):
        end = start + size + (number < extra)
        out.append(files[start:end])
        start = end
    return [share for share in out if share]


_STORE_STATUS = re.compile(r"Received Store Response \(([^)]*)\)")


def store(
    target: Target, files: list[Path], associations: int, logs: Path
) -> tuple[float, float, dict[str, int], list[str]]:
    """``storescu`` the files over ``associations`` concurrent processes, one association each.

    Returns (wall s, client CPU s, the responses' statuses counted, problems).
    """
    shares = _shares(files, associations)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    processes = []
    for number, share in enumerate(shares):
        out = open(logs / f"storescu-{target.name}-{number}.log", "wb")  # noqa: SIM115
        command = ["storescu", "-v", "-R", *_peer(target), *map(str, share)]
        processes.append((subprocess.Popen(command, stdout=out, stderr=out, env=DCMTK_ENV), out))
    problems: list[str] = []
    for process, out in processes:
        try:
            process.wait(TOOL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            problems.append(f"storescu did not end within {TOOL_TIMEOUT_S:.0f} s (killed)")
        out.close()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    counted: dict[str, int] = {}
    for number, (process, out) in enumerate(processes):
        text = Path(out.name).read_text(errors="replace")
        for status in _STORE_STATUS.findall(text):
            counted[status] = counted.get(status, 0) + 1
        if process.returncode != 0:
            problems.append(
                f"storescu {number} exited with {process.returncode}: {text.strip()[-300:]!r}"
            )
    return wall, cpu, counted, problems


_PENDING = re.compile(r"Find Response: \d+ \(Pending\)")


def timed_tool(command: list[str]) -> tuple[float, str]:
    """Run one dcmtk tool; (ms it took, its output). Raises when it fails."""
    started = time.perf_counter()
    done = subprocess.run(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=DCMTK_ENV,
        timeout=TOOL_TIMEOUT_S,
        check=False,
    )
    elapsed = (time.perf_counter() - started) * 1000
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} exited with {done.returncode}: {done.stdout[-300:]}")
    return elapsed, done.stdout


def find_command(target: Target, key: str, value: str) -> list[str]:
    """A study-level Study Root C-FIND for ``key=value`` with the usual return keys."""
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"{key}={value}"]
    for keyword in RETURN_KEYS:
        if keyword != key:
            keys += ["-k", keyword]
    return ["findscu", "-v", "-S", *keys, *_peer(target)]


def get_command(target: Target, study: str, folder: Path) -> list[str]:
    """A study-level Study Root C-GET of ``study``, its instances written to ``folder``."""
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
    return ["getscu", "-v", "-S", "-od", str(folder), *keys, *_peer(target)]


def move_command(target: Target, study: str) -> list[str]:
    """A study-level Study Root C-MOVE of ``study`` to ``DESTINATION_AE``."""
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
    return ["movescu", "-v", "-S", "-aem", DESTINATION_AE, *keys, *_peer(target)]


@contextlib.contextmanager
def destination(folder: Path, log: Path) -> Iterator[int]:
    """dcmtk's storescp as the C-MOVE destination, writing to ``folder``; yield its port."""
    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            ["storescp", "-aet", DESTINATION_AE, "-od", str(folder), str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=DCMTK_ENV,
        )
    try:
        _wait_for_port(port, "storescp")
        yield port
    finally:
        process.terminate()
        process.wait(10)


def _received(folder: Path) -> int:
    """How many files a retrieve left in ``folder``; the folder is emptied."""
    files = [path for path in folder.iterdir() if path.is_file()]
    for path in files:
        path.unlink()
    return len(files)


def count_instances(target: Target) -> tuple[int, int]:
    """(studies, instances) ``target`` holds, by a study-level C-FIND (pynetdicom)."""
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    assoc = ae.associate("127.0.0.1", target.port, ae_title=target.ae_title)
    if not assoc.is_established:
        raise RuntimeError(f"{target.name} refused the counting association")
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    query.NumberOfStudyRelatedInstances = ""
    studies = instances = 0
    try:
        for status, found in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if status is not None and status.Status in (0xFF00, 0xFF01) and found is not None:
                studies += 1
                instances += int(found.NumberOfStudyRelatedInstances or 0)
    finally:
        assoc.release()
    return studies, instances


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------


def run_store(data: Corpus, server: str, associations: int) -> RunResult:
    """Store the corpus into a fresh ``server`` over ``associations`` associations."""
    plural = "s" * (associations > 1)
    result = RunResult(
        f"{server}, {associations} association{plural}",
        associations,
        len(data.files),
        data.megabytes,
    )
    run_dir = Path(tempfile.mkdtemp(prefix=f"dimse-{server}-", dir=WORK))
    log = WORK / f"dimse-{server}-{associations}.log"
    try:
        warm_cache(data.files)
        with _server(server, run_dir, log) as (target, pid):
            with ResourceSampler(pid) as sampler:
                wall, cpu, counted, problems = store(target, data.files, associations, run_dir)
            result.wall_s, result.client_cpu_s = wall, cpu
            result.problems += problems
            for status, count in counted.items():
                key = "stored" if status == "Success" else f"status {status}"
                result.outcomes[key] += count
            studies, instances = count_instances(target)
            result.verified = instances
            result.verified_by = f"C-FIND: {studies} studies"
        result.peak_rss_mb = sampler.peak_rss / 2**20
        result.server_cpu_s = sampler.cpu_seconds
    except Exception as error:  # a crashed server or client: reported, not fatal
        result.problems.append(f"{type(error).__name__}: {error}")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return result


@dataclass
class Latency:
    """The times of one kind of request to one server."""

    samples_ms: list[float] = field(default_factory=list)
    matches: list[int] = field(default_factory=list)

    def percentile(self, p: float) -> float:
        if not self.samples_ms:
            return float("nan")
        ordered = sorted(self.samples_ms)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@dataclass(frozen=True)
class QueryKind:
    """One kind of C-FIND: its name in the table and the key it matches on."""

    name: str
    key: str
    values: tuple[str, ...]


def query_kinds(data: Corpus) -> list[QueryKind]:
    """A Patient ID match (each study's patient in turn) and a Patient Name wildcard (the first
    two letters of each study's family name, ``SM*``: one or more studies)."""
    ids, names = [], []
    for study in sorted({path.parent for path in data.files}):
        first = pydicom.dcmread(next(study.glob("*.dcm")), stop_before_pixels=True)
        ids.append(str(first.PatientID))
        names.append(f"{str(first.PatientName)[:2]}*")
    return [
        QueryKind("C-FIND study, PatientID match", "PatientID", tuple(ids)),
        QueryKind("C-FIND study, PatientName wildcard", "PatientName", tuple(dict.fromkeys(names))),
    ]


GET_KIND = "C-GET study (getscu)"
MOVE_KIND = "C-MOVE study (movescu to storescp)"


def run_queries(
    data: Corpus, servers: list[str], kinds: list[QueryKind], queries: int, retrieves: int
) -> tuple[dict[str, dict[str, Latency]], list[str]]:
    """Both servers up with the corpus; ``queries`` of each kind, alternately to each server,
    then ``retrieves`` C-GETs and C-MOVEs of a study from each.

    Returns the latencies by kind and server (for a retrieve, its matches are the instances
    received), and problems (answers that differ).
    """
    problems: list[str] = []
    out: dict[str, dict[str, Latency]] = {
        kind: {server: Latency() for server in servers}
        for kind in ["C-ECHO (echoscu)", *(k.name for k in kinds), GET_KIND, MOVE_KIND]
    }
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="dimse-retrieved-", dir=WORK))
        stack.callback(shutil.rmtree, work, True)
        moved, got = work / "moved", work / "got"
        moved.mkdir()
        got.mkdir()
        port = stack.enter_context(destination(moved, WORK / "dimse-storescp.log"))
        targets: list[Target] = []
        for server in servers:
            run_dir = Path(tempfile.mkdtemp(prefix=f"dimse-find-{server}-", dir=WORK))
            stack.callback(shutil.rmtree, run_dir, True)
            target, _ = stack.enter_context(
                _server(server, run_dir, WORK / f"dimse-find-{server}.log", port)
            )
            _, _, _, failed = store(target, data.files, 4, run_dir)
            problems += [f"{server}, storing for the queries: {p}" for p in failed]
            targets.append(target)
        for number in range(queries):
            # The first server alternates: neither always follows the other's query.
            order = targets if number % 2 == 0 else targets[::-1]
            for target in order:
                ms, _ = timed_tool(["echoscu", *_peer(target)])
                out["C-ECHO (echoscu)"][target.name].samples_ms.append(ms)
            for kind in kinds:
                value = kind.values[number % len(kind.values)]
                found: dict[str, int] = {}
                for target in order:
                    ms, text = timed_tool(find_command(target, kind.key, value))
                    latency = out[kind.name][target.name]
                    latency.samples_ms.append(ms)
                    found[target.name] = len(_PENDING.findall(text))
                    latency.matches.append(found[target.name])
                if len(set(found.values())) > 1 and len(problems) < 10:
                    problems.append(f"{kind.key}={value}: the servers found {found}")
        study = str(pydicom.dcmread(data.files[0], stop_before_pixels=True).StudyInstanceUID)
        expected = sum(
            1 for path in data.files if path.parent == data.files[0].parent
        )  # the corpus keeps a study per folder
        for number in range(retrieves):
            order = targets if number % 2 == 0 else targets[::-1]
            for target in order:
                for kind, command, folder in (
                    (GET_KIND, get_command(target, study, got), got),
                    (MOVE_KIND, move_command(target, study), moved),
                ):
                    ms, _ = timed_tool(command)
                    received = _received(folder)
                    latency = out[kind][target.name]
                    latency.samples_ms.append(ms)
                    latency.matches.append(received)
                    if received != expected and len(problems) < 10:
                        problems.append(
                            f"{kind} from {target.name}: {received} of {expected} received"
                        )
    return out, problems


# --------------------------------------------------------------------------------------------
# Profiling (cProfile, every thread)
# --------------------------------------------------------------------------------------------


def run_profile(data: Corpus, associations: int, top: int) -> str:
    """The dicomrpc store over ``associations`` associations under cProfile; its top functions.

    cProfile sees one thread per profiler, so each of the server's threads gets its own (set
    by ``threading.setprofile`` in a ``sitecustomize`` of the server process) and their stats
    are summed: where the process's time goes, over every thread, waits included.
    """
    run_dir = Path(tempfile.mkdtemp(prefix="dimse-profile-", dir=WORK))
    hook = run_dir / "hook"
    hook.mkdir()
    stats_dir = run_dir / "stats"
    stats_dir.mkdir()
    (hook / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(folder=str(stats_dir)))
    env_before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), env_before]))
    try:
        result = None
        with dicomrpc_dimse(run_dir, WORK / "dimse-profile.log") as (target, _):
            wall, _, counted, problems = store(target, data.files, associations, run_dir)
            result = (wall, counted, problems)
    finally:
        if env_before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = env_before
    files = sorted(stats_dir.glob("*.prof"))
    shown: list[str] = []
    by_pid: dict[str, list[Path]] = {}
    for path in files:
        by_pid.setdefault(path.name.split("-")[0], []).append(path)
    for pid, paths in sorted(by_pid.items(), key=lambda item: -len(item[1])):
        text = io.StringIO()
        stats = pstats.Stats(str(paths[0]), stream=text)
        for other in paths[1:]:
            stats.add(str(other))
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(top)
        shown.append(f"process {pid}, {len(paths)} thread(s):\n{_short_paths(text.getvalue())}")
    shutil.rmtree(run_dir, ignore_errors=True)
    if result is None or not shown:
        return "the server wrote no profile"
    wall, counted, problems = result
    head = (
        f"{sum(counted.values())} instances in {wall:.2f} s under cProfile "
        f"({len(data.files) / wall:.0f}/s; the profiler slows the server); "
        f"problems: {problems or 'none'}\n"
    )
    return head + "\n".join(shown)


_SITECUSTOMIZE = '''
"""Profile every thread of this process, each with its own cProfile, dumped at exit."""
import atexit, cProfile, os, sys, threading

_profiles = []

def _start(*_):
    profile = cProfile.Profile()
    _profiles.append(profile)
    sys.setprofile(None)
    profile.enable()

threading.setprofile(_start)
_main = cProfile.Profile()
_profiles.append(_main)
_main.enable()

@atexit.register
def _dump():
    for number, profile in enumerate(_profiles):
        profile.disable()
        profile.dump_stats(os.path.join({folder!r}, f"{{os.getpid()}}-{{number}}.prof"))
'''


def _short_paths(text: str) -> str:
    for prefix in (f"{ROOT}/server/", f"{ROOT}/client/", f"{ROOT}/"):
        text = text.replace(prefix, "")
    return re.sub(r"\S*/site-packages/", "", re.sub(r"/usr/lib/python3[.\d]*/", "", text))


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def _ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs else "—"


def store_table(results: list[RunResult], orthanc: dict[int, RunResult]) -> str:
    lines = [
        "| run | stored / sent | verified | wall s | instances/s | (all runs) | MB/s "
        "| peak RSS MB | server CPU s | client CPU s | / Orthanc |",
        "|---|---|--:|--:|--:|--|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        verified = "—" if r.verified is None else str(r.verified)
        spread = ", ".join(f"{rate:.0f}" for rate in r.rates) or "—"
        theirs = orthanc.get(r.clients)
        ratio = (
            _ratio(r.per_second, theirs.per_second)
            if theirs and r.name.startswith("dicomrpc")
            else ""
        )
        lines.append(
            f"| {r.name} | {r.stored} / {r.sent} | {verified} | {r.wall_s:.2f} "
            f"| {r.per_second:.1f} | {spread} | {r.mb_per_second:.1f} | {r.peak_rss_mb:.0f} "
            f"| {r.server_cpu_s:.1f} | {r.client_cpu_s:.1f} | {ratio} |"
        )
    return "\n".join(lines)


def latency_table(latencies: dict[str, dict[str, Latency]]) -> str:
    servers = list(next(iter(latencies.values())))
    header = ["request"]
    for server in servers:
        header += [f"{server} p50 ms", f"{server} p95 ms"]
    header += ["matches per query", "p50 dicomrpc / Orthanc"] if len(servers) > 1 else []
    lines = ["| " + " | ".join(header) + " |", "|---" + "|--:" * (len(header) - 1) + "|"]
    for kind, by_server in latencies.items():
        row = [kind]
        for server in servers:
            row += [
                f"{by_server[server].percentile(50):.1f}",
                f"{by_server[server].percentile(95):.1f}",
            ]
        if len(servers) > 1:
            matches = sorted(set(by_server[servers[0]].matches))
            row.append(", ".join(map(str, matches)) if matches else "—")
            row.append(
                _ratio(by_server["dicomrpc"].percentile(50), by_server["Orthanc"].percentile(50))
            )
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def verdicts(by_name: dict[str, RunResult]) -> list[str]:
    out = []
    for associations in sorted({r.clients for r in by_name.values()}):
        ours = by_name.get(f"dicomrpc-{associations}")
        theirs = by_name.get(f"Orthanc-{associations}")
        if not ours or not theirs:
            continue
        if not (ours.complete and theirs.complete and theirs.per_second):
            out.append(f"- {associations} association(s): not compared, a run was incomplete.")
            continue
        ratio = ours.per_second / theirs.per_second
        out.append(
            f"- **storescu, {associations} association(s): dicomrpc / Orthanc {ratio:.2f}x** "
            f"(instances/s) — goal ≥ {GOAL_RATIO:.1f}x: "
            f"{'met' if ratio >= GOAL_RATIO else 'NOT met'}."
        )
    return out


def report(
    data: Corpus,
    results: dict[str, RunResult],
    latencies: dict[str, dict[str, Latency]] | None,
    problems: list[str],
    args: argparse.Namespace,
    orthanc_missing: str | None,
) -> str:
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout.strip()
    storescu = subprocess.run(["storescu", "--version"], capture_output=True, text=True).stdout
    dcmtk = storescu.split("\n", 1)[0].strip("$ ").strip()
    software = (
        f"Python {platform.python_version()}, pynetdicom {pynetdicom.__version__}, "
        f"pydicom {pydicom.__version__}, {dcmtk}"
        + ("" if orthanc_missing else f", {orthanc_version()}")
    )
    orthanc = {r.clients: r for key, r in results.items() if key.startswith("Orthanc")}
    all_problems = [f"- {r.name}: {p}" for r in results.values() for p in r.problems]
    all_problems += [f"- C-FIND: {p}" for p in problems]
    body = [
        SECTION,
        "",
        "Written by `.venv/bin/python bench/dimse.py`; rerun it to refresh this section.",
        "",
        f"- Date: {now}{' (quick run)' if args.quick else ''}; commit {commit}"
        + (" with local changes" if dirty else ""),
        f"- Machine: {machine()}; {platform.platform()}. The machine is shared with other "
        "work: the figures are noisy (compare the runs under (all runs)).",
        f"- Software: {software}",
        f"- Corpus: {len(data.files)} CT instances (512x512, 16-bit, explicit VR little endian, "
        f"as in Ingest), {data.megabytes:.0f} MB, in the page cache.",
        f"- Store: `storescu -R` (only the needed presentation contexts) of every file, over 1 "
        f"association, then over {args.associations} at once ({args.associations} `storescu` "
        "processes, each a contiguous share of the files); wall time from the first start to "
        "the last exit, so each tool's start and file reading are in it, alike for both "
        f"servers. Each configuration ran {args.repeat} time(s), interleaved, on a fresh server "
        "and empty data folder; the table shows the run with the median instances/s (of an "
        "even number of runs, the slower of the middle two). "
        "dicomrpc: `dicomrpc serve` defaults (1 process, max PDU 256 KiB, fsync on). Orthanc: "
        "defaults (SQLite index, `SyncStorageArea` on, 4 DICOM threads) with its DICOM port "
        "on and any calling AE allowed. Stored / sent: Success responses storescu printed; "
        "verified: the instances a study-level C-FIND counts afterwards.",
        "- MB = 2^20 bytes. Peak RSS: the server's process tree, sampled every 50 ms; CPU s: "
        "user + system during the run; client CPU s: the storescu processes'.",
        "",
        store_table(list(results.values()), orthanc),
        "",
        f"Goal: dicomrpc's instances/s ≥ {GOAL_RATIO:.1f}x Orthanc's, with 1 and with "
        f"{args.associations} associations.",
        "",
        *verdicts(results),
    ]
    if latencies is not None:
        body += [
            "",
            f"Query latency: both servers up at once, each holding the corpus (stored by "
            f"{args.associations} storescu); {args.queries} requests of each kind to each "
            "server, one to each in turn (the first alternating). `findscu -S`, Study Root, "
            "QueryRetrieveLevel=STUDY with 7 return keys (Study Instance UID, Date, "
            "Description, Accession Number, Patient Name, ID, Modalities in Study). A "
            "request's time is the tool's whole run: process start, association, the query "
            "and its responses, release; the C-ECHO row (echoscu) is that floor without a "
            "query. Matches per query: how many studies each query found (the same on both "
            "servers, query by query, unless listed under problems).",
            "",
            f"Retrieve: then {args.retrieves} of each to each server, in turn: a study-level "
            "Study Root C-GET of the corpus's first study by `getscu -S` (the instances come "
            "back on its association, written to a folder), and a C-MOVE of it by "
            "`movescu -S` to dcmtk's `storescp` (a second association, which the server "
            "requests), whole runs timed likewise. Matches: the instances that arrived.",
            "",
            latency_table(latencies),
        ]
    if orthanc_missing:
        body += ["", f"Orthanc: unavailable — {orthanc_missing}."]
    if all_problems:
        body += ["", "Problems seen:", "", *all_problems]
    return "\n".join(body) + "\n"


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="instances (1000)")
    parser.add_argument("--quick", action="store_true", help="200 instances, 1 run, 10 queries")
    parser.add_argument("--associations", type=int, default=4, help="concurrent storescu (4)")
    parser.add_argument("--queries", type=int, help="C-FINDs of each kind per server (50)")
    parser.add_argument("--repeat", type=int, help="runs of each store configuration (3)")
    parser.add_argument("--retrieves", type=int, help="C-GETs and C-MOVEs per server (6)")
    parser.add_argument("--no-orthanc", action="store_true", help="skip Orthanc")
    parser.add_argument("--no-queries", action="store_true", help="skip the C-FIND latencies")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--profile", action="store_true", help="only the N-association dicomrpc store, cProfiled"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.count = 200
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.queries is None:
        args.queries = 10 if args.quick else 50
    if args.retrieves is None:
        args.retrieves = 2 if args.quick else 6
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools = ("storescu", "findscu", "echoscu", "getscu", "movescu", "storescp")
    missing = [tool for tool in tools if not shutil.which(tool)]
    if missing:
        raise SystemExit(f"dcmtk's {', '.join(missing)} missing: apt-get install dcmtk")
    WORK.mkdir(parents=True, exist_ok=True)
    # Orthanc's DICOM server is dcmtk's code: it needs the same, or each response waits.
    os.environ["TCP_NODELAY"] = "1"
    data = corpus(args.count)
    print(f"corpus: {len(data.files)} instances, {data.megabytes:.0f} MB; {machine()}", flush=True)
    if args.profile:
        print(run_profile(data, args.associations, 25))
        return 0

    orthanc_missing = "skipped (--no-orthanc)" if args.no_orthanc else ensure_orthanc()
    servers = ["dicomrpc"] + ([] if orthanc_missing else ["Orthanc"])
    configurations = [(s, n) for n in dict.fromkeys((1, args.associations)) for s in servers]
    measured: dict[str, list[RunResult]] = {f"{s}-{n}": [] for s, n in configurations}
    for repetition in range(args.repeat):
        for server, associations in configurations:
            print(f"[{repetition + 1}/{args.repeat}] {server}, {associations} ...", flush=True)
            result = run_store(data, server, associations)
            measured[f"{server}-{associations}"].append(result)
            print(store_table([result], {}).splitlines()[-1], flush=True)
            for problem in result.problems:
                print(f"  problem: {problem}", flush=True)
    results = {key: median_run(runs) for key, runs in measured.items()}

    latencies: dict[str, dict[str, Latency]] | None = None
    problems: list[str] = []
    if not args.no_queries:
        print(f"C-FIND latencies, {args.queries} of each kind per server ...", flush=True)
        latencies, problems = run_queries(
            data, servers, query_kinds(data), args.queries, args.retrieves
        )

    section = report(data, results, latencies, problems, args, orthanc_missing)
    print()
    print(section)
    if not args.no_write:
        write_section(section.rstrip("\n"), SECTION)
        print(f"wrote {Path('bench/RESULTS.md')}")
    return 0 if all(r.complete for r in results.values()) and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
