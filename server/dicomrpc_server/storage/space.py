"""Running out of space: recognising it, and the one error it is answered with.

A full file system (``ENOSPC``), an exhausted quota (``EDQUOT``) or a file past the size the
file system or the process allows (``EFBIG``) can surface anywhere an instance is written: a
write or a flush of its upload, the fsync that makes it durable, or the index commit that
records it. Each is the same condition for a client (the archive has no room for the instance
now, and may have after space is freed), so each is answered the same way: RESOURCE_EXHAUSTED
with reason ``STORAGE_FULL`` and the DICOM status 0xA700, "Refused: Out of Resources"
(PS3.4 Annex B.2.3), which STOW-RS reports per instance and as 507 when nothing was stored.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import lmdb

from dicomrpc_server.errors import Code, ServiceError

STORAGE_FULL = "STORAGE_FULL"
# PS3.4 Annex B.2.3: Refused: Out of Resources.
OUT_OF_RESOURCES = 0xA700

_OUT_OF_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def error_number(exc: BaseException) -> int | None:
    """The errno of a failed system call: ``OSError.errno``, or LMDB's ``lmdb.Error.code``."""
    if isinstance(exc, OSError):
        return exc.errno
    code = getattr(exc, "code", None) if isinstance(exc, lmdb.Error) else None
    return code if isinstance(code, int) else None


def space_errno(exc: BaseException) -> int | None:
    """The errno of ``exc`` when it says storage ran out of space, else ``None``."""
    code = error_number(exc)
    return code if code in _OUT_OF_SPACE else None


def cut_short_by_space(exc: BaseException, volume: Path, page: int) -> bool:
    """Whether an LMDB ``EIO`` is a write cut short because ``volume`` filled up.

    LMDB reports a ``pwrite`` that wrote fewer bytes than asked as ``EIO``, and a write is cut
    short when the file system has no more room: it is then left with less than a page free.
    """
    if error_number(exc) != errno.EIO:
        return False
    try:
        return shutil.disk_usage(volume).free < page
    except OSError:
        return False


def storage_full(exc: BaseException, volume: Path, step: str) -> ServiceError:
    """The error of a write that ran out of space.

    Parameters
    ----------
    exc
        The failure (:func:`space_errno` or :func:`cut_short_by_space` recognised it).
    volume
        A path on the file system that is full, for its free space.
    step
        What was being done, for people ("writing the instance's file").
    """
    code = error_number(exc) or errno.ENOSPC
    name = errno.errorcode.get(code, str(code))
    try:
        free = str(shutil.disk_usage(volume).free)
    except OSError:
        free = "unknown"
    how = "failed with" if code in _OUT_OF_SPACE else "was cut short, reported as"
    return ServiceError(
        Code.RESOURCE_EXHAUSTED,
        STORAGE_FULL,
        f"the archive's storage is full: {step} {how} {name} ({os.strerror(code)}); "
        f"{free} bytes are free on its data volume, which needs more free space (or a larger "
        "quota) before this is sent again",
        dicom_status=OUT_OF_RESOURCES,
        metadata={"errno": name, "free_bytes": free},
    )
