"""C-MOVE driven by dcmtk's movescu, to a storescp started here and registered as a peer."""

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

from dicomrpc import Client
from tests import dcmtk
from tests.conftest import RunningServer, start_server

DATA = Path(pydicom.data.__file__).parent / "test_files"
STUDY_FILES = sorted((DATA / "dicomdirtests" / "98892001").glob("*/*"))
J2K_LOSSLESS = DATA / "MR_small_jp2klossless.dcm"


def _read(data: bytes | Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcmread(io.BytesIO(data) if isinstance(data, bytes) else data)


def _data_set_bytes(part10: bytes) -> bytes:
    """The bytes after the File Meta Information (each writer writes its own)."""
    ds = _read(part10)
    fp = io.BytesIO(part10)
    read_preamble(fp, False)
    fp.seek(132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength))
    return fp.read()


@pytest.fixture(scope="module")
def destination(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dcmtk.StoreScp]:
    dcmtk.require_dcmtk()
    # Bit-preserving: the files hold the data sets exactly as received.
    scp = dcmtk.StoreScp(tmp_path_factory.mktemp("destination"), "DEST", "+B")
    yield scp
    scp.stop()


@pytest.fixture(scope="module")
def archive(
    tmp_path_factory: pytest.TempPathFactory, destination: dcmtk.StoreScp
) -> Iterator[RunningServer]:
    server = start_server(
        tmp_path_factory.mktemp("dimse_move") / "data",
        dimse_port=0,
        dimse_peers=(destination.peer,),
    )
    with Client(server.target) as client:
        result = client.store([*STUDY_FILES, J2K_LOSSLESS])
        assert result.status == "all_stored", [r.failure_message for r in result.instances]
    yield server
    server.stop()


def movescu(archive: RunningServer, to: str, keys: dict[str, str]) -> tuple[list[int], str]:
    args = ["-d", "-S", "-aem", to]
    for key, value in keys.items():
        args += ["-k", f"{key}={value}"]
    result = dcmtk.run("movescu", *args, *dcmtk.peer(archive.dimse_port))
    return dcmtk.statuses(result.stdout, "C-MOVE RSP"), result.stdout


def test_a_study_arrives_at_the_destination_as_the_grpc_retrieve_returns_it(
    archive: RunningServer, destination: dcmtk.StoreScp
) -> None:
    study = str(_read(STUDY_FILES[0]).StudyInstanceUID)
    statuses, output = movescu(
        archive, "DEST", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study}
    )
    with Client(archive.target) as client:
        expected = client.retrieve_study(study)
    assert len(expected) > 1
    assert statuses == [0xFF00] * len(expected) + [0x0000], output
    received = {str(_read(p).SOPInstanceUID): p for p in destination.folder.iterdir()}
    for instance in expected:
        path = received[instance.sop_instance_uid]
        assert _data_set_bytes(path.read_bytes()) == _data_set_bytes(instance.data)


def test_the_destination_gets_a_syntax_it_accepts(
    archive: RunningServer, destination: dcmtk.StoreScp
) -> None:
    stored = _read(J2K_LOSSLESS)
    keys = {
        "QueryRetrieveLevel": "IMAGE",
        "StudyInstanceUID": str(stored.StudyInstanceUID),
        "SeriesInstanceUID": str(stored.SeriesInstanceUID),
        "SOPInstanceUID": str(stored.SOPInstanceUID),
    }
    statuses, _ = movescu(archive, "DEST", keys)
    assert statuses == [0xFF00, 0x0000]
    (path,) = [
        p for p in destination.folder.iterdir() if _read(p).SOPInstanceUID == stored.SOPInstanceUID
    ]
    # storescp takes uncompressed syntaxes only by default: the retrieve core transcoded it.
    received = _read(path)
    assert received.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (received.pixel_array == stored.pixel_array).all()


def test_an_unregistered_destination_is_unknown(archive: RunningServer) -> None:
    study = str(_read(STUDY_FILES[0]).StudyInstanceUID)
    statuses, _ = movescu(
        archive, "NOBODY", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": study}
    )
    assert statuses == [0xA801]


def test_nothing_to_move_is_success_and_a_bad_identifier_fails(archive: RunningServer) -> None:
    keys = {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.3.4.5.6.7.8"}
    assert movescu(archive, "DEST", keys)[0] == [0x0000]
    keys = {"QueryRetrieveLevel": "WARD", "StudyInstanceUID": "1.2.3.4.5.6.7.8"}
    assert movescu(archive, "DEST", keys)[0][-1] == 0xA900
