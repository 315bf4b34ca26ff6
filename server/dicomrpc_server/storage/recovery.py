"""Start-up recovery: finish what a crash interrupted; destroy only what is provably garbage.

The blob store and the index make garbage provable (:mod:`.blobs`, :mod:`.lmdb_index`):

- an upload with no final name was never indexed (a partial or failed store): removed;
- an upload name beside its final name marks a commit under way: if the index names the blob,
  the commit happened and the upload name goes; if not, it did not, and both names go;
- an upload the index names but that has no final name is given it (roll forward);
- a blob listed as a pending removal belongs to a committed delete: removed.

Everything else is kept. A blob the index does not name, without an upload name beside it, was
indexed once: the index lost it (a failed mount, a restored backup, files copied in). Then the
archive refuses to start and says what to do (``dicomrpc rebuild-index``, or ``dicomrpc serve
--quarantine-unindexed`` to move such files to the quarantine folder), and while the index is
behind its files, uncommitted-looking blobs are treated the same way. It also refuses with
files but no index, and while a rebuild is unfinished. Index entries whose file is missing are
logged, never removed. The cost is one listing of each directory and one scan of the index's
blob names.

With several processes on one folder (``dicomrpc serve --processes N``) this runs once, before
any of them starts; each process then keeps its uploads in a folder of its own, holding a lock
named by it, and a process that starts later (one replacing a process that died) settles the
uploads of every process folder whose lock nobody holds (:func:`recover_departed`): their
owners have exited, so what they left is judged exactly as a crash's leftovers are.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from dicomrpc_server.errors import StartupError
from dicomrpc_server.storage.blobs import LocalBlobStore, fsync_dir, same_file, upload_files
from dicomrpc_server.storage.key_locks import KeyLocks
from dicomrpc_server.storage.lmdb_index import LmdbIndex
from dicomrpc_server.storage.quarantine import Suspect, quarantine

log = logging.getLogger(__name__)

INDEX_DIR = "index"
REBUILDING_DIR = "index.rebuilding"
# How many instances an error about missing files names.
NAMED_IN_ERRORS = 3


@dataclass
class Listing:
    """What the data folder holds, listed once before anything is changed.

    Blobs are kept as ids (an archive may hold millions); the few files that are not where
    their id puts them (copied into another shard folder) are kept with their paths.
    """

    store: LocalBlobStore
    blobs: set[str]
    uploads: dict[str, Path]
    elsewhere: dict[str, Path]

    @classmethod
    def of(cls, store: LocalBlobStore) -> Listing:
        """List ``blobs/`` and ``uploads/``."""
        blobs: set[str] = set()
        elsewhere: dict[str, Path] = {}
        for blob_id, shard, path in store.blob_entries():
            blobs.add(blob_id)
            if shard != blob_id[:8]:
                elsewhere[blob_id] = path
        return cls(store, blobs, store.upload_files(), elsewhere)

    def path(self, blob_id: str) -> Path:
        """Where a listed blob's file is."""
        return self.elsewhere.get(blob_id) or self.store.path(blob_id)


@dataclass
class Findings:
    """The listing set against the index: which files are garbage, which are unindexed."""

    listing: Listing
    names: set[str]
    removals: set[str]
    held: bool
    # Upload names beside their final names, the blob unnamed and not a pending removal.
    twins: set[str] = field(default_factory=set)
    # Blobs the index does not name, with no upload name beside them: the index lost them.
    lost: set[str] = field(default_factory=set)

    @property
    def behind(self) -> bool:
        """Whether the index is older than the files (it lost blobs it once named)."""
        return bool(self.lost)

    @property
    def unindexed(self) -> set[str]:
        """Blobs to keep although the index does not name them."""
        return self.lost | self.twins if self.behind else self.lost

    @property
    def missing(self) -> set[str]:
        """Named blobs with no file under either name."""
        return self.names - self.listing.blobs - self.listing.uploads.keys()


@dataclass
class RecoveryReport:
    """What start-up recovery did."""

    partial_uploads: int = 0
    unfinished_commits: int = 0
    rolled_forward: int = 0
    removals: int = 0
    quarantined: int = 0
    quarantine: Path | None = None
    missing: int = 0


def check_before_open(data_dir: Path, listing: Listing) -> None:
    """Refuse before the index is opened (and so created) when it is missing or being rebuilt.

    Raises
    ------
    StartupError
        ``REBUILD_UNFINISHED`` or ``INDEX_MISSING``.
    """
    if (data_dir / REBUILDING_DIR).exists():
        raise StartupError(
            "REBUILD_UNFINISHED",
            f"a rebuild of the index of data folder {data_dir} is unfinished "
            f"({data_dir / REBUILDING_DIR} exists); run `dicomrpc rebuild-index --data "
            f"{data_dir}` again to finish it",
        )
    if listing.blobs and not (data_dir / INDEX_DIR / "data.mdb").exists():
        raise _index_missing(data_dir, len(listing.blobs), "is missing")


def examine(listing: Listing, index: LmdbIndex | None) -> Findings:
    """Set the listing against the index's blob names, without changing anything.

    ``index`` is ``None`` when there is none to read (a rebuild): then nothing is named.
    """
    if index is None:
        findings = Findings(listing, names=set(), removals=set(), held=False)
    else:
        findings = Findings(
            listing,
            names=index.blob_ids(),
            removals=set(index.pending_removals()),
            held=index.held_instances(),
        )
    _sort_unnamed(findings)
    return findings


def _sort_unnamed(findings: Findings) -> None:
    """Sort the listed blobs the index does not name: twins of an upload, or lost."""
    listing = findings.listing
    for blob_id in listing.blobs - findings.names - findings.removals:
        upload = listing.uploads.get(blob_id)
        if upload is not None and same_file(upload, listing.path(blob_id)):
            findings.twins.add(blob_id)
        else:
            findings.lost.add(blob_id)


def settle(findings: Findings, store: LocalBlobStore, index: LmdbIndex | None) -> RecoveryReport:
    """Remove the garbage, finish pending removals and roll named uploads forward.

    Unindexed blobs are left where they are. ``index`` is ``None`` when the index cannot be
    read (a rebuild): then nothing is named, and every blob is kept.
    """
    report = RecoveryReport()
    if findings.removals:
        store.remove(sorted(findings.removals))
        if index is not None:
            index.forget_removals(sorted(findings.removals)).result()
        report.removals = len(findings.removals)
    listing = findings.listing
    blobs = listing.blobs
    touched: set[Path] = set()
    for name, upload in listing.uploads.items():
        if name in findings.removals:
            continue
        if name in findings.names:
            if name in blobs:
                upload.unlink(missing_ok=True)
            else:
                target = store.path(name)
                target.parent.mkdir(exist_ok=True)
                os.rename(upload, target)
                touched.add(target.parent)
                report.rolled_forward += 1
        elif name in findings.twins and not findings.behind and index is not None:
            listing.path(name).unlink(missing_ok=True)
            upload.unlink(missing_ok=True)
            touched.add(listing.path(name).parent)
            report.unfinished_commits += 1
        elif name in findings.twins:
            upload.unlink(missing_ok=True)  # the blob is kept, unindexed
        else:
            upload.unlink(missing_ok=True)
            report.partial_uploads += 1
        touched.add(upload.parent)
    for directory in touched:
        fsync_dir(directory)
    return report


def uploads_lock(folder: Path) -> str:
    """The name of the lock a process holds for as long as it uses its uploads folder."""
    return f"uploads {folder.name}"


def remove_process_folders(store: LocalBlobStore) -> None:
    """Remove the empty process folders under ``uploads/`` (their processes have all exited)."""
    removed = False
    for folder in store.process_folders():
        if folder != store.uploads_dir:
            try:
                folder.rmdir()
            except OSError:  # not empty: something there was kept
                continue
            removed = True
    if removed:
        fsync_dir(store.uploads_root)


def recover_departed(store: LocalBlobStore, index: LmdbIndex, locks: KeyLocks) -> RecoveryReport:
    """Settle the uploads of processes that exited while others go on serving the folder.

    A process folder whose lock can be taken has no living owner: its uploads are judged as
    start-up judges a crash's (an index lookup each, not a listing of the archive), then the
    folder is removed. Files of deleted instances still listed for removal are removed too.
    """
    report = RecoveryReport()
    for folder in store.process_folders():
        if folder == store.uploads_dir or not locks.acquire(uploads_lock(folder)):
            continue
        try:
            uploads = upload_files(folder)
            names = {name for name in uploads if index.has_blob(name)}
            blobs = {name for name in uploads if store.path(name).exists()}
            findings = examine_uploads(Listing(store, blobs, uploads, {}), names)
            settled = settle(findings, store, index)
            with contextlib.suppress(OSError):  # something there was kept
                folder.rmdir()
                fsync_dir(store.uploads_root)
        finally:
            locks.release(uploads_lock(folder))
        report.partial_uploads += settled.partial_uploads
        report.unfinished_commits += settled.unfinished_commits
        report.rolled_forward += settled.rolled_forward
    removals = index.pending_removals()
    if removals:
        store.remove(removals)
        index.forget_removals(removals).result()
        report.removals = len(removals)
    if report.partial_uploads or report.unfinished_commits or report.rolled_forward:
        log.warning(
            "settling the uploads of exited processes removed %d partial uploads and %d files "
            "of unfinished stores, and completed %d stores",
            report.partial_uploads,
            report.unfinished_commits,
            report.rolled_forward,
        )
    return report


def examine_uploads(listing: Listing, names: set[str]) -> Findings:
    """The findings of a few uploads, whose blob names the index was asked for one by one."""
    findings = Findings(listing, names=names, removals=set(), held=True)
    _sort_unnamed(findings)
    return findings


def recover(
    data_dir: Path,
    store: LocalBlobStore,
    index: LmdbIndex,
    listing: Listing,
    *,
    quarantine_unindexed: bool = False,
) -> RecoveryReport:
    """Check the data folder against its index and recover from a crash, or refuse to start.

    Raises
    ------
    StartupError
        ``INDEX_MISSING`` (files, but an index that never held an instance) or
        ``UNINDEXED_FILES`` (files the index does not name, unless ``quarantine_unindexed``);
        nothing has been changed then.
    """
    findings = examine(listing, index)
    if findings.lost and not findings.held:
        raise _index_missing(data_dir, len(findings.lost), "has never held an instance")
    unindexed = findings.unindexed
    if unindexed and not quarantine_unindexed:
        raise StartupError(
            "UNINDEXED_FILES",
            f"data folder {data_dir} holds {len(unindexed)} instance files that its index does "
            "not name: the index is older than the files (a restored backup, or files copied "
            "in). Nothing was changed. Either index them with `dicomrpc rebuild-index --data "
            f"{data_dir}`, or serve without them with `dicomrpc serve --data {data_dir} "
            f"--quarantine-unindexed`, which moves them to {data_dir / 'quarantine'}/",
        )
    report = settle(findings, store, index)
    remove_process_folders(store)
    if unindexed:
        report.quarantine = quarantine(
            data_dir,
            [
                Suspect(blob_id, listing.path(blob_id), "not named by the index at start-up")
                for blob_id in sorted(unindexed)
            ],
        )
        report.quarantined = len(unindexed)
        log.warning(
            "moved %d instance files the index does not name to %s (see its manifest.json)",
            report.quarantined,
            report.quarantine,
        )
    missing = findings.missing
    report.missing = len(missing)
    if missing:
        named = [index.blob_instance(blob_id) for blob_id in sorted(missing)[:NAMED_IN_ERRORS]]
        log.error(
            "%d indexed instances have no file in %s (%s%s); they stay in the index and "
            "retrieving them fails: restore the files, or run `dicomrpc rebuild-index --data %s`",
            len(missing),
            store.blobs_dir,
            ", ".join("/".join(uids) for uids in named if uids is not None),
            ", ..." if len(missing) > NAMED_IN_ERRORS else "",
            data_dir,
        )
    if report.partial_uploads or report.unfinished_commits or report.rolled_forward:
        log.warning(
            "recovery removed %d partial uploads and %d files of unfinished stores, and "
            "completed %d stores",
            report.partial_uploads,
            report.unfinished_commits,
            report.rolled_forward,
        )
    if report.removals:
        log.warning("recovery finished removing the files of %d deleted instances", report.removals)
    return report


def _index_missing(data_dir: Path, files: int, state: str) -> StartupError:
    return StartupError(
        "INDEX_MISSING",
        f"data folder {data_dir} holds {files} instance files but its index "
        f"({data_dir / INDEX_DIR}) {state}. Nothing was changed. If the index is on a disk "
        "that is not mounted, or in a backup, mount or restore it; otherwise rebuild it from "
        f"the files with `dicomrpc rebuild-index --data {data_dir}`",
    )
