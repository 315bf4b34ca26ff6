"""C-FIND driven by dcmtk's findscu, at every level of both models, against the gRPC search.

The archive holds pydicom's DICOMDIR test patients (three patients, several studies, series
and instances each), two single images, three instances whose names are not ASCII, and one
generated instance whose Referenced Request Sequence a query matches inside.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom.data
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomrpc import Client
from dicomrpc.datasets import to_pydicom
from dicomrpc.retrieval import SearchResult
from tests import dcmtk
from tests.conftest import RunningServer, start_server
from tests.dicomgen import ct_instance

DATA = Path(pydicom.data.__file__).parent
FILES = [
    *sorted((DATA / "test_files" / "dicomdirtests").glob("[0-9]*/*/*")),
    DATA / "test_files" / "CT_small.dcm",
    DATA / "test_files" / "MR_small.dcm",
    *(DATA / "charset_files" / name for name in ("chrGerm.dcm", "chrRuss.dcm", "chrGreek.dcm")),
]
REQUESTED_STUDY = "1.2.826.0.1.3680043.8.498.1"
# A series large enough that a cancel arrives long before its last instance is answered: the
# archive paces its answers to the reader (dimse/pacing.py), and findscu cancels after the first.
LARGE_SERIES = ("1.2.826.0.1.3680043.8.498.2", "1.2.826.0.1.3680043.8.498.3", 1500)


def _with_request() -> bytes:
    ds = dcmread(io.BytesIO(ct_instance(study=REQUESTED_STUDY, patient_id="REQ-1")))
    item = Dataset()
    item.AccessionNumber = "REQ-ACC-7"
    item.RequestedProcedureID = "RP-7"
    ds.ReferencedRequestSequence = Sequence([item])
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_server(tmp_path_factory.mktemp("dimse_find") / "data", dimse_port=0)
    with Client(server.target) as client:
        study, series, count = LARGE_SERIES
        large = [ct_instance(study, series, number=n, patient_id="LARGE") for n in range(count)]
        result = client.store([*FILES, _with_request(), *large])
        assert result.status == "all_stored", [r.failure_message for r in result.instances]
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(archive: RunningServer) -> Iterator[Client]:
    with Client(archive.target) as c:
        yield c


def findscu(
    archive: RunningServer, out: Path, model: str, keys: dict[str, str], *options: str
) -> tuple[list[Dataset], list[int]]:
    """The responses' identifiers (extracted by findscu) and every status, in order."""
    out.mkdir(exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    args = ["-d", model, "-X", "-od", str(out), *options]
    for key, value in keys.items():
        args += ["-k", f"{key}={value}" if value else key]
    result = dcmtk.run("findscu", *args, *dcmtk.peer(archive.dimse_port))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    return found, dcmtk.statuses(result.stdout)


def _text(ds: Dataset, keyword: str) -> str:
    if keyword not in ds or ds.data_element(keyword).value in (None, ""):
        return ""
    value = ds.data_element(keyword).value
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def same_results(
    found: list[Dataset], expected: list[Dataset], unique: str, keys: list[str]
) -> None:
    """The same matches (by their unique key), each with the same value of every key."""
    by_key = {_text(ds, unique): ds for ds in found}
    wanted = {_text(ds, unique): ds for ds in expected}
    assert sorted(by_key) == sorted(wanted)
    for uid, ds in wanted.items():
        for keyword in keys:
            assert _text(by_key[uid], keyword) == _text(ds, keyword), (uid, keyword)


def grpc(results: SearchResult) -> list[Dataset]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [to_pydicom(ds) for ds in results.datasets]


STUDY_KEYS = [
    "StudyInstanceUID",
    "PatientName",
    "PatientID",
    "StudyDate",
    "StudyDescription",
    "AccessionNumber",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["-S", "-P"])
@pytest.mark.parametrize(
    "match",
    [
        {},
        {"PatientID": "77654033"},
        {"PatientName": "*doe*"},  # wildcards, without regard to case, as the search does
        {"StudyDate": "19950101-20001231"},
        {"StudyDate": "-19980101"},
        {"ModalitiesInStudy": "MR"},
    ],
)
def test_study_level_matches_the_grpc_search(
    archive: RunningServer, client: Client, tmp_path: Path, model: str, match: dict[str, str]
) -> None:
    dcmtk.require_dcmtk()
    keys = {k: match.get(k, "") for k in STUDY_KEYS}
    found, statuses = findscu(archive, tmp_path, model, {"QueryRetrieveLevel": "STUDY", **keys})
    expected = grpc(client.search_studies(match, limit=1000))
    assert expected or not match, "the query should match something"
    assert statuses == [0xFF00] * len(expected) + [0x0000]
    same_results(found, expected, "StudyInstanceUID", STUDY_KEYS)
    for ds in found:
        assert ds.QueryRetrieveLevel == "STUDY"
        assert set(ds.dir()) <= {*STUDY_KEYS, "QueryRetrieveLevel", "SpecificCharacterSet"}


def test_a_uid_list_matches_each_uid(
    archive: RunningServer, client: Client, tmp_path: Path
) -> None:
    dcmtk.require_dcmtk()
    every = grpc(client.search_studies(limit=1000))
    uids = [str(ds.StudyInstanceUID) for ds in every[:3]]
    found, _ = findscu(
        archive,
        tmp_path,
        "-S",
        {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "\\".join(uids)},
    )
    assert sorted(str(ds.StudyInstanceUID) for ds in found) == sorted(uids)


def test_names_beyond_ascii_are_returned_in_utf8(
    archive: RunningServer, client: Client, tmp_path: Path
) -> None:
    dcmtk.require_dcmtk()
    found, _ = findscu(
        archive, tmp_path, "-S", {"QueryRetrieveLevel": "STUDY", "PatientName": "?NEAS*"}
    )
    expected = grpc(client.search_studies(PatientName="?neas*"))
    assert len(found) == len(expected) == 1
    assert found[0].SpecificCharacterSet == "ISO_IR 192"
    assert str(found[0].PatientName) == str(expected[0].PatientName)
    assert not str(found[0].PatientName).isascii()


def test_a_sequence_key_matches_inside_its_item(
    archive: RunningServer, client: Client, tmp_path: Path
) -> None:
    dcmtk.require_dcmtk()
    keys = {
        "QueryRetrieveLevel": "STUDY",
        "StudyInstanceUID": "",
        "ReferencedRequestSequence[0].AccessionNumber": "REQ-ACC-7",
        "ReferencedRequestSequence[0].RequestedProcedureID": "",
    }
    found, statuses = findscu(archive, tmp_path, "-S", keys)
    assert statuses == [0xFF00, 0x0000]
    assert found[0].StudyInstanceUID == REQUESTED_STUDY
    (item,) = found[0].ReferencedRequestSequence
    assert item.AccessionNumber == "REQ-ACC-7" and item.RequestedProcedureID == "RP-7"
    keys["ReferencedRequestSequence[0].AccessionNumber"] = "NOT-THERE"
    assert findscu(archive, tmp_path, "-S", keys)[0] == []
    expected = grpc(
        client.search_studies({"ReferencedRequestSequence.AccessionNumber": "REQ-ACC-7"})
    )
    assert [str(ds.StudyInstanceUID) for ds in expected] == [REQUESTED_STUDY]


SERIES_KEYS = [
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
]
IMAGE_KEYS = [
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "InstanceNumber",
]


@pytest.mark.parametrize("model", ["-S", "-P"])
def test_series_and_image_levels_match_the_grpc_search(
    archive: RunningServer, client: Client, tmp_path: Path, model: str
) -> None:
    dcmtk.require_dcmtk()
    studies = grpc(client.search_studies(PatientID="98890234", limit=1000))
    assert studies
    patient = {"PatientID": "98890234"} if model == "-P" else {}
    for study in studies:
        study_uid = str(study.StudyInstanceUID)
        keys = {"QueryRetrieveLevel": "SERIES", **patient, **dict.fromkeys(SERIES_KEYS, "")}
        keys["StudyInstanceUID"] = study_uid
        found, _ = findscu(archive, tmp_path, model, keys)
        series = grpc(client.search_series(study=study_uid, limit=1000))
        same_results(found, series, "SeriesInstanceUID", SERIES_KEYS)
        for one in series:
            series_uid = str(one.SeriesInstanceUID)
            keys = {"QueryRetrieveLevel": "IMAGE", **patient, **dict.fromkeys(IMAGE_KEYS, "")}
            keys.update(StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid)
            found, _ = findscu(archive, tmp_path, model, keys)
            instances = grpc(
                client.search_instances(study=study_uid, series=series_uid, limit=1000)
            )
            same_results(found, instances, "SOPInstanceUID", IMAGE_KEYS)


def test_patient_level_groups_the_studies_by_patient(
    archive: RunningServer, client: Client, tmp_path: Path
) -> None:
    dcmtk.require_dcmtk()
    keys = {
        "QueryRetrieveLevel": "PATIENT",
        "PatientID": "",
        "PatientName": "",
        "NumberOfPatientRelatedStudies": "",
        "NumberOfPatientRelatedInstances": "",
    }
    found, statuses = findscu(archive, tmp_path, "-P", keys)
    studies = grpc(client.search_studies(limit=1000))
    expected: dict[str, list[Dataset]] = {}
    for study in studies:
        expected.setdefault(_text(study, "PatientID"), []).append(study)
    assert sorted(_text(ds, "PatientID") for ds in found) == sorted(expected)
    assert statuses == [0xFF00] * len(expected) + [0x0000]
    for ds in found:
        mine = expected[_text(ds, "PatientID")]
        assert int(ds.NumberOfPatientRelatedStudies) == len(mine)
        assert int(ds.NumberOfPatientRelatedInstances) == sum(
            int(s.NumberOfStudyRelatedInstances) for s in mine
        )
        assert _text(ds, "PatientName") == _text(mine[0], "PatientName")
    one, _ = findscu(archive, tmp_path, "-P", {**keys, "PatientID": "77654033"})
    assert [_text(ds, "PatientID") for ds in one] == ["77654033"]


def test_unknown_return_keys_are_empty_and_bad_queries_fail(
    archive: RunningServer, tmp_path: Path
) -> None:
    dcmtk.require_dcmtk()
    keys = {"QueryRetrieveLevel": "STUDY", "PatientID": "77654033", "PatientMotherBirthName": ""}
    found, _ = findscu(archive, tmp_path, "-S", {**keys, "RetrieveAETitle": ""})
    assert found and all("PatientMotherBirthName" in ds for ds in found)
    assert all(ds.PatientMotherBirthName == "" for ds in found)
    assert all(ds.RetrieveAETitle == dcmtk.AE_TITLE for ds in found)
    # PATIENT is no level of the Study Root model; a malformed date is refused by the core.
    _, statuses = findscu(archive, tmp_path, "-S", {"QueryRetrieveLevel": "PATIENT"})
    assert statuses == [0xA900]
    _, statuses = findscu(archive, tmp_path, "-S", {**keys, "StudyDate": "1995-01-01-x"})
    assert statuses == [0xA900]


def test_a_cancel_ends_the_query(archive: RunningServer, tmp_path: Path) -> None:
    dcmtk.require_dcmtk()
    study, series, count = LARGE_SERIES
    keys = {
        "QueryRetrieveLevel": "IMAGE",
        "StudyInstanceUID": study,
        "SeriesInstanceUID": series,
        "SOPInstanceUID": "",
    }
    found, statuses = findscu(archive, tmp_path, "-S", keys, "--cancel", "1")
    assert statuses[-1] == 0xFE00
    assert 1 <= len(found) < count
