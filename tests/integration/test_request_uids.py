"""Every UID a request names is checked at the door: every route, every RPC, every query form.

The routes are walked from the application and the RPCs from the proto descriptors, so a new
route or RPC that names a UID is tested here without being listed.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from pydicom.uid import generate_uid
from starlette.routing import Mount, Route

from dicomrpc import Client, DicomRpcError
from dicomrpc.v1 import (
    management_service_pb2,
    retrieve_service_pb2,
    search_service_pb2,
    store_service_pb2,
    workitem_service_pb2,
)
from dicomrpc.wire import serialize
from dicomrpc_server.dicomweb.app import create_app
from dicomrpc_server.dicomweb.context import PREFIX
from tests.conftest import RunningServer
from tests.dicomgen import ct_instance
from tests.integration.test_dicomweb_http import STOW_TYPE, multipart
from tests.upsgen import dataset, tag, workitem

SERVICE_MODULES = [
    retrieve_service_pb2,
    search_service_pb2,
    management_service_pb2,
    workitem_service_pb2,
    store_service_pb2,
]
# The path parameters that name a study, series, instance or workitem.
UID_PATH_PARAMETERS = {"study", "series", "instance", "workitem"}
# Path parameters that are not UIDs, each with a value its route accepts.
OTHER_PATH_PARAMETERS = {"frames": "1", "frame": "1", "path": "7FE00010"}
# UID fields of requests that name no stored thing and reach neither the index nor a URL.
NOT_IDENTIFIERS = {
    "transfer_syntax_uid": "a transfer syntax: checked against the transcoding matrix",
}
# Bad UIDs as they go into a URL path (percent-encoded where they must be).
BAD_PATH_UIDS = [
    "1.2%003",  # NUL: the index's key separator
    "%2E%2E",  # '..', which the server decodes before routing
    "1..2",
    "1.2%25",  # '%'
    "%C3%A9",  # é: non-ASCII
    "%FF",  # not UTF-8
    "1.2%3Fx",  # '?'
    "1.2%23x",  # '#'
    "1.2,1.3",
    "1%202",
    "1" * 65,
]
BAD_UIDS = ["1.2\x003", "..", ".", "1.2/3", "1.2%41", "é", "1.2?x", "1.2#x", "1.2,1.3", "1" * 65]
BAD_UID_LISTS = ["1.2.3,1.2\x00", "1.2.3,..", "é", "1.2.3\\1.2/3"]


@dataclass
class Stored:
    study: str
    series: str
    sop: str
    workitem: str
    transaction: str


@pytest.fixture(scope="module")
def client(running: RunningServer) -> Iterator[Client]:
    with Client(running.target) as c:
        yield c


@pytest.fixture(scope="module")
def stored(client: Client) -> Stored:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    assert client.store(ct_instance(study, series, sop)).instances[0].outcome == "stored"
    workitem_uid = client.workitems.create(workitem()).workitem_uid
    transaction = client.workitems.claim(workitem_uid)
    return Stored(study, series, sop, workitem_uid, transaction)


def snapshot(running: RunningServer, client: Client) -> tuple[object, ...]:
    counts = running.archive.index.counts()
    workitems = [item.SerializeToString() for item in client.workitems.search(include=["all"])]
    return counts.studies, counts.series, counts.instances, workitems


def assert_refused(response: httpx.Response, field: str) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "INVALID_ARGUMENT"
    assert [v["field"] for v in body["violations"]] == [field], body
    assert response.headers["warning"].startswith("299 dicomrpc")


# -- DICOMweb: every route ------------------------------------------------------------------


def _routes(running: RunningServer) -> list[Route]:
    """The gateway's routes (the mount at /dicomweb; the console and viewer mounts take none)."""
    (mount,) = [
        m for m in create_app(running.archive).routes if isinstance(m, Mount) and m.path == PREFIX
    ]
    routes = [route for route in mount.routes if isinstance(route, Route)]
    assert len(routes) == len(mount.routes)
    return routes


def test_every_path_parameter_is_known(running: RunningServer) -> None:
    for route in _routes(running):
        unknown = set(route.param_convertors) - UID_PATH_PARAMETERS - set(OTHER_PATH_PARAMETERS)
        assert not unknown, f"{route.path}: is {unknown} a UID? classify it here and in url.py"


@pytest.mark.slow
def test_every_route_refuses_a_bad_uid_in_its_path(
    running: RunningServer, http: httpx.Client, client: Client, stored: Stored
) -> None:
    good = {
        "study": stored.study,
        "series": stored.series,
        "instance": stored.sop,
        "workitem": stored.workitem,
        **OTHER_PATH_PARAMETERS,
    }
    before = snapshot(running, client)
    tried = 0
    for route in _routes(running):
        params = set(route.param_convertors) & UID_PATH_PARAMETERS
        assert route.methods is not None
        for method in sorted(route.methods - {"HEAD"}):
            for name in sorted(params):
                for bad in BAD_PATH_UIDS:
                    path = route.path.format(**{**good, name: bad})
                    response = http.request(method, path, content=b"{}")
                    assert_refused(response, name)
                    tried += 1
    assert tried > 20 * len(BAD_PATH_UIDS)
    assert snapshot(running, client) == before
    # And the good path still works: nothing above touched the study.
    assert http.get(f"/studies/{stored.study}/metadata").status_code == 200


def test_a_uid_reading_route_without_a_path_uid_takes_one_in_its_query(
    running: RunningServer,
) -> None:
    # The routes that name no UID in their path take UIDs in their query (searches, UPS-RS
    # create) or in their body (STOW-RS): tested below, by route.
    routes = {
        (route.path, method)
        for route in _routes(running)
        if not set(route.param_convertors) & UID_PATH_PARAMETERS
        for method in (route.methods or set()) - {"HEAD"}
    }
    assert routes == {
        ("/studies", "GET"),
        ("/series", "GET"),
        ("/instances", "GET"),
        ("/studies", "POST"),
        ("/workitems", "GET"),
        ("/workitems", "POST"),
    }


@pytest.mark.parametrize("path", ["/studies", "/series", "/instances"])
@pytest.mark.parametrize("key", ["StudyInstanceUID", "0020000D", "SeriesInstanceUID"])
def test_qido_refuses_a_bad_uid_in_a_uid_list(
    http: httpx.Client, stored: Stored, path: str, key: str
) -> None:
    if path == "/studies" and key == "SeriesInstanceUID":
        return  # a series attribute is not a study search key
    for bad in BAD_UID_LISTS:
        response = http.get(path, params={key: f"{stored.study},{bad}"})
        assert_refused(response, key)
    response = http.get(path, params={key: f"{stored.study},1.2.3"})
    assert response.status_code in (200, 204)


@pytest.mark.parametrize("scope", ["/studies/{study}/instances", "/studies/{study}/series"])
def test_qido_in_a_study_refuses_a_bad_sop_or_series_in_the_query(
    http: httpx.Client, stored: Stored, scope: str
) -> None:
    path = scope.format(study=stored.study)
    key = "SOPInstanceUID" if path.endswith("instances") else "SeriesInstanceUID"
    response = http.get(path, params={key: "1.2\x00"})
    assert_refused(response, key)


def test_ups_query_and_body_uids_are_checked_under_their_names(
    running: RunningServer, http: httpx.Client, client: Client, stored: Stored
) -> None:
    before = snapshot(running, client)
    body = json.dumps(workitem()).encode()
    headers = {"Content-Type": "application/dicom+json"}
    for query, field in [
        ("?1.2%00", "AffectedSOPInstanceUID"),
        ("?AffectedSOPInstanceUID=%2E%2E", "AffectedSOPInstanceUID"),
        ("?AffectedSOPInstanceUID=%C3%A9", "AffectedSOPInstanceUID"),
    ]:
        assert_refused(http.post("/workitems" + query, content=body, headers=headers), field)
    label = json.dumps(dataset(ProcedureStepLabel="x")).encode()
    for query, field in [
        ("?1.2/3", "transaction"),
        ("?transaction=1.2%23", "transaction"),
        ("?Transaction-UID=..", "Transaction-UID"),
    ]:
        response = http.post(f"/workitems/{stored.workitem}{query}", content=label, headers=headers)
        assert_refused(response, field)
    for bad in BAD_UIDS:
        state = dataset(ProcedureStepState="COMPLETED", TransactionUID=bad)
        response = http.put(
            f"/workitems/{stored.workitem}/state", content=json.dumps(state), headers=headers
        )
        assert_refused(response, "TransactionUID")
    for bad in BAD_UID_LISTS:
        assert_refused(http.get("/workitems", params={"SOPInstanceUID": bad}), "SOPInstanceUID")
    # A workitem body's own UIDs, at any depth, are named by their path.
    nested = workitem(
        ReferencedRequestSequence=[
            dataset(
                StudyInstanceUID="1.2/3",
                AccessionNumber="A",
                IssuerOfAccessionNumberSequence=None,
                RequestedProcedureID="R",
                RequestedProcedureDescription="D",
                RequestedProcedureCodeSequence=None,
            )
        ]
    )
    response = http.post("/workitems", content=json.dumps(nested), headers=headers)
    assert_refused(response, "ReferencedRequestSequence[0].StudyInstanceUID")
    bad_sop = workitem(SOPInstanceUID="1.2#3")
    response = http.post("/workitems", content=json.dumps(bad_sop), headers=headers)
    assert_refused(response, "SOPInstanceUID")
    assert snapshot(running, client) == before


def test_stow_refuses_a_bad_study_in_its_path(
    running: RunningServer, http: httpx.Client, client: Client
) -> None:
    before = snapshot(running, client)
    response = http.post(
        "/studies/1.2%003",
        content=multipart([ct_instance(study="1.2")]),
        headers={"Content-Type": STOW_TYPE},
    )
    assert_refused(response, "study")
    assert snapshot(running, client) == before


# -- gRPC: every RPC --------------------------------------------------------------------------


@dataclass(frozen=True)
class UidField:
    method: MethodDescriptor
    path: tuple[str, ...]  # field names from the request down to the field
    key: str = ""  # for a map of match terms: the key holding the UID

    @property
    def name(self) -> str:
        return self.key or self.path[-1]

    @property
    def id(self) -> str:
        return f"{self.method.name}.{'.'.join(self.path)}" + (f"[{self.key}]" if self.key else "")


_MAP_KEYS = {"SearchService": "StudyInstanceUID", "WorkitemService": "SOPInstanceUID"}


def _uid_fields(message: Descriptor, method: MethodDescriptor, path: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    for field in message.fields:
        here = (*path, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            yield UidField(method, here, _MAP_KEYS[method.containing_service.name])
        elif field.message_type is not None and field.message_type.name != "Dataset":
            yield from _uid_fields(field.message_type, method, here)
        elif (
            field.type == FieldDescriptor.TYPE_STRING
            and field.name.endswith("_uid")
            and field.name not in NOT_IDENTIFIERS
        ):
            yield UidField(method, here)


def all_uid_fields() -> list[UidField]:
    out = []
    for module in SERVICE_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                out.extend(_uid_fields(method.input_type, method))
    return out


UID_FIELDS = all_uid_fields()


def test_the_walk_finds_every_kind_of_uid_field() -> None:
    names = {f.id for f in UID_FIELDS}
    for expected in [
        "RetrieveFrames.sop_instance_uid",
        "RetrieveRendered.series_instance_uid",
        "RetrieveStudyMetadata.study_instance_uid",
        "SearchInstances.series_instance_uid",
        "SearchStudies.query.match[StudyInstanceUID]",
        "DeleteStudy.study_instance_uid",
        "UpdateWorkitem.transaction_uid",
        "ChangeWorkitemState.transaction_uid",
        "SubscribeWorkitems.filter[SOPInstanceUID]",
        "SearchWorkitems.match[SOPInstanceUID]",
        "CreateWorkitem.workitem_uid",
        "StoreInstances.study_instance_uid",
    ]:
        assert expected in names
    assert len(names) == len(UID_FIELDS) > 30


def _base_request(uid_field: UidField, stored: Stored) -> Message:
    method = uid_field.method
    module = next(m for m in SERVICE_MODULES if m.DESCRIPTOR is method.input_type.file)
    request: Any = getattr(module, method.input_type.name)()
    values = {
        "study_instance_uid": stored.study,
        "series_instance_uid": stored.series,
        "sop_instance_uid": stored.sop,
        "workitem_uid": generate_uid(),  # never created: only a refused request is sent
        "transaction_uid": stored.transaction,
    }
    for field in method.input_type.fields:
        if field.name in values:
            setattr(request, field.name, values[field.name])
    if method.name == "SubscribeWorkitems" and uid_field.key:
        request.workitem_uid = ""  # a filter follows every workitem
    if method.name == "RetrieveFrames":
        request.frame_numbers.append(1)
    if method.name == "ChangeWorkitemState":
        request.state = workitem_service_pb2.WORKITEM_STATE_IN_PROGRESS
    if method.name == "CreateWorkitem":
        from dicomrpc.datasets import from_json

        request.dataset.CopyFrom(from_json(workitem()))
    if method.name == "UpdateWorkitem":
        request.dataset.attributes[tag("ProcedureStepLabel")].vr = "LO"
    return request  # type: ignore[no-any-return]


def _set(request: Message, uid_field: UidField, value: str) -> None:
    target: Any = request
    for name in uid_field.path[:-1]:
        target = getattr(target, name)
    if uid_field.key:
        getattr(target, uid_field.path[-1])[uid_field.key] = value
    else:
        setattr(target, uid_field.path[-1], value)


def _call(channel: grpc.Channel, method: MethodDescriptor, request: Message) -> None:
    path = f"/{method.containing_service.full_name}/{method.name}"
    output = method.output_type
    module = next(m for m in SERVICE_MODULES if m.DESCRIPTOR is output.file)
    codec: dict[str, Callable[[Any], Any]] = {
        "request_serializer": serialize,
        "response_deserializer": getattr(module, output.name).FromString,
    }
    if method.client_streaming:
        channel.stream_unary(path, **codec)(iter([request]), timeout=30)
    elif method.server_streaming:
        next(iter(channel.unary_stream(path, **codec)(request, timeout=30)))
    else:
        channel.unary_unary(path, **codec)(request, timeout=30)


@pytest.mark.parametrize("uid_field", UID_FIELDS, ids=lambda f: f.id)
def test_every_rpc_refuses_a_bad_uid_naming_the_field(
    running: RunningServer, client: Client, stored: Stored, uid_field: UidField
) -> None:
    before = snapshot(running, client)
    bad_values = BAD_UID_LISTS if uid_field.key else BAD_UIDS
    with grpc.insecure_channel(running.target) as channel:
        for bad in bad_values:
            request = _base_request(uid_field, stored)
            _set(request, uid_field, bad)
            with pytest.raises(grpc.RpcError) as caught:
                _call(channel, uid_field.method, request)
            error = DicomRpcError.from_rpc_error(caught.value)
            assert error.code == grpc.StatusCode.INVALID_ARGUMENT, (bad, error)
            assert [f for f, _ in error.field_violations] == [uid_field.name], (bad, error)
    assert snapshot(running, client) == before


# -- what was seen ----------------------------------------------------------------------------


def _two_series(client: Client) -> tuple[str, str, str]:
    study, first, second = generate_uid(), generate_uid(), generate_uid()
    results = client.store([ct_instance(study, first), ct_instance(study, second)]).instances
    assert [r.outcome for r in results] == ["stored", "stored"]
    return study, first, second


def test_a_nul_in_a_delete_path_deletes_nothing(
    running: RunningServer, http: httpx.Client, client: Client
) -> None:
    study, first, _ = _two_series(client)
    before = snapshot(running, client)
    assert_refused(http.delete(f"/studies/{study}%00{first}"), "study")
    assert_refused(http.delete(f"/studies/{study}/series/{first}%00x"), "series")
    assert snapshot(running, client) == before
    assert len(client.search_series(study=study).datasets) == 2
    # The study is whole, and can be deleted.
    assert http.delete(f"/studies/{study}").status_code == 204
    assert http.get(f"/studies/{study}/series").status_code == 204
    assert running.archive.index.get_study(study) is None


def test_a_nul_in_grpc_delete_study_deletes_nothing(running: RunningServer, client: Client) -> None:
    study, first, _ = _two_series(client)
    before = snapshot(running, client)
    with pytest.raises(DicomRpcError) as caught:
        client.delete_study(f"{study}\x00{first}")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field_violations[0][0] == "study_instance_uid"
    assert "U+0000" in caught.value.message
    assert snapshot(running, client) == before
    assert client.delete_study(study) == 2
    assert running.archive.index.get_study(study) is None


def test_an_instance_named_dot_dot_is_refused_and_its_series_kept(
    http: httpx.Client, client: Client
) -> None:
    study, series = generate_uid(), generate_uid()
    keep = generate_uid()
    response = http.post(
        "/studies",
        content=multipart([ct_instance(study, series, ".."), ct_instance(study, series, keep)]),
        headers={"Content-Type": STOW_TYPE},
    )
    assert response.status_code == 202, response.text
    (failed,) = response.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [43264]
    assert failed["00000902"]["Value"][0].startswith("SOPInstanceUID (00080018) '..'")
    (stored_item,) = response.json()["00081199"]["Value"]
    url = stored_item["00081190"]["Value"][0]
    assert url.endswith(f"/studies/{study}/series/{series}/instances/{keep}")

    result = client.store(ct_instance(study, series, "..")).instances[0]
    assert (result.outcome, result.failure_reason) == ("failed", 43264)
    assert "SOPInstanceUID" in result.failure_message and not result.retrieve_location
    (found,) = client.search_instances(study=study).as_json()
    assert found["00080018"]["Value"] == [keep]


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/studies/%C3%A9", "study"),
        ("/studies/%FF", "study"),
        ("/studies/%C3%A9/metadata", "study"),
        ("/studies/1.2/series/%FF/instances", "series"),
        ("/workitems/%C3%A9", "workitem"),
    ],
)
def test_a_non_ascii_path_is_400_naming_the_parameter(
    http: httpx.Client, path: str, field: str
) -> None:
    assert_refused(http.get(path), field)


def test_a_query_that_is_not_utf8_is_400_naming_the_parameter(http: httpx.Client) -> None:
    assert_refused(http.get("/studies?PatientName=%FF"), "PatientName")
    assert_refused(http.get("/studies?Patient%FFName=x"), "Patient\ufffdName")
    assert_refused(http.get("/workitems?PatientName=Do%E9"), "PatientName")
    # UTF-8 text is what a name may hold.
    assert http.get("/studies?PatientName=%C3%A9").status_code == 204


def test_an_encoded_slash_in_the_path_is_400(http: httpx.Client, stored: Stored) -> None:
    assert_refused(http.get(f"/studies/{stored.study}%2Fmetadata"), "path")
    assert_refused(http.get(f"/studies/{stored.study}%2fseries"), "path")


def test_a_control_character_in_an_error_never_drops_the_response(http: httpx.Client) -> None:
    response = http.get("/studies?Patient%01Name=x")
    assert response.status_code == 400
    assert "Patient?Name" in response.headers["warning"]


def _raw_get(running: RunningServer, host: bytes) -> bytes:
    port = running.http.port
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /dicomweb/studies HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += sock.recv(65536)
        return head.split(b"\r\n")[0] + b"\n" + body


def test_a_host_header_that_is_not_a_host_is_refused(
    running: RunningServer, client: Client, stored: Stored
) -> None:
    answer = _raw_get(running, b"evil.example/x?")
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b'"field":"Host"' in answer
    assert _raw_get(running, b"localhost").startswith(b"HTTP/1.1 200")


def test_a_request_protobuf_cannot_parse_is_invalid_argument_whatever_its_shape(
    running: RunningServer,
) -> None:
    broken = b"\x0a\x05ab"  # field 1 announces 5 bytes, 2 follow
    parse = retrieve_service_pb2.RetrieveInstancesResponse.FromString
    codec: dict[str, Any] = {"request_serializer": bytes, "response_deserializer": parse}
    with grpc.insecure_channel(running.target) as channel:
        calls: list[Callable[[], object]] = [
            lambda: channel.unary_unary("/dicomrpc.v1.SearchService/SearchStudies", **codec)(
                broken, timeout=30
            ),
            lambda: next(
                iter(
                    channel.unary_stream("/dicomrpc.v1.RetrieveService/RetrieveStudy", **codec)(
                        broken, timeout=30
                    )
                )
            ),
            lambda: channel.stream_unary("/dicomrpc.v1.StoreService/StoreInstances", **codec)(
                iter([broken]), timeout=30
            ),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as caught:
                call()
            error = DicomRpcError.from_rpc_error(caught.value)
            assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
            assert error.field_violations[0][0] == "request"
