"""The search backend role: a checked search in, one page of results out.

:class:`~.engine.SearchCore` decides what a search means and checks it; a backend only finds
the matches of a :class:`SearchPlan`, in a stable order, and reads what they return. The term
search (:mod:`.term_search`) plans range scans over index terms, and runs on any index that
is a :class:`TermStore`: the LMDB index and the PostgreSQL index both are, and are held to
the same search tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from dicomrpc.v1 import dataset_pb2
from dicomrpc_server.dicom.attributes import Level

if TYPE_CHECKING:
    from dicomrpc_server.query.engine import MatchTerm


@dataclass(frozen=True)
class SearchPlan:
    """A search the core has checked, as a backend answers it.

    Attributes
    ----------
    level
        The level searched.
    terms
        The match terms with a value, every one of which a result matches (keys with an
        empty value are only returned: universal matching, PS3.4 C.2.2.2.3).
    fuzzy
        Whether person names match fuzzily (word prefixes, without regard to case or accents).
    study_uid, series_uid
        The scope ("" for none): results under this study (and series) only.
    after
        Where the previous page stopped (a backend's own cursor, opaque to the core); empty
        from the start.
    offset
        Results skipped after ``after``.
    size
        The most results of the page.
    returned
        The tags each result carries (of its own record and its parents').
    """

    level: Level
    terms: tuple[MatchTerm, ...]
    fuzzy: bool
    study_uid: str
    series_uid: str
    after: bytes
    offset: int
    size: int
    returned: frozenset[str]


@dataclass(frozen=True)
class BackendPage:
    """One page of results, and where the next starts (empty when there is no next page)."""

    results: list[dataset_pb2.Dataset]
    cursor: bytes


class SearchBackend(Protocol):
    """Finds the matches of a checked search, one page at a time, in a stable order."""

    def search(self, plan: SearchPlan) -> BackendPage:
        """The page of ``plan``; INVALID_ARGUMENT (naming the attribute) for a malformed value."""


class TermStore(Protocol):
    """What the term search reads of an index: ordered term scans and records by key.

    Keys and terms are the LMDB index's bytes (:mod:`dicomrpc_server.storage.keys`): a
    record's key is its UIDs joined by NUL, and both are compared byte by byte. An index that
    returns the same pairs and keys in the same order answers every search alike.
    """

    def scan_terms(
        self,
        level: Level,
        tag: int,
        start: bytes,
        stop: bytes | None = None,
        prefix: bytes = b"",
        limit: int | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """(term, primary key) pairs of one attribute in (term NUL key) order, from ``start``.

        The scan ends before the first term that is ``>= stop`` or does not start with
        ``prefix``, or after ``limit`` pairs.
        """

    def distinct_terms(
        self,
        level: Level,
        tag: int,
        start: bytes,
        stop: bytes | None = None,
        prefix: bytes = b"",
        limit: int | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """Each distinct term :meth:`scan_terms` would return, once, with its lowest key.

        The terms of a date range, read in one request however many entries each has.
        """

    def term_entries_from(
        self, level: Level, tag: int, terms: list[bytes], start: bytes, limit: int
    ) -> list[list[bytes]]:
        """For each term, the keys having it that are ``>= start``, in order, at most ``limit``.

        A read positioned at a page's cursor on every term of a range, in one request.
        """

    def having_terms(
        self, level: Level, tag: int, terms: list[bytes], candidates: set[bytes]
    ) -> set[bytes]:
        """The candidates (keys of ``level`` or below) whose record at ``level`` has a term."""

    def record_keys(
        self, level: Level, prefix: bytes = b"", after: bytes = b"", limit: int | None = None
    ) -> list[bytes]:
        """Keys of a level's records starting with ``prefix``, above ``after``, in order."""

    def record_map(self, level: Level, primary_keys: list[bytes]) -> dict[bytes, bytes]:
        """The serialized records of a level by key (missing keys left out)."""
