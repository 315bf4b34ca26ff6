"""Viewer benchmark: how soon OHIF draws a 500-instance CT study, from dicomrpc and from Orthanc.

Usage (from the repository root)::

    .venv/bin/python bench/viewer.py            # 5 rounds, writes the Viewer section of RESULTS.md
    .venv/bin/python bench/viewer.py --quick    # 2 rounds, a smoke run

The same OHIF build (the cached ``@ohif/app`` ``dist/`` the archive serves,
``dicomrpc_server.viewer.package``) is put in front of both servers, same origin each time, with
the ``app-config.js`` the archive's own writer makes (``dicomrpc_server.viewer.app_config``),
only its DICOMweb root differing. Three set-ups:

- dicomrpc, its built-in viewer: OHIF at the root of the gateway's HTTP port (what
  ``make serve`` shows);
- dicomrpc behind the bench's proxy: a small static + reverse-proxy server (this file) serves
  ``dist/`` and forwards ``/dicomweb`` to the gateway;
- Orthanc behind the same proxy: ``dist/`` served the same way, ``/dicom-web`` forwarded to
  Orthanc's DICOMweb plugin (Orthanc cannot serve OHIF at its own root).

The two proxied set-ups differ only in the DICOMweb server behind them, which makes them the
fair comparison; the built-in row shows what the proxy costs.

Headless Chromium (the system's, driven by Playwright as ``tests/ohif.py`` drives it) opens
``/viewer?StudyInstanceUIDs=<uid>``. A script the page runs before OHIF's own (Playwright's init
script) samples, every 50 ms, the viewport's canvas (``canvas.cornerstone-canvas``, a 2D canvas
Cornerstone copies its rendering to) and records the page's clock (``performance.now()``, ms
from navigation start) when one sampled pixel in 20 is lit: the first image is drawn, not only
its element present. It records the same when the first and when every series thumbnail (OHIF's
study browser, ``<img>`` data URLs) has appeared. "Cold": the server just (re)started on its data
directory, whose files (and the viewer's) were first evicted from the page cache with
``posix_fadvise(POSIX_FADV_DONTNEED)`` (no root needed; the resident bytes are measured after),
and a new browser (a fresh profile: no HTTP cache). "Warm": the same page reloaded, same server.
Each load ends once the network has been quiet for a while; every request the page (and its
workers) made until then is counted from Playwright's network events, with its bytes and
duration, to explain the differences.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import importlib.metadata
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from corpus import Study, big_study
from harness import (
    MB,
    RESULTS,
    ROOT,
    WORK,
    dicomrpc_server,
    ensure_orthanc,
    free_port,
    load_dicomrpc,
    load_orthanc,
    machine,
    orthanc_server,
    orthanc_version,
    write_section,
)

from dicomrpc_server.viewer import package
from dicomrpc_server.viewer.app_config import app_config
from dicomrpc_server.viewer.site import cache_control, media_type

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Playwright, Request

SECTION = "## Viewer"

CHROMIUM = Path(os.environ.get("DICOMRPC_CHROMIUM", "/usr/bin/chromium"))
# As the browser tests launch it (tests/ohif.py): no sandbox (run as root), none of the
# browser's own traffic, WebGL on the CPU (SwiftShader) since the machine has no GPU.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
)
VIEWPORT = {"width": 1280, "height": 800}
SAMPLE_MS = 50
LOAD_TIMEOUT_S = 120.0
QUIET_S = 2.0  # the network quiet this long after the thumbnails: the load is over
SERIES = 10  # the study's series (50 instances each), one thumbnail each

# Run in the page before OHIF's scripts, on every navigation (reloads too): records in
# ``window.__viewerBench`` the page's clock when the viewport's canvas first shows an image
# (one sampled pixel in 20 not black; OHIF's background is black), and when the first and
# when every series thumbnail (an <img> of a data URL, OHIF's study browser) is there.
PROBE = f"""
(() => {{
  const bench = {{drawn: null, firstThumbnail: null, thumbnails: null, thumbnailCount: 0,
                  lit: 0}};
  window.__viewerBench = bench;
  const timer = setInterval(() => {{
    if (bench.drawn === null) {{
      const canvas = document.querySelector('canvas.cornerstone-canvas');
      if (canvas && canvas.width > 0 && canvas.height > 0) {{
        const context = canvas.getContext('2d');
        if (context) {{
          const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
          let seen = 0, lit = 0;
          for (let i = 0; i < data.length; i += 4 * 13) {{
            seen += 1;
            if (data[i] + data[i + 1] + data[i + 2] > 60) lit += 1;
          }}
          if (lit * 20 > seen) {{ bench.drawn = performance.now(); bench.lit = lit / seen; }}
        }}
      }}
    }}
    const shown = Array.from(document.images).filter(
      (img) => img.src.startsWith('data:image') && img.complete && img.naturalWidth >= 64
    ).length;
    bench.thumbnailCount = shown;
    if (shown > 0 && bench.firstThumbnail === null) bench.firstThumbnail = performance.now();
    if (shown >= {SERIES} && bench.thumbnails === null) bench.thumbnails = performance.now();
    if (bench.drawn !== null && bench.thumbnails !== null) clearInterval(timer);
  }}, {SAMPLE_MS});
}})();
"""


# --------------------------------------------------------------------------------------------
# The bench's static + reverse-proxy server
# --------------------------------------------------------------------------------------------

# RFC 9110 section 7.6.1: connection-specific fields a proxy must not forward.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
COPY_CHUNK = 256 * 1024


class _ProxyHandler(BaseHTTPRequestHandler):
    """OHIF's files as the archive's viewer site serves them, ``/app-config.js`` written for the
    set-up, and the DICOMweb prefix forwarded to the server behind (streamed both ways, one
    keep-alive upstream connection per browser connection)."""

    protocol_version = "HTTP/1.1"
    site: ProxySite  # set on the subclass made for each site

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the browser's network events are the request log."""

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        path = urlsplit(self.path).path
        if path == self.site.prefix or path.startswith(self.site.prefix + "/"):
            self._forward()
        elif path == "/app-config.js":
            self._send(200, self.site.config, "text/javascript; charset=utf-8", "no-store")
        else:
            self._file(path)

    def _send(self, status: int, body: bytes, kind: str, cache: str, etag: str = "") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Cache-Control", cache)
        if etag:
            self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _file(self, path: str) -> None:
        """A file of ``dist/`` (``index.html`` for OHIF's own routes), with the viewer site's
        ``Cache-Control`` and an ETag answered 304 when it matches."""
        root = self.site.dist.resolve()
        candidate = (root / path.lstrip("/")).resolve()
        if not candidate.is_relative_to(root) or not candidate.is_file():
            candidate = root / "index.html"
        stat = candidate.stat()
        etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
        cache = cache_control(candidate.name)
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.send_header("Cache-Control", cache)
            self.end_headers()
            return
        self._send(200, candidate.read_bytes(), media_type(candidate), cache, etag)

    def _forward(self) -> None:
        """The request to the server behind, its answer back as it arrives."""
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        answer = None
        # A kept-alive upstream connection the server closed meanwhile fails at once: the
        # request is sent again, once, on a new connection.
        for _ in range(2):
            upstream = self._upstream()
            try:
                upstream.request(self.command, self.path, body, headers)
                answer = upstream.getresponse()
                break
            except (OSError, http.client.HTTPException):
                upstream.close()
                self.server_upstream = None
        if answer is None:
            self._send(502, b"upstream failed\n", "text/plain", "no-store")
            return
        self.send_response(answer.status, answer.reason)
        sized = answer.getheader("Content-Length")
        for name, value in answer.getheaders():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        chunked = sized is None and self.command != "HEAD" and answer.status not in (204, 304)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while True:
            data = answer.read1(COPY_CHUNK)
            if not data:
                break
            if chunked:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            else:
                self.wfile.write(data)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
        if answer.will_close:
            self._upstream().close()
            self.server_upstream = None

    server_upstream: http.client.HTTPConnection | None = None

    def _upstream(self) -> http.client.HTTPConnection:
        if self.server_upstream is None:
            self.server_upstream = http.client.HTTPConnection(
                "127.0.0.1", self.site.upstream_port(), timeout=120
            )
        return self.server_upstream

    def finish(self) -> None:
        super().finish()
        if self.server_upstream is not None:
            self.server_upstream.close()


@dataclass
class ProxySite:
    """OHIF's ``dist/`` and a DICOMweb server behind one origin on a free loopback port."""

    dist: Path
    prefix: str  # the DICOMweb path forwarded: /dicomweb or /dicom-web
    upstream_port: Callable[[], int]  # the server behind's port (it changes on restart)
    config: bytes = b""
    server: ThreadingHTTPServer | None = None

    @property
    def root(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    @contextlib.contextmanager
    def running(self) -> Iterator[ProxySite]:
        handler = type("Handler", (_ProxyHandler,), {"site": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.config = app_config(self.root + self.prefix).encode()
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
            thread.join(30)


# --------------------------------------------------------------------------------------------
# Servers, page cache
# --------------------------------------------------------------------------------------------


def evict(directories: list[Path]) -> None:
    """Drop the files under ``directories`` from the page cache (``POSIX_FADV_DONTNEED``, which
    any process that can open a file may ask; clean pages only, and the servers fsync what they
    store)."""
    for directory in directories:
        for path in directory.rglob("*"):
            if not path.is_file():
                continue
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def resident_bytes(directories: list[Path]) -> tuple[int, int] | None:
    """(bytes in the page cache, bytes in all) of the files under ``directories``, by
    ``fincore`` (util-linux); ``None`` without it."""
    fincore = shutil.which("fincore")
    if fincore is None:
        return None
    command = [fincore, "--bytes", "--noheadings", "--raw", "--output", "RES,SIZE"]
    files = [str(p) for d in directories for p in d.rglob("*") if p.is_file()]
    resident = total = 0
    for start in range(0, len(files), 200):
        out = subprocess.run(
            [*command, *files[start : start + 200]],
            capture_output=True,
            text=True,
            check=False,
        )
        for line in out.stdout.splitlines():
            res, size = line.split()
            resident += int(res)
            total += int(size)
    return resident, total


@dataclass
class Backend:
    """One DICOMweb server the set-ups use, restarted for each cold load."""

    name: str
    data: Path  # what it stores (evicted before a cold start)
    start: Callable[[], contextlib.AbstractContextManager[int]]  # yields its HTTP port
    port: int = 0
    _stack: contextlib.ExitStack | None = None

    def restart(self, evict_also: list[Path]) -> None:
        self.stop()
        evict([self.data, *evict_also])
        self._stack = contextlib.ExitStack()
        self.port = self._stack.enter_context(self.start())

    def stop(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None


@contextlib.contextmanager
def dicomrpc_http(data: Path, port: int, dist: Path) -> Iterator[int]:
    """``dicomrpc serve`` with its gateway and built-in viewer on ``port``."""
    with dicomrpc_server(
        data, WORK / "viewer-dicomrpc.log", port, ["--viewer-dir", str(dist)]
    ) as _:
        yield port


@contextlib.contextmanager
def orthanc_http(run_dir: Path) -> Iterator[int]:
    """Orthanc with its DICOMweb plugin, on its storage in ``run_dir``."""
    with orthanc_server(run_dir, WORK / "viewer-orthanc.log") as (port, _):
        yield port


# --------------------------------------------------------------------------------------------
# One page load
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fetched:
    """One request the page made, as the browser saw it."""

    url: str
    kind: str  # app, qido, metadata, frames, other (DICOMweb)
    status: int  # 0: failed
    from_cache: bool  # answered by the browser's cache, no request on the wire
    bytes: int  # response headers + body as received (0 from the cache)
    ms: float  # request start to response end
    headers: tuple[str, str, str]  # its Content-Encoding, Cache-Control, ETag ("" if none)


@dataclass
class Load:
    """What one page load took."""

    drawn_ms: float
    first_thumbnail_ms: float | None
    thumbnails_ms: float | None
    lit: float
    thumbnail_count: int
    fetched: list[Fetched]
    load_average: float = 0.0  # the machine's 1-minute load average as the load started

    def network(self, kind: str | None = None) -> list[Fetched]:
        return [f for f in self.fetched if not f.from_cache and (kind is None or f.kind == kind)]

    @property
    def requests(self) -> int:
        return len(self.network())

    @property
    def megabytes(self) -> float:
        return float(sum(f.bytes for f in self.network())) / float(MB)


def kind_of(url: str, prefix: str) -> str:
    """Which part of the viewer's traffic a URL is."""
    path = urlsplit(url).path
    if not path.startswith(prefix + "/"):
        return "app"
    if "/frames/" in path:
        return "frames"
    if path.endswith("/metadata"):
        return "metadata"
    if path.endswith(("/studies", "/series", "/instances")):
        return "qido"
    return "other"


class Recorder:
    """The requests of one browser context (its pages and their workers)."""

    def __init__(self, context: BrowserContext) -> None:
        self.requests: list[Request] = []
        self.pending: set[Request] = set()
        self.last_event = time.monotonic()
        context.on("request", self._started)
        context.on("requestfinished", self._ended)
        context.on("requestfailed", self._ended)

    def _started(self, request: Request) -> None:
        self.requests.append(request)
        self.pending.add(request)
        self.last_event = time.monotonic()

    def _ended(self, request: Request) -> None:
        self.pending.discard(request)
        self.last_event = time.monotonic()

    def take(self, prefix: str) -> list[Fetched]:
        """Every request since the last call, as :class:`Fetched`."""
        taken, self.requests = self.requests, []
        fetched = []
        for request in taken:
            if request.url.startswith("data:"):
                continue
            response = request.response() if request.failure is None else None
            timing = request.timing
            ms = max(0.0, timing["responseEnd"])  # relative to the request's start
            sizes = request.sizes() if response is not None else None
            received = (
                0 if sizes is None else sizes["responseHeadersSize"] + sizes["responseBodySize"]
            )
            cached = response is not None and received <= 0
            seen = {} if response is None else response.headers
            fetched.append(
                Fetched(
                    request.url,
                    kind_of(request.url, prefix),
                    0 if response is None else response.status,
                    cached,
                    max(received, 0),
                    ms,
                    tuple(
                        seen.get(name, "") for name in ("content-encoding", "cache-control", "etag")
                    ),  # type: ignore[arg-type]
                )
            )
        return fetched


def load_once(page: Page, recorder: Recorder, url: str | None, prefix: str) -> Load:
    """Navigate (``url``) or reload (``None``); wait for the first image, the thumbnails and a
    quiet network; what it took."""
    recorder.take(prefix)
    load_average = os.getloadavg()[0]
    if url is None:
        page.reload(wait_until="commit", timeout=LOAD_TIMEOUT_S * 1000)
    else:
        page.goto(url, wait_until="commit", timeout=LOAD_TIMEOUT_S * 1000)
    page.wait_for_function(
        "() => window.__viewerBench && window.__viewerBench.drawn !== null",
        timeout=LOAD_TIMEOUT_S * 1000,
        polling=SAMPLE_MS,
    )
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    with contextlib.suppress(Exception):
        page.wait_for_function(
            "() => window.__viewerBench.thumbnails !== null",
            timeout=LOAD_TIMEOUT_S * 1000,
            polling=SAMPLE_MS,
        )
    while time.monotonic() < deadline:
        page.wait_for_timeout(200)
        if not recorder.pending and time.monotonic() - recorder.last_event > QUIET_S:
            break
    probe: dict[str, Any] = page.evaluate("() => window.__viewerBench")
    return Load(
        float(probe["drawn"]),
        probe["firstThumbnail"],
        probe["thumbnails"],
        float(probe["lit"]),
        int(probe["thumbnailCount"]),
        recorder.take(prefix),
        load_average,
    )


# --------------------------------------------------------------------------------------------
# Set-ups and rounds
# --------------------------------------------------------------------------------------------


@dataclass
class Setup:
    """A way OHIF reaches a server: its site's root, its DICOMweb prefix, its backend."""

    name: str
    backend: Backend
    prefix: str
    root: Callable[[], str]
    cold: list[Load] = field(default_factory=list)
    warm: list[list[Load]] = field(default_factory=list)  # per round, each reload


def measure(
    playwright: Playwright, setup: Setup, study: Study, warm_reloads: int, dist: Path
) -> None:
    """One round of ``setup``: the server restarted cold, a fresh browser, the viewer opened,
    then reloaded ``warm_reloads`` times."""
    setup.backend.restart([dist])
    browser: Browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS)
    )
    try:
        context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
        context.add_init_script(PROBE)
        recorder = Recorder(context)
        page = context.new_page()
        url = f"{setup.root()}/viewer?StudyInstanceUIDs={study.uid}"
        setup.cold.append(load_once(page, recorder, url, setup.prefix))
        setup.warm.append(
            [load_once(page, recorder, None, setup.prefix) for _ in range(warm_reloads)]
        )
        context.close()
    finally:
        browser.close()


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _span(values: list[int]) -> str:
    """``n`` when all are ``n``, else ``low to high``."""
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low} to {high}"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def _spread(values: list[float | None]) -> str:
    return ", ".join(_ms(v) for v in values)


def _median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if len(known) == len(values) and known else None


def _warm(setup: Setup) -> list[Load]:
    """Each round's warm figure: its reloads' median load (by first image)."""
    chosen = []
    for loads in setup.warm:
        ordered = sorted(loads, key=lambda load: load.drawn_ms)
        chosen.append(ordered[(len(ordered) - 1) // 2])
    return chosen


def _median_load(loads: list[Load]) -> Load:
    ordered = sorted(loads, key=lambda load: load.drawn_ms)
    return ordered[(len(ordered) - 1) // 2]


def timing_table(setups: list[Setup]) -> list[str]:
    lines = [
        "| set-up | load | first image ms | (rounds) | first thumbnail ms | all 10 thumbnails ms "
        "| (rounds) | requests | MB |",
        "|---|---|--:|--|--:|--:|--|--:|--:|",
    ]
    for setup in setups:
        for label, loads in (("cold", setup.cold), ("warm", _warm(setup))):
            drawn = [load.drawn_ms for load in loads]
            thumbs = [load.thumbnails_ms for load in loads]
            firsts = [load.first_thumbnail_ms for load in loads]
            lines.append(
                f"| {setup.name} | {label} | {_median(drawn):.0f} | {_spread(list(drawn))} "
                f"| {_ms(_median_or_none(firsts))} | {_ms(_median_or_none(thumbs))} "
                f"| {_spread(thumbs)} "
                f"| {_median([float(x.requests) for x in loads]):.0f} "
                f"| {_median([x.megabytes for x in loads]):.1f} |"
            )
    return lines


KINDS = (
    ("app", "OHIF's files"),
    ("qido", "QIDO-RS"),
    ("metadata", "series metadata"),
    ("frames", "frames"),
    ("other", "other DICOMweb"),
)


def traffic_table(setups: list[Setup]) -> list[str]:
    """Per kind of request, the median cold and warm load's count, MB and median duration."""
    lines = [
        "| set-up | load | "
        + " | ".join(f"{label}: n / MB / p50 ms" for _, label in KINDS)
        + " | answered from the browser's cache |",
        "|---|---|" + "--:|" * len(KINDS) + "--:|",
    ]
    for setup in setups:
        for label, loads in (("cold", setup.cold), ("warm", _warm(setup))):
            load = _median_load(loads)
            cells = []
            for kind, _ in KINDS:
                got = load.network(kind)
                if not got:
                    cells.append("0")
                    continue
                megabytes = sum(f.bytes for f in got) / MB
                cells.append(f"{len(got)} / {megabytes:.2f} / {_median([f.ms for f in got]):.0f}")
            cached = sum(1 for f in load.fetched if f.from_cache)
            lines.append(f"| {setup.name} | {label} | " + " | ".join(cells) + f" | {cached} |")
    return lines


def headers_lines(setups: list[Setup]) -> list[str]:
    """The caching and compression headers of each set-up's DICOMweb answers (cold loads)."""
    lines = []
    for setup in setups:
        parts = []
        for kind, label in KINDS[1:]:
            seen = {f.headers for load in setup.cold for f in load.network(kind) if f.status}
            if not seen:
                continue
            encodings = sorted({h[0] or "none" for h in seen})
            caches = sorted({h[1] or "none" for h in seen})
            etags = (
                "ETag"
                if all(h[2] for h in seen)
                else "no ETag"
                if not any(h[2] for h in seen)
                else "ETag on some"
            )
            parts.append(
                f"{label}: Content-Encoding {', '.join(encodings)}; Cache-Control "
                f"{', '.join(caches)}; {etags}"
            )
        lines.append(f"- {setup.name}: " + "; ".join(f"({p})" for p in parts) + ".")
    return lines


def report(
    setups: list[Setup],
    study: Study,
    args: argparse.Namespace,
    browser_version: str,
    residency: dict[str, tuple[int, int] | None],
    problems: list[str],
    orthanc_missing: str | None,
) -> str:
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    versions = (
        f"Python {platform.python_version()}, Playwright "
        f"{importlib.metadata.version('playwright')}, Chromium {browser_version} (headless, "
        f"WebGL on SwiftShader), OHIF {package.OHIF_VERSION} (`@ohif/app` dist, unchanged)"
        + ("" if orthanc_missing else f", {orthanc_version()} with DICOMweb plugin")
    )
    evicted = "; ".join(
        f"{name}: {res[0] / MB:.1f} of {res[1] / MB:.0f} MB resident"
        if res is not None
        else f"{name}: not measured (no fincore)"
        for name, res in residency.items()
    )
    by_name = {s.name: s for s in setups}
    averages = [
        load.load_average for s in setups for load in [*s.cold, *(x for r in s.warm for x in r)]
    ]
    lines = [
        SECTION,
        "",
        "Written by `.venv/bin/python bench/viewer.py`; rerun it to refresh this section.",
        "",
        f"- Date: {now}{' (quick run)' if args.quick else ''}",
        f"- Machine: {machine()}; {platform.platform()}",
        f"- Software: {versions}",
        f"- Corpus, in both servers: one CT study of {len(study.files)} instances "
        f"({study.total_bytes / MB:.0f} MB; 10 series of 50; 512x512, 16-bit, 12 stored, "
        "explicit VR little endian; the Retrieve section's 500-instance study), stored through "
        "gRPC (dicomrpc) and STOW-RS (Orthanc, default settings).",
        "- Set-ups, each same-origin, each the same OHIF build and the same `app-config.js` "
        "(`dicomrpc_server.viewer.app_config`: WADO-RS frames and metadata, lazy study "
        "loading, bulk data URIs on) but for its DICOMweb root: **dicomrpc, built-in** — OHIF "
        "at the root of the gateway's HTTP port; **dicomrpc, bench proxy** and **Orthanc, "
        "bench proxy** — `bench/viewer.py`'s static + reverse-proxy server (Python "
        "`ThreadingHTTPServer`, HTTP/1.1 keep-alive, one upstream connection per browser "
        "connection, bodies streamed) serves `dist/` with the viewer site's `Cache-Control` "
        "(`site.cache_control`) and ETags, and forwards `/dicomweb` or `/dicom-web`. The "
        "proxied rows differ only in the server behind; the built-in row shows the proxy's "
        "cost.",
        f"- Method: {len(setups[0].cold)} rounds, the set-ups alternating (order reversed every "
        "other round). In each round and set-up: the server restarted (its data directory "
        "and the viewer's files first evicted from the page cache with "
        f"`posix_fadvise(POSIX_FADV_DONTNEED)`; after eviction {evicted}; the programs' own "
        "files, Chromium's, Python's and Orthanc's, stay in the page cache), a new headless "
        "Chromium (fresh profile, empty HTTP cache), `/viewer?StudyInstanceUIDs=<uid>` opened "
        f"(**cold**), then the page reloaded {args.warm} times (**warm**: browser cache and "
        "server warm; each round's warm figure is its median reload). Times are the page's "
        "clock from navigation start (`performance.now()`), sampled every "
        f"{SAMPLE_MS} ms in the page: first image = the viewport's canvas lit (≥ 1 sampled "
        "pixel in 20 not black: pixels, not the element); thumbnails = the study browser's "
        "`<img>`s drawn (10 series). A load ends when the network has been quiet "
        f"{QUIET_S:.0f} s after the thumbnails (OHIF prefetches the rest of the displayed "
        "series meanwhile). Requests and MB: from Playwright's network events (page and "
        "workers), those the browser's cache did not answer (304 revalidations count), "
        "headers + body as received; the table shows the median, the traffic table the "
        "load with the median first-image time.",
        "- MB = 2^20 bytes. Browser, proxy and servers share the machine's 2 CPUs, and the "
        "machine was shared with other work: its 1-minute load average as the loads started "
        f"ranged {min(averages):.1f} to {max(averages):.1f} (median "
        f"{statistics.median(averages):.1f}), so single rounds vary; the medians compare.",
        "",
        *timing_table(setups),
        "",
        "Requests by kind, the median load (count / MB / median duration, request start to "
        "response end as the browser saw it):",
        "",
        *traffic_table(setups),
        "",
        "The DICOMweb answers' headers, as the browser received them (what decides the bytes "
        "and what a reload may reuse):",
        "",
        *headers_lines(setups),
        "",
    ]
    ours = by_name.get("dicomrpc, bench proxy")
    theirs = by_name.get("Orthanc, bench proxy")
    builtin = by_name["dicomrpc, built-in"]
    lines.append(
        "Goals: none in numbers (the issue asks for the figures); the ratios, dicomrpc / "
        "Orthanc behind the same proxy (below 1: dicomrpc draws sooner):"
    )
    lines.append("")
    if ours is not None and theirs is not None:
        for label, pick in (
            ("cold", lambda s: s.cold),
            ("warm", _warm),
        ):
            a = _median([x.drawn_ms for x in pick(ours)])
            b = _median([x.drawn_ms for x in pick(theirs)])
            lines.append(
                f"- **First image, {label}: dicomrpc {a:.0f} ms, Orthanc {b:.0f} ms: {a / b:.2f}x**"
            )
    if ours is not None:
        a = _median([x.drawn_ms for x in builtin.cold])
        b = _median([x.drawn_ms for x in ours.cold])
        lines.append(
            f"- The proxy's cost, cold first image: built-in {a:.0f} ms, behind the proxy "
            f"{b:.0f} ms."
        )
    lines.append("")
    drawn = [load for s in setups for load in [*s.cold, *(x for r in s.warm for x in r)]]
    lit = [load.lit for load in drawn]
    failed = [
        f"{s.name}: {f.status or 'failed'} {f.url}"
        for s in setups
        for load in [*s.cold, *(x for r in s.warm for x in r)]
        for f in load.fetched
        if f.status == 0 or f.status >= 400
    ]
    frames = sorted({len(load.network("frames")) for s in setups for load in s.cold})
    lines.append(
        f"Verified: every load ({len(drawn)}) drew the image (lit share of the sampled canvas "
        f"pixels {min(lit):.0%} to {max(lit):.0%}) and showed "
        f"{_span([load.thumbnail_count for load in drawn])} series thumbnails; "
        f"frames fetched per cold load: {', '.join(map(str, frames))}; "
        + (
            f"failed or refused requests: {'; '.join(failed[:5])}."
            if failed
            else "no request failed or was refused."
        )
    )
    if orthanc_missing:
        lines += ["", f"Orthanc: unavailable — {orthanc_missing}."]
    if problems:
        lines += ["", "Problems seen:", "", *(f"- {p}" for p in problems)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (5)")
    parser.add_argument("--warm", type=int, default=2, help="warm reloads per round (2)")
    parser.add_argument("--no-orthanc", action="store_true", help="dicomrpc only")
    parser.add_argument(
        "--no-write", action="store_true", help="print only, leave RESULTS.md alone"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from playwright.sync_api import sync_playwright

    WORK.mkdir(parents=True, exist_ok=True)
    if not CHROMIUM.exists():
        print(f"{CHROMIUM} is missing (apt-get install chromium)", file=sys.stderr)
        return 2
    dist = package.fetch()
    study = big_study()
    orthanc_missing = "skipped (--no-orthanc)" if args.no_orthanc else ensure_orthanc()
    problems: list[str] = []
    residency: dict[str, tuple[int, int] | None] = {}
    version = ""
    run_dir = Path(tempfile.mkdtemp(prefix="viewer-", dir=WORK))
    try:
        with contextlib.ExitStack() as stack:
            ours_data = run_dir / "dicomrpc"
            started = time.perf_counter()
            with dicomrpc_server(ours_data, WORK / "viewer-load.log") as (target, _):
                load_dicomrpc(target, study.files)
            print(f"loaded dicomrpc in {time.perf_counter() - started:.1f} s", flush=True)
            http_port = free_port()
            ours = Backend("dicomrpc", ours_data, lambda: dicomrpc_http(ours_data, http_port, dist))
            stack.callback(ours.stop)
            backends = [ours]
            ours_proxy = stack.enter_context(
                ProxySite(dist, "/dicomweb", lambda: ours.port).running()
            )
            setups = [
                Setup(
                    "dicomrpc, built-in", ours, "/dicomweb", lambda: f"http://127.0.0.1:{http_port}"
                ),
                Setup("dicomrpc, bench proxy", ours, "/dicomweb", lambda: ours_proxy.root),
            ]
            if orthanc_missing is None:
                orthanc_dir = run_dir / "orthanc"
                orthanc_dir.mkdir()
                theirs = Backend("Orthanc", orthanc_dir, lambda: orthanc_http(orthanc_dir))
                stack.callback(theirs.stop)
                backends.append(theirs)
                theirs.restart([])
                started = time.perf_counter()
                load_orthanc(theirs.port, study.files)
                print(f"loaded Orthanc in {time.perf_counter() - started:.1f} s", flush=True)
                theirs.stop()
                theirs_proxy = stack.enter_context(
                    ProxySite(dist, "/dicom-web", lambda: theirs.port).running()
                )
                setups.append(
                    Setup("Orthanc, bench proxy", theirs, "/dicom-web", lambda: theirs_proxy.root)
                )
            for backend in backends:
                evict([backend.data, dist])
                residency[backend.name] = resident_bytes([backend.data])
            with sync_playwright() as playwright:
                for number in range(args.rounds):
                    order = setups if number % 2 == 0 else setups[::-1]
                    for setup in order:
                        measure(playwright, setup, study, args.warm, dist)
                        cold, warm = setup.cold[-1], setup.warm[-1]
                        print(
                            f"[{number + 1}/{args.rounds}] {setup.name}: first image cold "
                            f"{cold.drawn_ms:.0f} ms ({cold.requests} requests, "
                            f"{cold.megabytes:.1f} MB), warm "
                            + ", ".join(f"{w.drawn_ms:.0f}" for w in warm)
                            + " ms",
                            flush=True,
                        )
                    for backend in backends:
                        backend.stop()
                browser = playwright.chromium.launch(
                    executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS)
                )
                version = browser.version
                browser.close()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    section = report(setups, study, args, version, residency, problems, orthanc_missing)
    print()
    print(section)
    if not args.no_write:
        write_section(section, SECTION)
        print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
