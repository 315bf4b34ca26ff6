"""Findings that are known and open: expected to fail until their fix lands.

Each entry names the harness, a regular expression matched against a finding's signature, the
class of fix it belongs to and why it fails. ``tests/test_fuzz.py`` reports these as expected
failures (xfail) rather than failing CI: any finding not listed here fails it. Each entry's
reproducers (files under ``tests/fuzz/findings/HARNESS/``) are replayed as strict xfails, so
the day a fix makes one pass, the test says to remove its entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NEW = "new: nobody is fixing it yet"


@dataclass(frozen=True)
class Known:
    """A known, open finding.

    Attributes
    ----------
    harness
        The harness that finds it.
    pattern
        A regular expression searched for in the finding's signature.
    owner
        The class of fix it belongs to (one of the constants above).
    reason
        What is wrong, in a sentence.
    reproducers
        Committed inputs under ``tests/fuzz/findings/HARNESS/`` that show it.
    """

    harness: str
    pattern: str
    owner: str
    reason: str
    reproducers: tuple[str, ...] = ()


# A new finding is listed here while its fix is under way.
KNOWN_OPEN: tuple[Known, ...] = (
    Known(
        "dimse",
        r"no longer answers a C-ECHO",
        NEW,
        "after 9,000-13,000 inputs of a campaign the server refused every association: "
        "threads of connections whose request never came waited for it until the ACSE "
        "timeout, and ended associations stayed counted against the limit; the fix (woken "
        "threads, ended associations uncounted) awaits a campaign of that length",
    ),
)


def known(harness: str, signature: str) -> Known | None:
    """The open finding ``signature`` is, for ``harness``, if the table lists it."""
    for entry in KNOWN_OPEN:
        if entry.harness == harness and re.search(entry.pattern, signature):
            return entry
    return None
