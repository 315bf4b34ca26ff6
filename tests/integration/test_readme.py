"""The README's shell and Python examples run as written.

Each ``sh`` block preceded by the marker comment is run by bash, line by line as a user would
paste it (``set -e``: a failing line fails the test), against a real server, from a folder
where ``.venv`` is the repository's virtual environment and ``~`` holds what the examples name:
``~/dicom/study/``, a study whose UIDs are the README's ``1.2.3.4`` ones.

Each marked ``python`` block is run as a program by the test environment's Python, from a
folder holding that study as ``study/``, against a server that already holds it. The only
change made to a block is the server's address: ``localhost:50051`` and
``http://localhost:8042/dicomweb`` become the test server's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dicomrpc import Client
from tests.conftest import RunningServer
from tests.dicomgen import ct_instance

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- runs as written in tests/integration/test_readme.py -->"
BLOCK = re.compile(re.escape(MARKER) + r"\n```sh\n(.*?)```", re.DOTALL)
PYTHON_BLOCK = re.compile(re.escape(MARKER) + r"\n```python\n(.*?)```", re.DOTALL)


def blocks() -> list[str]:
    return BLOCK.findall((ROOT / "README.md").read_text())


def python_blocks() -> list[str]:
    return PYTHON_BLOCK.findall((ROOT / "README.md").read_text())


def test_the_readme_marks_its_runnable_blocks() -> None:
    assert len(blocks()) >= 2
    assert len(python_blocks()) >= 5


def _write_study(folder: Path) -> None:
    """The README's study ``1.2.3.4``: two CT instances of series ``1.2.3.4.1``."""
    folder.mkdir(parents=True)
    (folder / "1.dcm").write_bytes(
        ct_instance("1.2.3.4", "1.2.3.4.1", "1.2.3.4.1.1", patient_name="Doe^John")
    )
    (folder / "2.dcm").write_bytes(
        ct_instance("1.2.3.4", "1.2.3.4.1", "1.2.3.4.1.2", number=2, patient_name="Doe^John")
    )


@pytest.mark.slow
@pytest.mark.parametrize("number", range(len(python_blocks())))
def test_a_readme_python_block_runs_as_written(
    server: RunningServer, tmp_path: Path, number: int
) -> None:
    _write_study(tmp_path / "study")
    with Client(server.target) as client:
        assert not client.store([tmp_path / "study"]).failed
    code = (
        python_blocks()[number]
        .replace('"localhost:50051"', repr(server.target))
        .replace('"http://localhost:8042/dicomweb"', repr(server.dicomweb_url))
    )
    (tmp_path / "example.py").write_text(code)
    done = subprocess.run(
        [sys.executable, "example.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"


@pytest.mark.slow
@pytest.mark.parametrize("number", range(len(blocks())))
def test_a_readme_shell_block_runs_as_written(
    server: RunningServer, tmp_path: Path, number: int
) -> None:
    home = tmp_path / "home"
    _write_study(home / "dicom" / "study")
    work = tmp_path / "work"
    work.mkdir()
    (work / ".venv").symlink_to(ROOT / ".venv")
    env = {
        **os.environ,
        "HOME": str(home),
        "DICOMRPC_SERVER": server.target,
    }
    script = "set -euo pipefail\n" + blocks()[number]
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr
