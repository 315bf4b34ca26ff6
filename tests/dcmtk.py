"""dcmtk's network tools (Debian's ``dcmtk``) as the DIMSE tests drive them.

The tests skip when the tools are missing, unless ``DICOMRPC_REQUIRE_DCMTK=1`` (set by
``.ci/run``), which makes a missing tool a failure: CI must never pass by skipping them.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

TOOLS = ("echoscu", "storescu", "findscu", "getscu", "movescu", "storescp")
AE_TITLE = "DICOMRPC"
TIMEOUT_S = 120

# The -x option that makes storescu propose a file's own transfer syntax (besides the
# uncompressed ones), by transfer syntax UID; files in other syntaxes are sent uncompressed.
PROPOSE = {
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}


def require_dcmtk() -> None:
    """Skip the calling test without dcmtk's tools (fail instead when CI requires them)."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if not missing:
        return
    message = f"dcmtk's {', '.join(missing)} not installed (apt-get install dcmtk)"
    if os.environ.get("DICOMRPC_REQUIRE_DCMTK") == "1":
        pytest.fail(message)
    pytest.skip(message)


def run(tool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk tool; its output (both streams) is in ``stdout``."""
    return subprocess.run(
        [tool, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=TIMEOUT_S,
        # Without it dcmtk waits ~40 ms on each small message (Nagle's algorithm).
        env=dict(os.environ, TCP_NODELAY="1"),
    )


def peer(port: int, *options: str) -> list[str]:
    """The common arguments: the archive's AE title, loopback and ``port``."""
    return ["-aec", AE_TITLE, *options, "127.0.0.1", str(port)]


_STATUS = re.compile(
    r"Message Type\s*:\s*(C-[A-Z]+ RSP).*?DIMSE Status\s*:\s*0x([0-9A-Fa-f]{4})", re.DOTALL
)


def statuses(output: str, kind: str = "") -> list[int]:
    """The statuses of the responses a tool printed (with ``-d``), in order.

    ``kind`` keeps one kind of response (``C-GET RSP``: not the C-STORE responses getscu
    sends back).
    """
    return [int(code, 16) for found, code in _STATUS.findall(output) if kind in ("", found)]


class StoreScp:
    """dcmtk's storescp, as a C-MOVE destination: it writes what it receives to ``folder``."""

    def __init__(self, folder: Path, ae_title: str, *options: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.ae_title = ae_title
        self.process = subprocess.Popen(
            ["storescp", "-aet", ae_title, "-od", str(folder), *options, str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Without it each instance stalls ~40 ms (Nagle's algorithm on the responses).
            env=dict(os.environ, TCP_NODELAY="1"),
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError("storescp did not start") from None
                time.sleep(0.05)

    @property
    def peer(self) -> tuple[str, str, str, int]:
        """This destination as ``Settings.dimse_peers`` names it."""
        return ("test-destination", self.ae_title, "127.0.0.1", self.port)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
