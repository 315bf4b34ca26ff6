"""The gateway driven by another archive's DICOMweb client: Orthanc's DICOMweb plugin.

Orthanc is configured with the gateway as a remote DICOMweb server and asked, through its REST
API, to search it (QIDO-RS), pull a study from it (WADO-RS), read metadata and push a study to it
(STOW-RS): the interoperability a hospital's existing PACS needs. Skipped where the Debian
packages ``orthanc`` and ``orthanc-dicomweb`` are not installed (``.ci/run`` installs them).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid

from dicomrpc import Client
from tests.conftest import RunningServer
from tests.dicomgen import ct_instance

ORTHANC = Path("/usr/sbin/Orthanc")
PLUGIN = "libOrthancDicomWeb.so"


def _plugin() -> Path | None:
    listing = ""
    if shutil.which("dpkg"):
        listing = subprocess.run(
            ["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=False
        ).stdout
    candidates = [Path(p) for p in listing.split() if p.endswith(PLUGIN)]
    candidates.append(Path("/usr/share/orthanc/plugins") / PLUGIN)
    return next((p for p in candidates if p.exists()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def orthanc(server: RunningServer, tmp_path: Path) -> Iterator[str]:
    """An Orthanc that knows the gateway as the DICOMweb server "dicomrpc"; yields its URL."""
    plugin = _plugin()
    if not ORTHANC.exists() or plugin is None:
        pytest.skip("Orthanc with its DICOMweb plugin is not installed")
    port = _free_port()
    config = {
        "Name": "interop",
        "StorageDirectory": str(tmp_path / "orthanc-storage"),
        "IndexDirectory": str(tmp_path / "orthanc-index"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(plugin)],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "Servers": {"dicomrpc": [server.dicomweb_url.rstrip("/") + "/"]},
        },
    }
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    log = tmp_path / "orthanc.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(ORTHANC), str(tmp_path / "orthanc.json")], stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "Orthanc did not start"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/system", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(30)


@pytest.mark.slow
def test_orthanc_searches_pulls_and_pushes_through_the_gateway(
    server: RunningServer, client: Client, orthanc: str
) -> None:
    study = generate_uid()
    sent = {}
    for number in range(3):
        data = ct_instance(study=study, number=number, patient_id="INTEROP")
        sent[number] = data
    client.store(list(sent.values()))
    remote = f"{orthanc}/dicom-web/servers/dicomrpc"

    found = httpx.post(
        f"{remote}/qido",
        json={"Uri": "/studies", "Arguments": {"PatientID": "INTEROP"}},
        timeout=30,
    )
    assert found.status_code == 200
    (answer,) = found.json()  # Orthanc's own rendering: {"Value": "...", "Name": ...} per tag
    assert answer["0020000D"]["Value"] == study
    assert answer["00080061"]["Value"] == "CT"

    metadata = httpx.post(f"{remote}/get", json={"Uri": f"/studies/{study}/metadata"}, timeout=30)
    assert metadata.status_code == 200
    assert len(metadata.json()) == 3

    pulled = httpx.post(f"{remote}/retrieve", json={"Resources": [{"Study": study}]}, timeout=60)
    assert pulled.status_code == 200
    assert int(pulled.json()["ReceivedInstancesCount"]) == 3
    copies = {
        httpx.get(f"{orthanc}/instances/{i}/file", timeout=30).content
        for i in httpx.get(f"{orthanc}/instances", timeout=30).json()
    }
    assert copies == set(sent.values())  # byte for byte what was stored

    other = generate_uid()
    uploaded = httpx.post(
        f"{orthanc}/instances", content=ct_instance(study=other, patient_id="FROM-ORTHANC")
    )
    pushed = httpx.post(
        f"{remote}/stow", json={"Resources": [uploaded.json()["ParentStudy"]]}, timeout=60
    )
    assert pushed.status_code == 200
    assert int(pushed.json()["InstancesCount"]) == 1
    studies = client.search_studies({"PatientID": "FROM-ORTHANC"}).as_json()
    assert [s["0020000D"]["Value"][0] for s in studies] == [other]
