"""``/metrics``: what the archive served and holds, in Prometheus' text format, for admins."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import generate_uid

from dicomrpc import Client
from dicomrpc_server.access import api_keys
from tests.conftest import start_server
from tests.dicomgen import ct_instance


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.slow
def test_calls_store_outcomes_and_holdings(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    try:
        root = server.dicomweb_url.removesuffix("/dicomweb")
        study = str(generate_uid())
        instance = ct_instance(study, rows=64, columns=64)
        with Client(server.target) as client:
            client.store([instance])
            client.store([instance])  # the same bytes again: already stored
            client.store([b"not DICOM"])
        with httpx.Client(base_url=server.dicomweb_url) as http:
            assert http.get(f"/studies/{study}/metadata").status_code == 200
            assert http.get(f"/studies/{study}/metadata").status_code == 200
            assert http.get("/studies/1.2.3.4/metadata").status_code == 404
            assert http.get("/no/such/path/1").status_code == 404
        answer = httpx.get(root + "/metrics")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = _samples(answer.text)
    finally:
        server.stop()

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    store = "/dicomrpc.v1.StoreService/StoreInstances"
    assert value("dicomrpc_calls_total", adapter="grpc", operation=store, code="OK") == 3
    template = "GET /dicomweb/studies/{study}/metadata"
    assert value("dicomrpc_calls_total", adapter="http", operation=template, code="200") == 2
    assert value("dicomrpc_calls_total", adapter="http", operation=template, code="404") == 1
    # A path no route takes is counted under one label, never its own.
    assert not any("no/such" in str(labels) for _, labels in samples)
    assert value("dicomrpc_call_duration_seconds_count", adapter="http", operation=template) == 3
    assert value("dicomrpc_call_bytes_total", adapter="grpc", direction="in") > len(instance)
    assert value("dicomrpc_store_instances_total", outcome="stored", reason="") == 1
    assert value("dicomrpc_store_instances_total", outcome="already_stored", reason="") == 1
    failed = [
        labels for (name, labels), count in samples.items()
        if name == "dicomrpc_store_instances_total" and dict(labels)["outcome"] == "failed"
    ]  # fmt: skip
    assert len(failed) == 1 and dict(failed[0])["reason"]
    assert value("dicomrpc_studies") == 1 and value("dicomrpc_instances") == 1
    assert value("dicomrpc_stored_bytes") > 0
    assert value("dicomrpc_workitem_subscriptions") == 0


def test_metrics_need_the_admin_scope_when_access_control_is_on(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    ops = api_keys.create(keys, "ops", ["admin"])
    reader = api_keys.create(keys, "reader", ["dicom.read"])
    server = start_server(tmp_path / "data", auth_api_keys=keys)
    try:
        url = server.dicomweb_url.removesuffix("/dicomweb") + "/metrics"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"Authorization": f"Bearer {reader}"}).status_code == 403
        admin = httpx.get(url, headers={"Authorization": f"Bearer {ops}"})
        assert admin.status_code == 200 and "dicomrpc_instances" in admin.text
    finally:
        server.stop()
