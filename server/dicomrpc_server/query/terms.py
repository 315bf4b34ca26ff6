"""How an attribute value becomes secondary-index terms.

The same normalization serves the index writer and, later, the query planner, so that a value is
found exactly when the matching rules of PS3.4 C.2.2.2 say it should be:

- most VRs: the value as stored (single-value matching is case-sensitive);
- PN: the whole name, case- and accent-folded (PN matching is case-insensitive), plus each word
  of each component, folded the same way, for fuzzy prefix matching;
- IS, US and other integers: an order-preserving 8-byte encoding, for ranges;
- DS, FL, FD: one canonical text per number, so that ``5`` finds ``5.0``;
- DA, TM, DT: the text itself, which sorts in time order once TM/DT are padded.
"""

from __future__ import annotations

import re
import struct
import unicodedata
from collections.abc import Iterable

EXACT = b"="
WORD = b"w"
NUMBER = b"#"

_WORD_SPLIT = re.compile(r"[\^=\s,\-.]+")

# LMDB keys are at most 511 bytes: level and tag (5), the term, NUL and a primary key (<= 194).
MAX_TERM_BYTES = 256


def fold(text: str) -> str:
    """Fold case and strip accents: ``'Müller'`` → ``'muller'``."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def fold_person_name(name: str) -> str:
    """A PN value folded for matching; trailing empty components ("Doe^John^^") dropped."""
    return fold(name.strip()).rstrip("^= ")


def person_name_terms(name: str) -> list[bytes]:
    """Terms of one PN value: the whole folded name, then each distinct folded word."""
    folded = fold_person_name(name)
    if not folded:
        return []
    terms = [EXACT + folded.encode()]
    words = sorted({w for w in _WORD_SPLIT.split(folded) if w})
    terms += [WORD + w.encode() for w in words]
    return terms


def integer_term(value: int) -> bytes:
    """An order-preserving encoding of a signed 64-bit integer."""
    return NUMBER + struct.pack(">Q", (value + (1 << 63)) & 0xFFFFFFFFFFFFFFFF)


def decimal_term(vr: str, value: object) -> bytes:
    """A DS, FL or FD value as one canonical text: ``5``, ``5.0`` and ``5.00`` are one number.

    FL values are rounded to single precision first, as the file holds them.
    """
    number = float(str(value))
    if vr == "FL":
        number = struct.unpack("<f", struct.pack("<f", number))[0]
    return EXACT + repr(number).encode()


def pad_time(value: str, end: bool = False) -> str:
    """Pad a TM value to HHMMSS.ffffff so that partial times sort correctly.

    With ``end``, the last instant the value stands for: ``"1015"`` (a minute) ends at
    ``"101559.999999"``, ``"101530"`` (a second) at ``"101530.999999"``.
    """
    main, _, frac = value.partition(".")
    main = main.replace(":", "")
    if end:
        return (main + "595959"[len(main) :]) + "." + (frac + "999999")[:6]
    return (main + "000000"[len(main) :]) + "." + (frac + "000000")[:6]


def value_terms(vr: str, values: Iterable[object]) -> list[bytes]:
    """The index terms of an attribute's values (each value of a multi-valued attribute).

    A term longer than :data:`MAX_TERM_BYTES` is left out: an index key holds the term and a
    primary key within LMDB's 511 bytes, and no value of a searchable VR is that long unless
    it is malformed (it stays in the data, and cannot be found by value).
    """
    terms = _value_terms(vr, values)
    if any(len(term) > MAX_TERM_BYTES for term in terms):
        terms = [term for term in terms if len(term) <= MAX_TERM_BYTES]
    return terms


def _value_terms(vr: str, values: Iterable[object]) -> list[bytes]:
    terms: list[bytes] = []
    for value in values:
        if value is None or value == "":
            continue
        if vr == "PN":
            terms += person_name_terms(str(value))
        elif vr in ("IS", "US", "SS", "UL", "SL", "SV", "UV"):
            terms.append(integer_term(int(str(value))))
        elif vr in ("DS", "FL", "FD"):
            terms.append(decimal_term(vr, value))
        elif vr == "TM":
            terms.append(EXACT + pad_time(str(value)).encode())
        else:
            terms.append(EXACT + str(value).strip().encode())
    return terms
