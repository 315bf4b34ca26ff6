"""The ``serve`` config file: keys from the options table, precedence, refusals, the example."""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from dicomrpc import Client
from dicomrpc_server.config import OPTIONS, Settings, add_serve_arguments
from dicomrpc_server.config_file import read_config_file
from dicomrpc_server.main import settings_from_args

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "dicomrpc.example.toml"


def _parse(*argv: str) -> Settings:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return settings_from_args(parser.parse_args(list(argv)))


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_every_flag_of_serve_is_an_option_of_the_table() -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    flags = {o for a in parser._actions for o in a.option_strings if o.startswith("--")}
    assert flags - {"--help", "--config"} == {o.flag for o in OPTIONS if o.flag}
    actions = {flag: a for a in parser._actions for flag in a.option_strings}
    for option in OPTIONS:  # the help of each flag names the variable that also sets it
        if option.flag:
            assert option.variable in (actions[option.flag].help or ""), option.flag
    names = [o.name for o in OPTIONS]
    assert len(set(names)) == len(names)
    assert set(names) <= set(typing.get_type_hints(Settings))
    assert len({o.variable for o in OPTIONS}) == len(OPTIONS)


def test_the_example_sets_every_option_to_its_default() -> None:
    keys = set(read_config_file(EXAMPLE))
    assert keys == {o.name for o in OPTIONS}
    assert Settings.load(EXAMPLE) == Settings()
    text = EXAMPLE.read_text(encoding="utf-8")
    for option in OPTIONS:  # each key says which flag or variable it stands for
        assert (option.flag or option.variable) in text, option.name


def test_the_file_sets_values_of_every_kind(tmp_path: Path) -> None:
    config = _write(
        tmp_path / "c.toml",
        'data_dir = "/srv/dicom"\ngrpc_port = 6000\nshutdown_grace_s = 5\nviewer = false\n'
        'cors_origins = ["https://a.example", "https://b.example"]\n'
        'dimse_peers = ["ws=WS1@10.0.0.9:104"]\nauth_roles = ["Reader=dicom.read"]\n'
        'audit_log = ""\nae_title = " PACS "\nlog_level = "debug"\n',
    )
    settings = Settings.load(config)
    assert settings.data_dir == Path("/srv/dicom") and settings.grpc_port == 6000
    assert settings.shutdown_grace_s == 5.0 and settings.viewer is False
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert settings.dimse_peers == (("ws", "WS1", "10.0.0.9", 104),)
    assert settings.auth_roles == (("Reader", ("dicom.read",)),)
    assert settings.audit_log is None and settings.ae_title == "PACS"
    assert settings.log_level == "DEBUG"


def test_flags_override_variables_which_override_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _write(tmp_path / "c.toml", "grpc_port = 6001\nhttp_port = 6002\nworkers = 3\n")
    monkeypatch.setenv("DICOMRPC_CONFIG", str(config))
    settings = _parse()
    assert (settings.grpc_port, settings.http_port, settings.workers) == (6001, 6002, 3)
    monkeypatch.setenv("DICOMRPC_GRPC_PORT", "6003")
    settings = _parse("--http-port", "6004")
    assert (settings.grpc_port, settings.http_port, settings.workers) == (6003, 6004, 3)
    assert _parse("--grpc-port", "6005").grpc_port == 6005
    other = _write(tmp_path / "other.toml", "workers = 4\n")
    assert _parse("--config", str(other)).workers == 4  # the flag names the file first


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("grpc_prot = 1\n", r"unknown setting 'grpc_prot' \(did you mean 'grpc_port'\?\)"),
        ("grpc-port = 1\n", r"unknown setting 'grpc-port' \(did you mean 'grpc_port'\?"),
        ("[server]\nhost = 'x'\n", "unknown setting 'server'"),
        ('grpc_port = "50051"\n', r"grpc_port: expected an integer, got '50051' \(a string\)"),
        ("viewer = 1\n", r"viewer: expected a boolean \(true or false\), got 1 \(an integer\)"),
        ("shutdown_grace_s = true\n", r"shutdown_grace_s: expected a number, got True"),
        ("data_dir = 5\n", r"data_dir: expected a path \(a string\), got 5"),
        ('cors_origins = "*"\n', r"cors_origins: expected an array of strings, got '\*'"),
        ("http_keep_alive_s = 0\n", r"http_keep_alive_s: '0' is not above zero"),
        ('ae_title = "A\\\\B"\n', r"ae_title: AE title 'A\\\\B' is not 1 to 16"),
        ('dimse_peers = ["ws=WS1@host"]\n', "dimse_peers: DIMSE peer 'ws=WS1@host' is not"),
        ("grpc_port = \n", "is not TOML"),
    ],
)
def test_a_bad_file_is_refused_naming_the_file_and_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    config = _write(tmp_path / "bad.toml", text)
    with pytest.raises(ValueError, match=message) as caught:
        Settings.load(config)
    assert str(config) in str(caught.value)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"config file .*nowhere.toml: No such file"):
        _parse("--config", str(tmp_path / "nowhere.toml"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(args: Sequence[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dicomrpc.cli", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1", **env),
    )


def _serving_port(process: subprocess.Popen[str]) -> int:
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"serving gRPC on 127\.0\.0\.1:(\d+)", line)
    assert match, f"server did not start: {line!r}"
    return int(match.group(1))


def _stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    process.stderr.close()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in [n for n in os.environ if n.startswith("DICOMRPC_")]:
        monkeypatch.delenv(name)
    yield


@pytest.mark.usefixtures("clean_env")
def test_serve_takes_its_port_and_data_folder_from_the_file_env_and_flags_win(
    tmp_path: Path,
) -> None:
    data = tmp_path / "archive"
    file_port, env_port, flag_port = _free_port(), _free_port(), _free_port()
    config = _write(
        tmp_path / "dicomrpc.toml",
        f'data_dir = "{data}"\ngrpc_port = {file_port}\nhttp_port = -1\ndimse_port = -1\n'
        'log_level = "WARNING"\n',
    )
    process = _serve(["--config", str(config)], {})
    try:
        assert _serving_port(process) == file_port
        with Client(f"127.0.0.1:{file_port}") as client:
            assert client.search_studies({}).as_json() == []
        assert (data / "index").is_dir()
    finally:
        _stop(process)
    # The variable names the file; another variable overrides the file's port.
    process = _serve([], {"DICOMRPC_CONFIG": str(config), "DICOMRPC_GRPC_PORT": str(env_port)})
    try:
        assert _serving_port(process) == env_port
    finally:
        _stop(process)
    process = _serve(
        ["--grpc-port", str(flag_port)],
        {"DICOMRPC_CONFIG": str(config), "DICOMRPC_GRPC_PORT": str(env_port)},
    )
    try:
        assert _serving_port(process) == flag_port
    finally:
        _stop(process)


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("grpc_prot = 0\n", "unknown setting 'grpc_prot'"),
        ('grpc_port = "any"\n', "grpc_port: expected an integer, got 'any' (a string)"),
    ],
)
def test_serve_refuses_a_bad_file_at_start_up(tmp_path: Path, text: str, named: str) -> None:
    config = _write(tmp_path / "dicomrpc.toml", f'data_dir = "{tmp_path / "d"}"\n{text}')
    result = subprocess.run(
        [sys.executable, "-m", "dicomrpc.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert named in result.stderr and str(config) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "d").exists()  # refused before the folder was touched
