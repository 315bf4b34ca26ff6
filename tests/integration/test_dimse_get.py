"""C-GET driven by dcmtk's getscu, compared with what the gRPC retrieve returns.

Instances come back on the requester's own association: as stored when it accepts the stored
transfer syntax, transcoded by the retrieve core when it does not (to explicit little endian
here), and listed as failed sub-operations when neither is possible.
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
from pydicom.filereader import read_preamble
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_role, evt

from dicomrpc import Client
from dicomrpc.datasets import to_pydicom
from tests import dcmtk
from tests.conftest import RunningServer, start_server

DATA = Path(pydicom.data.__file__).parent / "test_files"
STUDY_FILES = sorted((DATA / "dicomdirtests" / "77654033").glob("*/*"))
J2K_LOSSLESS = DATA / "MR_small_jp2klossless.dcm"
JPEG_EXTENDED = DATA / "JPGExtended.dcm"  # 12-bit JPEG: no installed codec decodes it
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"


def _read(data: bytes | Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(io.BytesIO(data) if isinstance(data, bytes) else data)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_server(tmp_path_factory.mktemp("dimse_get") / "data", dimse_port=0)
    with Client(server.target) as client:
        result = client.store([*STUDY_FILES, J2K_LOSSLESS, JPEG_EXTENDED])
        assert result.status == "all_stored", [r.failure_message for r in result.instances]
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(archive: RunningServer) -> Iterator[Client]:
    with Client(archive.target) as c:
        yield c


def getscu(
    archive: RunningServer, out: Path, keys: dict[str, str], *options: str
) -> tuple[dict[str, Dataset], list[int], str]:
    """The instances getscu wrote (by SOP Instance UID), the statuses, and its output."""
    out.mkdir(exist_ok=True)
    args = ["-d", "-S", "-od", str(out), *options]
    for key, value in keys.items():
        args += ["-k", f"{key}={value}"]
    result = dcmtk.run("getscu", *args, *dcmtk.peer(archive.dimse_port))
    written = {}
    for path in out.iterdir():
        ds = _read(path)
        written[str(ds.SOPInstanceUID)] = ds
    return written, dcmtk.statuses(result.stdout, "C-GET RSP"), result.stdout


def _data_set_bytes(part10: bytes) -> bytes:
    """The bytes after the File Meta Information (each writer writes its own)."""
    ds = _read(part10)
    fp = io.BytesIO(part10)
    read_preamble(fp, False)
    fp.seek(132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength))
    return fp.read()


def test_a_study_comes_back_as_the_grpc_retrieve_returns_it(
    archive: RunningServer, client: Client, tmp_path: Path
) -> None:
    dcmtk.require_dcmtk()
    study = str(_read(STUDY_FILES[0]).StudyInstanceUID)
    got, statuses, output = getscu(
        archive, tmp_path, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study}
    )
    expected = client.retrieve_study(study)
    assert len(expected) > 1
    assert sorted(got) == sorted(i.sop_instance_uid for i in expected), output
    # One pending response per instance, counting down, then success.
    assert statuses == [0xFF00] * len(expected) + [0x0000]
    assert f"Number of Completed Suboperations : {len(expected)}" in output
    for instance in expected:
        written = tmp_path / f"{_modality(instance.sop_class_uid)}.{instance.sop_instance_uid}"
        assert written.read_bytes()[128:132] == b"DICM"
        assert _data_set_bytes(written.read_bytes()) == _data_set_bytes(instance.data)
        mine = got[instance.sop_instance_uid]
        assert mine.file_meta.TransferSyntaxUID == instance.transfer_syntax_uid
        assert mine == _read(instance.data)


def _modality(sop_class: str) -> str:
    return {"1.2.840.10008.5.1.4.1.1.1": "CR", "1.2.840.10008.5.1.4.1.1.2": "CT"}.get(sop_class, "")


def test_series_and_image_levels(archive: RunningServer, client: Client, tmp_path: Path) -> None:
    dcmtk.require_dcmtk()
    first = _read(STUDY_FILES[0])
    study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    keys = {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": study}
    got, statuses, _ = getscu(archive, tmp_path / "series", {**keys, "SeriesInstanceUID": series})
    expected = client.retrieve_series(study, series)
    assert sorted(got) == sorted(i.sop_instance_uid for i in expected)
    assert statuses[-1] == 0x0000
    sop = str(first.SOPInstanceUID)
    keys = {**keys, "QueryRetrieveLevel": "IMAGE", "SeriesInstanceUID": series}
    got, statuses, _ = getscu(archive, tmp_path / "image", {**keys, "SOPInstanceUID": sop})
    assert list(got) == [sop] and statuses == [0xFF00, 0x0000]
    # Nothing matches: success, and no sub-operation.
    got, statuses, _ = getscu(
        archive, tmp_path / "none", {**keys, "SOPInstanceUID": "1.2.3.4.5.6.7"}
    )
    assert got == {} and statuses == [0x0000]


def test_a_syntax_the_requester_accepts_is_sent_as_stored(
    archive: RunningServer, client: Client, tmp_path: Path
) -> None:
    dcmtk.require_dcmtk()
    stored = _read(J2K_LOSSLESS)
    keys = {
        "QueryRetrieveLevel": "IMAGE",
        "StudyInstanceUID": str(stored.StudyInstanceUID),
        "SeriesInstanceUID": str(stored.SeriesInstanceUID),
        "SOPInstanceUID": str(stored.SOPInstanceUID),
    }
    got, statuses, _ = getscu(archive, tmp_path / "as-stored", keys, "+xv")
    (mine,) = got.values()
    assert statuses[-1] == 0x0000
    assert mine.file_meta.TransferSyntaxUID == stored.file_meta.TransferSyntaxUID
    assert mine.PixelData == stored.PixelData

    # getscu's default accepts uncompressed syntaxes only: the retrieve core transcodes.
    got, statuses, _ = getscu(archive, tmp_path / "transcoded", keys)
    (mine,) = got.values()
    assert statuses[-1] == 0x0000
    assert mine.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    reference = client.retrieve_instance(
        str(stored.StudyInstanceUID),
        str(stored.SeriesInstanceUID),
        str(stored.SOPInstanceUID),
        transfer_syntax=ExplicitVRLittleEndian,
    )
    assert mine.PixelData == _read(reference.data).PixelData
    assert (mine.pixel_array == stored.pixel_array).all()


def test_an_instance_no_accepted_syntax_can_carry_is_a_failed_sub_operation(
    archive: RunningServer, tmp_path: Path
) -> None:
    dcmtk.require_dcmtk()
    stored = _read(JPEG_EXTENDED)
    keys = {
        "QueryRetrieveLevel": "SERIES",
        "StudyInstanceUID": str(stored.StudyInstanceUID),
        "SeriesInstanceUID": str(stored.SeriesInstanceUID),
    }
    got, statuses, output = getscu(archive, tmp_path, keys)
    assert got == {}
    assert statuses[-1] == 0xA702  # every sub-operation failed (PS3.4 C.4.3.1.4)
    assert "Number of Failed Suboperations    : 1" in output
    # getscu does not read the identifier of a failed response: pynetdicom does, to see the
    # Failed SOP Instance UID List.
    ae = AE(ae_title="GETTER")
    ae.add_requested_context(STUDY_ROOT_GET)
    ae.add_requested_context(stored.SOPClassUID, ExplicitVRLittleEndian)
    role = build_role(stored.SOPClassUID, scp_role=True)
    assoc = ae.associate(
        "127.0.0.1",
        archive.dimse_port,
        ae_title=dcmtk.AE_TITLE,
        ext_neg=[role],
        evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)],
    )
    assert assoc.is_established
    try:
        identifier = Dataset()
        for keyword, value in keys.items():
            setattr(identifier, keyword, value)
        responses = list(assoc.send_c_get(identifier, STUDY_ROOT_GET))
    finally:
        assoc.release()
    final, failed = responses[-1]
    assert final.Status == 0xA702 and final.NumberOfFailedSuboperations == 1
    assert failed.FailedSOPInstanceUIDList == stored.SOPInstanceUID


def test_patient_level_retrieves_every_study_of_the_patient(
    archive: RunningServer, client: Client, tmp_path: Path
) -> None:
    dcmtk.require_dcmtk()
    patient = str(_read(STUDY_FILES[0]).PatientID)
    out = tmp_path / "patient"
    out.mkdir()
    result = dcmtk.run(
        "getscu",
        *("-P", "-od", str(out), "-k", "QueryRetrieveLevel=PATIENT", "-k", f"PatientID={patient}"),
        *dcmtk.peer(archive.dimse_port),
    )
    studies = {
        str(ds.StudyInstanceUID)
        for ds in map(to_pydicom, client.search_studies(PatientID=patient).datasets)
    }
    expected = {i.sop_instance_uid for study in studies for i in client.retrieve_study(study)}
    assert len(studies) > 1 and len(expected) == len(STUDY_FILES), result.stdout
    assert {str(_read(p).SOPInstanceUID) for p in out.iterdir()} == expected
