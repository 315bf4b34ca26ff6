"""The public protos pass ``buf lint`` and break nothing of the last release (``buf breaking``).

buf's rules (Buf's style guide, close to Google's AIPs) and their written-down exceptions are in
``proto/buf.yaml``; the last release's protos are ``proto/released.binpb``, a buf image. buf
comes from npm (``@bufbuild/buf`` ships the binary), fetched once into the cache. Without npm
the tests skip, unless ``DICOMRPC_REQUIRE_BUF=1`` (set by ``.ci/run``) makes that a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PROTO = Path(__file__).resolve().parent.parent / "proto"
BUF_VERSION = "1.75.0"
CACHE = Path.home() / ".cache" / "dicomrpc" / f"buf-{BUF_VERSION}"


@pytest.fixture(scope="module")
def buf() -> Path:
    """buf's binary, installed from npm into the cache on first use."""
    binary = CACHE / "node_modules" / ".bin" / "buf"
    if binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None:
        message = "buf's checks need npm (to install @bufbuild/buf)"
        if os.environ.get("DICOMRPC_REQUIRE_BUF") == "1":
            pytest.fail(message)
        pytest.skip(message)
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            npm,
            "install",
            "--prefix",
            str(CACHE),
            "--no-save",
            "--no-audit",
            "--no-fund",
            "--silent",
            f"@bufbuild/buf@{BUF_VERSION}",
        ],
        check=True,
        timeout=600,
    )
    return binary


def _buf(buf: Path, *args: str, cwd: Path = PROTO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(buf), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_protos_pass_buf_lint(buf: Path) -> None:
    run = _buf(buf, "lint")
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_protos_break_nothing_of_the_last_release(buf: Path) -> None:
    run = _buf(buf, "breaking", "--against", "released.binpb")
    assert run.returncode == 0, run.stdout + run.stderr


def test_a_renumbered_field_is_a_breaking_change(buf: Path, tmp_path: Path) -> None:
    """The check itself works: a field given a new number is reported against the release."""
    copy = tmp_path / "proto"
    shutil.copytree(PROTO, copy, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    service = copy / "dicomrpc" / "v1" / "management_service.proto"
    text = service.read_text()
    assert "  int64 since = 1;" in text
    service.write_text(text.replace("  int64 since = 1;", "  int64 since = 9;", 1))
    run = _buf(buf, "breaking", "--against", "released.binpb", cwd=copy)
    assert run.returncode != 0
    assert "ReadChangeFeedRequest" in run.stdout + run.stderr
