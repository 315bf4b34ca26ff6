"""Key encodings of the LMDB index: every key sorts in its logical order.

Hierarchical keys join UIDs with NUL (``study\\0series\\0sop``): a NUL sorts before every UID
character, so a study's series and a series' instances are contiguous ranges. Integers are
big-endian so that byte order is numeric order.
"""

from __future__ import annotations

import struct

from dicomrpc_server.dicom.attributes import Level

SEP = b"\x00"


def study_key(study: str) -> bytes:
    """The key of a study record."""
    return study.encode("ascii")


def series_key(study: str, series: str) -> bytes:
    """The key of a series record."""
    return study.encode("ascii") + SEP + series.encode("ascii")


def instance_key(study: str, series: str, sop: str) -> bytes:
    """The key of an instance record."""
    return SEP.join((study.encode("ascii"), series.encode("ascii"), sop.encode("ascii")))


def split_key(key: bytes) -> list[str]:
    """The UIDs of a hierarchical key."""
    return [part.decode("ascii") for part in key.split(SEP)]


def child_prefix(parent_key: bytes) -> bytes:
    """The prefix shared by every child key of a study or series key."""
    return parent_key + SEP


def sequence_key(number: int) -> bytes:
    """The key of a change feed entry or another counter-ordered record."""
    return struct.pack(">Q", number)


def term_prefix(level: Level, tag: int, term: bytes) -> bytes:
    """The prefix of a secondary-index key: level, tag, then the term."""
    return struct.pack(">BI", level, tag) + term


def term_key(level: Level, tag: int, term: bytes, primary_key: bytes) -> bytes:
    """A secondary-index key: the term prefix, NUL, then the record's primary key."""
    return term_prefix(level, tag, term) + SEP + primary_key
