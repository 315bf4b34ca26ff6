"""Harness: the workitem query parser (UPS-RS search and ``SubscribeWorkitems`` filters).

The input is read with ``FuzzedDataProvider``: whether to page, then the raw query string. It
goes through what the gateway runs (:func:`dicomweb.qido.query_parameters` into a
:class:`WorkitemQuery`) to :meth:`WorkitemCore.search` on a real archive, and its match keys
become an event filter (:func:`ups.index.match_terms`, :class:`ups.index.TermSet`), as a
subscription takes them. Expected: results, or a ``ServiceError`` naming the parameter. A bug:
any other exception, a hang, or a search and a filter that disagree on which workitems the
same match keys select (the module promises they mean the same).
"""

from __future__ import annotations

import atheris
from starlette.requests import Request

from dicomrpc.datasets import to_json
from dicomrpc_server.dicomweb.qido import query_parameters
from dicomrpc_server.errors import ServiceError
from dicomrpc_server.query.engine import MAX_LIMIT
from dicomrpc_server.ups.index import MATCHING_KEYS, NESTED_KEYS, TermSet, match_terms
from dicomrpc_server.ups.index import workitem_terms as terms_of
from dicomrpc_server.ups.service import WorkitemQuery
from tests.fuzz.archive import TempArchive, workitems
from tests.fuzz.bugs import CRASH, Bug
from tests.fuzz.seeds import QUERY_TOKENS, FdpSeed

SOP_INSTANCE_UID = "00080018"
QUERIES = {
    "empty": "",
    "state": "ProcedureStepState=SCHEDULED",
    "station": "ScheduledStationNameCodeSequence.CodeValue=ST1",
    "name-fuzzy": "PatientName=doe&fuzzymatching=true",
    "name-wildcard": "PatientName=D*%5EJ?hn&includefield=all",
    "dates": "ScheduledProcedureStepStartDateTime=20240115-20240116&limit=2&offset=1",
    "date-open": "ScheduledProcedureStepStartDateTime=-2024",
    "priority": "ScheduledProcedureStepPriority=HIGH&InputReadinessState=INCOMPLETE",
    "labels": "ProcedureStepLabel=*label*&WorklistLabel=Radiology",
    "request": "ReferencedRequestSequence.AccessionNumber=ACC-7&PatientID=P-2",
    "tags": "00741000=SCHEDULED&00100020=P-1&includefield=00741202,PatientBirthDate",
    "uid": "SOPInstanceUID=1.2.3,1.2.4&StudyInstanceUID=",
    "limit": "limit=1000&offset=0",
}
DICTIONARY = (
    *(k.keyword.encode() for k in MATCHING_KEYS),
    *(k.hex_tag.encode() for k in MATCHING_KEYS),
    *(k.path.encode() for k in NESTED_KEYS),
    b"SCHEDULED",
    b"IN PROGRESS",
    *QUERY_TOKENS,
    b"%C2%B2",
)

_archive: TempArchive | None = None
_terms: dict[str, set[tuple[int, bytes]]] = {}


def seeds() -> dict[str, bytes]:
    return {
        name: FdpSeed().integer(number % 2, 0, 1).data(query.encode()).build()
        for number, (name, query) in enumerate(QUERIES.items())
    }


def setup() -> None:
    global _archive
    _archive = TempArchive()
    _archive.fill()
    for uid, _ in workitems():
        dataset, _ = _archive.archive.workitems.retrieve(uid)
        _terms[uid] = terms_of(dataset)


def teardown() -> None:
    if _archive is not None:
        _archive.close()


def TestOneInput(data: bytes) -> None:
    if _archive is None:
        setup()
    assert _archive is not None
    core = _archive.archive.workitems
    fdp = atheris.FuzzedDataProvider(data)
    whole = fdp.ConsumeIntInRange(0, 1)
    query = fdp.ConsumeBytes(fdp.remaining_bytes())
    request = Request({"type": "http", "method": "GET", "query_string": query})
    try:
        params = query_parameters(request)
        search = WorkitemQuery(
            match=params.match,
            include_fields=params.include_fields,
            fuzzy=params.fuzzy,
            limit=MAX_LIMIT if whole else params.limit,
            offset=0 if whole else params.offset,
        )
        results = core.search(search)
        terms = match_terms(params.match)
    except ServiceError:
        return
    for dataset in results:
        to_json(dataset)
    if not whole:
        return
    found = {d.attributes[SOP_INSTANCE_UID].strings.values[0] for d in results}
    filtered = {
        uid
        for uid, stored in _terms.items()
        if TermSet(uid.encode(), stored).matches(terms, search.fuzzy)
    }
    if found != filtered:
        raise Bug(
            CRASH,
            "workitems: a search and an event filter with the same keys select different workitems",
            f"search: {sorted(found)}\nfilter: {sorted(filtered)}",
        )
