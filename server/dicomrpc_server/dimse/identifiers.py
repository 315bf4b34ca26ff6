"""C-FIND identifiers (PS3.4 C.4.1) translated to search core requests, and results back.

An identifier is a data set whose elements are the keys: an element with a value is a
matching key, every element is a return key. The matching rules (single value, UID list,
wildcards, date and time ranges, sequence matching, person names without regard to case) are
the search core's, reached by naming each matching key by its tag (``Sequence.Leaf`` for a
key inside a sequence item), exactly as QIDO names them. What DIMSE adds is read here: the
Query/Retrieve level, universal matching (an empty value or ``*``), and the PATIENT level,
which the archive answers from its studies grouped by Patient ID.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from dicomrpc.datasets import to_pydicom
from dicomrpc.v1 import dataset_pb2
from dicomrpc_server.errors import invalid_argument
from dicomrpc_server.query.engine import MAX_LIMIT, SearchCore, SearchRequest

QUERY_RETRIEVE_LEVEL = 0x00080052
SPECIFIC_CHARACTER_SET = 0x00080005
RETRIEVE_AE_TITLE = 0x00080054
INSTANCE_AVAILABILITY = 0x00080056
PATIENT_ID = 0x00100020
STUDY_UID = 0x0020000D
PATIENT_STUDIES, PATIENT_SERIES, PATIENT_INSTANCES = 0x00201200, 0x00201202, 0x00201204
STUDY_SERIES, STUDY_INSTANCES, SERIES_INSTANCES = 0x00201206, 0x00201208, 0x00201209

# The search level of each Query/Retrieve level (PS3.4 C.6); PATIENT searches studies.
SEARCH_LEVELS = {"PATIENT": "study", "STUDY": "study", "SERIES": "series", "IMAGE": "instance"}
# The Patient IE keys (PS3.4 Table C.6-1): the only keys matched at the PATIENT level.
PATIENT_KEYS = frozenset(
    {0x00100010, PATIENT_ID, 0x00100021, 0x00100030, 0x00100040, 0x00101000, 0x00101002}
)
_NOT_KEYS = frozenset({QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET})
# The character set of responses holding text beyond ASCII: results are Unicode.
UTF8 = "ISO_IR 192"


@dataclass(frozen=True)
class FindQuery:
    """A C-FIND identifier read: the level, the matching keys, the return keys as sent."""

    level: str
    match: dict[str, str] = field(default_factory=dict)
    identifier: Dataset = field(default_factory=Dataset)


def level_of(identifier: Dataset, patient_root: bool, levels: tuple[str, ...]) -> str:
    """The Query/Retrieve Level (0008,0052) of an identifier, checked against the model.

    Raises
    ------
    ServiceError
        INVALID_ARGUMENT naming QueryRetrieveLevel when it is missing or not one of ``levels``
        (PATIENT only in the Patient Root model).
    """
    element = identifier.get(QUERY_RETRIEVE_LEVEL)
    level = str(element.value or "").strip().upper() if element is not None else ""
    allowed = levels if patient_root else tuple(v for v in levels if v != "PATIENT")
    if level not in allowed:
        raise invalid_argument(
            "QueryRetrieveLevel", f"{level!r} is not one of {', '.join(allowed)} in this model"
        )
    return level


def match_value(element: DataElement) -> str:
    """A key's value in the search core's matching syntax ("" for universal matching)."""
    value = element.value
    if value is None or value in ("", b""):
        return ""
    if isinstance(value, MultiValue):  # a UID list, or several values the core matches as one
        text = "\\".join(str(v) for v in value)
    elif isinstance(value, bytes):
        raise invalid_argument(element.keyword or _hex(element.tag), "binary values do not match")
    else:
        text = str(value)
    return "" if text.strip() in ("", "*") else text


def _hex(tag: BaseTag | int) -> str:
    return f"{int(tag):08X}"


def read_query(identifier: Dataset, level: str, core: SearchCore) -> FindQuery:
    """The search core's match terms of an identifier at ``level``.

    A key the core cannot match on at this level (an attribute it does not index, or one of
    a lower level) is a return key only.
    """
    search_level = SEARCH_LEVELS[level]
    match: dict[str, str] = {}
    for element in identifier:
        tag = int(element.tag)
        if tag in _NOT_KEYS or element.tag.group in (0x0000, 0x0002):
            continue
        if level == "PATIENT" and tag not in PATIENT_KEYS:
            continue
        if element.VR == "SQ":
            match.update(_sequence_terms(element, search_level, core))
            continue
        name = _hex(tag)
        if core.matchable(name, search_level) and (value := match_value(element)):
            match[name] = value
    return FindQuery(level, match, identifier)


def _sequence_terms(element: DataElement, level: str, core: SearchCore) -> dict[str, str]:
    """The ``Sequence.Leaf`` terms of a sequence key's item (PS3.4 C.2.2.2.6)."""
    items = element.value or []
    if len(items) != 1:
        return {}
    terms: dict[str, str] = {}
    for leaf in items[0]:
        if leaf.VR == "SQ":
            continue
        name = f"{_hex(element.tag)}.{_hex(leaf.tag)}"
        if core.matchable(name, level) and (value := match_value(leaf)):
            terms[name] = value
    return terms


def search_pages(core: SearchCore, level: str, match: dict[str, str]) -> Iterator[Dataset]:
    """Every result of a search, a page at a time, converted to pydicom data sets."""
    token = ""
    while True:
        page = core.search(
            SearchRequest(
                level=level,
                match=match,
                include_fields=("all",),
                page_size=MAX_LIMIT,
                page_token=token,
            )
        )
        for result in page.results:
            yield _dataset(result)
        token = page.next_page_token
        if not token:
            return


def _dataset(result: dataset_pb2.Dataset) -> Dataset:
    # pydicom remarks on stored values it finds unusual (a date written '1997.04.24'); they
    # were accepted at store, and are returned as stored.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return to_pydicom(result)


def find_results(core: SearchCore, query: FindQuery) -> Iterator[Dataset]:
    """The matches of a query, each the search core's result (PATIENT: one per Patient ID)."""
    search_level = SEARCH_LEVELS[query.level]
    if query.level != "PATIENT":
        yield from search_pages(core, search_level, query.match)
        return
    patients: dict[str, tuple[Dataset, list[int]]] = {}
    for study in search_pages(core, search_level, query.match):
        element = study.get(PATIENT_ID)
        patient_id = str(element.value or "") if element is not None else ""
        first, counts = patients.setdefault(patient_id, (study, [0, 0, 0]))
        counts[0] += 1
        counts[1] += _integer(study, STUDY_SERIES)
        counts[2] += _integer(study, STUDY_INSTANCES)
    for first, (studies, series, instances) in patients.values():
        out = Dataset()
        for tag in PATIENT_KEYS:
            if tag in first:
                out[tag] = first[tag]
        out.add_new(PATIENT_STUDIES, "IS", studies)
        out.add_new(PATIENT_SERIES, "IS", series)
        out.add_new(PATIENT_INSTANCES, "IS", instances)
        yield out


def _integer(ds: Dataset, tag: int) -> int:
    element = ds.get(tag)
    try:
        return int(element.value) if element is not None and element.value != "" else 0
    except (TypeError, ValueError):
        return 0


def response(query: FindQuery, found: Dataset, ae_title: str) -> Dataset:
    """The identifier of one pending response: every return key, filled from ``found``.

    A key the result does not hold is returned empty (zero length), as PS3.4 C.4.1.1.3.2
    asks of a key whose value the SCP does not know.
    """
    out = Dataset()
    for element in query.identifier:
        tag = int(element.tag)
        if element.tag.group in (0x0000, 0x0002) or tag == SPECIFIC_CHARACTER_SET:
            continue
        if tag == QUERY_RETRIEVE_LEVEL:
            out.add_new(tag, "CS", query.level)
        elif tag == RETRIEVE_AE_TITLE:
            out.add_new(tag, "AE", ae_title)
        elif tag == INSTANCE_AVAILABILITY:
            out.add_new(tag, "CS", "ONLINE")
        elif tag in found:
            out[tag] = _returned(element, found[tag])
        else:
            out.add_new(tag, element.VR, [] if element.VR == "SQ" else None)
    if _has_non_ascii(out):
        out.SpecificCharacterSet = UTF8
    return out


def _returned(requested: DataElement, stored: DataElement) -> DataElement:
    """A stored element as returned: a sequence's items keep only the keys asked for."""
    if stored.VR != "SQ" or requested.VR != "SQ" or not requested.value:
        return stored
    wanted = [int(e.tag) for e in requested.value[0]]
    if not wanted:
        return stored
    items = []
    for item in stored.value:
        kept = Dataset()
        for tag in wanted:
            if tag in item:
                kept[tag] = item[tag]
        items.append(kept)
    return DataElement(stored.tag, "SQ", Sequence(items))


def _has_non_ascii(ds: Dataset) -> bool:
    for element in ds:
        if element.VR == "SQ":
            if any(_has_non_ascii(item) for item in element.value or []):
                return True
        elif (isinstance(element.value, (str, MultiValue)) or element.VR == "PN") and not str(
            element.value
        ).isascii():
            return True
    return False
