"""The SDK's public surface is typed for its users: ``mypy --strict`` passes on a program
that calls all of it (``tests/sdk_surface_user.py``), with the types it asserts.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # mypy takes half a minute a run

ROOT = Path(__file__).resolve().parents[1]
USER = ROOT / "tests" / "sdk_surface_user.py"


def _mypy(path: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mypy", "--strict", "--no-incremental"]
    return subprocess.run(
        [*command, "--cache-dir", str(cache), str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_program_using_the_whole_sdk_passes_mypy_strict(tmp_path: Path) -> None:
    done = _mypy(USER, tmp_path / "cache")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_check_fails_when_a_type_is_not_the_asserted_one(tmp_path: Path) -> None:
    """The check has teeth: a wrong assertion about a return type is an error."""
    wrong = tmp_path / "wrong_user.py"
    wrong.write_text(
        USER.read_text().replace(
            "assert_type(client.save_instance(STUDY, SERIES, SOP, out), Path)",
            "assert_type(client.save_instance(STUDY, SERIES, SOP, out), list[Path])",
        )
    )
    done = _mypy(wrong, tmp_path / "cache")
    assert done.returncode == 1
    assert 'Expression is of type "Path", not "list[Path]"' in done.stdout
