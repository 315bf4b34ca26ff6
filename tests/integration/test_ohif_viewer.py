"""The OHIF viewer, in a real browser, on the gateway: study list, series metadata, frames.

OHIF (npm ``@ohif/app``, its released build, unchanged) is served two ways: by the archive
itself at the root of its HTTP port, configured by it (same origin, no CORS: what
``make serve`` shows), and from an origin of its own, configured with the gateway as its
DICOMweb data source, so that every request it makes to the archive is cross-origin, as at a
site that hosts the viewer apart from the archive (``--cors-origins``). Chromium, driven
through Playwright, opens the study list and then the viewer; the tests check what a
radiologist would see: the study listed under its patient's name, and the slice actually drawn
in the viewport (the canvas's pixels compared with the instance's own, windowed as its Window
Center/Width say), and that none of OHIF's requests to the gateway (QIDO-RS searches, series
metadata, frames for the viewport and the thumbnails) failed. The archive holds a CT series, a
multi-frame image and images stored compressed (JPEG 2000, RLE), which OHIF receives in the
transfer syntax it asks for. See ``tests/ohif.py`` for how the viewer and the browser are
provided, and when the tests skip.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom.data
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

from dicomrpc import Client
from dicomrpc_server.viewer.app_config import app_config
from tests import ohif
from tests.conftest import RunningServer, start_server
from tests.dicomgen import gradient_ct_series, multiframe_instance, recoded_instance

pytestmark = pytest.mark.slow

if TYPE_CHECKING:
    from playwright.sync_api import (
        Browser,
        ConsoleMessage,
        Page,
        Request,
        Response,
        ViewportSize,
    )

VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
DRAW_TIMEOUT_S = 30
PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
# The transfer syntax each kind of study is stored in, which OHIF asks for as it is (``*``).
STORED_SYNTAX = {
    "multiframe": EXPLICIT_VR_LITTLE_ENDIAN,
    "jpeg2000": "1.2.840.10008.1.2.4.90",
    "rle": "1.2.840.10008.1.2.5",
    "ct_small": EXPLICIT_VR_LITTLE_ENDIAN,
}


@dataclass(frozen=True)
class StoredStudy:
    """A study put in the archive for the viewer, and what OHIF should show of it."""

    uid: str
    listed_as: str  # the patient's name as OHIF's study list writes it
    expected: np.ndarray[Any, np.dtype[np.float64]]  # its first image, windowed
    images: int  # the frames OHIF needs for the study's one series


def _study(data: bytes, listed_as: str, images: int) -> StoredStudy:
    ds = dcmread(io.BytesIO(data))
    pixels = ds.pixel_array
    first = pixels[0] if int(ds.get("NumberOfFrames", 1)) > 1 else pixels
    windowed = apply_voi_lut(apply_modality_lut(first, ds), ds)
    return StoredStudy(ds.StudyInstanceUID, listed_as, np.asarray(windowed, float), images)


def _sample(name: str, patient: str) -> bytes:
    """A file that pydicom ships, in a study of its own under the patient ``patient``."""
    source = (PYDICOM_FILES / name).read_bytes()
    return recoded_instance(source, PatientName=patient, PatientID=patient.split("^")[-1])


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The archive, letting any origin call its gateway (the viewer is on another port)."""
    server = start_server(tmp_path_factory.mktemp("ohif") / "data", cors_origins=("*",))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def studies(archive: RunningServer) -> dict[str, StoredStudy]:
    """One study of each kind the viewer is checked on, stored through gRPC."""
    ct = gradient_ct_series(3, patient_id="VIEW-CT", patient_name="Viewer^Gradient")
    multiframe = multiframe_instance(4, patient_name="Viewer^Multiframe")
    jpeg2000 = _sample("MR_small_jp2klossless.dcm", "Viewer^Jpegtwok")
    rle = _sample("MR_small_RLE.dcm", "Viewer^Rle")
    ct_small = _sample("CT_small.dcm", "Viewer^Small")
    with Client(archive.target) as client:
        client.store([*ct, multiframe, jpeg2000, rle, ct_small])
    return {
        "ct": _study(ct[0], "Viewer, Gradient", 3),
        "multiframe": _study(multiframe, "Viewer, Multiframe", 4),
        "jpeg2000": _study(jpeg2000, "Viewer, Jpegtwok", 1),
        "rle": _study(rle, "Viewer, Rle", 1),
        "ct_small": _study(ct_small, "Viewer, Small", 1),
    }


@pytest.fixture(scope="module")
def dist() -> Path:
    ohif.require_browser()
    return ohif.ohif_dist()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium (never a browser Playwright would download), headless, on a fresh
    profile of its own (Playwright's launch gives each browser a new user data folder)."""
    ohif.require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(ohif.CHROMIUM), args=list(ohif.CHROMIUM_ARGS)
        )
        yield launched
        launched.close()


@dataclass
class Traffic:
    """The requests the page made to the gateway, and how each ended."""

    gateway: str
    responses: list[tuple[str, int, str]] = field(default_factory=list)  # url, status, type
    failures: list[tuple[str, str]] = field(default_factory=list)  # url, reason
    console_errors: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> None:
        page.on("response", self._response)
        page.on("requestfailed", self._failed)
        page.on("console", self._console)

    def _response(self, response: Response) -> None:
        if response.url.startswith(self.gateway):
            kind = response.headers.get("content-type", "")
            self.responses.append((response.url, response.status, kind))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def _failed(self, request: Request) -> None:
        if request.url.startswith(self.gateway):
            self.failures.append((request.url, request.failure or "failed"))

    def urls(self, part: str) -> list[str]:
        return [url for url, _, _ in self.responses if part in url.split("?", 1)[0]]

    def frame_syntaxes(self) -> set[str]:
        """The transfer syntaxes the gateway sent frames in (its multipart parameter)."""
        found = set()
        for url, _, kind in self.responses:
            if "/frames/" in url:
                for parameter in kind.split(";"):
                    name, _, value = parameter.strip().partition("=")
                    if name == "transfer-syntax":
                        found.add(value.strip('"'))
        return found

    def assert_none_failed(self) -> None:
        errors = [(url, status) for url, status, _ in self.responses if status >= 400]
        assert not errors, f"gateway answered errors: {errors}"
        assert not self.failures, f"requests to the gateway failed: {self.failures}"

    def summary(self) -> str:
        lines = [f"{status} {url} {kind}" for url, status, kind in self.responses]
        lines += [f"FAILED {url}: {reason}" for url, reason in self.failures]
        lines += [f"console: {text}" for text in self.console_errors[-10:]]
        return "\n".join(lines)


@pytest.fixture(params=[True, False], ids=["bulkdata-uri", "no-bulkdata-uri"])
def site(request: pytest.FixtureRequest, dist: Path, archive: RunningServer) -> Iterator[str]:
    """OHIF on its own port with the gateway as its data source; the URL of its root.

    With and without OHIF's use of metadata bulk data URIs (``bulkDataURI.enabled``): sites
    configure either, and the gateway must serve both.
    """
    config = app_config(archive.dicomweb_url, bulk_data_uri=request.param)
    with ohif.serve_ohif(dist, config) as served:
        yield served.url


@pytest.fixture
def uncompressed_site(dist: Path, archive: RunningServer) -> Iterator[str]:
    """OHIF asking for every frame in explicit VR little endian (``requestTransferSyntaxUID``),
    as sites whose browsers should not decode compressed images configure it: the archive
    decodes what it stores compressed."""
    config = app_config(
        archive.dicomweb_url,
        bulk_data_uri=True,
        overrides={"requestTransferSyntaxUID": EXPLICIT_VR_LITTLE_ENDIAN},
    )
    with ohif.serve_ohif(dist, config) as served:
        yield served.url


@pytest.fixture
def page(browser: Browser, archive: RunningServer) -> Iterator[tuple[Page, Traffic]]:
    context = browser.new_context(viewport=VIEWPORT)
    opened = context.new_page()
    traffic = Traffic(archive.dicomweb_url)
    traffic.watch(opened)
    yield opened, traffic
    context.close()


def _drawn(page: Page) -> np.ndarray[Any, np.dtype[np.float64]]:
    """A screenshot of the viewport's canvas, as gray levels."""
    png = page.locator("canvas.cornerstone-canvas").first.screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), float)


def _likeness(
    shot: np.ndarray[Any, np.dtype[np.float64]], expected: np.ndarray[Any, np.dtype[np.float64]]
) -> float:
    """How well ``shot`` (the canvas) shows ``expected``: the correlation of the pixels of the
    image's place on the canvas (fitted and centred, as OHIF first shows an image) with the
    image's own. 1 is a perfect likeness; a blank or wrong picture is near 0."""
    height, width = shot.shape
    rows, columns = expected.shape
    scale = min(width / columns, height / rows)
    w, h = columns * scale, rows * scale
    left, top = (width - w) / 2, (height - h) / 2
    crop = Image.fromarray(shot).crop((round(left), round(top), round(left + w), round(top + h)))
    seen = np.asarray(crop.resize((columns, rows), Image.Resampling.BOX), float)
    # Leave out the edges, where resampling mixes in the canvas's background.
    inner = (slice(2, rows - 2), slice(2, columns - 2))
    seen, want = seen[inner], expected[inner]
    if seen.std() < 1 or want.std() == 0:
        return 0.0
    return float(np.corrcoef(seen.ravel(), want.ravel())[0, 1])


def _open_and_check_drawn(
    page: Page, traffic: Traffic, site: str, study: StoredStudy, shots: Path
) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Open ``study`` in OHIF's viewer and wait until its first image is on the canvas."""
    page.goto(f"{site}/viewer?StudyInstanceUIDs={study.uid}")
    page.locator("canvas.cornerstone-canvas").first.wait_for(timeout=DRAW_TIMEOUT_S * 1000)
    deadline = time.monotonic() + DRAW_TIMEOUT_S
    likeness = 0.0
    while True:
        shot = _drawn(page)
        likeness = _likeness(shot, study.expected)
        if likeness > 0.9 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if likeness <= 0.9:
        page.screenshot(path=shots / "page.png")
        Image.fromarray(shot.astype(np.uint8)).save(shots / "canvas.png")
    assert likeness > 0.9, (
        f"the viewport does not show the image (likeness {likeness:.2f}, screenshots in "
        f"{shots}); gateway traffic:\n{traffic.summary()}"
    )
    # The remaining frames (the rest of the stack, the thumbnails) arrive after the first.
    deadline = time.monotonic() + DRAW_TIMEOUT_S
    while len(set(traffic.urls("/frames/"))) < study.images and time.monotonic() < deadline:
        page.wait_for_timeout(200)
    page.wait_for_load_state("networkidle")
    return shot


@pytest.fixture(scope="module")
def own_site(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """An archive serving the viewer itself (``--viewer-dir``: the cached ``dist/``), with no
    CORS origin allowed: the viewer's calls are same-origin."""
    server = start_server(tmp_path_factory.mktemp("ohif-own") / "data", viewer_dir=dist)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def own_study(own_site: RunningServer) -> StoredStudy:
    ct = gradient_ct_series(3, patient_id="OWN-CT", patient_name="Own^Gradient")
    with Client(own_site.target) as client:
        client.store(ct)
    return _study(ct[0], "Own, Gradient", 3)


@pytest.fixture
def own_page(browser: Browser, own_site: RunningServer) -> Iterator[tuple[Page, Traffic]]:
    context = browser.new_context(viewport=VIEWPORT)
    opened = context.new_page()
    traffic = Traffic(own_site.dicomweb_url)
    traffic.watch(opened)
    yield opened, traffic
    context.close()


def test_the_archive_serves_the_viewer_same_origin(
    own_page: tuple[Page, Traffic], own_site: RunningServer, own_study: StoredStudy, tmp_path: Path
) -> None:
    """``/`` of the HTTP port is OHIF's study list, configured by the archive for itself;
    the study opens and its first slice is drawn, every request staying on that origin."""
    tab, traffic = own_page
    root = f"http://127.0.0.1:{own_site.http.port}"
    requested: list[str] = []
    tab.on("request", lambda request: requested.append(request.url))
    tab.goto(f"{root}/")
    tab.get_by_text(own_study.listed_as, exact=True).wait_for(timeout=DRAW_TIMEOUT_S * 1000)
    assert traffic.urls("/dicomweb/studies"), traffic.summary()
    shot = _open_and_check_drawn(tab, traffic, root, own_study, tmp_path)
    height, width = shot.shape
    side = min(height, width)
    left, top = (width - side) // 2, (height - side) // 2
    band = shot[top + side // 8 : top + side // 4, left : left + side]
    assert band[:, : side // 4].mean() + 60 < band[:, -side // 4 :].mean()
    assert len(set(traffic.urls("/frames/"))) == own_study.images, traffic.summary()
    traffic.assert_none_failed()
    elsewhere = [
        url for url in requested if url.startswith(("http", "ws")) and not url.startswith(root)
    ]
    assert not elsewhere, elsewhere


def test_study_list_shows_the_archive_studies(
    page: tuple[Page, Traffic], site: str, studies: dict[str, StoredStudy]
) -> None:
    tab, traffic = page
    tab.goto(f"{site}/")
    for study in studies.values():
        tab.get_by_text(study.listed_as, exact=True).wait_for(timeout=DRAW_TIMEOUT_S * 1000)
    # A patient name in the list's filter is searched by the archive: OHIF sends it as
    # PatientName=*multi* with fuzzymatching=true.
    tab.goto(f"{site}/?patientName=multi")
    tab.get_by_text(studies["multiframe"].listed_as, exact=True).wait_for(
        timeout=DRAW_TIMEOUT_S * 1000
    )
    tab.wait_for_load_state("networkidle")
    assert tab.get_by_text(studies["ct"].listed_as, exact=True).count() == 0
    searched = [url for url in traffic.urls("/dicomweb/studies") if "PatientName=" in url]
    assert searched, traffic.summary()
    traffic.assert_none_failed()


def test_viewer_draws_the_ct_series(
    page: tuple[Page, Traffic], site: str, studies: dict[str, StoredStudy], tmp_path: Path
) -> None:
    tab, traffic = page
    study = studies["ct"]
    shot = _open_and_check_drawn(tab, traffic, site, study, tmp_path)

    # The picture's own shape, as a person would describe it: darker left, brighter right,
    # and a black disc in the middle.
    height, width = shot.shape
    side = min(height, width)
    left, top = (width - side) // 2, (height - side) // 2
    band = shot[top + side // 8 : top + side // 4, left : left + side]
    assert band[:, : side // 4].mean() + 60 < band[:, -side // 4 :].mean()
    centre = shot[height // 2 - 10 : height // 2 + 10, width // 2 - 10 : width // 2 + 10]
    assert centre.mean() < 20 < band.mean()

    assert len(traffic.urls("/metadata")) >= 1, traffic.summary()
    assert len(set(traffic.urls("/frames/"))) == study.images, traffic.summary()
    traffic.assert_none_failed()


@pytest.mark.parametrize("kind", ["multiframe", "jpeg2000", "rle", "ct_small"])
def test_viewer_draws_multiframe_and_compressed_images(
    page: tuple[Page, Traffic],
    site: str,
    studies: dict[str, StoredStudy],
    tmp_path: Path,
    kind: str,
) -> None:
    tab, traffic = page
    study = studies[kind]
    _open_and_check_drawn(tab, traffic, site, study, tmp_path)
    frames = set(traffic.urls("/frames/"))
    assert len(frames) == study.images, traffic.summary()
    assert traffic.frame_syntaxes() == {STORED_SYNTAX[kind]}, traffic.summary()
    traffic.assert_none_failed()


@pytest.mark.parametrize("kind", ["jpeg2000", "rle"])
def test_viewer_draws_compressed_images_the_archive_decodes(
    page: tuple[Page, Traffic],
    uncompressed_site: str,
    studies: dict[str, StoredStudy],
    tmp_path: Path,
    kind: str,
) -> None:
    tab, traffic = page
    study = studies[kind]
    _open_and_check_drawn(tab, traffic, uncompressed_site, study, tmp_path)
    assert traffic.frame_syntaxes() == {EXPLICIT_VR_LITTLE_ENDIAN}, traffic.summary()
    traffic.assert_none_failed()
