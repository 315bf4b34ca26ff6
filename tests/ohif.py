"""The OHIF viewer (npm ``@ohif/app``'s built ``dist/``) and Chromium, as browser tests use them.

OHIF is the web viewer most sites put in front of a DICOMweb archive; the tests run its released
build, unchanged, against the gateway. The package is fetched once with ``npm pack`` into a cache
folder outside the repository (``$XDG_CACHE_HOME/dicomrpc`` or ``~/.cache/dicomrpc``), checked
against its pinned digest, and reused by later runs. Its ``dist/`` is served by a small static
HTTP server on a free loopback port, with an ``app-config.js`` written by the test in place of the
package's own (which points at a public demo server).

The tests skip without ``chromium`` or ``npm``, unless ``DICOMRPC_REQUIRE_BROWSER=1`` (set by
``.ci/run``), which makes either missing a failure: CI must never pass by skipping them.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

OHIF_VERSION = "3.13.2"
# The npm registry's "integrity" of @ohif/app@3.13.2: the tarball must be this one, byte for byte.
OHIF_INTEGRITY = (
    "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZ"
    "B9E8EA=="
)
CHROMIUM = Path(os.environ.get("DICOMRPC_CHROMIUM", "/usr/bin/chromium"))
# Without a sandbox (the tests run as root) and without the browser's own traffic to the
# outside (updates, sync, field trials), which fails here many connections at a time.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # WebGL on the CPU (SwiftShader): without a GPU, Cornerstone would otherwise fall back to
    # its slower CPU renderer, which is not what a viewer's user runs.
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
)
NPM_TIMEOUT_S = 600


def require_browser() -> None:
    """Skip the calling test without Chromium or npm (fail instead when CI requires them)."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if shutil.which("npm") is None:
        missing.append("npm")
    if not missing:
        return
    message = f"the OHIF viewer tests need {' and '.join(missing)}"
    if os.environ.get("DICOMRPC_REQUIRE_BROWSER") == "1":
        pytest.fail(message)
    pytest.skip(message)


def cache_root() -> Path:
    """The folder that keeps downloads between runs, outside the repository."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dicomrpc"


def ohif_dist(version: str = OHIF_VERSION, integrity: str = OHIF_INTEGRITY) -> Path:
    """The ``dist/`` folder of ``@ohif/app@version``, fetched into the cache on first use.

    The tarball comes from the npm registry through ``npm pack`` (the registry's ordinary
    client, no install scripts run) and must match ``integrity``; the folder appears in the
    cache only once complete (moved into place), so an interrupted run leaves nothing half
    written behind.
    """
    target = cache_root() / f"ohif-{version}"
    dist = target / "dist"
    if (dist / "index.html").is_file():
        return dist
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".ohif-{version}-") as scratch:
        work = Path(scratch)
        packed = subprocess.run(
            ["npm", "pack", f"@ohif/app@{version}", "--pack-destination", str(work), "--json"],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
            check=False,
        )
        assert packed.returncode == 0, f"npm pack failed: {packed.stderr[-2000:]}"
        (entry,) = json.loads(packed.stdout)
        tarball = work / entry["filename"]
        algorithm, _, expected = integrity.partition("-")
        digest = hashlib.new(algorithm, tarball.read_bytes()).digest()
        assert base64.b64encode(digest).decode() == expected, f"{tarball.name}: wrong digest"
        with tarfile.open(tarball) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith("package/dist/")]
            archive.extractall(work / "unpacked", members=members, filter="data")
        staged = work / "staged"
        staged.mkdir()
        (work / "unpacked" / "package" / "dist").rename(staged / "dist")
        try:
            staged.rename(target)
        except OSError:
            # Another run put it in place first; its copy is as good.
            if not (dist / "index.html").is_file():
                raise
    return dist


def app_config(
    dicomweb_url: str, *, bulk_data_uri: bool, overrides: Mapping[str, Any] | None = None
) -> str:
    """An ``app-config.js`` whose one data source is the gateway at ``dicomweb_url``.

    The keys are those of OHIF's DICOMweb data source
    (``@ohif/extension-default.dataSourcesModule.dicomweb``) as an archive with QIDO-RS
    ``includefield`` and fuzzy matching, WADO-RS frames and metadata with bulk data URIs is
    configured; ``bulk_data_uri`` turns OHIF's use of those URIs on or off. The dialogs and the
    tour OHIF shows on top of the viewer (cross-origin isolation, CPU rendering, investigational
    use) are off: they concern the page's hosting, not the archive, and would hide the viewport.
    """
    configuration: dict[str, Any] = {
        "friendlyName": "dicomrpc",
        "name": "dicomrpc",
        "qidoRoot": dicomweb_url,
        "wadoRoot": dicomweb_url,
        "wadoUriRoot": dicomweb_url,
        "qidoSupportsIncludeField": True,
        "supportsReject": False,
        "imageRendering": "wadors",
        "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": True,
        "supportsFuzzyMatching": True,
        "supportsWildcard": True,
        "staticWado": False,
        "singlepart": False,
        "omitQuotationForMultipartRequest": True,
        "bulkDataURI": {"enabled": bulk_data_uri},
    }
    configuration.update(overrides or {})
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        # No onboarding tour: its pop-up would sit on the viewport the tests look at.
        "customizationService": {"ohif.tours": {"$set": []}},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 10},
        "defaultDataSourceName": "dicomrpc",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "dicomrpc",
                "configuration": configuration,
            }
        ],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


class _Handler(SimpleHTTPRequestHandler):
    """Files of ``dist/`` as they are; ``/app-config.js`` from the test; ``index.html`` for the
    application's own routes (``/viewer``, ``/``), as OHIF's single-page hosting expects."""

    extensions_map = {  # noqa: RUF012 (the base class's own attribute, replaced)
        "": "application/octet-stream",
        ".html": "text/html",
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".css": "text/css",
        ".json": "application/json",
        ".wasm": "application/wasm",
        ".svg": "image/svg+xml",
        ".png": "image/png",
        ".ico": "image/x-icon",
        ".woff2": "font/woff2",
        ".woff": "font/woff",
        ".ttf": "font/ttf",
        ".xml": "application/xml",
    }

    def __init__(self, *args: Any, config: bytes, directory: str, **kwargs: Any) -> None:
        self.config = config
        super().__init__(*args, directory=directory, **kwargs)

    def send_head(self) -> Any:
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        if path == "/app-config.js":
            self.send_response(200)
            self.send_header("Content-Type", "text/javascript")
            self.send_header("Content-Length", str(len(self.config)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            return io.BytesIO(self.config)
        if not Path(self.translate_path(path)).exists():
            self.path = "/index.html"
        return super().send_head()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests record the requests they care about in the browser."""


@dataclass
class StaticSite:
    """OHIF's ``dist/`` served on a free loopback port; ``url`` is its root."""

    server: ThreadingHTTPServer
    thread: threading.Thread = field(repr=False)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"


@contextmanager
def serve_ohif(dist: Path, config: str) -> Iterator[StaticSite]:
    """Serve ``dist`` at the root of a new static server (OHIF's pages use absolute paths)."""
    handler = partial(_Handler, config=config.encode(), directory=str(dist))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield StaticSite(server, thread)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(30)
