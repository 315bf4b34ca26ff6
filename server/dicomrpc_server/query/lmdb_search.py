"""The LMDB search backend: QIDO matching (PS3.4 C.2.2.2) as range scans over index terms.

Every match term becomes ordered range scans over one attribute's index terms (exact values,
prefixes for wildcards, ranges for dates and times, word prefixes for fuzzy names); the primary
keys found are lifted to the level searched and intersected, smallest first. Only a search with
no term at all walks the records of its level (within its scope). Results are in primary key
order, and a page's cursor is the key of its last result.
"""

from __future__ import annotations

from collections.abc import Callable

from dicomrpc.v1 import dataset_pb2
from dicomrpc_server.dicom.attributes import Level
from dicomrpc_server.query.backend import BackendPage, SearchPlan
from dicomrpc_server.query.engine import SCAN_CAP, MatchTerm, TermMatcher
from dicomrpc_server.storage import keys, records_pb2
from dicomrpc_server.storage.lmdb_index import LmdbIndex

_RECORDS: dict[Level, Callable[[bytes], object]] = {
    Level.STUDY: records_pb2.StudyRecord.FromString,
    Level.SERIES: records_pb2.SeriesRecord.FromString,
    Level.INSTANCE: records_pb2.InstanceRecord.FromString,
}


class LmdbSearch:
    """The :class:`~.backend.SearchBackend` of the LMDB index."""

    def __init__(self, index: LmdbIndex) -> None:
        self.index = index
        self.matcher = TermMatcher(index.scan_terms)

    def search(self, plan: SearchPlan) -> BackendPage:
        """The page of ``plan``: matches in key order from ``plan.after``."""
        level = plan.level
        scope = _scope(level, plan.study_uid, plan.series_uid)
        if plan.terms:
            found = self._intersect(list(plan.terms), level, plan.fuzzy)
            primary_keys = sorted(pk for pk in found if pk.startswith(scope))
        else:
            primary_keys = self.index.record_keys(level, scope)
        if plan.after:
            primary_keys = [pk for pk in primary_keys if pk > plan.after]
        primary_keys = primary_keys[plan.offset :]
        page, rest = primary_keys[: plan.size], primary_keys[plan.size :]
        results = self._datasets(level, page, set(plan.returned), scoped=bool(scope))
        return BackendPage(results, page[-1] if rest else b"")

    def _intersect(self, terms: list[MatchTerm], level: Level, fuzzy: bool) -> set[bytes]:
        """Keys of the searched level that every term matches, the most selective first.

        Ranges, wildcards and fuzzy names are scanned whole. A term matched by value is scanned
        only up to the size of the smallest set found so far: one with more entries (a common
        Modality, say) is instead checked key by key on the candidates, so that its cost grows
        with the answer rather than with the archive.
        """
        found: set[bytes] | None = None
        by_value: list[tuple[MatchTerm, list[bytes]]] = []
        for term in terms:
            exact = self.matcher.exact_terms(term, fuzzy)
            if exact is None:
                lifted = self._lift(self.matcher.match(term, fuzzy), term.attribute.level, level)
                found = lifted if found is None else found & lifted
            else:
                by_value.append((term, exact))
            if found is not None and not found:
                return found  # nothing can match any more: the other terms need no scan
        deferred: list[tuple[MatchTerm, list[bytes]]] = []
        for term, exact in by_value:
            if found is not None and not found:
                return found
            cap = len(found) if found is not None else SCAN_CAP
            entries = self._entries_upto(term, exact, cap)
            if entries is None:
                deferred.append((term, exact))
                continue
            lifted = self._lift(entries, term.attribute.level, level)
            found = lifted if found is None else found & lifted
        if found is None:  # every term has more entries than the cap: take the first whole
            term, exact = deferred.pop(0)
            entries = self._entries_upto(term, exact, None)
            assert entries is not None
            found = self._lift(entries, term.attribute.level, level)
        for term, exact in deferred:
            attribute = term.attribute
            found = self.index.having_terms(attribute.level, attribute.tag, exact, found)
        return found

    def _entries_upto(
        self, term: MatchTerm, exact: list[bytes], cap: int | None
    ) -> set[bytes] | None:
        """The keys having one of ``exact``, or None when there are more than ``cap``."""
        attribute = term.attribute
        out: set[bytes] = set()
        for value in exact:
            limit = None if cap is None else cap + 1 - len(out)
            found = self.index.scan_terms(
                attribute.level, attribute.tag, value, value + keys.SEP, limit=limit
            )
            out.update(pk for _, pk in found)
            if cap is not None and len(out) > cap:
                return None
        return out

    def _lift(self, found: set[bytes], source: Level, target: Level) -> set[bytes]:
        """Keys of the searched level under the records an attribute's level matched."""
        if source == target:
            return found
        lifted: set[bytes] = set()
        for pk in found:
            lifted.update(self.index.record_keys(target, keys.child_prefix(pk)))
        return lifted

    # -- results ---------------------------------------------------------------------------

    def _datasets(
        self, level: Level, page: list[bytes], returned: set[str], scoped: bool
    ) -> list[dataset_pb2.Dataset]:
        """The results of a page: each record's returned attributes, with its parents'.

        The records of the page and of their parents are read in one read transaction per
        level, and each parent once for all its children on the page.
        """
        split = [pk.split(keys.SEP) for pk in page]
        chain = [Level.STUDY, Level.SERIES, Level.INSTANCE][: int(level)]
        parts: list[dict[bytes, dataset_pb2.Dataset]] = []
        for depth, part_level in enumerate(chain, start=1):
            wanted = sorted({keys.SEP.join(p[:depth]) for p in split})
            own = part_level == level or not scoped or part_level != Level.STUDY
            found: dict[bytes, dataset_pb2.Dataset] = {}
            for key, raw in self.index.record_map(part_level, wanted).items():
                record = _RECORDS[part_level](raw)
                piece = dataset_pb2.Dataset()
                for tag, attribute in record.attributes.attributes.items():  # type: ignore[attr-defined]
                    if tag in returned and (own or tag == "0020000D"):
                        piece.attributes[tag].CopyFrom(attribute)
                _counts(piece, part_level, record, level)
                found[key] = piece
            parts.append(found)
        results = []
        for p in split:
            out = dataset_pb2.Dataset()
            for depth, found in enumerate(parts, start=1):
                part = found.get(keys.SEP.join(p[:depth]))
                if part is not None:
                    out.MergeFrom(part)
            results.append(out)
        return results


def _counts(out: dataset_pb2.Dataset, part_level: Level, record: object, level: Level) -> None:
    """The computed attributes: related counts and ModalitiesInStudy."""
    if part_level == Level.STUDY and level == Level.STUDY:
        study: records_pb2.StudyRecord = record  # type: ignore[assignment]
        _integer(out, "00201206", study.series_count)
        _integer(out, "00201208", study.instance_count)
        modalities = sorted(m for m, n in study.modality_counts.items() if n > 0)
        if modalities:
            out.attributes["00080061"].vr = "CS"
            out.attributes["00080061"].strings.values.extend(modalities)
    if part_level == Level.SERIES and level == Level.SERIES:
        series: records_pb2.SeriesRecord = record  # type: ignore[assignment]
        _integer(out, "00201209", series.instance_count)


def _integer(out: dataset_pb2.Dataset, tag: str, value: int) -> None:
    out.attributes[tag].vr = "IS"
    out.attributes[tag].numbers.values.append(float(value))
    out.attributes[tag].numbers.integral_indexes.append(0)


def _scope(level: Level, study: str, series: str) -> bytes:
    """The key prefix of a search's scope (the core has checked the UIDs and their levels)."""
    if series:
        return keys.child_prefix(keys.series_key(study, series))
    if study and level == Level.STUDY:
        return keys.study_key(study)
    return keys.child_prefix(keys.study_key(study)) if study else b""
