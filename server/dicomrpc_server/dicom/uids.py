"""UID rules of PS3.5 §9.1, and the looser rule under which a UID is still a safe key.

A UID names a study, series, instance or workitem in index keys and in URL paths. PS3.5 §9.1
allows only digits and '.', but archives in the field receive UIDs that break it (a leading
zero in a component, letters from a vendor's generator); refusing those would lose data other
systems accept, so a UID that is still a *safe key* is accepted, with a warning where there is
a channel for one (a stored instance's warnings). Anything else is refused, wherever it
arrives: in a stored file, an RPC field, a URL path or query, or a workitem body.

A safe key is 1 to 64 characters from RFC 3986's unreserved set without '~' (letters, digits,
'.', '-' and '_'), with no empty component run ('..') and not the dot segment '.'. That rules
out everything that means something to the index or to a URL: NUL (the index's key separator),
'/', '?', '#' and '%' (path, query, fragment, escape), ',' and '\\' (QIDO lists and DICOM
multi-values), '*' and '?' (QIDO wildcards), white space, control and non-ASCII characters, and
the dot segments that resolve to a parent path.
"""

from __future__ import annotations

import enum
import re

from dicomrpc_server.errors import ServiceError, invalid_argument

MAX_UID_LENGTH = 64

_CONFORMANT = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")
_SAFE = re.compile(r"[A-Za-z0-9._-]+")
_UNSAFE_CHARACTER = re.compile(r"[^A-Za-z0-9._-]")
# How much of a refused value an error message quotes.
_SHOWN = 80


class UidCheck(enum.Enum):
    """How a UID fares against PS3.5 §9.1 and the safe-key rule."""

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
    >>> check_uid("..")[0]
    <UidCheck.INVALID: 'invalid'>
    """
    if not uid:
        return UidCheck.INVALID, "is empty"
    if _CONFORMANT.fullmatch(uid):
        if len(uid) > MAX_UID_LENGTH:
            return UidCheck.INVALID, _too_long(uid)
        return UidCheck.VALID, ""
    if not _SAFE.fullmatch(uid):
        bad = _UNSAFE_CHARACTER.search(uid)
        assert bad is not None
        return UidCheck.INVALID, (
            f"contains {_character(bad.group())}: a UID holds only digits, '.' and, "
            "leniently, letters, '-' and '_'"
        )
    if ".." in uid:
        return UidCheck.INVALID, "contains an empty component ('..')"
    if uid == ".":
        return UidCheck.INVALID, "is a dot segment ('.')"
    if len(uid) > MAX_UID_LENGTH:
        return UidCheck.INVALID, _too_long(uid)
    if re.fullmatch(r"[0-9.]+", uid):
        return UidCheck.NONCONFORMANT, (
            "breaks PS3.5 §9.1 (a component is empty or has a leading zero)"
        )
    return UidCheck.NONCONFORMANT, "breaks PS3.5 §9.1 (characters other than digits and '.')"


def _too_long(uid: str) -> str:
    return f"is {len(uid)} characters long, more than {MAX_UID_LENGTH}"


def _character(char: str) -> str:
    """A character named so that a log or a header shows it: ``'%'``, ``'\\x00' (U+0000)``."""
    return f"{char!r} (U+{ord(char):04X})"


def shown(value: str) -> str:
    """``repr(value)``, cut short for a message when the value is long."""
    if len(value) <= _SHOWN:
        return repr(value)
    return f"{value[:_SHOWN]!r}... ({len(value)} characters)"


def uid_error(field: str, uid: str) -> ServiceError | None:
    """The INVALID_ARGUMENT error of a request UID that is not a safe key, else ``None``.

    ``field`` names the parameter as the caller sent it: the proto field on gRPC, the path
    parameter or query key on the DICOMweb gateway, the attribute in a data set. An empty
    value is not judged here: whether a UID may be left out is the operation's rule.
    """
    if not uid:
        return None
    verdict, why = check_uid(uid)
    if verdict is not UidCheck.INVALID:
        return None
    return invalid_argument(field, f"{shown(uid)} {why}")


def check_request_uid(field: str, uid: str) -> str:
    """Return ``uid`` if it may name something in a request; raise :func:`uid_error` if not."""
    error = uid_error(field, uid)
    if error is not None:
        raise error
    return uid
