"""A real archive in a temporary folder, filled with varied instances and workitems.

The query harnesses search it (a real LMDB index, the same scans as the server); the HTTP
harness serves it. Values are chosen so that every kind of match term has something to find:
person names with accents and several words, dates and times of each precision, numbers of each
VR (extended query tags of FL, FD, SS, SL, DS, IS, TM, AS, PN and a private tag), sequences.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from dicomrpc.datasets import from_json
from dicomrpc_server.archive import Archive
from dicomrpc_server.config import Settings
from dicomrpc_server.query.extended import RequestedTag
from dicomrpc_server.store.ingest import InstanceResult, StoreStream
from tests import dicomgen, upsgen

UID_ROOT = "1.2.826.0.1.3680043.10.543.77"
STUDY = f"{UID_ROOT}.1"
SERIES = f"{UID_ROOT}.1.1"
SOP = f"{UID_ROOT}.1.1.1"
WORKITEM = f"{UID_ROOT}.9.1"
PRIVATE_CREATOR = "FUZZ CREATOR"

EXTENDED_TAGS = (
    RequestedTag("ExaminedBodyThickness", level=3),  # FL
    RequestedTag("XAAcquisitionFrameRate", level=3),  # FD
    RequestedTag("TagAngleSecondAxis", level=3),  # SS
    RequestedTag("ReferencePixelX0", level=3),  # SL
    RequestedTag("PatientWeight"),  # DS, study
    RequestedTag("StageNumber", level=3),  # IS
    RequestedTag("AcquisitionTime", level=2),  # TM
    RequestedTag("PatientAge"),  # AS, study
    RequestedTag("PerformingPhysicianName", level=2),  # PN
    RequestedTag("00091010", vr="LO", private_creator=PRIVATE_CREATOR, level=3),
)


def _instance(study: str, series: str, sop: str, number: int, **values: Any) -> bytes:
    """A generated CT with ``values`` (keywords) set, as Part 10 bytes."""
    ds = dcmread(io.BytesIO(dicomgen.ct_instance(study, series, sop, rows=2, columns=2)))
    ds.InstanceNumber = number
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    block = ds.private_block(0x0009, PRIVATE_CREATOR, create=True)
    block.add_new(0x10, "LO", f"private {number}")
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def instances() -> list[bytes]:
    """The instances the archive holds: two studies, three series."""
    request = Dataset()
    request.AccessionNumber = "ACC-7"
    request.RequestedProcedureID = "RP1"
    common = {
        "ExaminedBodyThickness": 12.5,
        "XAAcquisitionFrameRate": 25.0,
        "TagAngleSecondAxis": -3,
        "ReferencePixelX0": -70000,
        "PatientWeight": "71.5",
        "StageNumber": "2",
        "AcquisitionTime": "101530.25",
        "PatientAge": "052Y",
        "PerformingPhysicianName": "Śmith^Bob",
    }
    return [
        _instance(
            STUDY,
            SERIES,
            SOP,
            1,
            PatientName="Müller^José Maria",
            StudyDate="20200229",
            StudyTime="0930",
            ReferencedRequestSequence=[request],
            **common,
        ),
        _instance(STUDY, SERIES, f"{SOP}.2", 2, PatientName="Müller^José Maria", **common),
        _instance(STUDY, f"{SERIES}.2", f"{SOP}.3", 3, PatientName="Müller^José Maria"),
        _instance(
            f"{UID_ROOT}.2",
            f"{UID_ROOT}.2.1",
            f"{UID_ROOT}.2.1.1",
            1,
            PatientName="van der Berg^Ann",
            PatientID="P-2",
            StudyDate="19991231",
            StudyTime="235959.999999",
            AcquisitionDateTime="20200101101010.5",
            ExaminedBodyThickness=-0.0,
        ),
    ]


def workitems() -> list[tuple[str, dict[str, Any]]]:
    """The workitems the archive holds, by UID."""
    return [
        (WORKITEM, upsgen.workitem()),
        (
            f"{UID_ROOT}.9.2",
            upsgen.workitem(
                PatientName="van der Berg^Ann",
                PatientID="P-2",
                ScheduledProcedureStepPriority="HIGH",
                ScheduledProcedureStepStartDateTime="20240116",
                InputReadinessState="INCOMPLETE",
                ScheduledStationNameCodeSequence=[upsgen.code("ST2", "Station 2")],
                ReferencedRequestSequence=[
                    upsgen.dataset(
                        StudyInstanceUID=STUDY,
                        AccessionNumber="ACC-7",
                        IssuerOfAccessionNumberSequence=None,
                        RequestedProcedureID="RP1",
                        RequestedProcedureDescription=None,
                        RequestedProcedureCodeSequence=None,
                    )
                ],
            ),
        ),
        (f"{UID_ROOT}.9.3", upsgen.workitem(ProcedureStepLabel="Ünïcode label *?")),
    ]


async def store(archive: Archive, datas: list[bytes]) -> list[InstanceResult]:
    """Store instances, each in a request of its own; return their results."""
    results = []
    for data in datas:
        ingest = archive.store.begin(StoreStream())
        ingest.write(data)
        results.append(await ingest.finish())
    return results


async def fill(archive: Archive) -> None:
    """Store the instances, create the workitems, add the extended query tags."""
    for result in await store(archive, instances()):
        assert result.failure is None, result.failure
    for uid, workitem in workitems():
        await archive.workitems.create(from_json(workitem), uid)
    _, operation = await archive.query_tags.add(list(EXTENDED_TAGS))
    while not archive.query_tags.status(operation).done:
        await asyncio.sleep(0.01)


class TempArchive:
    """An :class:`Archive` in a temporary folder, filled by :meth:`fill`."""

    def __init__(self, **settings: Any) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="fuzz-archive-"))
        settings.setdefault("lmdb_map_size", 256 * 1024 * 1024)
        self.settings = Settings(data_dir=self.folder / "data", **settings)
        self.archive = Archive(self.settings)

    def fill(self) -> None:
        """Store the instances, create the workitems, add the extended query tags."""
        asyncio.run(fill(self.archive))

    def close(self) -> None:
        """Close the archive and remove its folder."""
        self.archive.close()
        shutil.rmtree(self.folder, ignore_errors=True)
