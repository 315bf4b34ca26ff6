"""UID rules of PS3.5 §9.1, and the looser rule under which a UID is still a safe index key.

Archives in the field receive UIDs that break §9.1 (a leading zero in a component, letters
from a vendor's generator). Refusing them would lose data that other systems accept, so a UID
that is still a safe key is stored with a warning; anything that could not be a key safely
(empty, too long, control characters, path separators, white space) is refused.
"""

from __future__ import annotations

import enum
import re

MAX_UID_LENGTH = 64

_CONFORMANT = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")
# Printable ASCII without space, '/' and '\'.
_SAFE = re.compile(r"[\x21-\x2e\x30-\x5b\x5d-\x7e]+")


class UidCheck(enum.Enum):
    """How a UID fares against PS3.5 §9.1."""

    VALID = "valid"
    NONCONFORMANT = "nonconformant"
    INVALID = "invalid"


def check_uid(uid: str) -> tuple[UidCheck, str]:
    """Classify ``uid``; return the verdict and, unless valid, why.

    Examples
    --------
    >>> check_uid("1.2.840.10008.1.2")[0]
    <UidCheck.VALID: 'valid'>
    >>> check_uid("1.2.03")[0]
    <UidCheck.NONCONFORMANT: 'nonconformant'>
    >>> check_uid("1.2/3")[0]
    <UidCheck.INVALID: 'invalid'>
    """
    if not uid:
        return UidCheck.INVALID, "is empty"
    if len(uid) > MAX_UID_LENGTH:
        return UidCheck.INVALID, f"is {len(uid)} characters long, more than {MAX_UID_LENGTH}"
    if _CONFORMANT.fullmatch(uid):
        return UidCheck.VALID, ""
    if not _SAFE.fullmatch(uid):
        return UidCheck.INVALID, (
            "contains characters other than printable ASCII, or white space, '/' or '\\'"
        )
    if re.fullmatch(r"[0-9.]+", uid):
        return UidCheck.NONCONFORMANT, (
            "breaks PS3.5 §9.1 (a component is empty or has a leading zero)"
        )
    return UidCheck.NONCONFORMANT, "breaks PS3.5 §9.1 (characters other than digits and '.')"
