"""Modality Worklist C-FIND, driven by dcmtk's ``findscu -W``, answered from the workitems.

The workitems are created over gRPC: two SCHEDULED (a CT and an MR step), and two that are no
longer scheduled (one claimed, one canceled), which the worklist must never show. Each query
checks which items come back and that each worklist key carries the workitem attribute it is
mapped to (dimse/worklist.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE

from dicomrpc import Client
from tests import dcmtk
from tests.conftest import RunningServer, start_server
from tests.integration.test_dimse_find import findscu
from tests.integration.test_workitems import LOCK
from tests.upsgen import code, dataset, workitem

MWL = "1.2.840.10008.5.1.4.31"
CT_STUDY = "1.2.826.0.1.3680043.8.498.71"
MR_STUDY = "1.2.826.0.1.3680043.8.498.72"
SPS = "ScheduledProcedureStepSequence[0]"


def step(
    modality: str,
    station: str,
    start: str,
    accession: str,
    study: str,
    patient: tuple[str, str],
    label: str,
) -> dict[str, Any]:
    """A workitem scheduled on a modality's station, for one requested procedure."""
    request = dataset(
        StudyInstanceUID=study,
        AccessionNumber=accession,
        IssuerOfAccessionNumberSequence=None,
        RequestedProcedureID=f"RP-{accession}",
        RequestedProcedureDescription=f"{modality} requested",
        RequestedProcedureCodeSequence=None,
    )
    return workitem(
        PatientName=patient[0],
        PatientID=patient[1],
        PatientSex="F",
        ProcedureStepLabel=label,
        StudyInstanceUID=study,
        ScheduledProcedureStepStartDateTime=start,
        ScheduledStationNameCodeSequence=[code(station, f"{station} station", "99LOCAL")],
        ScheduledStationClassCodeSequence=[code(modality, f"{modality} scanner", "DCM")],
        ScheduledStationGeographicLocationCodeSequence=[code("ROOM3", "Room 3", "99LOCAL")],
        ScheduledWorkitemCodeSequence=[code("P1", f"{modality} protocol", "99LOCAL")],
        ReferencedRequestSequence=[request],
    )


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    dcmtk.require_dcmtk()
    server = start_server(tmp_path_factory.mktemp("dimse_mwl") / "data", dimse_port=0)
    with Client(server.target) as client:
        ct = ("Doe^Jane", "MWL-1")
        mr = ("Roe^Richard", "MWL-2")
        client.workitems.create(
            step("CT", "CT01", "20240115093000", "ACC-1", CT_STUDY, ct, "CT chest"), "1.2.3.1"
        )
        client.workitems.create(
            step("MR", "MR01", "20240116140000", "ACC-2", MR_STUDY, mr, "MR head"), "1.2.3.2"
        )
        claimed = client.workitems.create(
            step("CT", "CT01", "20240115100000", "ACC-3", CT_STUDY, ct, "claimed"), "1.2.3.3"
        ).workitem_uid
        client.workitems.claim(claimed, LOCK)
        canceled = client.workitems.create(
            step("CT", "CT01", "20240115110000", "ACC-4", CT_STUDY, ct, "canceled"), "1.2.3.4"
        ).workitem_uid
        client.workitems.request_cancel(canceled)
    yield server
    server.stop()


RETURN_KEYS = {
    "PatientName": "",
    "PatientID": "",
    "PatientSex": "",
    "AccessionNumber": "",
    "RequestedProcedureID": "",
    "RequestedProcedureDescription": "",
    "StudyInstanceUID": "",
    f"{SPS}.Modality": "",
    f"{SPS}.ScheduledStationAETitle": "",
    f"{SPS}.ScheduledStationName": "",
    f"{SPS}.ScheduledProcedureStepLocation": "",
    f"{SPS}.ScheduledProcedureStepStartDate": "",
    f"{SPS}.ScheduledProcedureStepStartTime": "",
    f"{SPS}.ScheduledProcedureStepDescription": "",
    f"{SPS}.ScheduledProcedureStepStatus": "",
    f"{SPS}.ScheduledPerformingPhysicianName": "",
    f"{SPS}.ScheduledProtocolCodeSequence": "",
}


def worklist(archive: RunningServer, out: Path, **keys: str) -> list[Dataset]:
    """The worklist items ``findscu -W`` receives for these matching keys (and RETURN_KEYS)."""
    wanted = dict(RETURN_KEYS)
    for name, value in keys.items():
        wanted[name if name in RETURN_KEYS else f"{SPS}.{name}"] = value
    found, statuses = findscu(archive, out, "-W", wanted)
    assert statuses[-1] == 0x0000, statuses
    assert statuses[:-1] == [0xFF00] * len(found)
    return found


def accessions(found: list[Dataset]) -> list[str]:
    return sorted(str(ds.AccessionNumber) for ds in found)


def test_only_scheduled_workitems_with_every_key_mapped(
    archive: RunningServer, tmp_path: Path
) -> None:
    found = worklist(archive, tmp_path)
    assert accessions(found) == ["ACC-1", "ACC-2"]  # claimed and canceled are gone
    (ct,) = [ds for ds in found if ds.AccessionNumber == "ACC-1"]
    assert str(ct.PatientName) == "Doe^Jane"
    assert ct.PatientID == "MWL-1"
    assert ct.PatientSex == "F"
    assert ct.RequestedProcedureID == "RP-ACC-1"
    assert ct.RequestedProcedureDescription == "CT requested"
    assert ct.StudyInstanceUID == CT_STUDY
    (sps,) = ct.ScheduledProcedureStepSequence
    assert sps.Modality == "CT"
    assert sps.ScheduledStationAETitle == "CT01"
    assert sps.ScheduledStationName == "CT01 station"
    assert sps.ScheduledProcedureStepLocation == "ROOM3"
    assert sps.ScheduledProcedureStepStartDate == "20240115"
    assert sps.ScheduledProcedureStepStartTime == "093000"
    assert sps.ScheduledProcedureStepDescription == "CT chest"
    assert sps.ScheduledProcedureStepStatus == "SCHEDULED"
    assert sps.ScheduledPerformingPhysicianName in ("", None)  # asked for, unknown: empty
    assert [c.CodeValue for c in sps.ScheduledProtocolCodeSequence] == ["P1"]


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"Modality": "CT"}, ["ACC-1"]),
        ({"Modality": "MR"}, ["ACC-2"]),
        ({"ScheduledStationAETitle": "CT01"}, ["ACC-1"]),
        ({"ScheduledStationAETitle": "XR01"}, []),
        ({"ScheduledProcedureStepStartDate": "20240116"}, ["ACC-2"]),
        ({"ScheduledProcedureStepStartDate": "20240115-20240116"}, ["ACC-1", "ACC-2"]),
        (
            {
                "ScheduledProcedureStepStartDate": "20240115",
                "ScheduledProcedureStepStartTime": "0930",
            },
            ["ACC-1"],
        ),
        (
            {
                "ScheduledProcedureStepStartDate": "20240115",
                "ScheduledProcedureStepStartTime": "1000-1200",
            },
            [],
        ),
        ({"ScheduledProcedureStepLocation": "ROOM3"}, ["ACC-1", "ACC-2"]),
        ({"ScheduledProcedureStepStatus": "SCHEDULED"}, ["ACC-1", "ACC-2"]),
        ({"ScheduledProcedureStepStatus": "ARRIVED"}, []),
        ({"AccessionNumber": "ACC-2"}, ["ACC-2"]),
        ({"AccessionNumber": "ACC-3"}, []),  # claimed: no longer on the worklist
        ({"RequestedProcedureID": "RP-ACC-1"}, ["ACC-1"]),
        ({"PatientID": "MWL-1"}, ["ACC-1"]),
        ({"PatientName": "doe*"}, ["ACC-1"]),
        ({"StudyInstanceUID": MR_STUDY}, ["ACC-2"]),
    ],
)
def test_matching_keys(
    archive: RunningServer, tmp_path: Path, keys: dict[str, str], expected: list[str]
) -> None:
    assert accessions(worklist(archive, tmp_path, **keys)) == expected


def test_a_malformed_key_is_refused(archive: RunningServer) -> None:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(MWL)
    assoc = ae.associate("127.0.0.1", archive.dimse_port, ae_title="DICOMRPC")
    assert assoc.is_established
    try:
        with warnings.catch_warnings():  # pydicom remarks on the date range too
            warnings.simplefilter("ignore")
            identifier = Dataset()
            item = Dataset()
            item.ScheduledProcedureStepStartDate = "2024-01-15-2024"
            identifier.ScheduledProcedureStepSequence = [item]
            statuses = [int(s.Status) for s, _ in assoc.send_c_find(identifier, MWL)]
    finally:
        assoc.release()
    assert statuses == [0xA900]
