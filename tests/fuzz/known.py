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

HTTP = "HTTP limits (headers, parts, Warning header, multipart ended midway)"
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


KNOWN_OPEN: tuple[Known, ...] = (
    Known(
        "multipart",
        r"depend on how the body is chunked",
        HTTP,
        "the 1024-byte limit of a delimiter line (and the 16 KiB limit of part headers) is "
        "checked on what has arrived so far: the same body is refused in small chunks and "
        "accepted in one",
        ("delimiter-line-over-1024-bytes.bin",),
    ),
    Known(
        "http",
        r"^answer cut off",
        HTTP,
        "a transcoding that fails (JPEG Baseline asked for a 12-bit CT) fails after the "
        "multipart answer has started: the connection is closed in the middle of the body",
        ("transcode-fails-after-first-byte.bin",),
    ),
)


def known(harness: str, signature: str) -> Known | None:
    """The open finding ``signature`` is, for ``harness``, if the table lists it."""
    for entry in KNOWN_OPEN:
        if entry.harness == harness and re.search(entry.pattern, signature):
            return entry
    return None
