"""The viewer's site at the root of the HTTP port, over plain HTTP (no browser).

A stand-in for OHIF's ``dist/`` (an ``index.html``, a hashed bundle, the package's own
``app-config.js``, a symbolic link out of the folder) is served by the archive: its files with
their types and caching, ``/app-config.js`` written for the origin the page came from,
``index.html`` for OHIF's routes, and nothing outside the folder, however the path is spelled.
The DICOMweb routes keep answering under ``/dicomweb``. Without a viewer the root says how to
fetch it; with ``viewer=False`` the root is the gateway's 404; with authentication on, the
viewer's files are public and DICOMweb still needs a token. The browser tests
(``test_ohif_viewer.py``) run the real viewer on the same site.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from dicomrpc import Client
from dicomrpc_server.access.api_keys import create
from dicomrpc_server.viewer.package import FETCH_COMMAND
from tests.conftest import RunningServer, start_server
from tests.dicomgen import ct_instance

INDEX = "<!doctype html><title>OHIF stand-in</title><script src=/app-config.js></script>\n"
BUNDLE = "app.bundle.0f6159c501addfe9.js"
SECRET = "the secret outside the viewer folder\n"


def _dist(folder: Path) -> Path:
    """A stand-in for OHIF's ``dist/``, next to a file and a folder it must never serve."""
    outside = folder / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    (folder / "secret.txt").write_text(SECRET)
    dist = folder / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text(INDEX)
    (dist / BUNDLE).write_text("console.log('bundle');\n")
    (dist / "app-config.js").write_text("window.config = {demo: true};\n")
    (dist / "assets" / "logo.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>\n")
    (dist / "0ddf166f7a343eda.wasm").write_bytes(b"\0asm\1\0\0\0")
    (dist / "link").symlink_to(outside, target_is_directory=True)
    (dist / "leak.txt").symlink_to(outside / "secret.txt")
    return dist


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("site")
    server = start_server(folder / "data", viewer_dir=_dist(folder))
    with Client(server.target) as client:
        client.store([ct_instance()])
    yield server
    server.stop()


def _root(server: RunningServer) -> str:
    return f"http://127.0.0.1:{server.http.port}"


def _raw_get(server: RunningServer, target: str) -> tuple[int, bytes]:
    """GET ``target`` as written: no client normalises its dot segments or encodings."""
    connection = http.client.HTTPConnection("127.0.0.1", server.http.port, timeout=10)
    try:
        connection.putrequest("GET", target, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_the_root_is_the_viewer_index(site: RunningServer) -> None:
    response = requests.get(f"{_root(site)}/", timeout=10)
    assert response.status_code == 200
    assert response.text == INDEX
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "etag" in response.headers


def test_app_config_points_at_the_same_origin(site: RunningServer) -> None:
    response = requests.get(f"{_root(site)}/app-config.js", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.headers["cache-control"] == "no-store"
    assert "demo" not in response.text  # never the package's own
    prefix, _, rest = response.text.partition("window.config = ")
    assert prefix == ""
    config = json.loads(rest.rstrip().removesuffix(";"))
    source = config["dataSources"][0]["configuration"]
    gateway = f"{_root(site)}/dicomweb"
    assert (source["qidoRoot"], source["wadoRoot"], source["wadoUriRoot"]) == (gateway,) * 3
    assert config["routerBasename"] == "/"
    # Built from the Host the page was asked for: another name of the same server.
    other = requests.get(
        f"{_root(site)}/app-config.js",
        headers={"Host": f"localhost:{site.http.port}"},
        timeout=10,
    )
    assert f'"http://localhost:{site.http.port}/dicomweb"' in other.text


def test_files_have_their_types_and_caching(site: RunningServer) -> None:
    bundle = requests.get(f"{_root(site)}/{BUNDLE}", timeout=10)
    assert bundle.text == "console.log('bundle');\n"
    assert bundle.headers["content-type"] == "text/javascript; charset=utf-8"
    assert bundle.headers["cache-control"] == "public, max-age=31536000, immutable"
    wasm = requests.get(f"{_root(site)}/0ddf166f7a343eda.wasm", timeout=10)
    assert wasm.headers["content-type"] == "application/wasm"
    logo = requests.get(f"{_root(site)}/assets/logo.svg", timeout=10)
    assert logo.headers["content-type"] == "image/svg+xml"
    assert logo.headers["cache-control"] == "no-cache"
    head = requests.head(f"{_root(site)}/{BUNDLE}", timeout=10)
    assert head.status_code == 200 and head.text == ""
    refused = requests.post(f"{_root(site)}/", data=b"x", timeout=10)
    assert refused.status_code == 405


def test_a_file_the_browser_holds_is_not_sent_again(site: RunningServer) -> None:
    """A revalidation with the file's ETag is answered 304, with its ETag and caching, as a
    reload of the viewer revalidates ``index.html`` and OHIF's unhashed files."""
    first = requests.get(f"{_root(site)}/assets/logo.svg", timeout=10)
    etag = first.headers["etag"]
    for sent in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = requests.get(
            f"{_root(site)}/assets/logo.svg", headers={"If-None-Match": sent}, timeout=10
        )
        assert again.status_code == 304, sent
        assert again.content == b""
        assert again.headers["etag"] == etag
        assert again.headers["cache-control"] == "no-cache"
    changed = requests.get(
        f"{_root(site)}/assets/logo.svg", headers={"If-None-Match": '"other"'}, timeout=10
    )
    assert changed.status_code == 200 and changed.content == first.content
    index = requests.get(f"{_root(site)}/viewer", timeout=10)
    assert (
        requests.get(
            f"{_root(site)}/viewer", headers={"If-None-Match": index.headers["etag"]}, timeout=10
        ).status_code
        == 304
    )


@pytest.mark.parametrize(
    "path", ["/viewer?StudyInstanceUIDs=1.2.3", "/segmentation", "/local", "/assets/none.png"]
)
def test_unknown_paths_are_the_index(site: RunningServer, path: str) -> None:
    response = requests.get(f"{_root(site)}{path}", timeout=10)
    assert response.status_code == 200
    assert response.text == INDEX


def test_the_gateway_keeps_its_routes(site: RunningServer) -> None:
    studies = requests.get(
        f"{_root(site)}/dicomweb/studies", headers={"Accept": "application/dicom+json"}, timeout=10
    )
    assert studies.status_code == 200
    assert len(studies.json()) == 1
    for path in ("/dicomweb/nothing", "/dicomweb", "/dicomwebsite"):
        missing = requests.get(f"{_root(site)}{path}", timeout=10)
        assert missing.status_code == 404, path
        assert INDEX not in missing.text


@pytest.mark.parametrize(
    "target",
    [
        "/../secret.txt",
        "/../outside/secret.txt",
        "/assets/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/outside/secret.txt",
        "/assets/%2e%2e/%2e%2e/secret.txt",
        "/assets%2f..%2f..%2fsecret.txt",
        "/..%2fsecret.txt",
        "/..%5csecret.txt",
        "/assets/..\\..\\secret.txt",
        "/./index.html",
        "/link/secret.txt",
        "/leak.txt",
        "//etc/passwd",
        "/%00",
    ],
)
def test_nothing_outside_the_folder_is_served(site: RunningServer, target: str) -> None:
    status, body = _raw_get(site, target)
    assert SECRET.encode() not in body
    assert b"root:" not in body
    if target != "//etc/passwd":
        assert status == 404, (target, status, body[:200])


def test_without_the_viewer_the_root_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    server = start_server(tmp_path / "data")
    try:
        for path in ("/", "/viewer?StudyInstanceUIDs=1.2.3"):
            page = requests.get(f"{_root(server)}{path}", timeout=10)
            assert page.status_code == 503
            assert page.headers["content-type"] == "text/html; charset=utf-8"
            assert FETCH_COMMAND in page.text
            assert str(tmp_path / "cache" / "dicomrpc") in page.text
        studies = requests.get(f"{_root(server)}/dicomweb/studies", timeout=10)
        assert studies.status_code in (200, 204)
        # Fetched while the server runs: served from the next request on.
        dist = tmp_path / "cache" / "dicomrpc" / "ohif-3.13.2" / "dist"
        dist.mkdir(parents=True)
        (dist / "index.html").write_text(INDEX)
        assert requests.get(f"{_root(server)}/", timeout=10).text == INDEX
    finally:
        server.stop()


def test_a_named_folder_without_a_viewer_is_named(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", viewer_dir=tmp_path / "missing")
    try:
        page = requests.get(f"{_root(server)}/", timeout=10)
        assert page.status_code == 503
        assert str(tmp_path / "missing") in page.text and FETCH_COMMAND in page.text
    finally:
        server.stop()


def test_viewer_off_leaves_the_root_to_the_gateway(tmp_path: Path) -> None:
    dist = _dist(tmp_path)
    server = start_server(tmp_path / "data", viewer=False, viewer_dir=dist)
    try:
        for path in ("/", "/index.html", "/app-config.js"):
            response = requests.get(f"{_root(server)}{path}", timeout=10)
            assert response.status_code == 404, path
            assert INDEX not in response.text
    finally:
        server.stop()


def test_with_authentication_the_files_are_public_and_dicomweb_is_not(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("")
    key = create(keys, "viewer", ["dicom.read"])
    server = start_server(tmp_path / "data", viewer_dir=_dist(tmp_path), auth_api_keys=keys)
    try:
        for path in ("/", "/viewer", "/app-config.js", f"/{BUNDLE}"):
            assert requests.get(f"{_root(server)}{path}", timeout=10).status_code == 200, path
        url = f"{_root(server)}/dicomweb/studies"
        assert requests.get(url, timeout=10).status_code == 401
        for path in ("/dicomweb/nothing", "/dicomweb"):
            assert requests.get(f"{_root(server)}{path}", timeout=10).status_code == 401, path
        admitted = requests.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert admitted.status_code in (200, 204)
    finally:
        server.stop()
