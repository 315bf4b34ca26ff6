"""The term search: QIDO matching (PS3.4 C.2.2.2) as range scans over index terms.

It reads only a :class:`~.backend.TermStore` (ordered term scans, a range's distinct terms,
each term's keys from a cursor, records by key), so the same planner runs on the LMDB index
and on the PostgreSQL index.

Every match term becomes ordered range scans over one attribute's index terms (exact values,
prefixes for wildcards, ranges for dates and times, word prefixes for fuzzy names); the primary
keys found are lifted to the level searched and intersected, smallest first. Results are in
primary key order, and a page's cursor is the key of its last result.

Most searches are paged without collecting their matches. With no term, the records of the
level are read from the cursor. When every term is matched by index terms known before the
scan (an exact string, a UID list, a number, a single date, and a date or time range, whose
distinct terms are read first), each term is a stream of keys in primary key order: a term's
entries are in key order, several terms' (a UID list, the dates of a range) are merged, and a
parent's records are lifted to their children, which follow it in key order. The streams are
intersected from the cursor by seeking each to the highest key of the others (a leapfrog
join), so a rare term steers a common one by seeks, until the page is full. A page then reads
about what lies between the cursor and its last result: the first page and the hundredth cost
the same. Wildcards, fuzzy names, ranges over many sparsely used terms and scoped searches
with terms collect their matches (:meth:`TermSearch._intersect`).
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable

from dicomrpc.v1 import dataset_pb2
from dicomrpc_server.dicom.attributes import Level
from dicomrpc_server.query.backend import BackendPage, SearchPlan, TermStore
from dicomrpc_server.query.engine import SCAN_CAP, MatchTerm, TermMatcher
from dicomrpc_server.storage import keys, records_pb2

# Keys read per step when a search is streamed.
STREAM_BATCH = 256
# Keys first read of each term of a merged stream: a page of a range of 365 dates takes about a
# third of a key from each date, and four each leave few dates to read again one by one (each
# such read is a round trip to PostgreSQL).
MIN_BATCH = 4
# A date or time range is streamed term by term when it has at most this many distinct terms
# and, in its first RANGE_PROBE entries, at least MIN_RANGE_ENTRIES entries per term.
MAX_RANGE_TERMS = 4096
RANGE_PROBE = 256
MIN_RANGE_ENTRIES = 16
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
        if plan.study_uid and level == Level.STUDY:
            # A study's key is the prefix of every study whose UID begins with its UID
            # (1.2.3 of 1.2.34): the scope is that one study.
            primary_keys = [pk for pk in primary_keys if pk == scope]
        page, rest = primary_keys[: plan.size], primary_keys[plan.size :]
        results = self._datasets(level, page, set(plan.returned), scoped=bool(scope))
        return BackendPage(results, page[-1] if rest else b"")

    def _stream(self, plan: SearchPlan, scope: bytes, wanted: int) -> list[bytes] | None:
        """Up to ``wanted`` matches after the cursor, read in key order; None: not streamable.

        Streamed: a search without terms; and an unscoped one whose terms are all matched by
        index terms known before the scan: exact values (one or a UID list), and date and
        time ranges of at most :data:`MAX_RANGE_TERMS` distinct terms holding on average at
        least :data:`MIN_RANGE_ENTRIES` entries each (fewer, and scanning the range whole is
        cheaper than positioning a read on each of its terms). Wildcards and fuzzy names are
        matched by scanning their terms whole.
        """
        if not plan.terms:
            return self.index.record_keys(plan.level, scope, plan.after, wanted)
        if scope:
            return None
        streams: list[KeyStream] = []
        for term in plan.terms:
            stream = self._term_stream(term, plan.level, plan.fuzzy, wanted)
            if stream is None:
                return None
            streams.append(stream)
        # Cheap seeks first: one value before many, a term of the level searched before one
        # of a parent (whose records are lifted to their children).
        streams.sort(key=lambda stream: stream.cost)
        return _join(streams, plan.after + keys.SEP if plan.after else b"", wanted)

    def _term_stream(
        self, term: MatchTerm, level: Level, fuzzy: bool, wanted: int
    ) -> KeyStream | None:
        """The keys of ``level`` ``term`` matches, in key order; None when it is not streamed."""
        attribute = term.attribute
        values = self.matcher.exact_terms(term, fuzzy)
        if values is None:
            if attribute.vr not in ("DA", "TM", "DT"):
                return None
            values = self._range_values(term)
            if values is None:
                return None
        if not values:
            return _ListStream([])
        batch = max(MIN_BATCH, min(STREAM_BATCH, wanted // len(values) + 1))
        subs = [_TermStream(self.index, attribute.level, attribute.tag, v, batch) for v in values]
        owners = subs[0] if len(subs) == 1 else _MergedStream(subs)
        if attribute.level == level:
            return owners
        return _LiftedStream(self.index, owners, int(attribute.level), level)

    def _range_values(self, term: MatchTerm) -> list[bytes] | None:
        """The distinct index terms of a date or time range, in order.

        None when the range is better scanned whole: more than :data:`MAX_RANGE_TERMS` terms,
        or few entries per term (times are often all distinct). The first
        :data:`RANGE_PROBE` entries are read in one scan, the later terms in one more read.
        """
        attribute = term.attribute
        level, tag = attribute.level, attribute.tag
        start, stop, prefix = self.matcher.term_range(attribute, term.value)
        first = self.index.scan_terms(level, tag, start, stop, prefix, RANGE_PROBE)
        found = list(dict.fromkeys(value for value, _ in first))
        if len(first) < RANGE_PROBE:
            return found
        if len(first) < MIN_RANGE_ENTRIES * len(found):
            return None
        # ``term + 0x01`` sorts above every entry of the term (``term NUL key``).
        rest = self.index.distinct_terms(
            level, tag, first[-1][0] + b"\x01", stop, prefix, MAX_RANGE_TERMS + 1 - len(found)
        )
        found += [value for value, _ in rest]
        return found if len(found) <= MAX_RANGE_TERMS else None

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
        level, and each parent once for all its children on the page. A record's own data set
        becomes its result, the attributes not returned taken out, rather than a copy being
        built attribute by attribute: building the results is most of a streamed page's work.
        """
        split = [pk.split(keys.SEP) for pk in page]
        chain = [Level.STUDY, Level.SERIES, Level.INSTANCE][: int(level)]
        parts: list[dict[bytes, dataset_pb2.Dataset]] = []
        for depth, part_level in enumerate(chain, start=1):
            wanted = sorted({keys.SEP.join(p[:depth]) for p in split})
            own = part_level == level or not scoped or part_level != Level.STUDY
            keep = returned if own else returned & {"0020000D"}
            found: dict[bytes, dataset_pb2.Dataset] = {}
            for key, raw in self.index.record_map(part_level, wanted).items():
                record = _RECORDS[part_level](raw)
                piece: dataset_pb2.Dataset = record.attributes  # type: ignore[attr-defined]
                attributes = piece.attributes
                for tag in [tag for tag in attributes if tag not in keep]:
                    del attributes[tag]
                _counts(piece, part_level, record, level)
                found[key] = piece
            parts.append(found)
        if len(parts) == 1:  # each result is one record's
            return [parts[0].get(pk) or dataset_pb2.Dataset() for pk in page]
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


# -- key streams -------------------------------------------------------------------------------


class KeyStream:
    """Keys in key order, read lazily: ``head`` is the current key (None once past the end).

    :meth:`seek` moves to the first key at or above a key; each stream reads its index from
    there, so that a page reads what lies between the cursor and its last result, not every
    match.
    """

    cost = 0
    head: bytes | None = None

    def seek(self, key: bytes) -> bytes | None:
        """Move to the first key ``>= key`` (never back); the new head."""
        raise NotImplementedError

    def advance(self) -> bytes | None:
        """Move past the head; the new head."""
        raise NotImplementedError


class _ListStream(KeyStream):
    """Keys known in advance (sorted)."""

    def __init__(self, found: list[bytes]) -> None:
        self.keys = found
        self.at = 0
        self.head = found[0] if found else None

    def seek(self, key: bytes) -> bytes | None:
        if self.head is not None and self.head < key:
            self.at = bisect.bisect_left(self.keys, key, self.at)
            self.head = self.keys[self.at] if self.at < len(self.keys) else None
        return self.head

    def advance(self) -> bytes | None:
        self.at += 1
        self.head = self.keys[self.at] if self.at < len(self.keys) else None
        return self.head


class _TermStream(KeyStream):
    """The keys having one index term (its entries are in key order), read in batches.

    Batches grow from ``batch`` as the stream is read on.
    """

    cost = 1

    def __init__(
        self,
        index: TermStore,
        level: Level,
        tag: int,
        value: bytes,
        batch: int,
    ) -> None:
        self.index, self.level, self.tag, self.value = index, level, tag, value
        self.batch = batch
        self.buffer: list[bytes] = []
        self.at = 0
        self.complete = False  # the buffer holds every key from its first on
        self.started = False
        self.head = None

    def seek(self, key: bytes) -> bytes | None:
        if self.started and (self.head is None or self.head >= key):
            return self.head
        self.started = True
        buffer = self.buffer
        if buffer and buffer[-1] >= key:  # the buffer holds every key from buffer[at] on
            self.at = bisect.bisect_left(buffer, key, self.at)
            self.head = buffer[self.at]
            return self.head
        if self.complete:
            self.head = None
            return None
        return self._read(key)

    def advance(self) -> bytes | None:
        self.at += 1
        if self.at < len(self.buffer):
            self.head = self.buffer[self.at]
            return self.head
        if self.complete:
            self.head = None
            return None
        return self._read(self.buffer[-1] + keys.SEP)

    def covers(self, key: bytes) -> bool:
        """Whether :meth:`seek` to ``key`` needs no read."""
        if self.started and (self.head is None or self.head >= key):
            return True
        return bool(self.buffer and self.buffer[-1] >= key) or self.complete

    def _read(self, key: bytes) -> bytes | None:
        """Read a batch of keys from ``key`` on."""
        found = self.index.term_entries_from(self.level, self.tag, [self.value], key, self.batch)
        return self.load(found[0])

    def load(self, found: list[bytes]) -> bytes | None:
        """Take ``found``, the keys read from the key of a seek on, as the buffer."""
        self.started = True
        self.buffer = found
        self.complete = len(found) < self.batch
        self.batch = min(self.batch * 2, STREAM_BATCH)
        self.at = 0
        self.head = found[0] if found else None
        return self.head


class _MergedStream(KeyStream):
    """The union of the keys of several terms (a UID list, a date range), in key order.

    A seek moves only the terms whose head lies below the key, and reads those that must
    read in one request: a page of a range of 365 dates costs one read positioned on every
    date, then the dates' entries between the cursor and the page's last result.
    """

    cost = 2

    def __init__(self, streams: list[_TermStream]) -> None:
        self.streams = streams
        first = streams[0]
        self.index, self.level, self.tag = first.index, first.level, first.tag
        self.heap: list[tuple[bytes, int]] = []
        self.started = False
        self.head = None

    def seek(self, key: bytes) -> bytes | None:
        heap = self.heap
        if not self.started:
            self.started = True
            moving = list(range(len(self.streams)))
        else:
            moving = []
            while heap and heap[0][0] < key:
                moving.append(heapq.heappop(heap)[1])
        reads = [n for n in moving if not self.streams[n].covers(key)]
        if reads:
            batch = max(self.streams[n].batch for n in reads)
            values = [self.streams[n].value for n in reads]
            found = self.index.term_entries_from(self.level, self.tag, values, key, batch)
            for number, keys_found in zip(reads, found, strict=True):
                self.streams[number].batch = batch
                self.streams[number].load(keys_found)
        for number in moving:
            head = self.streams[number].seek(key)
            if head is not None:
                heapq.heappush(heap, (head, number))
        self.head = heap[0][0] if heap else None
        return self.head

    def advance(self) -> bytes | None:
        heap, current = self.heap, self.head
        while heap and heap[0][0] == current:  # a record holding two of the values, once
            _, number = heap[0]
            head = self.streams[number].advance()
            if head is None:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (head, number))
        self.head = heap[0][0] if heap else None
        return self.head


class _LiftedStream(KeyStream):
    """The keys of ``level`` under the records of a parent stream (a study's series, ...).

    A parent's children follow it in key order, so lifting keeps the order.
    """

    cost = 3

    def __init__(self, index: TermStore, owners: KeyStream, depth: int, level: Level) -> None:
        self.index, self.owners, self.depth, self.level = index, owners, depth, level
        self.cost = owners.cost + 2
        self.owner: bytes | None = None
        self.children: list[bytes] = []
        self.at = 0
        self.complete = True
        self.started = False
        self.head = None

    def seek(self, key: bytes) -> bytes | None:
        if self.started and (self.head is None or self.head >= key):
            return self.head
        self.started = True
        target = keys.SEP.join(key.split(keys.SEP)[: self.depth])
        owner = self.owners.seek(target)
        if owner is None:
            self.head = None
            return None
        if owner != self.owner:
            self.owner = owner
            self._children(_below(key) if owner == target else b"")
        elif self.children and self.children[-1] >= key:
            self.at = bisect.bisect_left(self.children, key, self.at)
            self.head = self.children[self.at]
            return self.head
        elif self.complete:
            self.at = len(self.children)
        else:
            self._children(_below(key))
        return self._settle()

    def advance(self) -> bytes | None:
        self.at += 1
        if self.at >= len(self.children) and not self.complete:
            self._children(self.children[-1])
        return self._settle()

    def _children(self, after: bytes) -> None:
        """Read a batch of the current owner's children above ``after``."""
        assert self.owner is not None
        self.children = self.index.record_keys(
            self.level, keys.child_prefix(self.owner), after, STREAM_BATCH
        )
        self.complete = len(self.children) < STREAM_BATCH
        self.at = 0

    def _settle(self) -> bytes | None:
        """The head: the current child, or the first child of the next owner that has one."""
        while self.at >= len(self.children):
            if not self.complete:
                self._children(self.children[-1])
                continue
            self.owner = self.owners.advance()
            if self.owner is None:
                self.head = None
                return None
            self._children(b"")
        self.head = self.children[self.at]
        return self.head


def _below(key: bytes) -> bytes:
    """A key just below ``key``: every record key above it is ``>= key``.

    Keys are UIDs joined by NUL (``storage/keys.py``): their bytes are UID characters and NUL,
    never 0xFF, so lowering the last byte and appending 0xFF leaves no key in between.
    """
    if not key:
        return b""
    if key[-1] == 0:
        return key[:-1]
    return key[:-1] + bytes([key[-1] - 1]) + b"\xff"


def _join(streams: list[KeyStream], start: bytes, wanted: int) -> list[bytes]:
    """Up to ``wanted`` keys from ``start`` on that every stream holds, in key order.

    A leapfrog join: every stream seeks the highest head of the others, so a sparse term
    steers a dense one by seeks instead of the dense one being read entry by entry.
    """
    out: list[bytes] = []
    target = start
    while True:
        for stream in streams:
            head = stream.seek(target)
            if head is None:
                return out
            if head > target:
                target = head
                break
        else:
            out.append(target)
            if len(out) >= wanted:
                return out
            head = streams[0].advance()
            if head is None:
                return out
            target = head
