"""The command line as a pipeline's first stage: ``--version``, and a reader that goes away
early (``dicomrpc feed | head -1``) ends it quietly, without a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dicomrpc import Client, __version__
from tests.conftest import RunningServer
from tests.dicomgen import ct_instance

CLI = [sys.executable, "-m", "dicomrpc.cli"]


def test_version() -> None:
    done = subprocess.run([*CLI, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.strip() == f"dicomrpc {__version__}"


@pytest.mark.slow
def test_a_reader_gone_early_ends_the_command_without_a_traceback(
    server: RunningServer, client: Client
) -> None:
    assert client.store([ct_instance(seed=n) for n in range(3)]).status == "all_stored"
    for json in ([], ["--json"]):
        process = subprocess.Popen(
            [*CLI, "feed", "--since", "0", *json, "--server", server.target],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()  # as `head` does once it has what it wants
        errors = process.stderr.read().decode()
        process.stderr.close()
        assert process.wait(60) == 141, errors
        assert "Traceback" not in errors and "BrokenPipeError" not in errors, errors


def test_a_server_address_that_does_not_answer_is_explained() -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = subprocess.run(
        [*CLI, "search", "studies", "--server", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"nothing answers at 127.0.0.1:{port}" in done.stderr
    assert "is the archive running there?" in done.stderr
    done = subprocess.run(
        [*CLI, "search", "studies", "--server", "http://localhost:8042/dicomweb"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "not the DICOMweb URL" in done.stderr


@pytest.mark.slow
def test_grpc_urls_name_the_server(server: RunningServer) -> None:
    done = subprocess.run(
        [*CLI, "search", "studies", "--server", f"grpc://{server.target}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_help_speaks_to_users_not_to_developers() -> None:
    for args in ([], ["query-tags", "add"], ["search"], ["workitem"], ["render"], ["migrate"]):
        done = subprocess.run([*CLI, *args, "--help"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        for marker in ("``", ":mod:", ":class:", ":func:", "{,", "{''"):
            assert marker not in done.stdout, (args, marker)
