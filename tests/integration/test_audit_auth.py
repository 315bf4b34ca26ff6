"""The audit trail names the caller access control admitted or refused, on both adapters.

A server with bearer tokens, API keys and ``--audit-log``: a store by a token's subject, a
retrieve by an API key's name, a delete refused for want of ``dicom.delete`` and a call with no
credential are each one record, with the identity, the kind and the outcome.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from pydicom.uid import generate_uid

from dicomrpc import Client, DicomRpcError
from dicomrpc_server.access.api_keys import create
from tests.authgen import AUDIENCE, ISSUER, Issuer, write_jwks
from tests.conftest import RunningServer, start_server
from tests.dicomgen import ct_instance
from tests.integration.test_audit import json_lines

ISSUER_KEY = Issuer("audit-key")


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[RunningServer, Path, dict[str, str]]]:
    jwks = write_jwks(tmp_path / "jwks.json", ISSUER_KEY)
    keys = tmp_path / "api-keys"
    log = tmp_path / "audit.jsonl"
    credentials = {
        "writer": ISSUER_KEY.token("dicom.write dicom.read", subject="modality-7"),
        "reader": create(keys, "viewer-svc", ["dicom.read"]),
    }
    server = start_server(
        tmp_path / "data",
        auth_jwks=str(jwks),
        auth_issuer=ISSUER,
        auth_audience=AUDIENCE,
        auth_api_keys=keys,
        audit_log=log,
    )
    yield server, log, credentials
    server.stop()


def _records(log: Path, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while len(records := json_lines(log)) < count:
        assert time.monotonic() < deadline, f"{len(records)} audit records, {count} expected"
        time.sleep(0.05)
    return records


def test_the_audit_names_admitted_and_refused_callers(
    secured: tuple[RunningServer, Path, dict[str, str]],
) -> None:
    server, log, credentials = secured
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    with Client(server.target, token=credentials["writer"]) as writer:
        assert writer.store([ct_instance(study, series, sop)]).stored
    with Client(server.target, token=credentials["reader"]) as reader:
        assert len(reader.metadata(study).datasets) == 1
        with pytest.raises(DicomRpcError) as refused:
            reader.delete_study(study)
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    with httpx.Client(base_url=server.dicomweb_url) as http:
        assert http.delete(f"/studies/{study}").status_code == 401
    records = _records(log, 4)
    by_action = [(r["action"], r["identity"], r["kind"], r["outcome"]) for r in records]
    assert ("store", "modality-7", "token", "success") in by_action
    assert ("metadata", "viewer-svc", "api-key", "success") in by_action
    refusals = [r for r in records if r["action"] == "delete"]
    assert [(r["identity"], r["kind"], r["code"]) for r in refusals] == [
        ("viewer-svc", "api-key", "PERMISSION_DENIED"),
        ("anonymous", "anonymous", "UNAUTHENTICATED"),
    ]
    assert all(r["outcome"] != "success" for r in refusals)
    assert all(study in r["studies"] for r in refusals)
