"""The capability matrix: which stored syntax can be transcoded to which, and the refusals.

Why this module exists: a client may ask for a transfer syntax other than the stored one
(PS3.18 and PS3.4 both let it), and the archive must either produce exactly that syntax or
refuse before sending a byte. Everything that decides *whether* a syntax can be produced lives
here, so the answer given by :func:`capabilities` (served by ``GetCapabilities`` and printed in
the README and the conformance statement) is the answer the code acts on.

* The matrix is computed at run time from the codecs that are importable (the decoders of
  :mod:`~dicomrpc_server.retrieve.decoding`, the encoders of
  :mod:`~dicomrpc_server.retrieve.encoding`), never from a hard-coded claim.
* Lossy targets are refused unless the caller explicitly allows them.
"""

from __future__ import annotations

import functools
import warnings

from dicomrpc_server.errors import Code, ServiceError
from dicomrpc_server.retrieve.decoding import decoding_plugin
from dicomrpc_server.retrieve.encoding import encoders
from dicomrpc_server.retrieve.syntaxes import NATIVE_SYNTAXES, SHORT_NAMES, is_lossy, syntax_name


@functools.cache
def capabilities() -> dict[str, list[str]]:
    """Which stored syntax can be transcoded to which, given the codecs installed.

    Returns
    -------
    dict[str, list[str]]
        Each source syntax that can be decoded (native syntaxes always) mapped to the sorted
        UIDs of the syntaxes it can be transcoded to, the source itself excluded. Computed
        once per process.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sources = [uid for uid in SHORT_NAMES if decoding_plugin(uid) is not None]
        targets = [*NATIVE_SYNTAXES, *encoders()]
    return {source: sorted(t for t in targets if t != source) for source in sources}


def _unsupported(source_uid: str, target_uid: str, why: str) -> ServiceError:
    """The FAILED_PRECONDITION error of a syntax that cannot be produced."""
    return ServiceError(
        Code.FAILED_PRECONDITION,
        "TRANSFER_SYNTAX_UNSUPPORTED",
        f"transfer syntax {target_uid} ({syntax_name(target_uid)}) cannot be produced from "
        f"the stored {source_uid} ({syntax_name(source_uid)}): {why}",
        metadata={"transfer_syntax_uid": target_uid, "stored_transfer_syntax_uid": source_uid},
    )


def check_transcodable(source_uid: str, target_uid: str, *, allow_lossy: bool) -> None:
    """Refuse a transcoding the installed codecs cannot do, or a lossy one not allowed.

    Parameters
    ----------
    source_uid
        The stored transfer syntax.
    target_uid
        The transfer syntax asked for.
    allow_lossy
        Whether the caller accepts a lossy target.

    Raises
    ------
    ServiceError
        FAILED_PRECONDITION, reason ``TRANSFER_SYNTAX_UNSUPPORTED``, naming both syntaxes.
    """
    if source_uid == target_uid:
        return
    table = capabilities()
    if source_uid not in table:
        raise _unsupported(source_uid, target_uid, "no installed codec decodes the stored syntax")
    if target_uid not in table[source_uid]:
        raise _unsupported(source_uid, target_uid, "no installed codec encodes it")
    if is_lossy(target_uid) and not allow_lossy:
        raise _unsupported(
            source_uid, target_uid, "it is lossy, and lossy compression was not allowed"
        )


def undecodable(source_uid: str, target_uid: str, exc: Exception) -> ServiceError:
    """The error of pixel data that cannot be decoded or encoded."""
    return _unsupported(source_uid, target_uid, f"the pixel data could not be transcoded: {exc}")


def capability_table_markdown() -> str:
    """The capability matrix as a Markdown table, for the README.

    Returns
    -------
    str
        One row per stored syntax (name and UID), with the lossless and the lossy targets it
        can be transcoded to (short names), newline-terminated.
    """
    lines = [
        "| Stored syntax | UID | Lossless targets | Lossy targets (need `allow_lossy`) |",
        "| --- | --- | --- | --- |",
    ]
    for source, targets in capabilities().items():
        lossless = ", ".join(syntax_name(t) for t in targets if not is_lossy(t)) or "none"
        lossy = ", ".join(syntax_name(t) for t in targets if is_lossy(t)) or "none"
        lines.append(f"| {syntax_name(source)} | `{source}` | {lossless} | {lossy} |")
    return "\n".join(lines) + "\n"
