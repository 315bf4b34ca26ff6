"""SearchCore: what a QIDO search (PS3.4 C.2.2.2) means, checked once for every backend.

The core reads a request's match keys (standard attributes, sequence paths, extended query
tags), checks each value against its VR's matching syntax, the scope, the limits and the page
token, and works out what each result returns; a search backend (:mod:`.backend`) finds the
matches. :class:`TermMatcher` holds the matching rules as range scans over index terms, for
every store that keeps terms in key order (the LMDB instance index, the workitems).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from dicomrpc.v1 import dataset_pb2
from dicomrpc_server.dicom.attributes import (
    ALL_ATTRIBUTES,
    NESTED_ATTRIBUTES,
    IndexedAttribute,
    Level,
    NestedAttribute,
)
from dicomrpc_server.dicom.uids import check_request_uid
from dicomrpc_server.errors import Code, ServiceError, invalid_argument
from dicomrpc_server.query.backend import SearchBackend, SearchPlan
from dicomrpc_server.query.terms import (
    EXACT,
    WORD,
    decimal_term,
    fold_person_name,
    integer_term,
    pad_time,
    parse_integer,
)
from dicomrpc_server.storage import keys, records_pb2
from dicomrpc_server.storage.index_records import MODALITIES_IN_STUDY
from dicomrpc_server.storage.protocols import QueryTagRecords

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# Entries a term matched by value is scanned for before it is checked key by key instead.
SCAN_CAP = 1000
_WORDS = re.compile(r"[\^=\s,\-.]+")
# Dates and times are ASCII digits (PS3.5 Table 6.2-1); re.ASCII keeps other scripts' out of \d.
# Full dates, or (in ranges) a year or a month: "-2020" ends with 2020, "202003-" starts in March.
_DATE = re.compile(r"\d{4}(?:\d{2}(?:\d{2})?)?", re.ASCII)
_TIME = re.compile(r"\d{2}(?::?\d{2}(?::?\d{2}(?:\.\d{1,6})?)?)?", re.ASCII)
# A date-time from the year down to fractions of a second (offsets are not matched).
_DATETIME = re.compile(
    r"\d{4}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?)?)?", re.ASCII
)
_CHECKS = {"DA": _DATE, "TM": _TIME, "DT": _DATETIME}
# An ISO 8601 date (2020-01-31), which DICOM writes 20200131: a dash there reads as a range.
_DASHED_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_FORMATS = {"DA": "YYYYMMDD", "TM": "HHMMSS", "DT": "YYYYMMDDHHMMSS"}

MODALITIES = IndexedAttribute("ModalitiesInStudy", MODALITIES_IN_STUDY, "CS", Level.STUDY, True)
_BY_NAME: dict[str, IndexedAttribute] = {}
for _attribute in [*ALL_ATTRIBUTES, MODALITIES]:
    _BY_NAME[_attribute.keyword] = _attribute
    _BY_NAME[_attribute.hex_tag] = _attribute
# Attributes the archive computes and returns at their level whatever is asked (the optional
# "Number of ... Related ..." return keys of the Query/Retrieve service, PS3.4 Annex C): an
# include field naming one asks for nothing more.
_COMPUTED = frozenset(
    {
        "00201206",
        "NumberOfStudyRelatedSeries",
        "00201208",
        "NumberOfStudyRelatedInstances",
        "00201209",
        "NumberOfSeriesRelatedInstances",
    }
)
_NESTED: dict[str, NestedAttribute] = {}
for _nested in NESTED_ATTRIBUTES:
    _NESTED[_nested.path] = _nested
    _NESTED[f"{_nested.sequence.hex_tag}.{_nested.leaf.hex_tag}"] = _nested
_LEVELS = {"study": Level.STUDY, "series": Level.SERIES, "instance": Level.INSTANCE}


@dataclass(frozen=True)
class SearchRequest:
    """One QIDO search: the level, the match terms, what to return and which page."""

    level: str
    match: Mapping[str, str] = field(default_factory=dict)
    include_fields: Sequence[str] = ()
    fuzzy: bool = False
    limit: int = 0
    offset: int = 0
    page_size: int = 0
    page_token: str = ""
    study_uid: str = ""
    series_uid: str = ""


@dataclass(frozen=True)
class SearchPage:
    """One page of results, and the token of the next page ("" at the end)."""

    results: list[dataset_pb2.Dataset]
    next_page_token: str


@dataclass(frozen=True)
class MatchTerm:
    """One match term: an attribute and a value in DICOM matching syntax.

    ``kind`` is set for an attribute inside a sequence: the index term prefix of that path.
    """

    attribute: IndexedAttribute
    value: str
    kind: bytes = b""


Scan = Callable[..., list[tuple[bytes, bytes]]]


class TermMatcher:
    """The matching rules of PS3.4 C.2.2.2 as ordered range scans over index terms.

    ``scan`` is :meth:`LmdbIndex.scan_terms` (or anything with its signature and ordering):
    every kind of record that keeps index terms is matched by these same rules.
    """

    def __init__(self, scan: Scan) -> None:
        self.scan = scan

    def match(self, term: MatchTerm, fuzzy: bool) -> set[bytes]:
        """The primary keys of the records ``term`` matches."""
        return self._matches(term, fuzzy)

    def _entries(self, level: Level, tag: int, term: bytes) -> list[bytes]:
        return [pk for _, pk in self.scan(level, tag, term, term + keys.SEP)]

    def exact_terms(self, term: MatchTerm, fuzzy: bool) -> list[bytes] | None:
        """The index terms whose entries together are the match, when it matches by value.

        None for ranges, wildcards and fuzzy names, which are matched by scanning a range of
        terms. Raises INVALID_ARGUMENT, naming the attribute, for a malformed value.
        """
        attribute, value = term.attribute, term.value
        wildcard = "*" in value or "?" in value
        if term.kind:  # inside a sequence: exact matching only
            if wildcard:
                raise invalid_argument(attribute.keyword, "wildcards do not apply in sequences")
            return [term.kind + EXACT + value.strip().encode()]
        vr = attribute.vr
        if vr == "UI":
            if wildcard:
                raise invalid_argument(attribute.keyword, "wildcards do not apply to UIDs")
            return [EXACT + uid.encode() for uid in uid_list(value)]
        if vr == "DA" and _DASHED_DATE.fullmatch(value.strip()):
            raise invalid_argument(attribute.keyword, _dashed(value))
        if vr == "DA" and "-" not in value:
            if len(value) != 8 or not _DATE.fullmatch(value):
                raise invalid_argument(attribute.keyword, f"{value!r} is not YYYYMMDD")
            return [EXACT + value.encode()]
        if vr in ("DA", "TM", "DT"):
            return None
        try:
            if vr in ("IS", "US", "SS", "UL", "SL"):
                return [integer_term(parse_integer(value))]
            if vr in ("DS", "FL", "FD"):
                return [decimal_term(vr, value)]
        except ValueError as exc:
            raise invalid_argument(attribute.keyword, str(exc)) from None
        if vr == "PN":
            folded = fold_person_name(value)
            return None if fuzzy or wildcard else [EXACT + folded.encode()]
        return None if wildcard else [EXACT + value.strip().encode()]

    def _matches(self, term: MatchTerm, fuzzy: bool) -> set[bytes]:
        attribute, value = term.attribute, term.value
        level, tag, vr = attribute.level, attribute.tag, attribute.vr
        exact = self.exact_terms(term, fuzzy)
        if exact is not None:
            return {pk for t in exact for pk in self._entries(level, tag, t)}
        if vr in ("DA", "TM", "DT"):
            return self._range(attribute, value)
        if vr == "PN":
            folded = fold_person_name(value)
            if fuzzy:
                words = [w for w in _WORDS.split(folded) if w]
                sets = [self._word_matches(level, tag, w) for w in words]
                return set.intersection(*sets) if sets else set()
            return self._pattern(attribute, folded)
        return self._pattern(attribute, value.strip())

    def _word_matches(self, level: Level, tag: int, word: str) -> set[bytes]:
        """Fuzzy matching of one word of a name: the records with a word that ``word`` begins.

        ``*`` and ``?`` in ``word`` match as in any value (``*ult`` begins "multi"): viewers such
        as OHIF send ``*text*`` with ``fuzzymatching=true``, and expect what the wildcards
        alone would find. Scanned through the word's literal prefix.
        """
        literal = re.split(r"[*?]", word, maxsplit=1)[0]
        start = WORD + literal.encode()
        found = self.scan(level, tag, start, prefix=start)
        if literal == word:
            return _pks(found)
        matches = wildcard_matcher(word if word.endswith("*") else word + "*")
        return {pk for term, pk in found if matches(term[len(WORD) :].decode())}

    def _pattern(self, attribute: IndexedAttribute, value: str) -> set[bytes]:
        """Wildcard matching, through the literal prefix of the pattern."""
        scan = self.scan
        literal = re.split(r"[*?]", value, maxsplit=1)[0]
        matches = wildcard_matcher(value)
        start = EXACT + literal.encode()
        found = scan(attribute.level, attribute.tag, start, prefix=start)
        return {pk for term, pk in found if matches(term[len(EXACT) :].decode())}

    def _range(self, attribute: IndexedAttribute, value: str) -> set[bytes]:
        """A date or time: one value, or an inclusive range with either end open."""
        start, stop, prefix = self.term_range(attribute, value)
        return _pks(self.scan(attribute.level, attribute.tag, start, stop, prefix))

    def term_range(
        self, attribute: IndexedAttribute, value: str
    ) -> tuple[bytes, bytes | None, bytes]:
        """The index terms a DA, TM or DT value matches, as ``scan``'s start, stop and prefix.

        Every term from ``start`` (below ``stop``, beginning with ``prefix``) is a match: a
        range is one ordered run of terms, which the term search either scans whole or reads
        term by term in key order. A single date is matched by value (see :meth:`exact_terms`).
        Raises INVALID_ARGUMENT, naming the attribute, for a malformed value.
        """
        check = _CHECKS[attribute.vr]

        def bound(text: str, end: bool = False) -> bytes:
            if not check.fullmatch(text):
                kind = _FORMATS[attribute.vr]
                raise invalid_argument(attribute.keyword, f"{value!r}: {text!r} is not {kind}")
            return (pad_time(text, end) if attribute.vr == "TM" else text).encode()

        if "-" not in value:
            start = EXACT + bound(value)
            if attribute.vr == "DT":  # a single date-time matches everything it is a prefix of
                return start, None, start
            # A single time stands for its whole minute, second, ...
            return start, EXACT + bound(value, end=True) + b"\xff", b""
        if value.count("-") != 1 or value == "-":
            if attribute.vr == "DA" and _DASHED_DATE.search(value):
                raise invalid_argument(attribute.keyword, _dashed(value))
            raise invalid_argument(attribute.keyword, f"{value!r} is not a range a-b, -b or a-")
        low, high = value.split("-")
        start = EXACT + (bound(low) if low else b"")
        # Inclusive: everything up to the end of the upper bound, a partial date or time included.
        stop = EXACT + bound(high, end=True) + b"\xff" if high else EXACT + b"\xff"
        return start, stop, b""


def _dashed(value: str) -> str:
    """What to write instead of a date with dashes (ISO 8601), which DICOM does not take."""
    return (
        f"{value!r}: DICOM dates have no dashes; write YYYYMMDD (20200131), and a range as "
        "20200101-20201231 (PS3.4 C.2.2.2.5)"
    )


def uid_list(value: str) -> list[str]:
    """The UIDs of a UI match value: one, or a list separated by ',' or '\\'."""
    return [u.strip() for u in re.split(r"[,\\]", value) if u.strip()]


def check_term(name: str, term: MatchTerm) -> MatchTerm:
    """Refuse a match value no index term can answer; ``name`` is the key as sent.

    Searches on studies, series, instances and workitems, and workitem subscription filters,
    all build their terms through here. A value holding NUL is refused: an index key ends its
    term with NUL (``storage/keys.py``), and no indexed value holds one. Each UID of a UI
    value's list must be one a request may name.
    """
    if "\x00" in term.value:
        raise invalid_argument(name, f"{term.value!r} holds a NUL character")
    if term.attribute.vr == "UI" and "*" not in term.value and "?" not in term.value:
        for uid in uid_list(term.value):
            check_request_uid(name, uid)
    return term


def wildcard_matcher(pattern: str) -> Callable[[str], bool]:
    """A test of whole values against a pattern with PS3.4 C.2.2.2.4 wildcards.

    ``*`` stands for any run of characters, ``?`` for any one character. The pieces between
    the stars are found in order, each at its leftmost place after the one before (which is
    where a match can always put it), the last one at the end: the cost grows with the
    pattern's length times the value's. A regular expression with one ``.*`` per ``*`` would
    backtrack instead, and a few dozen of them take hours on a short value.
    """
    texts = pattern.split("*")
    pieces = [
        re.compile("".join("." if c == "?" else re.escape(c) for c in t), re.DOTALL) for t in texts
    ]
    if len(pieces) == 1:
        return lambda value: pieces[0].fullmatch(value) is not None
    first, last, last_length = pieces[0], pieces[-1], len(texts[-1])
    middle = [piece for piece, text in zip(pieces[1:-1], texts[1:-1], strict=True) if text]

    def matches(value: str) -> bool:
        found = first.match(value)
        if found is None:
            return False
        at = found.end()
        for piece in middle:
            found = piece.search(value, at)
            if found is None:
                return False
            at = found.end()
        end = len(value) - last_length
        return end >= at and last.fullmatch(value, end) is not None

    return matches


class SearchCore:
    """Answers searches: checks a request and builds its terms, then asks the backend.

    What a search means (which attributes match at which level, the matching syntax of each
    VR, what is returned, paging) is decided here, once; a :class:`~.backend.SearchBackend`
    (the term search of :mod:`.term_search`, on the LMDB or the PostgreSQL index) finds the matches.

    Parameters
    ----------
    tags
        The extended query tags (what may be searched beyond the standard attributes).
    backend
        What answers a checked search with a page.
    """

    def __init__(self, tags: QueryTagRecords, backend: SearchBackend) -> None:
        self.tags = tags
        self.backend = backend

    def search(self, request: SearchRequest) -> SearchPage:
        """Run a search; raise INVALID_ARGUMENT naming the parameter when it is malformed."""
        level = _LEVELS.get(request.level)
        if level is None:
            raise invalid_argument("level", f"{request.level!r} is not study, series or instance")
        limit = _check_limit(request.limit, "limit")
        page_size = _check_limit(request.page_size, "page_size") if request.page_size else 0
        if request.offset < 0:
            raise invalid_argument("offset", f"{request.offset} is negative")
        extended = _Extended(self.tags.query_tags())
        terms = [_term(name, value, level, extended) for name, value in request.match.items()]
        _check_scope(level, request.study_uid, request.series_uid)
        plan = SearchPlan(
            level=level,
            terms=tuple(t for t in terms if t.value != ""),
            fuzzy=request.fuzzy,
            study_uid=request.study_uid,
            series_uid=request.series_uid,
            after=_decode_token(request.page_token) if request.page_token else b"",
            offset=request.offset,
            size=page_size or limit,
            returned=frozenset(_returned(level, terms, request.include_fields, extended)),
        )
        page = self.backend.search(plan)
        token = _encode_token(page.cursor) if page.cursor and page_size else ""
        return SearchPage(page.results, token)

    def matchable(self, name: str, level: str) -> bool:
        """Whether ``name`` (a keyword, tag or sequence path) may be a match term at ``level``.

        A search on any other attribute is refused (QIDO: 400); a C-FIND identifier names it
        as a return key instead, as an SCP does with a key it cannot match on (PS3.4
        C.4.1.2.2.2: optional keys).
        """
        try:
            _term(name, "", _LEVELS[level], _Extended(self.tags.query_tags()))
        except ServiceError:
            return False
        return True


class _Extended:
    """The extended query tags of one search, found by keyword or tag."""

    def __init__(self, tags: list[records_pb2.QueryTagRecord]) -> None:
        self.tags = tags
        self._by_name: dict[str, records_pb2.QueryTagRecord] = {}
        for tag in tags:
            self._by_name[tag.hex_tag] = tag
            if tag.keyword:
                self._by_name[tag.keyword] = tag

    def get(self, name: str) -> records_pb2.QueryTagRecord | None:
        return self._by_name.get(name) or self._by_name.get(name.upper())

    def attribute(self, tag: records_pb2.QueryTagRecord) -> IndexedAttribute:
        return IndexedAttribute(
            tag.keyword or tag.hex_tag, int(tag.hex_tag, 16), tag.vr, Level(tag.level), True
        )


def _term(name: str, value: str, level: Level, extended: _Extended) -> MatchTerm:
    if "." in name:
        nested = _NESTED.get(name) or _NESTED.get(name.upper())
        if nested is None:
            raise invalid_argument(name, "is not a searchable attribute path")
        if nested.leaf.level > level:
            raise invalid_argument(name, _deeper(nested.leaf.level))
        return check_term(name, MatchTerm(nested.leaf, value, nested.term_kind))
    tag = extended.get(name)
    if tag is not None and not tag.ready:
        raise ServiceError(
            Code.FAILED_PRECONDITION,
            "TAG_REINDEXING",
            f"{name} is an extended query tag still being re-indexed "
            f"(operation {tag.operation_id}): it is searchable once that operation is done",
            metadata={"tag": tag.hex_tag, "operation_id": tag.operation_id},
        )
    attribute = extended.attribute(tag) if tag else _BY_NAME.get(name) or _BY_NAME.get(name.upper())
    if attribute is None:
        raise invalid_argument(name, "is not a known searchable attribute")
    if not attribute.searchable:
        raise invalid_argument(
            name,
            "is returned but not searchable; to search it, add it as an extended query tag "
            "(ManagementService AddQueryTags, `dicomrpc query-tags add`)",
        )
    if attribute.level > level:
        raise invalid_argument(name, _deeper(attribute.level))
    return check_term(name, MatchTerm(attribute, value))


def _deeper(level: Level) -> str:
    """Why an attribute of a lower level is no match term here, and where it is one."""
    name = level.name.lower()
    article = "an" if name[0] in "aeiou" else "a"
    searched = {"study": "studies", "series": "series", "instance": "instances"}[name]
    return f"is {article} {name}-level attribute: search {searched} to match it"


def _returned(
    level: Level, terms: list[MatchTerm], include: Sequence[str], extended: _Extended
) -> set[str]:
    """Tags to return: the level's defaults, the match keys, and the included fields."""
    everything = "all" in (f.lower() for f in include)
    tags = {a.hex_tag for a in ALL_ATTRIBUTES if a.level <= level and (a.searchable or everything)}
    if everything:
        tags.update(t.hex_tag for t in extended.tags if t.level <= level)
    tags.update(t.attribute.hex_tag for t in terms if not t.kind)
    tags.update(
        n.sequence.hex_tag for n in NESTED_ATTRIBUTES for t in terms if t.kind == n.term_kind
    )
    for name in include:
        if name.lower() == "all" or name in _COMPUTED:
            continue
        tag = extended.get(name)
        attribute = extended.attribute(tag) if tag else _BY_NAME.get(name)
        if attribute is None:
            raise invalid_argument("include_fields", f"{name!r} is not a known attribute")
        tags.add(attribute.hex_tag)
    return tags


def _check_scope(level: Level, study: str, series: str) -> None:
    check_request_uid("study_instance_uid", study)
    check_request_uid("series_instance_uid", series)
    if series and not study:
        raise invalid_argument("series_instance_uid", "needs study_instance_uid")
    if series and level != Level.INSTANCE:
        raise invalid_argument("series_instance_uid", "scopes instance searches only")


def _check_limit(value: int, name: str) -> int:
    if value < 0 or value > MAX_LIMIT:
        raise invalid_argument(name, f"{value} is outside 0..{MAX_LIMIT}")
    return value or DEFAULT_LIMIT


def _pks(pairs: list[tuple[bytes, bytes]]) -> set[bytes]:
    return {pk for _, pk in pairs}


def _encode_token(cursor: bytes) -> str:
    return base64.urlsafe_b64encode(cursor).decode("ascii")


def _decode_token(token: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(token.encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise invalid_argument("page_token", "is not a token this server issued") from None
