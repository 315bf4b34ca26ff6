"""The gateway driven by dicomweb-client (unmodified), compared with what gRPC answers.

One server for the module: the pydicom test files the store accepts are stored through STOW-RS
by dicomweb-client, then searched, retrieved and deleted through the gateway, and every answer
is checked against the gRPC API's answer for the same data.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from io import BytesIO
from typing import Any

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from dicomrpc import Client, DicomRpcError
from dicomrpc_server.dicomweb.wado import absolute_bulk_data_uris
from tests.conftest import RunningServer, start_server
from tests.integration.test_store_pydicom_data import EXPECTED, ROOT

ACCEPTED = sorted(name for name, (outcome, _) in EXPECTED.items() if outcome != "failed")
AS_STORED = (("application/dicom", "*"),)


def _read(name: str) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(ROOT / name)


def _writable(ds: pydicom.Dataset) -> bool:
    """Whether pydicom can write the data set again (dicomweb-client sends what it writes)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.save_as(BytesIO(), enforce_file_format=True)
    except Exception:
        return False
    return True


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("dicomweb") / "data")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def web(archive: RunningServer) -> DICOMwebClient:
    return DICOMwebClient(archive.dicomweb_url)


@pytest.fixture(scope="module")
def grpc_client(archive: RunningServer) -> Iterator[Client]:
    with Client(archive.target) as c:
        yield c


@pytest.fixture(scope="module")
def stored(web: DICOMwebClient) -> list[pydicom.Dataset]:
    """Every accepted pydicom test file, stored through STOW-RS (a few per request)."""
    datasets = [ds for ds in map(_read, ACCEPTED) if _writable(ds)]
    assert len(datasets) > len(ACCEPTED) - 5
    for start in range(0, len(datasets), 8):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            response = web.store_instances(datasets[start : start + 8])
        assert "FailedSOPSequence" not in response
        assert len(response.ReferencedSOPSequence) == len(datasets[start : start + 8])
        for item in response.ReferencedSOPSequence:
            assert item.RetrieveURL.startswith(web.base_url)
    return datasets


def _core_results(results: list[dict[str, Any]], web: DICOMwebClient) -> list[dict[str, Any]]:
    """QIDO results less the RetrieveURL the gateway adds (checked to point at the gateway)."""
    out = []
    for result in results:
        result = dict(result)
        url = result.pop("00081190")["Value"][0]
        assert url.startswith(f"{web.base_url}/studies/"), url
        if "00080018" in result:
            assert url.endswith(f"/instances/{result['00080018']['Value'][0]}")
        out.append(result)
    return out


def _uids(results: list[dict[str, Any]], tag: str) -> list[str]:
    return sorted(r[tag]["Value"][0] for r in results)


@pytest.mark.slow
def test_stored_instances_are_all_searchable(
    stored: list[pydicom.Dataset], web: DICOMwebClient, grpc_client: Client
) -> None:
    found = web.search_for_instances(search_filters={}, limit=1000)
    assert _uids(found, "00080018") == sorted({ds.SOPInstanceUID for ds in stored})
    assert _core_results(found, web) == grpc_client.search_instances(limit=1000).as_json()


@pytest.mark.parametrize(
    ("level", "match", "fuzzy"),
    [
        ("study", {"PatientName": "CompressedSamples^CT1"}, False),  # exact PN
        ("study", {"PatientName": "comp*"}, False),  # wildcard
        ("study", {"PatientID": "1CT?"}, False),  # single-character wildcard
        ("study", {"StudyDate": "19950101-20041231"}, False),  # date range
        ("study", {"StudyDate": "-19990101"}, False),  # open range
        ("study", {"PatientName": "ct1"}, True),  # fuzzy
        ("study", {"ModalitiesInStudy": "MR"}, False),
        ("series", {"Modality": "CT"}, False),
        ("series", {"SeriesNumber": "1"}, False),
        ("instance", {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}, False),  # exact UID
        ("instance", {"InstanceNumber": "1"}, False),
    ],
)
def test_searches_equal_grpc(
    stored: list[pydicom.Dataset],
    web: DICOMwebClient,
    grpc_client: Client,
    level: str,
    match: dict[str, str],
    fuzzy: bool,
) -> None:
    searches = {
        "study": (web.search_for_studies, grpc_client.search_studies),
        "series": (web.search_for_series, grpc_client.search_series),
        "instance": (web.search_for_instances, grpc_client.search_instances),
    }
    ours, theirs = searches[level]
    got = ours(search_filters=match, fuzzymatching=fuzzy, limit=1000)
    expected = theirs(match, fuzzy=fuzzy, limit=1000).as_json()  # type: ignore[operator]
    assert got, f"the test data should match {match}"
    assert _core_results(got, web) == expected


def test_uid_lists_include_fields_and_paging(
    stored: list[pydicom.Dataset], web: DICOMwebClient, grpc_client: Client
) -> None:
    studies = sorted({ds.StudyInstanceUID for ds in stored})
    pair = ",".join(studies[:2])
    got = web.search_for_studies(search_filters={"StudyInstanceUID": pair})
    assert _uids(got, "0020000D") == studies[:2]
    everything = web.search_for_studies(fields=["all"], limit=1000)
    expected = grpc_client.search_studies(include=["all"], limit=1000).as_json()
    assert _core_results(everything, web) == expected
    assert "00100040" in everything[0] or "00080005" in everything[0]
    page = web.search_for_studies(limit=3, offset=2)
    assert _core_results(page, web) == grpc_client.search_studies(limit=3, offset=2).as_json()
    assert len(page) == 3


def test_nested_searches(
    stored: list[pydicom.Dataset], web: DICOMwebClient, grpc_client: Client
) -> None:
    ct = _read("CT_small.dcm")
    study, series = ct.StudyInstanceUID, ct.SeriesInstanceUID
    series_found = _core_results(web.search_for_series(study), web)
    assert series_found == grpc_client.search_series(study=study).as_json()
    instances = _core_results(web.search_for_instances(study), web)
    assert instances == grpc_client.search_instances(study=study).as_json()
    in_series = _core_results(web.search_for_instances(study, series), web)
    assert in_series == grpc_client.search_instances(study=study, series=series).as_json()
    assert _uids(in_series, "00080018") == [ct.SOPInstanceUID]


def test_no_match_is_an_empty_list(stored: list[pydicom.Dataset], web: DICOMwebClient) -> None:
    assert web.search_for_studies(search_filters={"PatientID": "NOBODY"}) == []
    assert web.search_for_studies(offset=100_000) == []


def test_retrieve_study_series_instance_as_stored(
    stored: list[pydicom.Dataset], web: DICOMwebClient, grpc_client: Client
) -> None:
    mr = _read("dicomdirtests/98892003/MR2/4950")
    study, series, sop = mr.StudyInstanceUID, mr.SeriesInstanceUID, mr.SOPInstanceUID
    expected = {
        i.sop_instance_uid: i.data for i in grpc_client.iter_instances(study, transfer_syntax="*")
    }
    got = web.retrieve_study(study, media_types=AS_STORED)
    assert sorted(ds.SOPInstanceUID for ds in got) == sorted(expected)
    for ds in got:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = pydicom.dcmread(BytesIO(expected[ds.SOPInstanceUID]))
        assert ds == theirs
    in_series = web.retrieve_series(study, series, media_types=AS_STORED)
    assert {ds.SeriesInstanceUID for ds in in_series} == {series}
    one = web.retrieve_instance(study, series, sop, media_types=AS_STORED)
    assert one.SOPInstanceUID == sop
    assert one.PixelData == mr.PixelData


def test_retrieve_transcodes(stored: list[pydicom.Dataset], web: DICOMwebClient) -> None:
    j2k = _read("693_J2KI.dcm")
    got = web.retrieve_instance(
        j2k.StudyInstanceUID,
        j2k.SeriesInstanceUID,
        j2k.SOPInstanceUID,
        media_types=(("application/dicom", "1.2.840.10008.1.2.1"),),
    )
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert (got.pixel_array == j2k.pixel_array).all()


@pytest.mark.parametrize(
    "name", ["examples_ybr_color.dcm", "examples_jpeg2k.dcm", "CT_small.dcm", "image_dfl.dcm"]
)
def test_frames_equal_grpc(
    stored: list[pydicom.Dataset], web: DICOMwebClient, grpc_client: Client, name: str
) -> None:
    ds = _read(name)
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    count = int(getattr(ds, "NumberOfFrames", 1) or 1)
    numbers = list(range(1, count + 1))
    raw = web.retrieve_instance_frames(*uids, frame_numbers=numbers)
    assert raw == [
        f.data for f in grpc_client.frames(*uids, numbers, transfer_syntax="1.2.840.10008.1.2.1")
    ]
    as_stored = web.retrieve_instance_frames(
        *uids, frame_numbers=numbers, media_types=(("application/octet-stream", "*"),)
    )
    assert as_stored == [f.data for f in grpc_client.frames(*uids, numbers)]


def test_metadata_and_bulk_data_equal_grpc(
    stored: list[pydicom.Dataset], web: DICOMwebClient, grpc_client: Client
) -> None:
    ct = _read("CT_small.dcm")
    study, series, sop = ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID
    expected = grpc_client.metadata(study).as_json()
    absolute_bulk_data_uris(expected, web.base_url)
    assert web.retrieve_study_metadata(study) == expected
    assert web.retrieve_series_metadata(study, series) == expected
    instance = web.retrieve_instance_metadata(study, series, sop)
    assert instance == expected[0]
    uri = instance["7FE00010"]["BulkDataURI"]
    assert uri.startswith(web.base_url)
    assert web.retrieve_bulkdata(uri) == [ct.PixelData]


def test_nested_bulk_data_resolves(stored: list[pydicom.Dataset], web: DICOMwebClient) -> None:
    found = 0
    for ds in stored:
        metadata = web.retrieve_instance_metadata(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        )
        for uri, value in _bulk_values(metadata, ds):
            assert web.retrieve_bulkdata(uri) == [value]
            found += 1
    assert found > len(stored) // 2


def _bulk_values(obj: dict[str, Any], ds: pydicom.Dataset) -> Iterator[tuple[str, bytes]]:
    for tag, element in obj.items():
        if "BulkDataURI" in element:
            yield element["BulkDataURI"], ds[int(tag, 16)].value
        elif element.get("vr") == "SQ":
            for item, sub in zip(element.get("Value", []), ds[int(tag, 16)].value, strict=True):
                yield from _bulk_values(item, sub)


def test_rendered(stored: list[pydicom.Dataset], web: DICOMwebClient, grpc_client: Client) -> None:
    ct = _read("CT_small.dcm")
    uids = (ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID)
    png = web.retrieve_instance_rendered(*uids, media_types=("image/png",))
    assert png == grpc_client.rendered(*uids, media_type="image/png")[1]
    jpeg = web.retrieve_instance_rendered(*uids, params={"quality": "80"})
    assert jpeg == grpc_client.rendered(*uids, quality=80)[1]
    frame = web.retrieve_instance_frames_rendered(*uids, frame_numbers=[1])
    assert frame == grpc_client.rendered(*uids)[1]


def test_compressed_frames_as_image_media_types(
    stored: list[pydicom.Dataset], web: DICOMwebClient, grpc_client: Client
) -> None:
    j2k = _read("examples_jpeg2k.dcm")  # stored as JPEG 2000 lossless
    uids = (j2k.StudyInstanceUID, j2k.SeriesInstanceUID, j2k.SOPInstanceUID)
    got = web.retrieve_instance_frames(*uids, frame_numbers=[1], media_types=("image/jp2",))
    assert got == [grpc_client.frames(*uids, [1])[0].data]


def test_delete_instance_series_study(
    stored: list[pydicom.Dataset], web: DICOMwebClient, grpc_client: Client
) -> None:
    """Last in the module: it deletes what the other tests read."""
    mr = _read("dicomdirtests/98892003/MR2/4950")
    study, series, sop = mr.StudyInstanceUID, mr.SeriesInstanceUID, mr.SOPInstanceUID
    web.delete_instance(study, series, sop)
    with pytest.raises(DicomRpcError) as missing:
        grpc_client.metadata(study, series, sop)
    assert missing.value.reason == "RESOURCE_NOT_FOUND"
    web.delete_series(study, series)
    assert not grpc_client.search_series(study=study, match={"SeriesInstanceUID": series}).datasets
    web.delete_study(study)
    assert web.search_for_studies(search_filters={"StudyInstanceUID": study}) == []
    with pytest.raises(DicomRpcError):
        grpc_client.metadata(study)
