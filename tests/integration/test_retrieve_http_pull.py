"""Retrieve grants: the SDK reads a study over the HTTP gateway with a signed URL.

The bytes are those RetrieveStudy streams, instance for instance; the URL reads exactly the
study or series it names, for a short while, for the caller it was granted to; without a
gateway the SDK streams over gRPC.
"""

from __future__ import annotations

import json
import time
import tracemalloc
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pydicom.data
import pytest
from pydicom.uid import generate_uid

from dicomrpc import Client, DicomRpcError, http_pull
from dicomrpc.v1 import retrieve_service_pb2 as rpb
from dicomrpc.v1 import retrieve_service_pb2_grpc
from dicomrpc_server.access.caller import Caller
from dicomrpc_server.access.grants import RetrieveGrants
from dicomrpc_server.access.scopes import READ
from tests.authgen import AUDIENCE, ISSUER, Issuer, write_jwks
from tests.conftest import RunningServer, start_server
from tests.dicomgen import big_image, ct_instance

ROOT = Path(pydicom.data.__file__).parent / "test_files"
MB = 1024 * 1024
MULTIPART = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_server(tmp_path_factory.mktemp("pull") / "data")
    with Client(server.target) as client:
        client.store(sorted(p for p in ROOT.rglob("*") if p.is_file()))
    yield server
    server.stop()


@pytest.fixture
def pulls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URLs the SDK reads over HTTP."""
    opened: list[str] = []
    original = http_pull.open_body

    def spy(url: str, tls: Any) -> Any:
        opened.append(url)
        return original(url, tls)

    monkeypatch.setattr(http_pull, "open_body", spy)
    return opened


def _studies(client: Client) -> list[tuple[str, str]]:
    """(study, one of its series) of everything stored."""
    found = {}
    for ds in client.search_instances(limit=1000).as_json():
        found.setdefault(ds["0020000D"]["Value"][0], ds["0020000E"]["Value"][0])
    return sorted(found.items())


def _grant(running: RunningServer, study: str, series: str = "", token: str = "") -> str:
    channel = grpc.insecure_channel(running.target)
    metadata = [("authorization", f"Bearer {token}")] if token else None
    with channel:
        stub = retrieve_service_pb2_grpc.RetrieveServiceStub(channel)
        request = rpb.GetRetrieveUrlRequest(
            study_instance_uid=study, series_instance_uid=series, host="127.0.0.1"
        )
        response = stub.GetRetrieveUrl(request, metadata=metadata)
    assert response.expire_time.seconds > time.time()
    return str(response.url)


def _moved(url: str, path: str) -> str:
    """``url``'s grant on another path of the gateway."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/dicomweb/{path}"))


@pytest.mark.slow
def test_a_study_read_over_http_is_what_grpc_streams(
    running: RunningServer, pulls: list[str]
) -> None:
    with Client(running.target) as fast, Client(running.target, http_retrieve=False) as slow:
        studies = _studies(slow)
        assert len(studies) > 20
        for study, series in studies:
            assert list(fast.iter_instances(study)) == list(slow.iter_instances(study))
            assert fast.retrieve_series(study, series) == slow.retrieve_series(study, series)
        assert len(pulls) == 2 * len(studies)


def test_saved_files_are_what_grpc_saves(
    running: RunningServer, pulls: list[str], tmp_path: Path
) -> None:
    with Client(running.target) as fast, Client(running.target, http_retrieve=False) as slow:
        study = _studies(slow)[0][0]
        saved = fast.save_study(study, tmp_path / "http")
        streamed = slow.save_study(study, tmp_path / "grpc")
    assert pulls and len(saved) == len(streamed) > 0
    for a, b in zip(saved, streamed, strict=True):
        assert isinstance(a, Path) and isinstance(b, Path)
        assert a.relative_to(tmp_path / "http") == b.relative_to(tmp_path / "grpc")
        assert a.read_bytes() == b.read_bytes()


def test_a_grant_reads_its_study_and_nothing_else(running: RunningServer) -> None:
    with Client(running.target) as client:
        (study, series), (other, _) = _studies(client)[:2]
        sop = next(client.iter_instances(study, series)).sop_instance_uid
    url = _grant(running, study)
    headers = {"Accept": MULTIPART}
    assert httpx.get(url, headers=headers).status_code == 200
    assert httpx.head(url, headers=headers).status_code == 200
    refused = {
        "another study": ("GET", f"studies/{other}", 403),
        "a series of it": ("GET", f"studies/{study}/series/{series}", 403),
        "an instance of it": ("GET", f"studies/{study}/series/{series}/instances/{sop}", 403),
        "its metadata": ("GET", f"studies/{study}/metadata", 403),
        "a search": ("GET", "studies", 403),
        "a store (STOW-RS)": ("POST", f"studies/{study}", 403),
        "a delete": ("DELETE", f"studies/{study}", 403),
    }
    for what, (method, path, status) in refused.items():
        answer = httpx.request(method, _moved(url, path), headers=headers, content=b"")
        assert answer.status_code == status, what
    with Client(running.target) as client:  # nothing was deleted
        assert list(client.iter_instances(study))
    # A series grant reads that series only.
    series_url = _grant(running, study, series)
    assert httpx.get(series_url, headers=headers).status_code == 200
    assert httpx.get(_moved(series_url, f"studies/{study}"), headers=headers).status_code == 403


def test_a_tampered_or_expired_grant_is_refused(running: RunningServer) -> None:
    with Client(running.target) as client:
        study = _studies(client)[0][0]
    url = _grant(running, study)
    base, _, token = url.partition("?grant=")
    token = urllib.parse.unquote(token)
    payload, _, signature = token.partition(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    other_key = RetrieveGrants(b"k" * 32).token(
        Caller("x", "token", frozenset({READ}), ""), study, ""
    )
    expired = running.archive.grants.token(
        Caller("x", "token", frozenset({READ}), ""), study, "", lifetime_s=-1
    )
    for what, bad in {
        "a changed signature": f"{payload}.{flipped}",
        "a changed payload": f"{payload[:-2]}xx.{signature}",
        "another archive's key": other_key[0],
        "expired": expired[0],
        "empty": "",
    }.items():
        answer = httpx.get(f"{base}?grant={urllib.parse.quote(bad)}", headers={"Accept": MULTIPART})
        assert answer.status_code == 401, what
    assert expired[1] < time.time()


def test_without_a_gateway_the_sdk_streams_over_grpc(
    running: RunningServer, pulls: list[str]
) -> None:
    grants = running.archive.grants
    with Client(running.target) as client:
        study = _studies(client)[0][0]
        grants.withdraw()
        try:
            with pytest.raises(grpc.RpcError) as refused:
                _grant(running, study)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            got = list(client.iter_instances(study))
        finally:
            grants.offer(running.http.scheme, running.http.port)
        assert got and not pulls
        assert got == list(client.iter_instances(study)) and pulls


def test_a_missing_study_is_not_found_either_way(running: RunningServer) -> None:
    with Client(running.target) as client, pytest.raises(DicomRpcError) as missing:
        list(client.iter_instances(generate_uid()))
    assert missing.value.code == grpc.StatusCode.NOT_FOUND


def test_a_body_cut_midway_is_a_clear_error(
    running: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Client(running.target) as client:
        study = max(_studies(client), key=lambda s: len(client.retrieve_study(s[0])))[0]
        original = http_pull.open_body

        def cut(url: str, tls: Any) -> Any:
            body = original(url, tls)
            response = body.response
            read = response.readinto
            budget = [3000]

            def short(buffer: Any) -> int:
                if budget[0] <= 0:
                    return 0
                n = read(memoryview(buffer)[: budget[0]])
                budget[0] -= n
                return n

            monkeypatch.setattr(response, "readinto", short)
            return body

        monkeypatch.setattr(http_pull, "open_body", cut)
        with pytest.raises(DicomRpcError) as failed:
            list(client.iter_instances(study))
    assert failed.value.code == grpc.StatusCode.UNAVAILABLE
    assert "HTTP retrieve failed" in failed.value.message


def _retrieves(log: Path, study: str, count: int) -> list[dict[str, Any]]:
    """The audit records of retrieves of ``study``, once there are ``count`` of them."""
    deadline = time.monotonic() + 30
    while True:
        lines = log.read_text().splitlines() if log.exists() else []
        found = [
            r
            for r in map(json.loads, lines)
            if r["action"] == "retrieve" and r["studies"] == [study]
        ]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


# -- with access control -------------------------------------------------------------------

ISSUER_KEY = Issuer("key-1")


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("pull-auth")
    server = start_server(
        folder / "data",
        auth_jwks=str(write_jwks(folder / "jwks.json", ISSUER_KEY)),
        auth_issuer=ISSUER,
        auth_audience=AUDIENCE,
        audit_log=folder / "audit.jsonl",
    )
    yield server
    server.stop()


@pytest.mark.slow
def test_a_grant_needs_the_read_scope_and_names_its_caller(
    secured: RunningServer, pulls: list[str]
) -> None:
    study = generate_uid()
    writer = ISSUER_KEY.token("dicom.write", subject="writer")
    reader = ISSUER_KEY.token("dicom.read", subject="reader")
    with Client(secured.target, token=writer) as client:
        assert client.store([ct_instance(study)]).stored
    with pytest.raises(grpc.RpcError) as refused:
        _grant(secured, study, token=writer)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as refused:
        _grant(secured, study)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Without the scope, the SDK is refused the grant, then the stream: the same answer.
    with Client(secured.target, token=writer) as client, pytest.raises(DicomRpcError) as denied:
        list(client.iter_instances(study))
    assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED and not pulls
    with Client(secured.target, token=reader) as client:
        got = list(client.iter_instances(study))
    assert len(got) == 1 and len(pulls) == 1
    # The grant and the read are audited under the reader's name (after the four refusals).
    log = secured.settings.data_dir.parent / "audit.jsonl"
    records = [r for r in _retrieves(log, study, 6) if r["outcome"] == "success"]
    assert sorted((r["adapter"], r["identity"], r["kind"]) for r in records) == [
        ("grpc", "reader", "token"),
        ("http", "reader", "grant"),
    ]
    # The signed URL is the credential: no Authorization header; another study still refused.
    url = _grant(secured, study, token=reader)
    assert httpx.get(url, headers={"Accept": MULTIPART}).status_code == 200
    other = _moved(url, f"studies/{generate_uid()}")
    assert httpx.get(other, headers={"Accept": MULTIPART}).status_code == 403
    writes = httpx.post(_moved(url, "studies"), headers={"Accept": MULTIPART}, content=b"")
    assert writes.status_code == 403


@pytest.mark.slow
def test_a_pull_is_audited_as_the_grant_and_the_read(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    server = start_server(tmp_path / "data", audit_log=log)
    try:
        study = generate_uid()
        with Client(server.target) as client:
            client.store([ct_instance(study)])
            assert len(client.retrieve_study(study)) == 1

        _retrieves(log, study, 2)
    finally:
        server.stop()
    records = _retrieves(log, study, 2)
    assert sorted(r["adapter"] for r in records) == ["grpc", "http"]
    for record in records:
        assert (record["studies"], record["outcome"]) == ([study], "success")
        assert (record["identity"], record["kind"]) == ("anonymous", "anonymous")


# -- memory --------------------------------------------------------------------------------

SIDE = 2048  # 8 MiB of pixel data per instance


@pytest.mark.slow
def test_a_large_study_is_saved_with_bounded_memory(tmp_path: Path, pulls: list[str]) -> None:
    study, series = generate_uid(), generate_uid()
    pixels = np.arange(SIDE * SIDE, dtype=np.uint16).tobytes()
    files = []
    for i in range(8):
        path = tmp_path / f"{i}.dcm"
        big_image(study, series, i + 1, SIDE, pixels).save_as(path, enforce_file_format=True)
        files.append(path)
    del pixels
    server = start_server(tmp_path / "data")
    try:
        with Client(server.target) as client:
            client.store(files)
            tracemalloc.start()
            try:
                saved = client.save_study(study, tmp_path / "out")
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    finally:
        server.stop()
    assert pulls and len(saved) == 8
    # The study is 64 MiB; the client and the server (in this process) hold a few chunks.
    assert peak < 24 * MB, peak // MB
    for path in saved:
        assert isinstance(path, Path) and path.stat().st_size > 8 * MB
