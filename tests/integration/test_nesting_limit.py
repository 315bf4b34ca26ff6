"""Nothing is stored that cannot be read back: one sequence nesting limit at every way in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from pydicom.uid import generate_uid

from dicomrpc import Client, DicomRpcError
from dicomrpc.datasets import from_json, to_json
from dicomrpc.v1 import workitem_service_pb2 as wpb
from dicomrpc.wire import encode_fields
from tests.conftest import RunningServer, start_server
from tests.dicomgen import ct_instance, nested_instance
from tests.integration.test_dicomweb_http import STOW_TYPE, multipart
from tests.upsgen import dataset, discontinued, nested_items, tag, workitem

LIMIT = 16  # the default
CEILING = 23  # the most levels a Dataset message carries through every API message
DICOM_JSON = {"Content-Type": "application/dicom+json"}


def innermost(obj: dict[str, object], depth: int, top: str = "0040A730") -> dict[str, object]:
    """The innermost item of a DICOM JSON data set nested by nested_instance / nested_items."""
    item = obj
    for level in range(depth):
        sequence = item[top if level == 0 else "0040A730"]
        assert isinstance(sequence, dict)
        item = sequence["Value"][0]
    return item


@pytest.fixture(scope="module")
def client(running: RunningServer) -> Iterator[Client]:
    with Client(running.target) as c:
        yield c


def test_a_data_set_26_levels_deep_is_refused_at_stow_and_the_archive_is_unchanged(
    running: RunningServer, http: httpx.Client, client: Client
) -> None:
    study, series = generate_uid(), generate_uid()
    before = running.archive.index.counts()
    response = http.post(
        "/studies",
        content=multipart([nested_instance(26, study, series)]),
        headers={"Content-Type": STOW_TYPE},
    )
    assert response.status_code == 409, response.text
    (failed,) = response.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [272]
    comment = failed["00000902"]["Value"][0]
    assert comment.startswith(f"sequences nest more than {LIMIT} levels deep")
    assert running.archive.index.counts() == before
    assert http.get(f"/studies/{study}/metadata").status_code == 404

    result = client.store(nested_instance(26, study, series, undefined_length=True)).instances[0]
    assert (result.outcome, result.failure_reason) == ("failed", 272)
    assert result.failure_reason_name == "LIMIT_EXCEEDED"
    assert "ContentSequence[0].ContentSequence" in result.failure_message
    assert running.archive.index.counts() == before


@pytest.mark.parametrize("undefined_length", [False, True])
@pytest.mark.parametrize("implicit", [False, True])
def test_the_limit_itself_is_stored_and_read_back_everywhere(
    http: httpx.Client, client: Client, implicit: bool, undefined_length: bool
) -> None:
    study, series = generate_uid(), generate_uid()
    deepest = nested_instance(
        LIMIT, study, series, implicit=implicit, undefined_length=undefined_length
    )
    too_deep = nested_instance(
        LIMIT + 1, study, series, implicit=implicit, undefined_length=undefined_length
    )
    results = client.store([deepest, too_deep]).instances
    assert [r.outcome for r in results] == ["stored", "failed"]
    assert results[1].failure_reason_name == "LIMIT_EXCEEDED"

    (metadata,) = client.metadata(study).datasets
    leaf = innermost(to_json(metadata), LIMIT)
    assert leaf["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Deep^Leaf"}]}
    response = http.get(f"/studies/{study}/metadata")
    assert response.status_code == 200
    (web,) = response.json()
    assert innermost(web, LIMIT)["00100010"] == leaf["00100010"]
    (instance,) = client.retrieve_study(study)
    assert instance.data == deepest


def test_a_deep_search_attribute_is_returned_by_search(http: httpx.Client, client: Client) -> None:
    study = generate_uid()
    data = nested_instance(LIMIT, study, top="ReferencedRequestSequence")
    assert client.store(data).instances[0].outcome == "stored"
    (found,) = client.search_studies(StudyInstanceUID=study, include=["all"]).as_json()
    assert innermost(found, LIMIT, "0040A370")["00100010"]["Value"] == [{"Alphabetic": "Deep^Leaf"}]
    response = http.get("/studies", params={"StudyInstanceUID": study, "includefield": "all"})
    assert response.status_code == 200


def test_reindexing_finishes_over_the_deepest_stored_instances(
    running: RunningServer, client: Client
) -> None:
    study = generate_uid()
    assert client.store(nested_instance(LIMIT, study)).instances[0].outcome == "stored"
    _, operation = client.add_query_tags([{"tag": "StationName", "level": "series"}])
    status = client.wait_for_reindex(operation, timeout_s=120)
    assert status.done and status.processed_instances >= 1
    client.delete_query_tag("StationName")


# -- workitems ----------------------------------------------------------------------------


def deep_workitem(depth: int) -> dict[str, object]:
    return workitem(ScheduledProcessingParametersSequence=nested_items(depth))


def test_a_deep_workitem_is_refused_and_the_worklist_keeps_working(
    running: RunningServer, http: httpx.Client, client: Client
) -> None:
    label = "nesting-worklist"
    ok = client.workitems.create(workitem(ProcedureStepLabel=label)).workitem_uid

    response = http.post("/workitems", content=json.dumps(deep_workitem(26)), headers=DICOM_JSON)
    assert response.status_code == 400, response.text
    assert "more than 23 levels deep" in response.json()["message"]
    response = http.post(
        "/workitems", content=json.dumps(deep_workitem(LIMIT + 1)), headers=DICOM_JSON
    )
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["reason"] == "LIMIT_EXCEEDED"
    (violation,) = body["violations"]
    assert violation["field"].startswith("ScheduledProcessingParametersSequence[0].")
    with pytest.raises(DicomRpcError) as caught:
        client.workitems.create(deep_workitem(LIMIT + 1))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == "LIMIT_EXCEEDED"

    deepest = client.workitems.create(deep_workitem(LIMIT)).workitem_uid
    for uid in (ok, deepest):
        assert client.workitems.get(uid).state == "SCHEDULED"
    found = client.workitems.search(ProcedureStepLabel=label, include=["all"])
    assert [to_json(d)[tag("SOPInstanceUID")]["Value"] for d in found] == [[ok]]
    transaction = client.workitems.claim(deepest)
    # An update cannot make it deeper either.
    with pytest.raises(DicomRpcError) as caught:
        client.workitems.update(deepest, deep_workitem(LIMIT + 1), transaction)
    assert caught.value.reason == "LIMIT_EXCEEDED"
    client.workitems.request_cancel(deepest, reason="testing")
    assert client.workitems.cancel(deepest, transaction, discontinued()).state == "CANCELED"
    got = client.workitems.get(deepest)
    leaf = innermost(to_json(got.dataset), LIMIT, tag("ScheduledProcessingParametersSequence"))
    assert leaf[tag("TextValue")]["Value"] == ["deep"]


def test_a_grpc_create_deeper_than_a_message_can_carry_changes_nothing(
    running: RunningServer, client: Client
) -> None:
    # The SDK refuses to build such a message (NestingTooDeep), and protobuf to parse one; a
    # request written by hand is refused as one that cannot be parsed.
    deep = from_json(workitem())
    deep.attributes["0040A730"].vr = "SQ"
    item = deep.attributes["0040A730"].sequence.items.add()
    for _ in range(CEILING + 5):
        item.attributes["0040A730"].vr = "SQ"
        item = item.attributes["0040A730"].sequence.items.add()
    body = deep.SerializeToString()
    field = wpb.CreateWorkitemRequest.DATASET_FIELD_NUMBER
    request = encode_fields([(field, body)])
    before = len(client.workitems.search())
    with grpc.insecure_channel(running.target) as channel:
        create = channel.unary_unary(
            "/dicomrpc.v1.WorkitemService/CreateWorkitem",
            request_serializer=bytes,
            response_deserializer=wpb.CreateWorkitemResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            create(request, timeout=30)
    error = DicomRpcError.from_rpc_error(caught.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
    assert error.field_violations[0][0] == "request"
    assert "at most 23 sequence levels" in error.message
    assert len(client.workitems.search()) == before
    with pytest.raises(ValueError, match="more than 23 levels deep"):  # NestingTooDeep
        client.workitems.create(to_json(deep))


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        ('{"0040A730":{"vr":"SQ","Value":[' * 3000 + "{}" + "]}}" * 3000).encode(),
    ],
    ids=["arrays", "objects", "dicom-json"],
)
def test_json_nested_too_deeply_is_400_not_500(http: httpx.Client, body: bytes) -> None:
    response = http.post("/workitems", content=body, headers=DICOM_JSON)
    assert response.status_code == 400, response.text
    assert response.json()["violations"][0]["field"] == "body"
    uid = generate_uid()
    response = http.post(f"/workitems/{uid}/cancelrequest", content=body, headers=DICOM_JSON)
    assert response.status_code == 400, response.text


@pytest.mark.slow
def test_a_lower_limit_is_kept_everywhere(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", max_sequence_depth=3)
    try:
        with Client(server.target) as client:
            results = client.store(
                [nested_instance(3), nested_instance(4), ct_instance()]
            ).instances
            assert [r.outcome for r in results] == ["stored", "failed", "stored"]
            assert "more than 3 levels" in results[1].failure_message
            with pytest.raises(DicomRpcError) as caught:
                client.workitems.create(deep_workitem(4))
            assert caught.value.metadata["value"] == "3"
            assert client.workitems.create(deep_workitem(3)).workitem_uid
            update = dataset(ScheduledProcessingParametersSequence=nested_items(4))
            uid = client.workitems.create(workitem()).workitem_uid
            with pytest.raises(DicomRpcError):
                client.workitems.update(uid, update)
    finally:
        server.stop()
