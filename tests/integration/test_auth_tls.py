"""TLS and mutual TLS, with certificates made by trustme: the SDK, the CLI, httpx and
dicomweb-client connect; a client that does not trust the server, or has no certificate where
one is required, does not; a certificate's subject names its holder on both adapters.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from dicomrpc import AsyncClient, Client, DicomRpcError, TlsConfig, http_pull
from dicomrpc_server.access.api_keys import create
from tests.authgen import Pki, access_record, make_pki
from tests.conftest import RunningServer, spawn_server, start_server
from tests.dicomgen import ct_instance


@pytest.fixture(autouse=True)
def _requests_uses_the_session_ca(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests lets these variables override a session's CA (psf/requests#3829)."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_server(
        tmp_path_factory.mktemp("tls") / "data", tls_cert=pki.server_cert, tls_key=pki.server_key
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_server(
        tmp_path_factory.mktemp("mtls") / "data",
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tls_client_ca=pki.ca_pem,
    )
    yield server
    server.stop()


def test_tls_serves_the_sdk(tls_server: RunningServer, pki: Pki) -> None:
    study = generate_uid()
    with Client(tls_server.target, tls=TlsConfig.from_files(ca=pki.ca_pem)) as client:
        assert len(client.store([ct_instance(study)]).stored) == 1
        found = client.search_studies(StudyInstanceUID=study).as_json()
        assert [r["0020000D"]["Value"][0] for r in found] == [study]

    async def store_async() -> int:
        config = TlsConfig.from_files(ca=pki.ca_pem)
        async with AsyncClient(tls_server.target, tls=config) as client:
            return len((await client.store([ct_instance()])).stored)

    assert asyncio.run(store_async()) == 1


def test_a_client_that_does_not_trust_the_server_or_speaks_plaintext_fails(
    tls_server: RunningServer, pki: Pki
) -> None:
    with Client(tls_server.target) as plaintext, pytest.raises(DicomRpcError) as failed:
        plaintext.capabilities()
    assert failed.value.code == grpc.StatusCode.UNAVAILABLE
    other_ca = make_pki(pki.folder / "other").ca_pem
    untrusting = TlsConfig.from_files(ca=other_ca)
    with Client(tls_server.target, tls=untrusting) as wrong, pytest.raises(DicomRpcError) as failed:
        wrong.capabilities()
    assert failed.value.code == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(tls_server.dicomweb_url + "/studies")
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(tls_server.dicomweb_url.replace("https://", "http://") + "/studies")


def test_https_serves_httpx_and_dicomweb_client(tls_server: RunningServer, pki: Pki) -> None:
    assert tls_server.dicomweb_url.startswith("https://")
    study = generate_uid()
    with Client(tls_server.target, tls=TlsConfig.from_files(ca=pki.ca_pem)) as client:
        client.store([ct_instance(study)])
    context = ssl.create_default_context(cafile=str(pki.ca_pem))
    found = httpx.get(
        tls_server.dicomweb_url + "/studies", params={"StudyInstanceUID": study}, verify=context
    )
    assert found.status_code == 200
    assert found.json()[0]["00081190"]["Value"][0].startswith("https://127.0.0.1:")
    # Sessions are closed here: a TLS connection left open would hold the server's stop until
    # its close_notify times out.
    with requests.Session() as session:
        session.verify = str(pki.ca_pem)
        web = DICOMwebClient(tls_server.dicomweb_url, session=session)
        found_studies = web.search_for_studies(search_filters={"StudyInstanceUID": study})
    assert [s["0020000D"]["Value"][0] for s in found_studies] == [study]


def test_mutual_tls_needs_a_client_certificate(mtls_server: RunningServer, pki: Pki) -> None:
    without = TlsConfig.from_files(ca=pki.ca_pem)
    with Client(mtls_server.target, tls=without) as client, pytest.raises(DicomRpcError):
        client.capabilities()
    mutual = TlsConfig.from_files(ca=pki.ca_pem, cert=pki.client_cert, key=pki.client_key)
    with Client(mtls_server.target, tls=mutual) as client:
        assert client.capabilities().server_version
    context = ssl.create_default_context(cafile=str(pki.ca_pem))
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.get(mtls_server.dicomweb_url + "/studies", verify=context)
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    assert httpx.get(mtls_server.dicomweb_url + "/studies", verify=context).status_code == 204
    with requests.Session() as session:
        session.verify = str(pki.ca_pem)
        session.cert = (str(pki.client_cert), str(pki.client_key))
        assert DICOMwebClient(mtls_server.dicomweb_url, session=session).search_for_studies() == []


def test_the_certificate_subject_names_the_caller_on_both_adapters(
    mtls_server: RunningServer, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    assert pki.client_subject.startswith("CN=ingest-service")
    mutual = TlsConfig.from_files(ca=pki.ca_pem, cert=pki.client_cert, key=pki.client_key)
    context = ssl.create_default_context(cafile=str(pki.ca_pem))
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    # Set for the whole test: an HTTP line is written once the response is sent.
    caplog.set_level("INFO", logger="dicomrpc.access")
    with Client(mtls_server.target, tls=mutual) as client:
        client.search_studies()
    httpx.get(mtls_server.dicomweb_url + "/studies", verify=context)
    grpc_line = access_record(caplog, {"rpc": "/dicomrpc.v1.SearchService/SearchStudies"})
    http_line = access_record(caplog, {"path": "/dicomweb/studies"})
    assert grpc_line["caller"] == http_line["caller"] == pki.client_subject


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DICOMRPC_")}
    return subprocess.run(
        [sys.executable, "-m", "dicomrpc.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **(env or {})},
    )


@pytest.mark.slow
def test_the_cli_with_tls_a_token_and_mutual_tls(pki: Pki, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    key = create(keys, "cli-user", ["dicom.read", "dicom.write"])
    process = spawn_server(
        tmp_path / "data",
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
        "--tls-client-ca",
        str(pki.ca_pem),
        "--auth-api-keys",
        str(keys),
    )
    try:
        assert process.dicomweb_url.startswith("https://")
        server = ["--server", process.target]
        files = ["--tls-ca", str(pki.ca_pem), "--tls-cert", str(pki.client_cert)]
        files += ["--tls-key", str(pki.client_key)]
        ok = _cli("search", "studies", *server, *files, "--token", key)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.strip().endswith("0 studies")
        from_env = _cli(
            "search",
            "studies",
            *server,
            env={
                "DICOMRPC_TOKEN": key,
                "DICOMRPC_TLS_CA": str(pki.ca_pem),
                "DICOMRPC_TLS_CERT": str(pki.client_cert),
                "DICOMRPC_TLS_KEY": str(pki.client_key),
            },
        )
        assert from_env.returncode == 0, from_env.stderr
        no_token = _cli("search", "studies", *server, *files)
        assert no_token.returncode == 1
        assert "UNAUTHENTICATED" in no_token.stderr and "Bearer" in no_token.stderr
        no_certificate = _cli(
            "search", "studies", *server, "--tls-ca", str(pki.ca_pem), "--token", key
        )
        assert no_certificate.returncode == 1 and "UNAVAILABLE" in no_certificate.stderr
        half = _cli("search", "studies", *server, "--tls-cert", str(pki.client_cert))
        assert half.returncode == 1 and "needs its key" in half.stderr
    finally:
        process.stop()


def test_the_server_refuses_plaintext_beyond_loopback(tmp_path: Path) -> None:
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "dicomrpc.cli",
            "serve",
            "--data",
            str(tmp_path / "data"),
            "--host",
            "0.0.0.0",
            "--grpc-port",
            "0",
            "--http-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0
    assert "refusing to serve on 0.0.0.0" in refused.stderr
    assert "--insecure" in refused.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was opened


def test_an_idle_tls_client_does_not_hold_the_servers_stop(pki: Pki, tmp_path: Path) -> None:
    """A pooled connection nobody reads would make a TLS close wait 30 s for its close_notify;
    an idle connection is aborted instead, so the stop (bounded at 30 s) completes."""
    running = start_server(
        tmp_path / "data", tls_cert=pki.server_cert, tls_key=pki.server_key, shutdown_grace_s=60
    )
    with requests.Session() as idle:
        idle.verify = str(pki.ca_pem)
        assert idle.get(running.dicomweb_url + "/studies").status_code == 204
        running.stop()  # raises TimeoutError after 30 s if the idle connection holds it


@pytest.mark.parametrize("mutual", [False, True])
def test_a_study_read_over_https_with_the_clients_tls(
    tls_server: RunningServer,
    mtls_server: RunningServer,
    pki: Pki,
    mutual: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The SDK's HTTP pull trusts the CA (and shows the certificate) it has for gRPC."""
    server = mtls_server if mutual else tls_server
    config = TlsConfig.from_files(
        ca=pki.ca_pem,
        cert=pki.client_cert if mutual else None,
        key=pki.client_key if mutual else None,
    )
    opened: list[str] = []
    original = http_pull.open_body

    def spy(url: str, tls: TlsConfig | None) -> http_pull.Body:
        body = original(url, tls)
        opened.append(url)
        return body

    monkeypatch.setattr(http_pull, "open_body", spy)
    study = str(generate_uid())
    with Client(server.target, tls=config) as client:
        client.store([ct_instance(study, number=n) for n in (1, 2)])
        pulled = list(client.iter_instances(study))
    with Client(server.target, tls=config, http_retrieve=False) as client:
        streamed = list(client.iter_instances(study))
    assert len(opened) == 1 and opened[0].startswith("https://127.0.0.1:")
    assert pulled == streamed and len(pulled) == 2
