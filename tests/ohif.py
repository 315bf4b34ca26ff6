"""The OHIF viewer (npm ``@ohif/app``'s built ``dist/``) and Chromium, as browser tests use them.

OHIF is the web viewer most sites put in front of a DICOMweb archive; the tests run its released
build, unchanged, against the gateway: served by the archive itself at the root of its HTTP
port, and from a separate static server (cross-origin). The package is fetched once into the
cache the server serves it from (``dicomrpc_server.viewer.package``: ``npm pack``, checked
against its pinned digest) and reused by later runs. The separate server serves its ``dist/``
on a free loopback port, with an ``app-config.js`` written by the test
(``dicomrpc_server.viewer.app_config``) in place of the package's own.

The tests skip without ``chromium`` or ``npm``, unless ``DICOMRPC_REQUIRE_BROWSER=1`` (set by
``.ci/run``), which makes either missing a failure: CI must never pass by skipping them.
"""

from __future__ import annotations

import io
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dicomrpc_server.viewer import package

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


def ohif_dist() -> Path:
    """The ``dist/`` folder of the pinned ``@ohif/app``, fetched into the cache on first use."""
    try:
        return package.fetch()
    except package.FetchError as error:
        pytest.fail(f"the OHIF viewer could not be fetched: {error}")


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
