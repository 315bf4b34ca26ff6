"""The console over plain HTTP: its pages are open, its API answers as its scopes say.

The pages (``/console/``) are static files free of patient data, served to anyone so that a
browser can load them before it holds a token; the API (``/console/api``) is refused without a
token (401) and without the scope its entry in ``CONSOLE_ROUTE_SCOPES`` names (403), and
answers the statistics, the change feed and the query tags the pages draw.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid

from dicomrpc import Client
from dicomrpc_server.access.scopes import CONSOLE_ROUTE_SCOPES, READ, SCOPES
from dicomrpc_server.console import api as console_api
from dicomrpc_server.console.site import STATIC
from tests.authgen import AUDIENCE, ISSUER, Issuer, write_jwks
from tests.conftest import RunningServer, start_server
from tests.dicomgen import ct_instance

KEY = Issuer("console-key")
PAGES = ["index.html", "studies.html", "study.html", "changes.html", "worklist.html"]
PAGES += ["query-tags.html"]


def test_every_console_route_has_exactly_its_entry() -> None:
    routes = {(m, r.path) for r in console_api.ROUTES for m in r.methods or () if m != "HEAD"}
    assert routes == set(CONSOLE_ROUTE_SCOPES)
    assert set(CONSOLE_ROUTE_SCOPES.values()) <= SCOPES


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("console-auth")
    server = start_server(
        folder / "data",
        auth_jwks=str(write_jwks(folder / "jwks.json", KEY)),
        auth_issuer=ISSUER,
        auth_audience=AUDIENCE,
    )
    yield server
    server.stop()


def _url(server: RunningServer, path: str) -> str:
    return f"http://127.0.0.1:{server.http.port}{path}"


def _bearer(scope: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + KEY.token(scope)}


@pytest.mark.parametrize("page", ["", *PAGES, "console.js", "console.css"])
def test_pages_are_served_without_a_token(secured: RunningServer, page: str) -> None:
    response = httpx.get(_url(secured, f"/console/{page}"))
    assert response.status_code == 200
    expected = (STATIC / (page or "index.html")).read_bytes()
    assert response.content == expected
    kind = {"js": "text/javascript", "css": "text/css"}.get(page.rsplit(".", 1)[-1], "text/html")
    assert response.headers["content-type"].startswith(kind)
    assert response.headers["x-content-type-options"] == "nosniff"


def test_the_console_root_redirects_to_its_dashboard(secured: RunningServer) -> None:
    response = httpx.get(_url(secured, "/console"))
    assert response.status_code == 308
    assert response.headers["location"].endswith("/console/")


@pytest.mark.parametrize("path", ["/console/nothing.html", "/console/%2e%2e/pyproject.toml"])
def test_no_file_outside_the_pages_is_served(secured: RunningServer, path: str) -> None:
    assert httpx.get(_url(secured, path)).status_code == 404


@pytest.mark.parametrize(("method", "template"), sorted(CONSOLE_ROUTE_SCOPES))
def test_the_api_needs_a_token_and_its_scope(
    secured: RunningServer, method: str, template: str
) -> None:
    url = _url(secured, "/console/api" + template)
    refused = httpx.request(method, url)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    needed = CONSOLE_ROUTE_SCOPES[(method, template)]
    for scope in sorted(SCOPES - {needed}):
        assert httpx.request(method, url, headers=_bearer(scope)).status_code == 403, scope
    assert httpx.request(method, url, headers=_bearer(needed)).status_code == 200


def test_an_unknown_api_path_needs_a_token(secured: RunningServer) -> None:
    assert httpx.get(_url(secured, "/console/api/nothing")).status_code == 401
    assert (
        httpx.get(_url(secured, "/console/api/nothing"), headers=_bearer(READ)).status_code == 404
    )


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_server(tmp_path_factory.mktemp("console") / "data")
    yield server
    server.stop()


def test_statistics_count_what_is_stored(open_server: RunningServer) -> None:
    study = str(generate_uid())
    files = [ct_instance(study, number=n) for n in (1, 2)]
    with Client(open_server.target) as client:
        assert not client.store(files).failed
    stats = httpx.get(_url(open_server, "/console/api/statistics")).json()
    assert stats["studies"] >= 1 and stats["instances"] >= 2
    assert stats["bytes_stored"] >= sum(len(f) for f in files)
    assert stats["stored_last_minute"] >= 2
    assert stats["uptime_s"] >= 0 and stats["version"]
    assert stats["latest_change"] >= 2


def test_changes_follow_the_feed(open_server: RunningServer) -> None:
    first = httpx.get(_url(open_server, "/console/api/changes?limit=5")).json()
    latest = first["latest"]
    study = str(generate_uid())
    with Client(open_server.target) as client:
        assert not client.store([ct_instance(study)]).failed
    after = httpx.get(_url(open_server, f"/console/api/changes?since={latest}")).json()
    assert [e["study"] for e in after["entries"]] == [study]
    assert after["entries"][0]["action"] == "created"
    assert after["latest"] == latest + 1
    bad = httpx.get(_url(open_server, "/console/api/changes?since=-1"))
    assert bad.status_code == 400


def test_query_tags_show_their_reindexing(open_server: RunningServer) -> None:
    with Client(open_server.target) as client:
        _, operation = client.add_query_tags(["SeriesDescription"])
        client.wait_for_reindex(operation)
    answer = httpx.get(_url(open_server, "/console/api/query-tags")).json()
    (tag,) = [t for t in answer["tags"] if t["keyword"] == "SeriesDescription"]
    assert tag["status"] == "ready" and tag["level"] == "series"
    (done,) = [o for o in answer["operations"] if o["operation_id"] == operation]
    assert done["done"] and done["processed_instances"] == done["total_instances"]


def test_the_static_folder_holds_only_what_is_served(tmp_path: Path) -> None:
    names = {p.name for p in STATIC.iterdir()}
    assert set(PAGES) <= names
    assert all(p.suffix in {".html", ".js", ".css"} for p in STATIC.iterdir())
