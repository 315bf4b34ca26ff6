"""Where the OHIF release is kept, how a fetch fails, and how the site names and caches files."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from dicomrpc_server.viewer import package
from dicomrpc_server.viewer.site import IMMUTABLE, REVALIDATE, cache_control, media_type


def test_the_cache_follows_xdg_cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert package.cached_dist() == tmp_path / "dicomrpc" / "ohif-3.13.2" / "dist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert package.cache_root() == tmp_path / "home" / ".cache" / "dicomrpc"


def test_a_cached_viewer_needs_no_npm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    with pytest.raises(package.FetchError, match="npm is not installed"):
        package.fetch()
    dist = package.cached_dist()
    dist.mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html>")
    assert package.fetch() == dist


def test_the_integrity_is_checked(tmp_path: Path) -> None:
    tarball = tmp_path / "ohif-app-3.13.2.tgz"
    tarball.write_bytes(b"some bytes")
    digest = base64.b64encode(hashlib.sha512(b"some bytes").digest()).decode()
    package.check_integrity(tarball, f"sha512-{digest}")
    with pytest.raises(package.FetchError, match="not the pinned"):
        package.check_integrity(tarball, package.OHIF_INTEGRITY)


def test_npm_errors_are_told_in_one_line() -> None:
    stderr = (
        "npm error code ECONNREFUSED\nnpm error errno ECONNREFUSED\n"
        "npm error FetchError: request to https://registry.npmjs.org/@ohif%2fapp failed\n"
        "npm error\nnpm error If you are behind a proxy, please make sure ...\n"
    )
    reason = package.npm_reason(stderr)
    assert reason.startswith("npm error code ECONNREFUSED / ")
    assert "FetchError" in reason and "proxy" not in reason


@pytest.mark.parametrize(
    ("name", "cached"),
    [
        ("1180.bundle.762993518ea30ae3.js", IMMUTABLE),
        ("0ddf166f7a343eda.wasm", IMMUTABLE),
        ("index.html", REVALIDATE),
        ("app-config.js", REVALIDATE),
        ("1602.css", REVALIDATE),
        ("init-service-worker.js", REVALIDATE),
    ],
)
def test_hashed_names_are_cached_for_good(name: str, cached: str) -> None:
    assert cache_control(name) == cached


def test_media_types_do_not_depend_on_the_host() -> None:
    assert media_type(Path("a.js")) == "text/javascript; charset=utf-8"
    assert media_type(Path("b.WASM")) == "application/wasm"
    assert media_type(Path("c.woff2")) == "font/woff2"
    assert media_type(Path("unknown.xyz")) == "application/octet-stream"
