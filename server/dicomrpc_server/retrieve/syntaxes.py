"""The transfer syntax catalogue: the UIDs the archive names, their short names, which are lossy.

Why this module exists: the syntaxes are named by the retrieve core, the DIMSE contexts and the
conformance statement alike, and whether a syntax may have lost information decides what a
caller must allow. One catalogue, at the bottom of the transcoding modules, imports nothing of
theirs, so any of them and any transport can use it.
"""

from __future__ import annotations

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

NATIVE_SYNTAXES = (
    IMPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
)

#: Short names, for messages and the README table.
SHORT_NAMES: dict[str, str] = {
    IMPLICIT_VR_LITTLE_ENDIAN: "Implicit VR LE",
    EXPLICIT_VR_LITTLE_ENDIAN: "Explicit VR LE",
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: "Deflated Explicit VR LE",
    EXPLICIT_VR_BIG_ENDIAN: "Explicit VR BE",
    JPEG_BASELINE: "JPEG Baseline",
    JPEG_EXTENDED: "JPEG Extended",
    JPEG_LOSSLESS: "JPEG Lossless",
    JPEG_LOSSLESS_SV1: "JPEG Lossless SV1",
    JPEG_LS_LOSSLESS: "JPEG-LS Lossless",
    JPEG_LS_NEAR_LOSSLESS: "JPEG-LS Near-Lossless",
    JPEG_2000_LOSSLESS: "JPEG 2000 Lossless",
    JPEG_2000: "JPEG 2000",
    HTJ2K_LOSSLESS: "HTJ2K Lossless",
    HTJ2K_LOSSLESS_RPCL: "HTJ2K Lossless RPCL",
    HTJ2K: "HTJ2K",
    RLE_LOSSLESS: "RLE Lossless",
}

# Syntaxes whose pixel data may have lost information. JPEG 2000 (.91) and HTJ2K (.203) may
# also carry reversible codestreams, but :mod:`~dicomrpc_server.retrieve.encoding` encodes
# them irreversibly, and a caller asking for them must accept that.
_LOSSY_SYNTAXES = frozenset(
    {
        JPEG_BASELINE,
        JPEG_EXTENDED,
        "1.2.840.10008.1.2.4.52",
        "1.2.840.10008.1.2.4.53",
        "1.2.840.10008.1.2.4.54",
        "1.2.840.10008.1.2.4.55",
        "1.2.840.10008.1.2.4.56",
        "1.2.840.10008.1.2.4.59",
        "1.2.840.10008.1.2.4.60",
        "1.2.840.10008.1.2.4.61",
        "1.2.840.10008.1.2.4.62",
        "1.2.840.10008.1.2.4.63",
        "1.2.840.10008.1.2.4.64",
        JPEG_LS_NEAR_LOSSLESS,
        JPEG_2000,
        "1.2.840.10008.1.2.4.93",
        HTJ2K,
        "1.2.840.10008.1.2.4.100",
        "1.2.840.10008.1.2.4.101",
        "1.2.840.10008.1.2.4.102",
        "1.2.840.10008.1.2.4.103",
        "1.2.840.10008.1.2.4.104",
        "1.2.840.10008.1.2.4.105",
        "1.2.840.10008.1.2.4.106",
        "1.2.840.10008.1.2.4.107",
        "1.2.840.10008.1.2.4.108",
        "1.2.840.10008.1.2.4.110",
        "1.2.840.10008.1.2.4.111",
        "1.2.840.10008.1.2.4.112",
    }
)


def syntax_name(uid: str) -> str:
    """A short human name of a transfer syntax, or the UID when it is not known.

    Parameters
    ----------
    uid
        A transfer syntax UID.

    Returns
    -------
    str
        For example ``"JPEG 2000 Lossless"``.
    """
    return SHORT_NAMES.get(uid, uid)


def is_lossy(transfer_syntax_uid: str) -> bool:
    """Whether pixel data in ``transfer_syntax_uid`` may have lost information.

    Parameters
    ----------
    transfer_syntax_uid
        A transfer syntax UID.

    Returns
    -------
    bool
        True for the lossy (or possibly lossy) syntaxes: JPEG baseline and extended, JPEG-LS
        near-lossless, JPEG 2000 (.91), HTJ2K (.203), the MPEG / HEVC family.

    Examples
    --------
    >>> is_lossy("1.2.840.10008.1.2.4.50"), is_lossy("1.2.840.10008.1.2.4.90")
    (True, False)
    """
    return transfer_syntax_uid in _LOSSY_SYNTAXES
