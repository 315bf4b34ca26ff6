"""UPS-RS over raw HTTP: the workflow, both URI templates, every status of PS3.18 §11's tables,
search, and a Transaction UID that never leaves the server."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from dicomrpc import Client
from dicomrpc.datasets import to_json
from dicomrpc_server.dicomweb.errors import warning_header
from tests.conftest import RunningServer
from tests.integration.test_workitems import LOCK, OTHER, in_state
from tests.upsgen import code, dataset, discontinued, performed, tag, workitem

DICOM_JSON = "application/dicom+json"
JSON_HEADERS = {"Content-Type": DICOM_JSON}
TRANSACTION_UID = tag("TransactionUID")
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(scope="module")
def grpc_client(running: RunningServer) -> Iterator[Client]:
    with Client(running.target) as client:
        yield client


def post_json(http: httpx.Client, path: str, body: Any) -> httpx.Response:
    return http.post(path, content=json.dumps(body), headers=JSON_HEADERS)


def put_state(http: httpx.Client, uid: str, state: str, transaction: str) -> httpx.Response:
    body = dataset(ProcedureStepState=state, TransactionUID=transaction or None)
    return http.put(f"/workitems/{uid}/state", content=json.dumps(body), headers=JSON_HEADERS)


def assert_failed(response: httpx.Response, status: int, dicom_status: int | None) -> None:
    """A failed request: its status, the JSON error body and the Warning header."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body.get("dicomStatus") == dicom_status, body
    assert response.headers["warning"] == warning_header(body["message"])


# -- the workflow ------------------------------------------------------------------------------


def test_workflow_over_http_equals_the_grpc_api(
    http: httpx.Client, grpc_client: Client, running: RunningServer
) -> None:
    uid, transaction = str(generate_uid()), str(generate_uid())
    bodies: list[str] = []

    def send(response: httpx.Response) -> httpx.Response:
        bodies.append(response.text)
        return response

    created = send(post_json(http, f"/workitems?{uid}", workitem(PatientID="WF-1")))
    assert created.status_code == 201, created.text
    assert created.headers["location"] == f"{running.dicomweb_url}/workitems/{uid}"
    assert "warning" not in created.headers

    got = send(http.get(f"/workitems/{uid}"))
    assert got.status_code == 200
    assert got.headers["content-type"] == DICOM_JSON
    (item,) = got.json()
    assert item == to_json(grpc_client.workitems.get(uid).dataset)
    assert item[tag("ProcedureStepState")]["Value"] == ["SCHEDULED"]

    # SCHEDULED: updated without a Transaction UID.
    updated = send(post_json(http, f"/workitems/{uid}", dataset(ProcedureStepLabel="first")))
    assert updated.status_code == 200, updated.text

    claimed = send(put_state(http, uid, "IN PROGRESS", transaction))
    assert claimed.status_code == 200, claimed.text
    assert grpc_client.workitems.get(uid).state == "IN PROGRESS"

    label = dataset(ProcedureStepLabel="second")
    missing = send(post_json(http, f"/workitems/{uid}", label))
    assert_failed(missing, 400, 0xC301)
    assert missing.json()["metadata"]["transaction_uid_problem"] == "missing"
    wrong = send(post_json(http, f"/workitems/{uid}?{OTHER}", label))
    assert_failed(wrong, 409, 0xC301)
    assert wrong.json()["metadata"]["transaction_uid_problem"] == "wrong"
    right = send(post_json(http, f"/workitems/{uid}?{transaction}", label))
    assert right.status_code == 200, right.text

    unmet = send(put_state(http, uid, "COMPLETED", transaction))
    assert_failed(unmet, 409, 0xC304)
    done = send(post_json(http, f"/workitems/{uid}?transaction={transaction}", performed()))
    assert done.status_code == 200, done.text
    completed = send(put_state(http, uid, "COMPLETED", transaction))
    assert completed.status_code == 200, completed.text

    final = send(http.get(f"/workitems/{uid}"))
    (item,) = final.json()
    grpc_item = grpc_client.workitems.get(uid)
    assert grpc_item.state == "COMPLETED"
    assert item == to_json(grpc_item.dataset)
    assert item[tag("ProcedureStepLabel")]["Value"] == ["second"]
    found = send(http.get("/workitems", params={"PatientID": "WF-1", "includefield": "all"}))
    assert found.json() == [
        to_json(d) for d in grpc_client.workitems.search(PatientID="WF-1", include=["all"])
    ]
    assert all(transaction not in body and TRANSACTION_UID not in body for body in bodies)


def test_search_never_returns_the_transaction_uid(http: httpx.Client, grpc_client: Client) -> None:
    uid = in_state(grpc_client, "IN PROGRESS")
    response = http.get(
        "/workitems", params={"SOPInstanceUID": uid, "includefield": "TransactionUID"}
    )
    assert response.status_code == 200, response.text
    assert LOCK not in response.text and TRANSACTION_UID not in response.text
    assert LOCK not in http.get(f"/workitems/{uid}").text


# -- URI templates -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "in_dataset"),
    [
        ("?{uid}", False),
        ("?AffectedSOPInstanceUID={uid}", False),
        ("?affectedsopinstanceuid={uid}", False),
        ("", True),  # the data set's SOPInstanceUID
        ("?{uid}", True),  # both, the same
    ],
)
@pytest.mark.parametrize("as_array", [False, True])
def test_create_uri_templates(
    http: httpx.Client, grpc_client: Client, query: str, in_dataset: bool, as_array: bool
) -> None:
    uid = str(generate_uid())
    body: Any = workitem(SOPInstanceUID=uid) if in_dataset else workitem()
    response = post_json(http, "/workitems" + query.format(uid=uid), [body] if as_array else body)
    assert response.status_code == 201, response.text
    assert response.headers["location"].endswith(f"/dicomweb/workitems/{uid}")
    assert grpc_client.workitems.get(uid).state == "SCHEDULED"


def test_create_without_a_uid_generates_one(http: httpx.Client, grpc_client: Client) -> None:
    response = post_json(http, "/workitems", workitem())
    assert response.status_code == 201, response.text
    uid = response.headers["location"].rsplit("/", 1)[1]
    assert grpc_client.workitems.get(uid).state == "SCHEDULED"
    assert http.get(response.headers["location"]).status_code == 200


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?1.2.3&1.2.4", "AffectedSOPInstanceUID"),
        ("?workitem=1.2.3", "workitem"),
        ("?1." + "2" * 70, "AffectedSOPInstanceUID"),  # longer than a UI value may be
        ("?AffectedSOPInstanceUID=1.2%2500", "AffectedSOPInstanceUID"),
        ("?affectedsopinstanceuid=..", "affectedsopinstanceuid"),
    ],
)
def test_create_uid_parameter_errors_name_it(http: httpx.Client, query: str, field: str) -> None:
    response = post_json(http, "/workitems" + query, workitem())
    assert_failed(response, 400, None)
    assert [v["field"] for v in response.json()["violations"]] == [field]


@pytest.mark.parametrize(
    "query", ["?{t}", "?transaction={t}", "?transaction-uid={t}", "?Transaction-uid={t}"]
)
def test_update_transaction_parameter_forms(
    http: httpx.Client, grpc_client: Client, query: str
) -> None:
    uid = in_state(grpc_client, "IN PROGRESS")
    label = f"form {query}"
    path = f"/workitems/{uid}" + query.format(t=LOCK)
    response = post_json(http, path, dataset(ProcedureStepLabel=label))
    assert response.status_code == 200, response.text
    stored = to_json(grpc_client.workitems.get(uid).dataset)
    assert stored[tag("ProcedureStepLabel")]["Value"] == [label]
    wrong = post_json(http, f"/workitems/{uid}" + query.format(t=OTHER), dataset(WorklistLabel="x"))
    assert_failed(wrong, 409, 0xC301)


# -- the status table (PS3.18 §11) ----------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A request on a workitem in ``state`` and the HTTP answer it must get."""

    name: str
    state: str  # the workitem's state first; "none" for a UID nothing has
    call: Callable[[httpx.Client, str], httpx.Response]
    status: int
    dicom_status: int | None  # the error's, or the warning's (in the Warning header)


def _label(http: httpx.Client, path: str) -> httpx.Response:
    return post_json(http, path, dataset(ProcedureStepLabel="relabelled"))


CASES = [
    Case("0xC300 update COMPLETED", "COMPLETED",
         lambda h, u: _label(h, f"/workitems/{u}?{LOCK}"), 409, 0xC300),
    Case("0xC300 claim CANCELED", "CANCELED",
         lambda h, u: put_state(h, u, "IN PROGRESS", LOCK), 409, 0xC300),
    Case("0xC301 update missing", "IN PROGRESS",
         lambda h, u: _label(h, f"/workitems/{u}"), 400, 0xC301),
    Case("0xC301 claim missing", "SCHEDULED",
         lambda h, u: put_state(h, u, "IN PROGRESS", ""), 400, 0xC301),
    Case("0xC301 complete missing", "IN PROGRESS",
         lambda h, u: put_state(h, u, "COMPLETED", ""), 400, 0xC301),
    Case("0xC301 update wrong", "IN PROGRESS",
         lambda h, u: _label(h, f"/workitems/{u}?{OTHER}"), 409, 0xC301),
    Case("0xC301 cancel wrong", "IN PROGRESS",
         lambda h, u: put_state(h, u, "CANCELED", OTHER), 409, 0xC301),
    Case("0xC302 claim IN PROGRESS", "IN PROGRESS",
         lambda h, u: put_state(h, u, "IN PROGRESS", OTHER), 409, 0xC302),
    Case("0xC303 schedule", "IN PROGRESS",
         lambda h, u: put_state(h, u, "SCHEDULED", LOCK), 409, 0xC303),
    Case("0xC304 final state unmet", "IN PROGRESS-bare",
         lambda h, u: put_state(h, u, "COMPLETED", LOCK), 409, 0xC304),
    Case("0xC307 retrieve", "none", lambda h, u: h.get(f"/workitems/{u}"), 404, 0xC307),
    Case("0xC307 update", "none", lambda h, u: _label(h, f"/workitems/{u}"), 404, 0xC307),
    Case("0xC307 state", "none",
         lambda h, u: put_state(h, u, "IN PROGRESS", LOCK), 404, 0xC307),
    Case("0xC307 cancelrequest", "none",
         lambda h, u: h.post(f"/workitems/{u}/cancelrequest"), 404, 0xC307),
    Case("0xC309 create IN PROGRESS", "none",
         lambda h, u: post_json(h, f"/workitems?{u}", workitem(ProcedureStepState="IN PROGRESS")),
         400, 0xC309),
    Case("0xC310 complete SCHEDULED", "SCHEDULED",
         lambda h, u: put_state(h, u, "COMPLETED", LOCK), 409, 0xC310),
    Case("0xC311 cancel COMPLETED", "COMPLETED",
         lambda h, u: put_state(h, u, "CANCELED", LOCK), 409, 0xC311),
    Case("0xC311 cancelrequest COMPLETED", "COMPLETED",
         lambda h, u: h.post(f"/workitems/{u}/cancelrequest"), 409, 0xC311),
    Case("0x0111 create exists", "SCHEDULED",
         lambda h, u: post_json(h, f"/workitems?{u}", workitem()), 409, 0x0111),
    Case("0xB304 cancel CANCELED", "CANCELED",
         lambda h, u: put_state(h, u, "CANCELED", LOCK), 200, 0xB304),
    Case("0xB304 cancelrequest CANCELED", "CANCELED",
         lambda h, u: h.post(f"/workitems/{u}/cancelrequest"), 202, 0xB304),
    Case("0xB306 complete COMPLETED", "COMPLETED",
         lambda h, u: put_state(h, u, "COMPLETED", LOCK), 200, 0xB306),
    Case("0xB300 create coerced", "none",
         lambda h, u: post_json(h, f"/workitems?{u}", workitem(SOPClassUID=CT_IMAGE)),
         201, 0xB300),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_status_table(http: httpx.Client, grpc_client: Client, case: Case) -> None:
    if case.state == "none":
        uid = str(generate_uid())
    elif case.state == "IN PROGRESS-bare":  # claimed, final-state requirements not met
        uid = grpc_client.workitems.create(workitem()).workitem_uid
        grpc_client.workitems.claim(uid, LOCK)
    else:
        uid = in_state(grpc_client, case.state)
    before = grpc_client.workitems.get(uid).state if case.state != "none" else None
    response = case.call(http, uid)
    if case.status >= 400:
        assert_failed(response, case.status, case.dicom_status)
        if before is not None:
            assert grpc_client.workitems.get(uid).state == before
    else:
        assert response.status_code == case.status, response.text
        assert response.headers["warning"].startswith('299 dicomrpc "')
        assert f"0x{case.dicom_status:04X}" in response.headers["warning"]


def test_request_cancellation_over_http(http: httpx.Client, grpc_client: Client) -> None:
    scheduled = in_state(grpc_client, "SCHEDULED")
    response = http.post(f"/workitems/{scheduled}/cancelrequest")
    assert response.status_code == 202, response.text
    assert "warning" not in response.headers
    assert grpc_client.workitems.get(scheduled).state == "CANCELED"

    performing = in_state(grpc_client, "IN PROGRESS")
    body = dataset(
        ReasonForCancellation="wrong patient",
        ContactDisplayName="Dr Who",
        ContactURI="mailto:who@example.org",
    )
    response = post_json(http, f"/workitems/{performing}/cancelrequest", [body])
    assert response.status_code == 202, response.text
    item = grpc_client.workitems.get(performing)
    assert item.state == "IN PROGRESS"  # its performer decides
    progress = to_json(item.dataset)[tag("ProcedureStepProgressInformationSequence")]
    assert progress["Value"][0][tag("ReasonForCancellation")]["Value"] == ["wrong patient"]
    contact = progress["Value"][0][tag("ProcedureStepCommunicationsURISequence")]["Value"][0]
    assert contact[tag("ContactDisplayName")]["Value"] == ["Dr Who"]
    assert contact[tag("ContactURI")]["Value"] == ["mailto:who@example.org"]
    # The performer cancels with its lock, as the gRPC API does.
    update = post_json(http, f"/workitems/{performing}?{LOCK}", discontinued())
    assert update.status_code == 200, update.text
    assert put_state(http, performing, "CANCELED", LOCK).status_code == 200
    assert grpc_client.workitems.get(performing).state == "CANCELED"


# -- bodies and media types --------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["application/dicom", "text/plain", "", "multipart/related"]
)
def test_a_body_in_another_media_type_is_415(
    http: httpx.Client, grpc_client: Client, content_type: str
) -> None:
    uid = in_state(grpc_client, "SCHEDULED")
    headers = {"Content-Type": content_type}
    body = json.dumps(workitem())
    for response in (
        http.post("/workitems", content=body, headers=headers),
        http.post(f"/workitems/{uid}", content=body, headers=headers),
        http.put(f"/workitems/{uid}/state", content=body, headers=headers),
        http.post(f"/workitems/{uid}/cancelrequest", content=body, headers=headers),
    ):
        assert_failed(response, 415, None)
        assert "Content-Type" in response.json()["message"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{", "is not JSON"),
        (b"", "is not JSON"),
        (b"[]", "holds 0 data sets"),
        (b"[{}, {}]", "holds 2 data sets"),
        (b"42", "not a data set"),
        (b'{"00100010": {"vr": "PN", "Value": 5}}', "00100010"),
    ],
)
def test_a_malformed_body_is_400(http: httpx.Client, body: bytes, words: str) -> None:
    response = http.post("/workitems", content=body, headers=JSON_HEADERS)
    assert_failed(response, 400, None)
    assert words in response.json()["message"]
    assert response.json()["violations"][0]["field"] == "body"


def test_a_create_missing_an_attribute_is_400_naming_it(http: httpx.Client) -> None:
    response = post_json(http, "/workitems", workitem(PatientName="<absent>"))
    assert_failed(response, 400, 0x0120)
    assert "PatientName" in [v["field"] for v in response.json()["violations"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (dataset(TransactionUID=LOCK), "ProcedureStepState"),
        (dataset(ProcedureStepState="DONE", TransactionUID=LOCK), "ProcedureStepState"),
    ],
)
def test_a_change_state_without_a_state_is_400(
    http: httpx.Client, grpc_client: Client, body: dict[str, Any], field: str
) -> None:
    uid = in_state(grpc_client, "SCHEDULED")
    response = http.put(f"/workitems/{uid}/state", content=json.dumps(body), headers=JSON_HEADERS)
    assert_failed(response, 400, None)
    assert response.json()["violations"][0]["field"] == field
    assert grpc_client.workitems.get(uid).state == "SCHEDULED"


@pytest.mark.parametrize("accept", ["image/png", "multipart/related; type=application/dicom"])
def test_retrieve_and_search_answer_406_for_an_accept_they_cannot_meet(
    http: httpx.Client, grpc_client: Client, accept: str
) -> None:
    uid = in_state(grpc_client, "SCHEDULED")
    for response in (
        http.get(f"/workitems/{uid}", headers={"Accept": accept}),
        http.get("/workitems", headers={"Accept": accept}),
    ):
        assert_failed(response, 406, None)


# -- search ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def worklist(grpc_client: Client) -> dict[str, str]:
    """Three workitems of one patient ID nothing else uses, by name."""
    patient = f"SRCH-{generate_uid()[-8:]}"
    made = {
        "early": workitem(
            PatientID=patient,
            PatientName="Doe^Jane",
            ScheduledProcedureStepStartDateTime="20240115080000",
            ScheduledStationNameCodeSequence=[code("CT-A", "CT A")],
        ),
        "late": workitem(
            PatientID=patient,
            PatientName="Roe^Richard",
            ScheduledProcedureStepStartDateTime="20240115170000",
            ScheduledStationNameCodeSequence=[code("CT-B", "CT B")],
        ),
        "other day": workitem(
            PatientID=patient,
            PatientName="Doe^John",
            ScheduledProcedureStepStartDateTime="20240220090000",
            ScheduledStationNameCodeSequence=[code("CT-A", "CT A")],
        ),
    }
    uids = {name: grpc_client.workitems.create(body).workitem_uid for name, body in made.items()}
    grpc_client.workitems.claim(uids["late"])
    return {"patient": patient, **uids}


def _uids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == DICOM_JSON
    return sorted(item[tag("SOPInstanceUID")]["Value"][0] for item in response.json())


@pytest.mark.parametrize(
    ("params", "fuzzy", "expected"),
    [
        ({}, False, ["early", "late", "other day"]),
        ({"ProcedureStepState": "SCHEDULED"}, False, ["early", "other day"]),
        ({"00741000": "IN PROGRESS"}, False, ["late"]),  # by tag
        ({"PatientName": "Doe^J*"}, False, ["early", "other day"]),  # wildcard
        ({"PatientName": "jane"}, True, ["early"]),  # fuzzy
        (
            {"ScheduledProcedureStepStartDateTime": "20240115000000-20240115235959"},
            False,
            ["early", "late"],
        ),  # date-time range
        ({"ScheduledStationNameCodeSequence.CodeValue": "CT-A"}, False, ["early", "other day"]),
        ({"00404025.00080100": "CT-B"}, False, ["late"]),  # a sequence path by tags
    ],
)
def test_search_each_key_kind_as_the_grpc_api(
    http: httpx.Client,
    grpc_client: Client,
    worklist: dict[str, str],
    params: dict[str, str],
    fuzzy: bool,
    expected: list[str],
) -> None:
    query = {"PatientID": worklist["patient"], **params}
    if fuzzy:
        query["fuzzymatching"] = "true"
    response = http.get("/workitems", params=query)
    assert _uids(response) == sorted(worklist[name] for name in expected)
    terms = {key: value for key, value in query.items() if key != "fuzzymatching"}
    by_grpc = grpc_client.workitems.search(terms, fuzzy=fuzzy)
    assert response.json() == [to_json(d) for d in by_grpc]


def test_search_includefield_limit_and_offset(http: httpx.Client, worklist: dict[str, str]) -> None:
    patient = worklist["patient"]
    everything = _uids(http.get("/workitems", params={"PatientID": patient}))
    pages = [
        _uids(http.get("/workitems", params={"PatientID": patient, "limit": 2, "offset": n}))
        for n in (0, 2)
    ]
    assert [len(p) for p in pages] == [2, 1]
    assert sorted(pages[0] + pages[1]) == everything
    response = http.get(
        "/workitems",
        params={
            "PatientID": patient,
            "includefield": "CommentsOnTheScheduledProcedureStep,00380010",
        },
    )
    added = {tag("CommentsOnTheScheduledProcedureStep"), tag("AdmissionID")}
    assert all(added <= item.keys() for item in response.json())
    plain = http.get("/workitems", params={"PatientID": patient})
    assert all(not added & item.keys() for item in plain.json())


def test_search_without_a_match_is_204(http: httpx.Client) -> None:
    response = http.get("/workitems", params={"PatientID": "NOBODY-AT-ALL"})
    assert response.status_code == 204
    assert response.content == b""


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "1001"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"fuzzymatching": "maybe"}, "fuzzymatching"),
        ({"Modality": "CT"}, "Modality"),
        ({"NoSuchKeyword": "x"}, "NoSuchKeyword"),
        ({"ScheduledStationNameCodeSequence.CodeMeaning": "x"},
         "ScheduledStationNameCodeSequence.CodeMeaning"),
        ({"ScheduledProcedureStepStartDateTime": "tomorrow"},
         "ScheduledProcedureStepStartDateTime"),
    ],
)  # fmt: skip
def test_search_errors_name_the_parameter(
    http: httpx.Client, params: dict[str, str], field: str
) -> None:
    response = http.get("/workitems", params=params)
    assert_failed(response, 400, None)
    assert field in [v["field"] for v in response.json()["violations"]], response.json()
