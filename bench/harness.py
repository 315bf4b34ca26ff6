"""What every benchmark shares: where they work and write, the servers they run, how they measure.

Why this module exists: each benchmark starts dicomrpc and Orthanc the same way, samples their
memory and CPU the same way, loads both with the same files, times concurrent clients, profiles
with py-spy and writes its own section of ``bench/RESULTS.md``; one harness keeps those the same
from one benchmark to the next. The generated corpus is :mod:`corpus`'s.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import platform
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

import grpc
import psutil

from dicomrpc import Client, ClientConfig

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work"
RESULTS = BENCH / "RESULTS.md"
MB = 1024 * 1024

RSS_INTERVAL_S = 0.05
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 90.0

ORTHANC = Path("/usr/sbin/Orthanc")
ORTHANC_PLUGIN = "libOrthancDicomWeb.so"


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
# Concurrent clients
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Orthanc
# --------------------------------------------------------------------------------------------


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
                status, _ = http_request(port, "GET", "/system")
                if status == 200:
                    break
            time.sleep(0.1)
        yield port, process.pid
    stop_process(process, "Orthanc", log)


def http_request(port: int, method: str, path: str) -> tuple[int, bytes]:
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


def sequence_length(answer: dict[str, dict[str, list[object]]], tag: str) -> int:
    return len(answer.get(tag, {}).get("Value", []))


# --------------------------------------------------------------------------------------------
# Profiling (py-spy)
# --------------------------------------------------------------------------------------------


PROFILE_RATE = 100


def py_spy() -> str:
    found = shutil.which(
        "py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    if found is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found


def start_py_spy(pid: int, output: Path, gil_only: bool) -> subprocess.Popen[bytes]:
    """Attach py-spy to ``pid``, recording collapsed stacks (function-level) to ``output``.

    With ``gil_only`` only the thread holding the GIL is sampled: the server's Python CPU time,
    without the threads that wait (idle pool workers, the event loop in epoll, fsync).
    """
    output.unlink(missing_ok=True)
    log = output.with_suffix(".log")
    with open(log, "wb") as out:
        spy = subprocess.Popen(
            [
                py_spy(),
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


def stop_py_spy(spy: subprocess.Popen[bytes]) -> None:
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


def write_section(section: str, heading: str, path: Path = RESULTS) -> None:
    """Replace (or append) the ``heading`` section of ``path``; keep every other section."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\s*$.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


# --------------------------------------------------------------------------------------------
# Loading both servers
# --------------------------------------------------------------------------------------------


ACCEPT_JSON = "application/dicom+json"


def grpc_config(http_retrieve: bool = False) -> ClientConfig:
    """One channel (one HTTP/2 connection) per client, as in bench/ingest.py.

    Studies stream over gRPC unless ``http_retrieve``: then the SDK reads them from the
    gateway with a retrieve grant (README, "Retrieve").
    """
    return ClientConfig(
        options=(("grpc.use_local_subchannel_pool", 1),), http_retrieve=http_retrieve
    )


def connect_grpc(target: str, http_retrieve: bool = False) -> Client:
    """A connected ``Client`` on its own channel."""
    client = Client(target, grpc_config(http_retrieve))
    grpc.channel_ready_future(client.channel).result(timeout=30)
    return client


def connect_http(port: int) -> http.client.HTTPConnection:
    """A keep-alive HTTP connection to Orthanc."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.connect()
    return connection


def load_dicomrpc(target: str, files: list[Path], batch: int = 25) -> None:
    """Store ``files``; raise unless every one is stored."""
    with connect_grpc(target) as client:
        for start in range(0, len(files), batch):
            outcome = client.store([str(p) for p in files[start : start + batch]])
            bad = [i for i in outcome.instances if not i.outcome.startswith("stored")]
            if bad:
                raise RuntimeError(f"dicomrpc store failed: {bad[0]}")


def load_orthanc(port: int, files: list[Path], batch: int = 10, big: int = 16 * MB) -> None:
    """STOW-RS ``files`` (those over ``big`` bytes one per request); raise unless every
    request answers 200. A request whose connection breaks is sent again once, on a new
    connection (one run saw Orthanc drop the keep-alive connection while a 225 MB request
    was being sent)."""
    small = [f for f in files if f.stat().st_size <= big]
    batches = [small[i : i + batch] for i in range(0, len(small), batch)]
    batches += [[f] for f in files if f.stat().st_size > big]
    boundary = uuid.uuid4().hex
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": ACCEPT_JSON,
    }
    connection = connect_http(port)
    try:
        for paths in batches:
            body = stow_body(paths, boundary)
            for attempt in (1, 2):
                try:
                    connection.request("POST", "/dicom-web/studies", body, headers)
                    response = connection.getresponse()
                    payload = response.read()
                    break
                except (ConnectionError, http.client.HTTPException) as exc:
                    connection.close()
                    if attempt == 2:
                        raise
                    print(f"STOW-RS: {exc!r}; sending again on a new connection", flush=True)
                    connection = connect_http(port)
            answer = json.loads(payload) if response.status == 200 else {}
            if sequence_length(answer, "00081199") != len(paths):
                raise RuntimeError(f"STOW-RS returned {response.status}: {payload[:300]!r}")
    finally:
        connection.close()
