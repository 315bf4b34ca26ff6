"""The search backend role: a checked search in, one page of results out.

:class:`~.engine.SearchCore` decides what a search means and checks it; a backend only finds
the matches of a :class:`SearchPlan`, in a stable order, and reads what they return. The LMDB
backend (:mod:`.lmdb_search`) plans range scans over index terms; an SQL index answers the
same plan in its own way. Both are held to the same search tests.
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
