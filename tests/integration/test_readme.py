"""The README's shell examples run as written.

Each ``sh`` block preceded by the marker comment is run by bash, line by line as a user would
paste it (``set -e``: a failing line fails the test), against a real server, from a folder
where ``.venv`` is the repository's virtual environment and ``~`` holds what the examples name:
``~/dicom/study/``, a study whose UIDs are the README's ``1.2.3.4`` ones.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import RunningServer
from tests.dicomgen import ct_instance

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- runs as written in tests/integration/test_readme.py -->"
BLOCK = re.compile(re.escape(MARKER) + r"\n```sh\n(.*?)```", re.DOTALL)


def blocks() -> list[str]:
    return BLOCK.findall((ROOT / "README.md").read_text())


def test_the_readme_marks_its_runnable_blocks() -> None:
    assert len(blocks()) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("number", range(len(blocks())))
def test_a_readme_shell_block_runs_as_written(
    server: RunningServer, tmp_path: Path, number: int
) -> None:
    home = tmp_path / "home"
    study = home / "dicom" / "study"
    study.mkdir(parents=True)
    (study / "1.dcm").write_bytes(
        ct_instance("1.2.3.4", "1.2.3.4.1", "1.2.3.4.1.1", patient_name="Doe^John")
    )
    (study / "2.dcm").write_bytes(
        ct_instance("1.2.3.4", "1.2.3.4.1", "1.2.3.4.1.2", number=2, patient_name="Doe^John")
    )
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
