"""The Host a DICOMweb request names, and the URLs the gateway returns, with and without
``--public-url``."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from pydicom.uid import generate_uid

from tests.conftest import RunningServer, start_server
from tests.dicomgen import ct_instance
from tests.integration.test_dicomweb_http import STOW_TYPE, multipart
from tests.upsgen import workitem

PUBLIC = "https://pacs.example.org/imaging/dicomweb"


def test_a_loopback_server_refuses_other_host_names(server: RunningServer) -> None:
    """A page whose name resolves to 127.0.0.1 (DNS rebinding) gets 421, not the archive."""
    with httpx.Client(base_url=server.dicomweb_url) as http:
        rebound = http.get("/studies", headers={"Host": f"evil.example:{server.http.port}"})
        assert rebound.status_code == 421
        assert "does not answer to the host 'evil.example:" in rebound.json()["message"]
        assert rebound.json()["metadata"] == {"field": "Host", "host_problem": "misdirected"}
        deleted = http.delete(f"/studies/{generate_uid()}", headers={"Host": "evil.example"})
        assert deleted.status_code == 421
        for host in ("127.0.0.1", f"localhost:{server.http.port}", "[::1]"):
            assert http.get("/studies", headers={"Host": host}).status_code == 204, host


def test_the_public_url_is_the_base_of_returned_urls_and_the_host_accepted(
    tmp_path: Path,
) -> None:
    running = start_server(tmp_path / "data", public_url=PUBLIC + "/")
    try:
        study, series = generate_uid(), generate_uid()
        public_host = {"Host": "pacs.example.org"}
        with httpx.Client(base_url=running.dicomweb_url) as http:
            stored = http.post(
                "/studies",
                content=multipart([ct_instance(study, series)]),
                headers={"Content-Type": STOW_TYPE, **public_host},
            )
            assert stored.status_code == 200
            assert stored.json()["00081190"]["Value"] == [f"{PUBLIC}/studies/{study}"]
            found = http.get("/studies", params={"StudyInstanceUID": study})  # Host 127.0.0.1
            assert found.json()[0]["00081190"]["Value"] == [f"{PUBLIC}/studies/{study}"]
            metadata = http.get(f"/studies/{study}/metadata", headers=public_host).json()
            assert metadata[0]["7FE00010"]["BulkDataURI"].startswith(f"{PUBLIC}/studies/{study}/")
            uid = generate_uid()
            created = http.post(
                f"/workitems?{uid}",
                content=json.dumps(workitem()),
                headers={"Content-Type": "application/dicom+json"},
            )
            assert created.status_code == 201
            assert created.headers["location"] == f"{PUBLIC}/workitems/{uid}"
            assert http.get("/studies", headers={"Host": "other.example"}).status_code == 421
            assert http.get("/studies", headers={"Host": "10.0.0.8"}).status_code == 421
    finally:
        running.stop()
