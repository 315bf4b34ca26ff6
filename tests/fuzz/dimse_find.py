"""Harness: a C-FIND identifier, from its bytes to the pending responses' identifiers.

The input is the model (Patient or Study Root) and the identifier's bytes, decoded as
pynetdicom decodes it (implicit VR little endian, every element read). An identifier pydicom
cannot decode is answered 0xC000 before the archive's code sees it, and skipped here. The rest
goes through what the C-FIND handler runs (:mod:`dicomrpc_server.dimse.identifiers`) on a real
archive: the level, the match terms, the search, and each response, which must encode as
pynetdicom sends it. Expected: responses, or a ``ServiceError`` (0xA900). A bug: any other
exception, a hang, or a response that cannot be encoded.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable

import atheris
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import decode, encode

from dicomrpc_server.dimse.find import FIND_LEVELS
from dicomrpc_server.dimse.identifiers import find_results, level_of, read_query, response
from dicomrpc_server.errors import ServiceError
from tests.fuzz.archive import SERIES, STUDY, TempArchive
from tests.fuzz.bugs import CRASH, Bug
from tests.fuzz.seeds import FdpSeed

MAX_RESULTS = 50
_archive: TempArchive | None = None


def _identifier(level: str, **keys: object) -> bytes:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    encoded = encode(ds, True, True)
    assert encoded is not None
    return encoded


def seeds() -> dict[str, bytes]:
    item = Dataset()
    item.AccessionNumber = "ACC-7"
    identifiers = {
        "study": _identifier("STUDY", StudyInstanceUID="", PatientName="M*", StudyDate=""),
        "patient": _identifier("PATIENT", PatientID="", NumberOfPatientRelatedStudies=""),
        "series": _identifier("SERIES", StudyInstanceUID=STUDY, Modality="CT", SeriesNumber=""),
        "image": _identifier(
            "IMAGE", StudyInstanceUID=STUDY, SeriesInstanceUID=SERIES, SOPInstanceUID=""
        ),
        "range": _identifier("STUDY", StudyDate="20200101-", StudyTime="0930-1015"),
        "uids": _identifier("STUDY", StudyInstanceUID=[STUDY, "1.2.3"]),
        "sequence": _identifier("STUDY", ReferencedRequestSequence=Sequence([item])),
        "charset": _identifier("STUDY", SpecificCharacterSet="ISO_IR 192", PatientName="Mü*"),
    }
    return {
        name: FdpSeed().integer(number % 2, 0, 1).data(data).build()
        for number, (name, data) in enumerate(identifiers.items())
    }


def setup() -> None:
    global _archive
    _archive = TempArchive()
    _archive.fill()


def teardown() -> None:
    if _archive is not None:
        _archive.close()


def _read_all(ds: Dataset) -> None:
    for element in ds:
        if element.VR == "SQ":
            for item in element.value or ():
                _read_all(item)


def _decoded(data: bytes) -> Dataset | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = decode(io.BytesIO(data), True, True)
            _read_all(ds)
        except Exception:
            return None
    return ds


def TestOneInput(data: bytes) -> None:
    if _archive is None:
        setup()
    assert _archive is not None
    core = _archive.archive.search
    fdp = atheris.FuzzedDataProvider(data)
    patient_root = bool(fdp.ConsumeIntInRange(0, 1))
    identifier = _decoded(fdp.ConsumeBytes(fdp.remaining_bytes()))
    if identifier is None:
        return
    try:
        level = level_of(identifier, patient_root, FIND_LEVELS)
        query = read_query(identifier, level, core)
        answers = _first(find_results(core, query))
    except ServiceError:
        return
    for found in answers:
        out = response(query, found, "FUZZ")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            encoded = encode(out, True, True)
        if encoded is None:
            raise Bug(CRASH, "dimse_find: a response pynetdicom cannot encode", repr(out))


def _first(results: Iterable[Dataset]) -> list[Dataset]:
    out = []
    for found in results:
        out.append(found)
        if len(out) == MAX_RESULTS:
            break
    return out
