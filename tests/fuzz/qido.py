"""Harness: the QIDO query parser, from the query string to the index scans.

The input is read with ``FuzzedDataProvider``: the level, the scope (none, a stored study or
series, or text from the input as a path would carry it), whether the request comes as the
gRPC API sends it (with ``page_size`` and ``page_token``), then the raw query string. It goes
through what the gateway runs (:func:`dicomweb.qido.search_request`) into
:meth:`SearchCore.search` on a real archive, whose results are written as DICOM JSON.
Expected: a page, or a ``ServiceError`` naming the parameter (400 / 409). A bug: any other
exception (a 500), a hang, a page larger than the limit, or a ``next_page_token`` the search
then refuses.
"""

from __future__ import annotations

from dataclasses import replace

import atheris
from starlette.requests import Request

from dicomrpc.datasets import to_json
from dicomrpc.v1 import dataset_pb2
from dicomrpc_server.dicom.attributes import ALL_ATTRIBUTES, NESTED_ATTRIBUTES
from dicomrpc_server.dicomweb.qido import search_request
from dicomrpc_server.errors import ServiceError
from dicomrpc_server.query.engine import DEFAULT_LIMIT, SearchCore, SearchRequest
from tests.fuzz.archive import EXTENDED_TAGS, SERIES, STUDY, TempArchive
from tests.fuzz.bugs import CRASH, Bug
from tests.fuzz.seeds import QUERY_TOKENS, FdpSeed

LEVELS = ("study", "series", "instance", "patient")
MAX_SCOPE = 80
MAX_PAGE_SIZE = 1100

QUERIES = {
    "empty": "",
    "name-fuzzy": "PatientName=muller%20jose&fuzzymatching=true",
    "name-wildcard": "PatientName=M*ller%5EJos?*&limit=5&offset=1",
    "name-accent": "PatientName=M%C3%BCller%5EJos%C3%A9%20Maria",
    "date-range": "StudyDate=20200101-20201231&includefield=all",
    "date-open": "StudyDate=-2020&StudyTime=0930-1015",
    "date-single": "PatientBirthDate=19700101&StudyTime=09",
    "ids": "PatientID=PAT-1&Modality=CT&includefield=00081030,StudyDescription",
    "uid-list": f"StudyInstanceUID={STUDY},1.2.3%5C1.2.4",
    "tags": "0020000D=&00100020=P*&00080060=CT",
    "nested": "ReferencedRequestSequence.AccessionNumber=ACC-7",
    "nested-tags": "0040A370.00080050=ACC-7&RequestAttributesSequence.RequestedProcedureID=RP1",
    "datetime": "AcquisitionDateTime=2020-&ContentDate=20240102",
    "numbers": "InstanceNumber=1&SeriesNumber=1&limit=1000",
    "extended-fl": "ExaminedBodyThickness=12.5&XAAcquisitionFrameRate=25",
    "extended-ints": "TagAngleSecondAxis=-3&ReferencePixelX0=-70000&StageNumber=2",
    "extended-text": "PatientWeight=71.5&PatientAge=052Y&AcquisitionTime=1015-1016",
    "extended-pn": "PerformingPhysicianName=smith&fuzzymatching=true",
    "private": "00091010=private*",
    "modalities": "ModalitiesInStudy=CT&includefield=NumberOfStudyRelatedInstances",
    "class": "SOPClassUID=1.2.840.10008.5.1.4.1.1.2&includefield=all",
    "paging": "limit=2&offset=0",
}

DICTIONARY = (
    *(a.keyword.encode() for a in ALL_ATTRIBUTES),
    *(a.hex_tag.encode() for a in ALL_ATTRIBUTES),
    *(n.path.encode() for n in NESTED_ATTRIBUTES),
    *(t.tag.encode() for t in EXTENDED_TAGS),
    b"ModalitiesInStudy",
    *QUERY_TOKENS,
    b"%C3%A9",
    b"%FF",
    b"%2C",
)

_archive: TempArchive | None = None


def seeds() -> dict[str, bytes]:
    out = {}
    for number, (name, query) in enumerate(QUERIES.items()):
        seed = FdpSeed().integer(number % 3, 0, len(LEVELS) - 1).integer(number % 4, 0, 3)
        seed.integer(number % 2, 0, 1).integer(number % 5, 0, MAX_PAGE_SIZE)
        scope = f"{STUDY}/{SERIES}" if number % 4 == 3 else ""
        seed.integer(len(scope), 0, MAX_SCOPE).data(scope.encode())
        out[name] = seed.data(query.encode()).build()
    return out


def setup() -> None:
    global _archive
    _archive = TempArchive()
    _archive.fill()


def teardown() -> None:
    if _archive is not None:
        _archive.close()


def TestOneInput(data: bytes) -> None:
    if _archive is None:
        setup()
    assert _archive is not None
    core = _archive.archive.search
    fdp = atheris.FuzzedDataProvider(data)
    level = LEVELS[fdp.ConsumeIntInRange(0, len(LEVELS) - 1)]
    scope = fdp.ConsumeIntInRange(0, 3)
    as_grpc = fdp.ConsumeIntInRange(0, 1)
    page_size = fdp.ConsumeIntInRange(0, MAX_PAGE_SIZE)
    text = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, MAX_SCOPE)).decode("utf-8", "replace")
    query = fdp.ConsumeBytes(fdp.remaining_bytes())
    path_params = {}
    if scope in (1, 2):
        path_params["study"] = STUDY
    if scope == 2:
        path_params["series"] = SERIES
    if scope == 3:
        study, _, series = text.partition("/")
        path_params = {"study": study, "series": series} if series else {"study": study}
    request = Request(
        {"type": "http", "method": "GET", "query_string": query, "path_params": path_params}
    )
    try:
        search = search_request(request, level)
        if as_grpc:
            search = replace(search, page_size=page_size, page_token=text if scope == 0 else "")
        page = core.search(search)
    except ServiceError:
        return
    check(core, search, page.results, page.next_page_token)


def check(
    core: SearchCore, search: SearchRequest, results: list[dataset_pb2.Dataset], token: str
) -> None:
    """The page respects its size, writes as DICOM JSON, and its token is accepted."""
    if len(results) > (search.page_size or search.limit or DEFAULT_LIMIT):
        raise Bug(CRASH, "qido: a page holds more results than its limit")
    for dataset in results:
        to_json(dataset)
    if token:
        try:
            core.search(replace(search, page_token=token))
        except ServiceError as error:
            raise Bug(CRASH, "qido: the next page token is refused", error.message) from error
