"""The quarantine folder: instance files the archive does not serve and must not delete.

A file in ``blobs/`` that the index does not name may be an instance the index lost (a restored
backup, files copied in), so it is never deleted. When the operator chooses to serve without
such files (``dicomrpc serve --quarantine-unindexed``), or a rebuild cannot index one (it does
not parse, or a second file holds an instance already indexed), it is moved to
``<data>/quarantine/<UTC time>/<blob id>.dcm`` with a ``manifest.json`` that says, for each
file, where it was, its size, why it is there and the UIDs it names (when they can be read).
Moving a file back under its original name and running ``dicomrpc rebuild-index`` indexes it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from dicomrpc_server.storage.blobs import fsync_dir

QUARANTINE_DIR = "quarantine"
MANIFEST = "manifest.json"
_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


@dataclass(frozen=True)
class Suspect:
    """A file to quarantine: its blob id, where it is, and why it goes."""

    blob_id: str
    path: Path
    reason: str


def quarantine(data_dir: Path, suspects: list[Suspect]) -> Path:
    """Move files into a new quarantine folder with their manifest; return the folder.

    The manifest is durable before the first file moves, and each move is durable before this
    returns: a crash leaves every file either in ``blobs/`` or listed and in quarantine.
    """
    root = data_dir / QUARANTINE_DIR
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    folder = root / stamp
    n = 1
    while folder.exists():
        n += 1
        folder = root / f"{stamp}-{n}"
    folder.mkdir(parents=True)
    fsync_dir(root)
    entries = []
    for suspect in suspects:
        entry: dict[str, object] = {
            "blob_id": suspect.blob_id,
            "file": f"{suspect.blob_id}.dcm",
            "original": suspect.path.relative_to(data_dir).as_posix(),
            "size": suspect.path.stat().st_size,
            "reason": suspect.reason,
        }
        entry.update(read_uids(suspect.path))
        entries.append(entry)
    manifest = folder / MANIFEST
    with open(manifest, "w", encoding="utf-8") as fp:
        json.dump({"created": stamp, "files": entries}, fp, indent=1)
        fp.write("\n")
        fp.flush()
        os.fsync(fp.fileno())
    fsync_dir(folder)
    sources: set[Path] = set()
    for suspect in suspects:
        _move(suspect.path, folder / f"{suspect.blob_id}.dcm")
        sources.add(suspect.path.parent)
    fsync_dir(folder)
    for directory in sources:
        fsync_dir(directory)
    return folder


def read_uids(path: Path) -> dict[str, str]:
    """The study, series and SOP instance UIDs a file names, as far as they can be read."""
    from pydicom import dcmread

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a file in quarantine may well be odd
            ds = dcmread(path, stop_before_pixels=True, specific_tags=list(_UID_KEYWORDS))
        found = {keyword: str(ds.get(keyword, "") or "") for keyword in _UID_KEYWORDS}
    except Exception:  # an unreadable file is reported without UIDs
        return {}
    return {
        name: value
        for name, value in zip(
            ("study_instance_uid", "series_instance_uid", "sop_instance_uid"),
            found.values(),
            strict=True,
        )
        if value
    }


def _move(source: Path, target: Path) -> None:
    """Rename, or copy durably and then remove when the folders are on different devices."""
    try:
        os.rename(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:  # blobs/ is a mount of its own
            raise
        shutil.copy2(source, target)
        with open(target, "rb") as fp:
            os.fsync(fp.fileno())
        source.unlink()
