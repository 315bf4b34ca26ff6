"""The term store of the LMDB index: the secondary indexes that searches scan.

Why this module exists: a search is planned over ordered scans of ``terms`` entries (``level /
tag / term / primary key``, empty values): exact values, prefixes and ranges are all one range
scan, and a record's entries change with the record. The scans and the writes of entries are
here; what the terms of a record are is :func:`~.index_records.record_terms`'s.
"""

from __future__ import annotations

import lmdb

from dicomrpc_server.dicom.attributes import Level
from dicomrpc_server.storage import keys, records_pb2
from dicomrpc_server.storage.index_records import (
    Record,
    split_term,
    studies_of_series,
    term_changes,
)
from dicomrpc_server.storage.lmdb_environment import LmdbEnvironment


class LmdbTerms(LmdbEnvironment):
    """The ``terms`` sub-database: scans for searches, and the entries of each record."""

    def scan_terms(
        self,
        level: Level,
        tag: int,
        start: bytes,
        stop: bytes | None = None,
        prefix: bytes = b"",
        limit: int | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """(term, primary key) pairs of one attribute, in term order, from ``start``.

        The scan ends before the first term that is ``>= stop`` or does not start with
        ``prefix``, or after ``limit`` pairs: exact values, prefixes and ranges are all one
        ordered range scan.
        """
        base = keys.term_prefix(level, tag, b"")
        out: list[tuple[bytes, bytes]] = []
        with self.read() as txn:
            cursor = txn.cursor(db=self._db["terms"])
            if not cursor.set_range(base + start):
                return out
            for raw_key in cursor.iternext(values=False):
                key = bytes(raw_key)
                if not key.startswith(base):
                    break
                term, pk = split_term(key[len(base) :])
                if (stop is not None and term >= stop) or not term.startswith(prefix):
                    break
                out.append((term, pk))
                if limit is not None and len(out) >= limit:
                    break
        return out

    def studies_of_series(self, series: str) -> list[str]:
        """The studies holding a series with this SeriesInstanceUID (normally one)."""
        return studies_of_series(self.scan_terms, series)

    def distinct_terms(
        self,
        level: Level,
        tag: int,
        start: bytes,
        stop: bytes | None = None,
        prefix: bytes = b"",
        limit: int | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """Each distinct term :meth:`scan_terms` would return, with its lowest key, in order.

        One read transaction; after each term the cursor jumps to ``term + 0x01``, which sorts
        above every entry of the term (``term NUL key``) and at or below every greater term.
        """
        base = keys.term_prefix(level, tag, b"")
        out: list[tuple[bytes, bytes]] = []
        with self.read() as txn:
            cursor = txn.cursor(db=self._db["terms"])
            position = base + start
            while cursor.set_range(position):
                key = bytes(cursor.key())
                if not key.startswith(base):
                    break
                term, pk = split_term(key[len(base) :])
                if (stop is not None and term >= stop) or not term.startswith(prefix):
                    break
                out.append((term, pk))
                if limit is not None and len(out) >= limit:
                    break
                position = base + term + b"\x01"
        return out

    def term_entries_from(
        self, level: Level, tag: int, terms: list[bytes], start: bytes, limit: int
    ) -> list[list[bytes]]:
        """For each term, the keys having it that are ``>= start``, in order, at most ``limit``.

        One read transaction and one cursor for all the terms.
        """
        base = keys.term_prefix(level, tag, b"")
        out: list[list[bytes]] = []
        with self.read() as txn:
            cursor = txn.cursor(db=self._db["terms"])
            for term in terms:
                head = base + term + keys.SEP
                found: list[bytes] = []
                if cursor.set_range(head + start):
                    for raw_key in cursor.iternext(values=False):
                        key = bytes(raw_key)
                        if not key.startswith(head):
                            break
                        found.append(key[len(head) :])
                        if len(found) >= limit:
                            break
                out.append(found)
        return out

    def having_terms(
        self, level: Level, tag: int, terms: list[bytes], candidates: set[bytes]
    ) -> set[bytes]:
        """The candidates whose record at ``level`` has one of ``terms`` for ``tag``.

        Candidates are keys of that level or below (an instance is checked through its
        study's entries for a study attribute): one point lookup per distinct record.
        """
        out: set[bytes] = set()
        owners: dict[bytes, bool] = {}
        db = self._db["terms"]
        with self.read() as txn:
            for pk in candidates:
                owner = keys.SEP.join(pk.split(keys.SEP)[: int(level)])
                has = owners.get(owner)
                if has is None:
                    has = any(
                        txn.get(keys.term_key(level, tag, term, owner), db=db) is not None
                        for term in terms
                    )
                    owners[owner] = has
                if has:
                    out.add(pk)
        return out

    def term_entries(self, level: Level, tag: int, term: bytes) -> list[bytes]:
        """Primary keys of records whose attribute ``tag`` has exactly index term ``term``."""
        return [pk for _, pk in self.scan_terms(level, tag, term, term + keys.SEP)]

    def put_terms(
        self, txn: lmdb.Transaction, level: Level, pk: bytes, terms: set[tuple[int, bytes]]
    ) -> None:
        """Add the entries of ``terms`` for the record ``pk`` of ``level``, in an open write."""
        for tag, term in terms:
            txn.put(keys.term_key(level, tag, term, pk), b"", db=self._db["terms"])

    def replace_terms(
        self,
        txn: lmdb.Transaction,
        level: Level,
        pk: bytes,
        old: Record | None,
        new: Record | None,
        extended: list[records_pb2.QueryTagRecord],
    ) -> None:
        """Change the entries of the record ``pk`` from those of ``old`` to those of ``new``."""
        removed, added = term_changes(level, old, new, extended)
        for tag, term in removed:
            txn.delete(keys.term_key(level, tag, term, pk), db=self._db["terms"])
        self.put_terms(txn, level, pk, added)
