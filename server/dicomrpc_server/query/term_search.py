"""The term search: QIDO matching (PS3.4 C.2.2.2) as range scans over index terms.

It reads only a :class:`~.backend.TermStore` (ordered term scans, records by key), so the
same planner runs on the LMDB index and on the PostgreSQL index.

Every match term becomes ordered range scans over one attribute's index terms (exact values,
prefixes for wildcards, ranges for dates and times, word prefixes for fuzzy names); the primary
keys found are lifted to the level searched and intersected, smallest first. Results are in
primary key order, and a page's cursor is the key of its last result.

A search whose matches are many is paged without collecting them: with no term, the records
of the level are read from the cursor; when every term is matched by value (an exact string,
a UID list, a number, a single date ...) and each has more entries than
:data:`~.engine.SCAN_CAP`, one term's entries, which are in primary key order for each of its
values, are read from the cursor, lifted to the level searched and checked against the other
terms, until the page is full. The first page and the hundredth then cost the same.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator

from dicomrpc.v1 import dataset_pb2
from dicomrpc_server.dicom.attributes import Level
from dicomrpc_server.query.backend import BackendPage, SearchPlan, TermStore
from dicomrpc_server.query.engine import SCAN_CAP, MatchTerm, TermMatcher
from dicomrpc_server.storage import keys, records_pb2

# Keys read per step when a search is streamed.
STREAM_BATCH = 256
_RECORDS: dict[Level, Callable[[bytes], object]] = {
    Level.STUDY: records_pb2.StudyRecord.FromString,
    Level.SERIES: records_pb2.SeriesRecord.FromString,
    Level.INSTANCE: records_pb2.InstanceRecord.FromString,
}


class TermSearch:
    """The :class:`~.backend.SearchBackend` over an index's terms (LMDB's, PostgreSQL's)."""

    def __init__(self, index: TermStore) -> None:
        self.index = index
        self.matcher = TermMatcher(index.scan_terms)

    def search(self, plan: SearchPlan) -> BackendPage:
        """The page of ``plan``: matches in key order from ``plan.after``."""
        level = plan.level
        scope = _scope(level, plan.study_uid, plan.series_uid)
        wanted = plan.offset + plan.size + 1  # one more tells whether a next page exists
        streamed = self._stream(plan, scope, wanted)
        if streamed is not None:
            primary_keys = streamed[plan.offset :]
        else:
            found = self._intersect(list(plan.terms), level, plan.fuzzy)
            primary_keys = sorted(pk for pk in found if pk.startswith(scope))
            if plan.after:
                primary_keys = [pk for pk in primary_keys if pk > plan.after]
            primary_keys = primary_keys[plan.offset :]
        page, rest = primary_keys[: plan.size], primary_keys[plan.size :]
        results = self._datasets(level, page, set(plan.returned), scoped=bool(scope))
        return BackendPage(results, page[-1] if rest else b"")

    def _stream(self, plan: SearchPlan, scope: bytes, wanted: int) -> list[bytes] | None:
        """Up to ``wanted`` matches after the cursor, read in key order; None: not streamable.

        Streamed: a search without terms; and an unscoped one whose terms are all matched by
        value and each have more than SCAN_CAP entries (fewer, and the set intersection costs
        at most that many lookups).
        """
        if not plan.terms:
            return self.index.record_keys(plan.level, scope, plan.after, wanted)
        if scope:
            return None
        by_value: list[tuple[MatchTerm, list[bytes]]] = []
        for term in plan.terms:
            exact = self.matcher.exact_terms(term, plan.fuzzy)
            if exact is None or self._entries_upto(term, exact, SCAN_CAP) is not None:
                return None
            by_value.append((term, exact))
        # The deepest term drives (its entries lift to the fewest records per entry).
        by_value.sort(key=lambda pair: -int(pair[0].attribute.level))
        (driver, values), others = by_value[0], by_value[1:]
        out: list[bytes] = []
        batch: list[bytes] = []
        for pk in self._driven(driver, values, plan.level, plan.after):
            batch.append(pk)
            if len(batch) >= STREAM_BATCH:
                out.extend(self._having(others, batch))
                batch = []
                if len(out) >= wanted:
                    break
        else:
            out.extend(self._having(others, batch))
        return out[:wanted]

    def _driven(
        self, term: MatchTerm, values: list[bytes], level: Level, after: bytes
    ) -> Iterator[bytes]:
        """The keys of ``level`` whose record (or parent) has one of ``values``, above ``after``.

        Each value's entries are in key order; several values (a UID list) are merged. A
        parent's children follow it in key order, so lifting keeps the order.
        """
        attribute = term.attribute
        depth = int(attribute.level)
        start = keys.SEP.join(after.split(keys.SEP)[:depth]) if after else b""
        streams = [self._entries_from(attribute.level, attribute.tag, v, start) for v in values]
        owners = heapq.merge(*streams) if len(streams) > 1 else streams[0]
        previous = None
        for owner in owners:
            if owner == previous:  # one record holding two of the values
                continue
            previous = owner
            if attribute.level == level:
                if owner > after:
                    yield owner
                continue
            prefix = keys.child_prefix(owner)
            below = after if after.startswith(prefix) else b""
            while True:
                children = self.index.record_keys(level, prefix, below, STREAM_BATCH)
                for child in children:
                    if child > after:
                        yield child
                if len(children) < STREAM_BATCH:
                    break
                below = children[-1]

    def _entries_from(self, level: Level, tag: int, value: bytes, start: bytes) -> Iterator[bytes]:
        """The keys having index term ``value``, from ``start`` on, in key order, in batches."""
        stop = value + keys.SEP
        position = start
        seen = b""  # the last key of a batch, which the next batch starts with again
        while True:
            found = self.index.scan_terms(
                level, tag, value + keys.SEP + position, stop, limit=STREAM_BATCH
            )
            for _, pk in found:
                if pk != seen:
                    yield pk
            if len(found) < STREAM_BATCH:
                return
            position = seen = found[-1][1]

    def _having(
        self, terms: list[tuple[MatchTerm, list[bytes]]], batch: list[bytes]
    ) -> list[bytes]:
        """The keys of ``batch`` (in order) that every one of ``terms`` matches."""
        kept = set(batch)
        for term, exact in terms:
            if not kept:
                break
            attribute = term.attribute
            kept = self.index.having_terms(attribute.level, attribute.tag, exact, kept)
        return [pk for pk in batch if pk in kept]

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
