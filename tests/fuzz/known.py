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

UIDS = "UIDs at the door (NUL, %, .., non-ASCII in URLs and files)"
NESTING = "deep nesting (sequences, JSON)"
BOMBS = "bombs and codec limits (deflate, pixel and frame counts, transcoding)"
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
        "prepare",
        r"^NotImplementedError at dicom/elements\.py",
        NEW,
        "an element of unknown VR in the file meta (a generated CT whose (0002,0002) says VR "
        "'U0') escapes validation as NotImplementedError: the store answers STORAGE_FAILURE "
        "and logs a traceback instead of naming the element (272, INSTANCE_UNPARSABLE)",
        ("unknown-vr-in-file-meta.dcm",),
    ),
    Known(
        "prepare",
        r"^_LocatedError at dicomrpc/datasets\.py:_dataset_from_pydicom",
        NEW,
        "an element of unknown VR in the data set (PatientID with VR 'QQ') makes from_pydicom "
        "raise ValueError, which prepare lets out: STORAGE_FAILURE and a logged traceback "
        "instead of a 272 naming the element",
        ("unknown-vr-in-data-set.dcm",),
    ),
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
        "dicom_json",
        r"^RecursionError",
        NESTING,
        "JSON arrays 1100 deep (json.loads) and sequences 200 deep (to_pydicom) raise "
        "RecursionError, not ValueError (a 500 on the gateway)",
        ("arrays-1100-deep.json", "sequences-200-deep.json"),
    ),
    Known(
        "dicom_json",
        r"^BytesLengthException at dicomrpc/datasets\.py:to_pydicom",
        NEW,
        "to_pydicom raises pydicom's BytesLengthException (not ValueError, as documented) for "
        "a UN value whose length does not fit the dictionary VR of its tag "
        '({"00280010":{"vr":"UN","InlineBinary":"YWJj"}}): MetadataResult.as_pydicom fails so',
        ("un-rows-of-3-bytes.json",),
    ),
    Known(
        "qido",
        r"^UnicodeEncodeError at storage/keys\.py",
        UIDS,
        "a study or series UID with non-ASCII characters (as a URL path carries it) reaches "
        "the index keys and raises UnicodeEncodeError (a 500)",
        ("non-ascii-study-uid.bin",),
    ),
    Known(
        "http",
        r"UnicodeEncodeError at (storage/keys\.py|ups/store\.py)",
        UIDS,
        "a UID with non-ASCII characters in the path (/studies/%C3%A9, /workitems/%C3%A9) is a "
        "500 on every route that takes one",
        ("non-ascii-study-uid.bin",),
    ),
    Known(
        "http",
        r"^connection closed without an answer.*httptools_impl\.py:send",
        HTTP,
        "an error message quoting a request value with control characters (a UID with %00, a "
        "query key with %1E) goes into the Warning header, which uvicorn refuses to send: the "
        "connection is closed without an answer",
        ("nul-in-uid-breaks-warning-header.bin",),
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
