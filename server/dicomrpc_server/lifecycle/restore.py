"""``dicomrpc restore``: a backup of ``dicomrpc backup`` made a data folder again, verified.

Only a complete backup is accepted (its manifest written, no partial marker). Every file the
manifest lists is copied and its size and SHA-256 checked, and the restored index is checked
against the manifest (counts) and the files (each instance's file restored), before the folder
gets its name: a restore that fails or is interrupted leaves ``NEWDIR.restoring`` (marked as
ours, removed by the next restore), never a data folder a server would open. The target must
not exist or be an empty folder: a restore never writes over, or removes, anything else.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

from dicomrpc_server.lifecycle.backup import (
    INDEX_FILE_NAME,
    BackupError,
    Manifest,
    Snapshot,
    copy_file,
    sync_folders,
)
from dicomrpc_server.storage.blobs import BLOBS_DIR, blob_name, fsync_dir
from dicomrpc_server.storage.recovery import INDEX_DIR

log = logging.getLogger("dicomrpc.restore")

RESTORING_SUFFIX = ".restoring"
# Present in a folder being restored, removed just before it gets its final name.
RESTORING_MARKER = ".dicomrpc-restoring"


def restore(source: Path, data_dir: Path) -> Manifest:
    """Restore the backup ``source`` as the data folder ``data_dir`` (see module).

    Raises
    ------
    BackupError
        ``TARGET_NOT_EMPTY``, ``NOT_A_BACKUP``, ``INCOMPLETE_BACKUP``, ``FILE_MISSING``,
        ``DIGEST_MISMATCH`` or ``COUNTS_MISMATCH``, naming the folder or file.
    """
    manifest = Manifest.read(source)
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise BackupError(
            "TARGET_NOT_EMPTY",
            f"{data_dir} exists and is not an empty folder; restore into a new folder "
            "(nothing was written)",
        )
    staging = data_dir.with_name(data_dir.name + RESTORING_SUFFIX)
    if staging.exists():
        if not (staging / RESTORING_MARKER).is_file():
            raise BackupError(
                "TARGET_NOT_EMPTY",
                f"{staging} exists and is not an interrupted restore's; move it away "
                "(nothing was written)",
            )
        log.info("removing %s, left by an interrupted restore", staging)
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    (staging / RESTORING_MARKER).write_text(f"dicomrpc restore of {source}, pid {os.getpid()}\n")
    for relative, expected in manifest.files.items():
        _restore_file(source, staging, relative, expected)
    _check_index(staging, manifest)
    sync_folders(staging)
    (staging / RESTORING_MARKER).unlink()
    fsync_dir(staging)
    if data_dir.exists():
        data_dir.rmdir()  # empty, checked above
    staging.rename(data_dir)
    fsync_dir(data_dir.parent)
    return manifest


def _restore_file(source: Path, staging: Path, relative: str, expected: dict[str, object]) -> None:
    """Copy one file of the backup, checking its size and SHA-256 against the manifest."""
    path = Path(relative)
    if path.is_absolute() or ".." in path.parts:
        raise BackupError("NOT_A_BACKUP", f"the manifest of {source} names {relative!r}")
    try:
        size, digest = copy_file(source / path, staging / path)
    except FileNotFoundError:
        raise BackupError(
            "FILE_MISSING",
            f"{source / path}, listed in the backup's manifest, is missing; the backup is "
            f"damaged. Nothing was restored (the partial copy is {staging})",
        ) from None
    if size != expected.get("size") or digest != expected.get("sha256"):
        raise BackupError(
            "DIGEST_MISMATCH",
            f"{source / path} has {size} bytes of SHA-256 {digest}, the manifest "
            f"says {expected.get('size')} bytes of {expected.get('sha256')}: the backup is "
            f"damaged. Nothing was restored (the partial copy is {staging})",
        )


def _check_index(staging: Path, manifest: Manifest) -> None:
    """The restored index holds what the manifest counts, and every instance has its file."""
    if f"{INDEX_DIR}/{INDEX_FILE_NAME}" not in manifest.files:
        raise BackupError("NOT_A_BACKUP", "the backup's manifest lists no index")
    wanted = (manifest.studies, manifest.series, manifest.instances)
    with Snapshot(staging / INDEX_DIR) as snapshot:
        if snapshot.counts != wanted:
            raise BackupError(
                "COUNTS_MISMATCH",
                f"the restored index holds {snapshot.counts} studies, series and instances, "
                f"the manifest {wanted}; the backup is damaged. Nothing was restored",
            )
        for _, _, sop, blob_id, size in snapshot.instances():
            relative = f"{BLOBS_DIR}/{blob_name(blob_id)}"
            if manifest.files.get(relative, {}).get("size") != size:
                raise BackupError(
                    "FILE_MISSING",
                    f"the backup's index names {relative} (instance {sop}, {size} bytes), which "
                    "the backup does not hold as such; the backup is damaged. Nothing was "
                    "restored",
                )


def run(args: argparse.Namespace) -> int:
    """Entry point of ``dicomrpc restore``."""
    from dicomrpc_server.logs import log_to_stderr

    log_to_stderr(args.log_level)
    try:
        manifest = restore(args.source, args.data)
    except BackupError as exc:
        print(f"dicomrpc restore: {exc}", file=sys.stderr)
        return 1
    print(
        f"restored {manifest.instances} instances ({manifest.instance_bytes} bytes) in "
        f"{manifest.series} series of {manifest.studies} studies to {args.data}, change feed "
        f"at sequence {manifest.change_sequence}"
    )
    print(f"serve it with: dicomrpc serve --data {args.data}")
    return 0
