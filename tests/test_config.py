"""The limits are settings: flags, ``DICOMRPC_*`` variables and derived defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from dicomrpc_server.config import GIB, Settings, add_serve_arguments, redact_dsn
from dicomrpc_server.main import settings_from_args


def _parse(*argv: str) -> Settings:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return settings_from_args(parser.parse_args(list(argv)))


def test_codec_limits_from_flags_and_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOMRPC_CODEC_TIMEOUT_S", "7.5")
    monkeypatch.setenv("DICOMRPC_MAX_FRAME_PIXELS", "1000000")
    settings = _parse("--codec-workers", "3", "--codec-memory-bytes", str(2 * GIB))
    assert settings.codec_workers == 3
    assert settings.codec_timeout_s == 7.5
    assert settings.max_frame_pixels == 1_000_000
    assert settings.codec_memory_limit == 2 * GIB
    assert _parse("--codec-timeout-s", "2", "--workers", "2").codec_timeout_s == 2.0


def test_the_codec_memory_limit_follows_the_pixel_limit() -> None:
    assert Settings().max_frame_pixels == 1 << 28
    assert Settings().codec_memory_limit == 16 * (1 << 28) + GIB  # 5 GiB
    assert Settings(max_frame_pixels=1 << 20).codec_memory_limit == 16 * (1 << 20) + GIB
    assert Settings(codec_memory_bytes=-1).codec_memory_limit is None


def test_the_index_from_flags_and_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().index == ""  # the embedded index
    monkeypatch.setenv("DICOMRPC_INDEX", "postgresql://dicomrpc@db.example/archive")
    monkeypatch.setenv("DICOMRPC_INDEX_POOL_SIZE", "4")
    settings = _parse()
    assert settings.index == "postgresql://dicomrpc@db.example/archive"
    assert settings.index_pool_size == 4
    settings = _parse("--index", "postgres://u:secret@db:5433/a", "--index-pool-size", "2")
    assert settings.index == "postgres://u:secret@db:5433/a" and settings.index_pool_size == 2


def test_an_index_that_is_not_a_postgresql_url_is_refused_without_its_password() -> None:
    with pytest.raises(ValueError, match="postgresql://") as caught:
        Settings(index="mysql://u:secret@db/a")
    assert "secret" not in str(caught.value)
    with pytest.raises(ValueError, match="1 or more"):
        Settings(index="postgresql://db/a", index_pool_size=0)


def test_a_postgresql_url_is_shown_and_recorded_without_its_password() -> None:
    assert redact_dsn("postgresql://u:secret@db:5433/a?sslmode=require") == (
        "postgresql://u@db:5433/a"
    )
    assert redact_dsn("postgresql://[::1]/a") == "postgresql://[::1]/a"


def test_the_viewer_from_flags_and_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().viewer is True and Settings().viewer_dir is None  # the cache's
    monkeypatch.setenv("DICOMRPC_VIEWER_DIR", "/srv/ohif/dist")
    assert _parse().viewer_dir == Path("/srv/ohif/dist")
    assert _parse("--viewer-dir", "/opt/dist").viewer_dir == Path("/opt/dist")
    monkeypatch.setenv("DICOMRPC_VIEWER", "off")
    assert _parse().viewer is False
    assert _parse("--viewer", "on").viewer is True
    with pytest.raises(SystemExit):
        _parse("--viewer", "sometimes")
