"""The console in a real browser: every page opened, a search, paging, a delete, live updates.

Debian's Chromium, driven by Playwright, opens the console of an archive with authentication
on: the first page asks for a token, which the console keeps for the session and sends with
every call. The study list is searched and paged, a study's page shows its series, metadata
and rendered frame, the study is deleted after its confirmation, the change feed shows a
store made through the gRPC client without a reload, and the worklist board and query tags
show what the archive holds. The tests skip without Chromium unless
``DICOMRPC_REQUIRE_BROWSER=1``; with ``DICOMRPC_CONSOLE_SCREENSHOTS=1`` they write the
screenshots the README shows (``docs/console/``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pydicom.uid import generate_uid

from dicomrpc import Client
from dicomrpc_server.access.scopes import SCOPES
from tests import ohif
from tests.authgen import AUDIENCE, ISSUER, Issuer, write_jwks
from tests.conftest import RunningServer, start_server
from tests.dicomgen import ct_instance
from tests.upsgen import workitem

pytestmark = pytest.mark.slow

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

KEY = Issuer("console-browser")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "console"
STUDIES = 25
TIMEOUT_MS = 15_000
# How soon a change must be on a live page: the stream brings it at once; polling did within
# its period (two to three seconds) and would not be this sure.
LIVE_MS = 3_000


def _screenshot(page: Page, name: str) -> None:
    if os.environ.get("DICOMRPC_CONSOLE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("console-browser")
    server = start_server(
        folder / "data",
        auth_jwks=str(write_jwks(folder / "jwks.json", KEY)),
        auth_issuer=ISSUER,
        auth_audience=AUDIENCE,
    )
    token = KEY.token(" ".join(sorted(SCOPES)))
    with Client(server.target, token=token) as client:
        files = [
            ct_instance(
                str(generate_uid()),
                number=1,
                patient_id=f"CON-{n:03d}",
                patient_name=f"Console^Patient{n:03d}",
                rows=32,
                columns=32,
            )
            for n in range(STUDIES)
        ]
        assert not client.store(files).failed
        client.workitems.create(workitem(PatientName="Board^Ann", ProcedureStepLabel="CT read"))
        client.add_query_tags(["SeriesDescription"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not ohif.CHROMIUM.exists():
        message = f"the console's browser tests need {ohif.CHROMIUM} (apt-get install chromium)"
        if os.environ.get("DICOMRPC_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(ohif.CHROMIUM), args=list(ohif.CHROMIUM_ARGS)
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, archive: RunningServer) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    opened = context.new_page()
    opened.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert errors == []


def _base(archive: RunningServer) -> str:
    return f"http://127.0.0.1:{archive.http.port}/console/"


def _sign_in(page: Page) -> None:
    """Answer the console's token prompt with a token of every scope."""
    dialog = page.locator("#token-dialog")
    dialog.wait_for(state="visible")
    page.get_by_label("Token", exact=True).fill(KEY.token(" ".join(sorted(SCOPES))))
    page.get_by_role("button", name="Use token").click()


def test_studies_search_page_and_delete(page: Page, archive: RunningServer) -> None:
    page.goto(_base(archive) + "studies.html")
    _sign_in(page)
    rows = page.locator("#studies tbody tr")
    page.wait_for_function("document.querySelectorAll('#studies tbody tr').length === 20")
    page.locator("#studies tbody img.thumb").first.wait_for()
    _screenshot(page, "studies")

    page.get_by_label("Per page").select_option("10")
    page.wait_for_function("document.querySelectorAll('#studies tbody tr').length === 10")
    page.get_by_role("button", name="Next page").click()
    page.get_by_text("Page 2: studies 11–20").wait_for()  # noqa: RUF001
    page.get_by_role("button", name="Next page").click()
    page.get_by_text("Page 3: studies 21–25").wait_for()  # noqa: RUF001
    assert page.get_by_role("button", name="Next page").is_disabled()

    page.get_by_label("Patient ID").fill("CON-007")
    page.get_by_role("button", name="Search").click()
    page.wait_for_function("document.querySelectorAll('#studies tbody tr').length === 1")
    assert "Console^Patient007" in rows.first.inner_text()
    viewer = rows.first.get_by_role("link", name="Open Console^Patient007 in the viewer")
    assert "/viewer?StudyInstanceUIDs=" in (viewer.get_attribute("href") or "")

    rows.first.get_by_role("link", name="Console^Patient007", exact=True).click()
    page.locator("#metadata tbody tr").first.wait_for()
    page.wait_for_function("document.getElementById('frame').naturalWidth > 0")
    assert page.locator("#series tbody tr").count() == 1
    assert "Console^Patient007" in page.locator("#metadata").inner_text()
    _screenshot(page, "study")

    page.get_by_role("button", name="Delete study…").click()
    page.get_by_role("button", name="Cancel").click()
    assert page.url.endswith(page.url.split("/")[-1]) and "study.html" in page.url
    page.get_by_role("button", name="Delete study…").click()
    page.get_by_role("button", name="Delete study", exact=True).click()
    page.wait_for_url("**/studies.html?**")
    page.get_by_text("was deleted").wait_for()
    page.get_by_label("Patient ID").fill("CON-007")
    page.get_by_role("button", name="Search").click()
    page.get_by_text("No study matches the search.").wait_for()


def _api_calls(page: Page) -> list[str]:
    """Every URL the page asks for from now on."""
    calls: list[str] = []
    page.on("request", lambda request: calls.append(request.url))
    return calls


def test_the_change_feed_shows_a_store_live(page: Page, archive: RunningServer) -> None:
    """A store through gRPC is on the page within a second or two, from the feed's event
    stream: the page asks for the feed once and never polls it."""
    calls = _api_calls(page)
    with page.expect_response(lambda r: "/changes/stream" in r.url and r.status == 200):
        page.goto(_base(archive) + "changes.html")
        _sign_in(page)
    page.locator("#changes tbody tr").first.wait_for()
    study = str(generate_uid())
    with Client(archive.target, token=KEY.token(" ".join(sorted(SCOPES)))) as client:
        assert not client.store([ct_instance(study, patient_name="Live^Feed")]).failed
    page.locator(f"#changes tbody tr.new:has-text('{study}')").wait_for(timeout=LIVE_MS)
    page.get_by_text("1 new change").wait_for(state="attached")
    # The newest entries once (asked again only after the token prompt's 401), then the
    # stream, once: no polling.
    reads = [url for url in calls if "/console/api/changes" in url]
    assert not [url for url in reads if "/changes?since=" in url], reads
    assert len([url for url in reads if "/changes/stream?" in url]) == 1, reads
    _screenshot(page, "changes")


def test_the_worklist_board_follows_workitem_events(page: Page, archive: RunningServer) -> None:
    """A workitem created through gRPC appears on the board, and moves column when it is
    claimed, without a reload: the board searches again on each event of the stream."""
    with page.expect_response(lambda r: "/workitems/stream" in r.url and r.status == 200):
        page.goto(_base(archive) + "worklist.html")
        _sign_in(page)
    page.locator("[data-state=SCHEDULED] li").first.wait_for()
    with Client(archive.target, token=KEY.token(" ".join(sorted(SCOPES)))) as client:
        created = client.workitems.create(
            workitem(PatientName="Live^Board", ProcedureStepLabel="Live read")
        )
        page.locator("[data-state=SCHEDULED] li button", has_text="Live read").wait_for(
            timeout=LIVE_MS
        )
        client.workitems.claim(created.workitem_uid)
    page.locator("[data-state='IN PROGRESS'] li button", has_text="Live read").wait_for(
        timeout=LIVE_MS
    )
    assert page.locator("[data-state=SCHEDULED] li button", has_text="Live read").count() == 0


def test_dashboard_worklist_and_query_tags(page: Page, archive: RunningServer) -> None:
    page.goto(_base(archive))
    _sign_in(page)
    page.locator("[data-stat=studies] dd").first.wait_for()
    assert int(page.locator("[data-stat=studies] dd").first.inner_text().replace(",", "")) >= 24
    assert page.locator("[data-stat=version] dd").first.inner_text()
    _screenshot(page, "dashboard")

    page.get_by_role("link", name="Worklist").click()
    item = page.locator("[data-state=SCHEDULED] li button", has_text="CT read")
    item.click()
    page.locator("#detail tbody tr", has_text="Board^Ann").wait_for()
    _screenshot(page, "worklist")

    page.get_by_role("link", name="Query tags").click()
    page.locator("#tags tbody tr", has_text="SeriesDescription").wait_for()
    page.locator("#operations tbody tr", has_text="done").wait_for()
    _screenshot(page, "query-tags")


def test_the_study_list_fits_a_phone(browser: Browser, archive: RunningServer) -> None:
    context = browser.new_context(viewport={"width": 375, "height": 740}, bypass_csp=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(_base(archive) + "studies.html")
    _sign_in(page)
    page.locator("#studies tbody tr").first.wait_for()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375
    _screenshot(page, "studies-phone")
    context.close()
