"""The SDK and the CLI start without pydicom and numpy (about half a second of imports)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_sdk_and_building_the_cli_leave_pydicom_unloaded() -> None:
    code = (
        "import sys, dicomrpc, dicomrpc.cli\n"
        "dicomrpc.cli._parser()\n"
        "print(sorted(m for m in ('pydicom', 'numpy') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "[]"


def test_the_pydicom_conversions_still_load_it_when_called() -> None:
    code = (
        "import sys\n"
        "from dicomrpc.datasets import from_pydicom, keyword, to_pydicom\n"
        "import pydicom\n"
        "ds = pydicom.Dataset(); ds.PatientName = 'A^B'\n"
        "assert to_pydicom(from_pydicom(ds)).PatientName == 'A^B'\n"
        "assert keyword('00100010') == 'PatientName' and keyword('00091010') == ''\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
