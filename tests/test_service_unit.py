"""The systemd unit of docs/ starts a command that exists, with settings that fit it."""

from __future__ import annotations

import configparser
import shlex
import subprocess
import sys
from pathlib import Path

from dicomrpc.cli import _parser
from dicomrpc_server.config import Settings
from dicomrpc_server.processes import STOP_MARGIN_S

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=True, empty_lines_in_values=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DOCS / "dicomrpc.service").read_text(encoding="utf-8"))
    return unit


def test_exec_start_names_serve_and_options_it_accepts() -> None:
    service = _unit()["Service"]
    command = shlex.split(service["ExecStart"])
    assert Path(command[0]).name == "dicomrpc" and command[1] == "serve"
    options = [word.partition("=")[0] for word in command[2:] if word.startswith("--")]
    assert "--config" in options
    help_text = subprocess.run(
        [sys.executable, "-m", "dicomrpc.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    for option in options:
        assert option in help_text, option
    args = _parser().parse_args(command[1:])  # a usage error exits
    assert args.command == "serve" and args.config == Path("/etc/dicomrpc/dicomrpc.toml")


def test_the_unit_restarts_stops_in_time_and_is_confined() -> None:
    service = _unit()["Service"]
    example = Settings.load(DOCS / "dicomrpc.example.toml")  # what the unit installs
    assert service["User"] and service["Restart"] == "on-failure"
    assert float(service["TimeoutStopSec"]) > example.shutdown_grace_s + STOP_MARGIN_S
    assert service["NoNewPrivileges"] == "yes" and service["PrivateTmp"] == "yes"
    assert service["ProtectSystem"] == "strict"
    data = Path(service["WorkingDirectory"]) / example.data_dir
    writable = [Path(p) for p in service["ReadWritePaths"].split()]
    assert any(data.is_relative_to(path) for path in writable), (data, writable)
    probe = f"http://127.0.0.1:{example.http_port}/health/ready"
    assert probe in service["ExecStartPost"]
