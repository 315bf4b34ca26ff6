"""The HTTP limits as settings: flags, variables, and what a bad value is told."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from dicomrpc_server.config import Settings, add_serve_arguments
from dicomrpc_server.main import settings_from_args


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(argv)


def test_flags_set_every_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOMRPC_HTTP_BODY_TIMEOUT", "7.5")
    monkeypatch.setenv("DICOMRPC_HTTP_MAX_STOW_PARTS", "20")
    settings = settings_from_args(
        _parse(
            "--http-max-connections=50",
            "--http-header-timeout=2.5",
            "--http-keep-alive=9",
            "--http-max-header-bytes=8192",
            "--http-max-url-bytes=2048",
            "--http-max-stow-parts=30",
        )
    )
    assert (
        settings.http_max_connections,
        settings.http_header_timeout_s,
        settings.http_body_timeout_s,
        settings.http_keep_alive_s,
        settings.http_max_header_bytes,
        settings.http_max_url_bytes,
        settings.http_max_stow_parts,
    ) == (50, 2.5, 7.5, 9, 8192, 2048, 30)  # the flag wins over the variable


def test_defaults() -> None:
    settings = Settings()
    assert settings.http_max_connections == 1000
    assert settings.http_header_timeout_s == 10.0
    assert settings.http_body_timeout_s == 30.0
    assert settings.http_keep_alive_s == 5
    assert settings.http_max_header_bytes == 65536
    assert settings.http_max_url_bytes == 16384
    assert settings.http_max_stow_parts == 10_000


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--http-max-connections", "0", "'0' is not above zero"),
        ("--http-max-stow-parts", "many", "'many' is not a whole number"),
        ("--http-header-timeout", "-1", "'-1' is not a finite number above zero"),
        ("--http-body-timeout", "inf", "'inf' is not a finite number above zero"),
    ],
)
def test_a_bad_flag_is_named(
    flag: str, value: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        _parse(f"{flag}={value}")
    error = capsys.readouterr().err
    assert flag in error and words in error


def test_a_bad_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOMRPC_HTTP_MAX_URL_BYTES", "-5")
    with pytest.raises(ValueError, match="DICOMRPC_HTTP_MAX_URL_BYTES: '-5' is not above zero"):
        Settings.from_env()


@pytest.mark.slow
def test_serve_exits_with_the_bad_variable_named(tmp_path: object) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dicomrpc.cli", "serve", "--data", str(tmp_path)],
        env={"DICOMRPC_HTTP_KEEP_ALIVE": "soon", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "DICOMRPC_HTTP_KEEP_ALIVE: 'soon' is not a whole number" in result.stderr
    assert "Traceback" not in result.stderr
