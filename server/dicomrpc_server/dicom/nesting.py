"""The one limit on how deeply sequences nest, and the error of a data set that breaks it.

Whatever the archive accepts must be readable by every read path: metadata, search results,
workitems and their events travel as ``dicomrpc.v1.Dataset`` messages, and no protobuf parser
reads a message nested past its recursion limit (``dicomrpc.datasets.MAX_SEQUENCE_DEPTH`` says
how deep that lets sequences go). ``Settings.max_sequence_depth`` sets the limit below that
ceiling; a stored instance (:mod:`dicomrpc_server.store.prepare`) and a workitem data set
(:mod:`dicomrpc_server.ups.service`) deeper than it are refused with :func:`too_deep`.
"""

from __future__ import annotations

from dicomrpc.datasets import NestingTooDeep, check_sequence_depth, keyword
from dicomrpc.v1 import dataset_pb2
from dicomrpc_server.errors import Code, FieldViolation, ServiceError

# The DICOM status of a refusal: Processing failure (0x0110), as for an instance over the size
# limit; the data set is not wrong, it is more than this archive processes.
PROCESSING_FAILURE = 0x0110


def named_path(path: str) -> str:
    """A tag path with each tag's keyword: ``ContentSequence[0].ContentSequence``.

    ``path`` is written as ``dicomrpc.datasets`` writes paths (``0040A730.0.0040A730``); a tag
    without a keyword (a private one) stays as it is.
    """
    parts = path.split(".")
    out = []
    for at in range(0, len(parts), 2):
        name = keyword(parts[at]) or parts[at]
        out.append(f"{name}[{parts[at + 1]}]" if at + 1 < len(parts) else name)
    return ".".join(out)


def too_deep(error: NestingTooDeep) -> ServiceError:
    """The error of a data set nested deeper than the limit, naming where it crosses it.

    INVALID_ARGUMENT with the reason ``LIMIT_EXCEEDED``; a stored instance fails with 272
    (Processing failure), a workitem request is answered 400 on DICOMweb.
    """
    attribute = named_path(error.path)
    limit = f"more than {error.limit} levels deep, this server's limit (max_sequence_depth)"
    return ServiceError(
        Code.INVALID_ARGUMENT,
        "LIMIT_EXCEEDED",
        # The problem first: STOW-RS cuts the ErrorComment at 64 characters.
        f"sequences nest {limit}: {attribute} ({error.path})",
        dicom_status=PROCESSING_FAILURE,
        metadata={
            "limit": "max_sequence_depth",
            "value": str(error.limit),
            "attribute": attribute,
            "tag_path": error.path,
        },
        violations=(FieldViolation(attribute, f"is a sequence nested {limit}"),),
    )


def check_depth(dataset: dataset_pb2.Dataset, limit: int) -> None:
    """Raise :func:`too_deep` when a sequence of ``dataset`` lies more than ``limit`` deep."""
    try:
        check_sequence_depth(dataset, limit)
    except NestingTooDeep as exc:
        raise too_deep(exc) from None
