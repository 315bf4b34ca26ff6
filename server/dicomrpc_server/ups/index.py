"""The workitem matching keys of UPS-RS, their secondary-index terms, and match terms.

Workitem terms live in the index's ``terms`` sub-database under :attr:`Level.WORKITEM`, keyed
by workitem UID, and are matched by the same :class:`~dicomrpc_server.query.engine.TermMatcher`
as studies, series and instances: one set of matching rules (PN folding and fuzzy words,
wildcards, date-time ranges, UID lists, exact matching inside sequences).

An event filter is matched by that same matcher over the terms the workitem had right after
the event (:class:`TermSet`), so a filter means the same in a search and in a subscription.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable, Mapping

from pydicom.datadict import dictionary_VR, tag_for_keyword

from dicomrpc.v1 import dataset_pb2
from dicomrpc_server.dicom.attributes import IndexedAttribute, Level, NestedAttribute
from dicomrpc_server.errors import invalid_argument
from dicomrpc_server.query.engine import MatchTerm, TermMatcher, check_term
from dicomrpc_server.query.terms import value_terms
from dicomrpc_server.storage.index_records import attribute_values


def _attribute(keyword: str) -> IndexedAttribute:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return IndexedAttribute(keyword, tag, dictionary_VR(tag), Level.WORKITEM, True)


MATCHING_KEYS: list[IndexedAttribute] = [
    _attribute(keyword)
    for keyword in (
        "SOPInstanceUID",
        "ProcedureStepState",
        "InputReadinessState",
        "ScheduledProcedureStepPriority",
        "ScheduledProcedureStepStartDateTime",
        "ExpectedCompletionDateTime",
        "ScheduledProcedureStepModificationDateTime",
        "ProcedureStepLabel",
        "WorklistLabel",
        "PatientName",
        "PatientID",
        "StudyInstanceUID",
    )
]

_SEQUENCE_LEAVES = {
    "ScheduledStationNameCodeSequence": ["CodeValue"],
    "ScheduledStationClassCodeSequence": ["CodeValue"],
    "ScheduledStationGeographicLocationCodeSequence": ["CodeValue"],
    "ScheduledWorkitemCodeSequence": ["CodeValue"],
    "ReferencedRequestSequence": ["AccessionNumber", "RequestedProcedureID"],
}
NESTED_KEYS: list[NestedAttribute] = [
    NestedAttribute(_attribute(sequence), _attribute(leaf))
    for sequence, leaves in _SEQUENCE_LEAVES.items()
    for leaf in leaves
]

_BY_NAME: dict[str, IndexedAttribute] = {}
for _key in MATCHING_KEYS:
    _BY_NAME[_key.keyword] = _key
    _BY_NAME[_key.hex_tag] = _key
_NESTED_BY_NAME: dict[str, NestedAttribute] = {}
for _nested in NESTED_KEYS:
    _NESTED_BY_NAME[_nested.path] = _nested
    _NESTED_BY_NAME[f"{_nested.sequence.hex_tag}.{_nested.leaf.hex_tag}"] = _nested

# What a search returns by default: the matching keys, their sequences, the SOP Class UID.
DEFAULT_RETURNED: frozenset[str] = frozenset(
    [a.hex_tag for a in MATCHING_KEYS]
    + [n.sequence.hex_tag for n in NESTED_KEYS]
    + ["00080016", "00404041"]
)


# (hex tag, tag, VR) of each key, and (sequence hex tag, leaf hex tag, leaf tag, VR, term
# prefix) of each path: computed once, as terms are computed for every change.
_KEY_TAGS = [(a.hex_tag, a.tag, a.vr) for a in MATCHING_KEYS]
_PATH_TAGS = [
    (n.sequence.hex_tag, n.leaf.hex_tag, n.leaf.tag, n.leaf.vr, n.term_kind) for n in NESTED_KEYS
]


# The attributes whose values make index terms: the keys, and the sequences of the paths.
INDEXED_TAGS: frozenset[str] = frozenset(
    [h for h, _, _ in _KEY_TAGS] + [sequence for sequence, *_ in _PATH_TAGS]
)


def workitem_terms(
    dataset: dataset_pb2.Dataset, only: frozenset[str] | set[str] = INDEXED_TAGS
) -> set[tuple[int, bytes]]:
    """The secondary-index entries of a workitem: (tag, term) of each matching key value.

    ``only`` restricts them to the entries of some of :data:`INDEXED_TAGS` (those a change
    touched, say).
    """
    attributes = dataset.attributes
    out: set[tuple[int, bytes]] = set()
    for hex_tag, tag, vr in _KEY_TAGS:
        if hex_tag not in only:
            continue
        attribute = attributes.get(hex_tag)
        if attribute is not None:
            out.update((tag, term) for term in _terms(vr, attribute))
    for sequence_tag, leaf_tag, tag, vr, kind in _PATH_TAGS:
        if sequence_tag not in only:
            continue
        sequence = attributes.get(sequence_tag)
        if sequence is None:
            continue
        for item in sequence.sequence.items:
            leaf = item.attributes.get(leaf_tag)
            if leaf is not None:
                out.update((tag, kind + term) for term in _terms(vr, leaf))
    return out


def _terms(vr: str, attribute: dataset_pb2.Attribute) -> list[bytes]:
    try:
        return value_terms(vr, attribute_values(attribute))
    except ValueError:  # a malformed number is kept, but cannot be found by value
        return []


def match_terms(match: Mapping[str, str]) -> list[MatchTerm]:
    """Resolve match keys (keyword, tag or ``Sequence.Leaf`` path) to terms; "" matches all."""
    out = []
    for name, value in match.items():
        if "." in name:
            nested = _NESTED_BY_NAME.get(name)
            if nested is None:
                raise invalid_argument(name, "is not a workitem matching key path")
            out.append(check_term(name, MatchTerm(nested.leaf, value, nested.term_kind)))
            continue
        attribute = _BY_NAME.get(name) or _BY_NAME.get(name.upper())
        if attribute is None:
            known = ", ".join(a.keyword for a in MATCHING_KEYS)
            raise invalid_argument(name, f"is not a workitem matching key ({known}, or paths)")
        out.append(check_term(name, MatchTerm(attribute, value)))
    return [t for t in out if t.value != ""]


def is_matching_key(name: str) -> bool:
    """Whether ``name`` (tag or ``Sequence.Leaf`` path of tags) is a workitem matching key.

    A DIMSE identifier names every key it returns; those that are not matching keys are
    return keys only (PS3.4 C.2.2.1.2), as a QIDO-RS ``includefield`` is.
    """
    return name in _NESTED_BY_NAME if "." in name else name in _BY_NAME


def returned_tags(terms: Iterable[MatchTerm], include: Iterable[str]) -> set[str] | None:
    """Tags a search returns (``None``: every attribute), from the defaults and ``include``."""
    tags = set(DEFAULT_RETURNED)
    for name in include:
        if name.lower() == "all":
            return None
        tag = _tag_of(name)
        if tag is None:
            raise invalid_argument("include_fields", f"{name!r} is not a known attribute")
        tags.add(tag)
    tags.update(t.attribute.hex_tag for t in terms if not t.kind)
    return tags


def _tag_of(name: str) -> str | None:
    if len(name) == 8:
        try:
            return f"{int(name, 16):08X}"
        except ValueError:
            pass
    tag = tag_for_keyword(name)
    return None if tag is None else f"{tag:08X}"


class TermSet:
    """The index terms of one workitem, scanned as :meth:`LmdbIndex.scan_terms` scans.

    This lets :class:`TermMatcher` test one workitem, as an event filter needs, with exactly the
    rules a search uses.
    """

    def __init__(self, uid: bytes, terms: Iterable[tuple[int, bytes]]) -> None:
        self._uid = uid
        self._sorted = sorted(struct.pack(">I", tag) + term for tag, term in terms)

    def scan(
        self, level: Level, tag: int, start: bytes, stop: bytes | None = None, prefix: bytes = b""
    ) -> list[tuple[bytes, bytes]]:
        """(term, workitem UID) pairs of ``tag`` from ``start``, as the index scan gives them."""
        base = struct.pack(">I", tag)
        out = []
        for key in self._sorted[bisect.bisect_left(self._sorted, base + start) :]:
            if not key.startswith(base):
                break
            term = key[len(base) :]
            if (stop is not None and term >= stop) or not term.startswith(prefix):
                break
            out.append((term, self._uid))
        return out

    def matches(self, terms: list[MatchTerm], fuzzy: bool) -> bool:
        """Whether every term matches this workitem."""
        matcher = TermMatcher(self.scan)
        return all(matcher.match(term, fuzzy) for term in terms)


def encode_terms(terms: Iterable[tuple[int, bytes]]) -> bytes:
    """Terms as bytes: for each, the tag, the term's length, the term."""
    return b"".join(struct.pack(">IH", tag, len(term)) + term for tag, term in sorted(terms))


def decode_terms(data: bytes) -> list[tuple[int, bytes]]:
    """The terms :func:`encode_terms` wrote."""
    out = []
    offset = 0
    while offset < len(data):
        tag, length = struct.unpack_from(">IH", data, offset)
        offset += 6
        out.append((tag, data[offset : offset + length]))
        offset += length
    return out
