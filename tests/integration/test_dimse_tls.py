"""DIMSE over TLS (PS3.15 B.1) with the archive's TLS settings: the certificate gRPC and
DICOMweb present, and with a client CA, a client certificate required of requesters too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import dcmtk
from tests.authgen import Pki, make_pki
from tests.conftest import RunningServer, start_server


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def mtls(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_server(
        tmp_path_factory.mktemp("dimse_tls") / "data",
        dimse_port=0,
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tls_client_ca=pki.ca_pem,
    )
    yield server
    server.stop()


def _echo(server: RunningServer, *tls: str | Path) -> str:
    return dcmtk.run("echoscu", "-v", *tls, *dcmtk.peer(server.dimse_port)).stdout


def test_echo_over_mutual_tls(mtls: RunningServer, pki: Pki) -> None:
    dcmtk.require_dcmtk()
    trusted = ("+tls", pki.client_key, pki.client_cert, "+cf", pki.ca_pem)
    assert "Received Echo Response (Success)" in _echo(mtls, *trusted)
    # Without a client certificate, without trusting the archive, or in plaintext: refused.
    for refused in (("+tla", "+cf", pki.ca_pem), ("+tls", pki.client_key, pki.client_cert), ()):
        assert "Received Echo Response" not in _echo(mtls, *refused)
