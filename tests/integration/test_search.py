"""Search over gRPC: every match kind at every level, counts after stores and deletes."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import grpc
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomrpc import Client, DicomRpcError
from tests.conftest import RunningServer
from tests.dicomgen import ct_instance


def _uids(result: object, tag: str) -> set[str]:
    return {d[tag]["Value"][0] for d in result.as_json()}  # type: ignore[attr-defined]


@pytest.fixture
def corpus(client: Client) -> dict[str, str]:
    doe, muller = generate_uid(), generate_uid()
    doe_series = generate_uid()
    client.store(
        [
            ct_instance(study=doe, series=doe_series, patient_name="Doe^John", number=1),
            ct_instance(study=doe, series=doe_series, patient_name="Doe^John", number=2),
            ct_instance(study=muller, patient_name="Müller^José", patient_id="P2", number=7),
        ]
    )
    return {"doe": doe, "muller": muller, "doe_series": doe_series}


@pytest.mark.slow
def test_study_matching_kinds(client: Client, corpus: dict[str, str]) -> None:
    both = {corpus["doe"], corpus["muller"]}
    cases = [
        ({"PatientName": "joh"}, True, {corpus["doe"]}),
        ({"PatientName": "jo do"}, True, {corpus["doe"]}),
        ({"PatientName": "John Doe"}, True, {corpus["doe"]}),
        ({"PatientName": "ohn"}, True, set()),
        ({"PatientName": "Muller"}, True, {corpus["muller"]}),
        ({"PatientName": "DOE^JOHN"}, False, {corpus["doe"]}),
        ({"PatientName": "doe^john^^^"}, False, {corpus["doe"]}),
        ({"PatientName": "m*"}, False, {corpus["muller"]}),
        ({"PatientID": "P2"}, False, {corpus["muller"]}),
        ({"PatientID": "p2"}, False, set()),
        ({"StudyInstanceUID": f"{corpus['doe']},{corpus['muller']}"}, False, both),
        ({"StudyDate": "20240101-20240131"}, False, both),
        ({"StudyDate": "2025-"}, False, set()),
        ({"StudyDate": "-2024"}, False, both),
        ({"ModalitiesInStudy": "CT"}, False, both),
        ({"00100020": "P?"}, False, {corpus["muller"]}),
        ({"PatientName": ""}, False, both),
    ]
    for match, fuzzy, expected in cases:
        result = client.search_studies(match, fuzzy=fuzzy)
        assert _uids(result, "0020000D") == expected, (match, fuzzy)


@pytest.mark.slow
def test_counts_and_defaults(client: Client, corpus: dict[str, str]) -> None:
    (study,) = client.search_studies(StudyInstanceUID=corpus["doe"]).as_json()
    assert study["00201206"]["Value"] == [1] and study["00201208"]["Value"] == [2]
    assert study["00080061"]["Value"] == ["CT"]
    assert study["00100010"]["Value"] == [{"Alphabetic": "Doe^John"}]
    (series,) = client.search_series(study=corpus["doe"]).as_json()
    assert series["00201209"]["Value"] == [2] and series["00080060"]["Value"] == ["CT"]
    instances = client.search_instances(study=corpus["doe"], series=corpus["doe_series"])
    assert len(instances.datasets) == 2
    (seven,) = client.search_instances(InstanceNumber="7").as_json()
    assert seven["0020000D"]["Value"] == [corpus["muller"]]
    assert seven["00100010"]["Value"] == [{"Alphabetic": "Müller^José"}]  # study attributes too
    with_rows = client.search_instances(InstanceNumber="7", include=["Rows"]).as_json()[0]
    assert with_rows["00280010"]["Value"] == [16]


@pytest.mark.slow
def test_counts_follow_deletes(client: Client, corpus: dict[str, str]) -> None:
    instances = client.search_instances(study=corpus["doe"]).as_json()
    sop = instances[0]["00080018"]["Value"][0]
    client.delete_instance(corpus["doe"], corpus["doe_series"], sop)
    (study,) = client.search_studies(StudyInstanceUID=corpus["doe"]).as_json()
    assert study["00201208"]["Value"] == [1]
    client.delete_study(corpus["muller"])
    assert _uids(client.search_studies(PatientName="muller", fuzzy=True), "0020000D") == set()
    assert _uids(client.search_studies(), "0020000D") == {corpus["doe"]}


@pytest.mark.slow
def test_paging(client: Client) -> None:
    study = generate_uid()
    client.store([ct_instance(study=study, number=i) for i in range(23)])
    everything = _uids(client.search_instances(study=study), "00080018")
    assert len(everything) == 23
    pages, token = [], ""
    while True:
        page = client.search_instances(study=study, page_size=5, page_token=token)
        pages.append(_uids(page, "00080018"))
        token = page.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert set().union(*pages) == everything
    by_offset = [
        _uids(client.search_instances(study=study, limit=10, offset=o), "00080018")
        for o in (0, 10, 20, 30)
    ]
    assert [len(p) for p in by_offset] == [10, 10, 3, 0]
    assert set().union(*by_offset) == everything


@pytest.mark.parametrize(
    ("match", "options", "field"),
    [
        ({"NoSuchKeyword": "x"}, {}, "NoSuchKeyword"),
        ({"StudyDate": "2020-01-01-x"}, {}, "StudyDate"),
        ({"StudyDate": "2020010"}, {}, "StudyDate"),
        ({}, {"limit": 5000}, "limit"),
        ({"SOPInstanceUID": "1.2"}, {}, "SOPInstanceUID"),
        ({"Rows": "16"}, {}, "Rows"),
    ],
)
def test_invalid_searches_name_the_parameter(
    client: Client, match: dict[str, str], options: dict[str, int], field: str
) -> None:
    with pytest.raises(DicomRpcError) as caught:
        client.search_studies(match, **options)  # type: ignore[arg-type]
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field_violations[0][0] == field


@pytest.mark.parametrize(
    ("level", "match", "says"),
    [
        ("studies", {"StudyDate": "2020-01-31"}, "write YYYYMMDD (20200131)"),
        ("studies", {"StudyDate": "2020-01-01-2020-12-31"}, "range as 20200101-20201231"),
        ("studies", {"SOPInstanceUID": "1.2"}, "is an instance-level attribute: search instances"),
        ("studies", {"Modality": "CT"}, "is a series-level attribute: search series"),
        ("instances", {"Rows": "16"}, "`dicomrpc query-tags add`"),
    ],
)
def test_refusals_say_what_to_do(
    client: Client, level: str, match: dict[str, str], says: str
) -> None:
    search = {"studies": client.search_studies, "instances": client.search_instances}[level]
    with pytest.raises(DicomRpcError) as caught:
        search(match)
    assert says in caught.value.message


@pytest.mark.slow
def test_cli_search_scopes_are_checked(server: RunningServer, corpus: dict[str, str]) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "dicomrpc.cli", "search", *args]
        return subprocess.run(
            [*command, "--server", server.target], capture_output=True, text=True, timeout=60
        )

    done = run("instances", "--series", "1.2.3")
    assert done.returncode == 2 and "--series needs --study" in done.stderr
    done = run("series", "--study", "1.2", "--series", "1.2.3")
    assert done.returncode == 2 and "search instances --study S --series X" in done.stderr
    done = run("studies", "--study", corpus["doe"], "--json")
    assert done.returncode == 0, done.stderr
    (study,) = json.loads(done.stdout)
    assert study["0020000D"]["Value"] == [corpus["doe"]]


@pytest.mark.slow
def test_cli_search(server: RunningServer, corpus: dict[str, str]) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "dicomrpc.cli",
            "search",
            "studies",
            "PatientName=doe",
            "--fuzzy",
            "--server",
            server.target,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "Doe^John" in run.stdout and "1 study" in run.stdout
    assert corpus["doe"] in run.stdout


@pytest.mark.slow
def test_exact_matching_inside_sequences(client: Client) -> None:
    from io import BytesIO

    from pydicom import dcmread
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = dcmread(BytesIO(ct_instance()))
    item = Dataset()
    item.AccessionNumber = "REQ-42"
    item.RequestedProcedureID = "RP7"
    ds.ReferencedRequestSequence = Sequence([item])
    attributes = Dataset()
    attributes.ScheduledProcedureStepID = "SPS1"
    ds.RequestAttributesSequence = Sequence([attributes])
    out = BytesIO()
    ds.save_as(out)
    client.store([out.getvalue(), ct_instance()])
    study = ds.StudyInstanceUID

    found = client.search_studies({"ReferencedRequestSequence.AccessionNumber": "REQ-42"})
    assert _uids(found, "0020000D") == {study}
    assert found.as_json()[0]["0040A370"]["Value"][0]["00080050"]["Value"] == ["REQ-42"]
    assert _uids(client.search_studies({"0040A370.00401001": "RP7"}), "0020000D") == {study}
    assert _uids(client.search_studies(AccessionNumber="REQ-42"), "0020000D") == set()
    series = client.search_series({"RequestAttributesSequence.ScheduledProcedureStepID": "SPS1"})
    assert _uids(series, "0020000E") == {ds.SeriesInstanceUID}
    instances = client.search_instances({"ReferencedRequestSequence.AccessionNumber": "REQ-42"})
    assert _uids(instances, "00080018") == {ds.SOPInstanceUID}
    with pytest.raises(DicomRpcError) as caught:
        client.search_studies({"ReferencedRequestSequence.AccessionNumber": "REQ*"})
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.slow
def test_a_time_matches_every_instant_it_stands_for(client: Client) -> None:
    """ "1015" is a minute and "101530" a second: a single time or a range bound covers it all."""
    times = ["1015", "101530", "101500.25", "101559.999999", "1016", "095959.9"]
    studies = {}
    for time_value in times:
        data = ct_instance()
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.StudyTime = time_value
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        client.store([out.getvalue()])
        studies[ds.StudyInstanceUID] = time_value
    cases = {
        "1015": {"1015", "101530", "101500.25", "101559.999999"},
        "101500": {"1015", "101500.25"},
        "101500.2": {"101500.25"},
        "10": {"1015", "101530", "101500.25", "101559.999999", "1016"},
        "-1015": {"1015", "101530", "101500.25", "101559.999999", "095959.9"},
        "1016-": {"1016"},
        "0959-101500": {"1015", "101500.25", "095959.9"},
    }
    for query, expected in cases.items():
        found = client.search_studies({"StudyTime": query}).as_json()
        assert {studies[d["0020000D"]["Value"][0]] for d in found} == expected, query


@pytest.mark.slow
@pytest.mark.parametrize("cap", [1000, 2])
def test_common_values_are_checked_on_the_candidates(
    client: Client, monkeypatch: pytest.MonkeyPatch, cap: int
) -> None:
    """A common value (more entries than the other terms found) is checked key by key; the
    answer is the same whichever terms are scanned whole."""
    monkeypatch.setattr("dicomrpc_server.query.engine.SCAN_CAP", cap)
    studies = {}
    for i in range(12):
        study = generate_uid()
        client.store([ct_instance(study=study, patient_id=f"P{i % 4}", number=i)])
        studies[study] = f"P{i % 4}"
    cases = [
        {"ModalitiesInStudy": "CT", "PatientID": "P1"},
        {"PatientID": "P1", "ModalitiesInStudy": "CT"},
        {"ModalitiesInStudy": "CT", "PatientID": "P1", "StudyDate": "20240101-"},
        {"ModalitiesInStudy": "CT", "PatientName": "doe", "PatientID": "P2"},
        {"ModalitiesInStudy": "MR", "PatientID": "P1"},
    ]
    for match in cases:
        wanted = {s for s, p in studies.items() if p == match["PatientID"]}
        if match["ModalitiesInStudy"] == "MR":
            wanted = set()
        found = client.search_studies(match, fuzzy=True).as_json()
        assert {d["0020000D"]["Value"][0] for d in found} == wanted, match
        instances = client.search_instances(match, fuzzy=True).as_json()
        assert {d["0020000D"]["Value"][0] for d in instances} == wanted, match
