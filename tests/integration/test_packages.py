"""The SDK's wheel, installed alone in a clean virtual environment, used against a server.

``pip install dicomrpc`` is the SDK and the command line client; the archive server and its
packages (the LMDB index, the codecs, the HTTP and DIMSE servers) come with the ``server``
extra. These tests build the wheel from the repository, install it into a new virtual
environment with the releases of the lock, and check what came with it and that it works.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from dicomrpc import Client
from tests.conftest import RunningServer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

# Distributions only the server needs: none of them may come with the SDK.
SERVER_ONLY = {
    "asyncpg",
    "boto3",
    "grpcio-health-checking",
    "grpcio-reflection",
    "imagecodecs",
    "lmdb",
    "numpy",
    "pillow",
    "prometheus-client",
    "pyjpegls",
    "pylibjpeg",
    "pylibjpeg-openjpeg",
    "pylibjpeg-rle",
    "pynetdicom",
    "python-gdcm",
    "starlette",
    "uvicorn",
}

# A user's script: store a file, find its study, retrieve it to a folder; print what it saw.
SCRIPT = """
import json, sys
from pathlib import Path
from dicomrpc import Client

target, path, out = sys.argv[1:4]
with Client(target) as client:
    result = client.store([path])
    study = result.instances[0].study_instance_uid
    found = client.search_studies(StudyInstanceUID=study).as_json()
    saved = client.save_study(study, out)
print(json.dumps({
    "outcome": result.instances[0].outcome,
    "study": study,
    "found": len(found),
    "files": [str(p) for p in saved],
}))
"""


def _constraints(lock: Path, into: Path) -> Path:
    """The lock's pins without their hashes, as a constraints file for pip."""
    pins = re.findall(r"^([A-Za-z0-9_.\-]+==[^\s\\]+)", lock.read_text(), flags=re.MULTILINE)
    into.write_text("\n".join(pins) + "\n")
    return into


@pytest.fixture(scope="module")
def sdk_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment holding the wheel of ``pip install dicomrpc`` alone."""
    root = tmp_path_factory.mktemp("sdk-wheel")
    source = root / "source"
    # A copy, so that building leaves no build/ or egg-info behind in the repository.
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for name in ("client", "server"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    dist = root / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(source),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = dist.glob("dicomrpc-*.whl")
    venv.create(root / "venv", with_pip=True)
    python = root / "venv" / "bin" / "python"
    constraints = _constraints(REPO / "requirements" / "server.lock", root / "constraints.txt")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-c", str(constraints), str(wheel)],
        check=True,
        timeout=600,
    )
    return python


def test_the_sdk_installs_without_the_servers_packages(sdk_python: Path) -> None:
    listed = subprocess.run(
        [str(sdk_python), "-m", "pip", "list", "--format", "json"],
        check=True,
        capture_output=True,
        text=True,
    )
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}
    assert "dicomrpc" in installed
    assert {"grpcio", "protobuf", "pydicom"} <= installed
    assert installed & SERVER_ONLY == set()


def test_the_sdk_wheel_stores_searches_and_retrieves(
    sdk_python: Path, server: RunningServer, tmp_path: Path
) -> None:
    path = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
    script = tmp_path / "user.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    run = subprocess.run(
        [str(sdk_python), str(script), server.target, str(path), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # not the repository: only the installed wheel can be imported
    )
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen["outcome"] == "stored"
    assert seen["found"] == 1
    (saved,) = seen["files"]
    # The bytes the archive holds, as the repository's own SDK reads them.
    with Client(server.target) as client:
        (stored,) = client.iter_instances(seen["study"])
    assert hashlib.sha256(Path(saved).read_bytes()).digest() == (
        hashlib.sha256(stored.data).digest()
    )


def test_the_sdk_commands_work_and_server_commands_say_what_to_install(
    sdk_python: Path, server: RunningServer, tmp_path: Path
) -> None:
    command = sdk_python.parent / "dicomrpc"
    listed = subprocess.run(
        [str(command), "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert listed.returncode == 0, listed.stderr
    assert {"serve", "backup", "restore", "store", "search"} <= set(
        re.findall(r"[a-z-]+", listed.stdout)
    )
    search = subprocess.run(
        [str(command), "search", "studies", "--server", server.target, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert search.returncode == 0, search.stderr
    assert json.loads(search.stdout) == []
    serve = subprocess.run(
        [str(command), "serve", "--data", str(tmp_path / "new-archive")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert serve.returncode == 2
    assert "pip install 'dicomrpc[server]'" in serve.stderr
    assert "Traceback" not in serve.stderr
    assert not (tmp_path / "new-archive").exists()
