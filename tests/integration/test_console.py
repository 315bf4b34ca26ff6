"""The console over plain HTTP: its pages are open, its API answers as its scopes say.

The pages (``/console/``) are static files free of patient data, served to anyone so that a
browser can load them before it holds a token; the API (``/console/api``) is refused without a
token (401) and without the scope its entry in ``CONSOLE_ROUTE_SCOPES`` names (403), and
answers the statistics, the change feed and the query tags the pages draw.
"""

from __future__ import annotations

import json
import time
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
from tests.upsgen import workitem

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

    def status(headers: dict[str, str] | None = None) -> httpx.Response:
        # Streamed: the event streams never end, so only their head is read.
        with httpx.stream(method, url, headers=headers) as response:
            return response

    refused = status()
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    needed = CONSOLE_ROUTE_SCOPES[(method, template)]
    for scope in sorted(SCOPES - {needed}):
        assert status(_bearer(scope)).status_code == 403, scope
    assert status(_bearer(needed)).status_code == 200


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


def _events(lines: Iterator[str], count: int) -> list[tuple[str, str, dict[str, object]]]:
    """The next ``count`` events (type, id, data) of a ``text/event-stream`` (HTML §9.2.5)."""
    found: list[tuple[str, str, dict[str, object]]] = []
    kind, event_id, data = "message", "", ""
    for line in lines:
        if line.startswith(":"):
            continue
        if line:
            name, _, value = line.partition(": ")
            kind, event_id, data = (
                (value, event_id, data)
                if name == "event"
                else (kind, value, data)
                if name == "id"
                else (kind, event_id, value)
            )
            continue
        if data:
            found.append((kind, event_id, json.loads(data)))
            if len(found) == count:
                return found
        kind, event_id, data = "message", "", ""
    return found


def test_the_change_stream_sends_each_commit(open_server: RunningServer) -> None:
    """From now (no ``since``): what is stored after the stream opened, as it is committed;
    with ``since``, the entries after it first."""
    url = _url(open_server, "/console/api/changes/stream")
    study = str(generate_uid())
    with httpx.stream("GET", url, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        lines = response.iter_lines()
        with Client(open_server.target) as client:
            assert not client.store([ct_instance(study)]).failed
        ((kind, event_id, entry),) = _events(lines, 1)
    assert kind == "change" and entry["study"] == study and entry["action"] == "created"
    assert event_id == str(entry["sequence"])
    since = int(event_id) - 1
    with httpx.stream("GET", f"{url}?since={since}", timeout=10) as response:
        ((_, replayed_id, replayed),) = _events(response.iter_lines(), 1)
    assert replayed_id == event_id and replayed == entry


def test_the_workitem_stream_sends_each_event(open_server: RunningServer) -> None:
    url = _url(open_server, "/console/api/workitems/stream")
    with httpx.stream("GET", url, timeout=10) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        with Client(open_server.target) as client:
            created = client.workitems.create(workitem(PatientName="Stream^Ann"))
            client.workitems.claim(created.workitem_uid)
        events = _events(lines, 2)
    assert [(e["workitem"], e["state"]) for _, _, e in events] == [
        (created.workitem_uid, "SCHEDULED"),
        (created.workitem_uid, "IN_PROGRESS"),
    ]
    assert [kind for kind, _, _ in events] == ["workitem", "workitem"]
    assert [int(event_id) for _, event_id, _ in events] == [e["sequence"] for _, _, e in events]


def test_a_stopping_server_ends_its_event_streams(tmp_path: Path) -> None:
    """An open stream does not hold the server's stop for its grace period: it ends at once."""
    server = start_server(tmp_path / "data", shutdown_grace_s=30)
    url = _url(server, "/console/api/changes/stream")
    with httpx.stream("GET", url, timeout=10) as response:
        assert response.status_code == 200
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 10
        assert list(response.iter_lines()) in ([], [""], [": following", ""])
