"""The store pipeline for one instance: receive, check, persist, index, answer.

Order makes a crash harmless: bytes stream to an upload file named by the instance's future
blob id; the file is parsed and validated; it is fsynced; the index writer gives it its final
name in the blob store and then commits the one transaction that records it; the upload name is
removed. An instance is acknowledged only after that commit. A crash before the commit leaves
an upload the index does not name (removed at start-up, with its final name if it had one);
after it, a blob the index names (kept); never an index entry without its file
(:mod:`dicomrpc_server.storage.blobs`, :mod:`dicomrpc_server.storage.recovery`).

Short of a crash, nothing is left behind: an instance owns its upload file from its first byte
until it hands the file to its commit, and however it ends before that (failed, dropped, its
request cancelled) the file is removed and its descriptor closed. A write that finds no space
fails that instance alone, with ``STORAGE_FULL`` (see :mod:`dicomrpc_server.storage.space`).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from dicomrpc_server.config import Settings
from dicomrpc_server.dicom.validation import (
    WARNING_ATTRIBUTES,
    AttributeProblem,
    ValidatedInstance,
)
from dicomrpc_server.errors import Code, ServiceError
from dicomrpc_server.paths import instance_path
from dicomrpc_server.storage.index_records import instance_exists_error
from dicomrpc_server.storage.key_locks import KeyLocks
from dicomrpc_server.storage.protocols import BlobStore, Index, Upload
from dicomrpc_server.storage.records_pb2 import InstanceRecord
from dicomrpc_server.storage.space import space_errno, storage_full
from dicomrpc_server.store.prepare import PreparedInstance, prepare
from dicomrpc_server.workers import WorkerPool

log = logging.getLogger(__name__)


class Outcome(enum.Enum):
    """What became of one instance."""

    STORED = "stored"
    STORED_WITH_WARNINGS = "stored_with_warnings"
    FAILED = "failed"
    # Stored before with the same bytes: nothing changed (a retry, told from a conflict).
    ALREADY_STORED = "already_stored"


@dataclass
class InstanceResult:
    """The result of storing one instance, as every adapter reports it."""

    index: int
    client_reference: str
    outcome: Outcome = Outcome.FAILED
    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""
    sop_class_uid: str = ""
    failure: ServiceError | None = None
    warning_reason: int = 0
    problems: list[AttributeProblem] = field(default_factory=list)
    version: int = 0
    size_bytes: int = 0
    transfer_syntax_uid: str = ""

    @property
    def failure_reason(self) -> int:
        """The DICOM FailureReason of a failed instance (272 when the error has none), else 0."""
        if self.failure is None:
            return 0
        return self.failure.dicom_status or 272

    @property
    def retrieve_location(self) -> str:
        """The DICOMweb path of a stored instance, else empty."""
        if self.outcome is Outcome.FAILED:
            return ""
        return instance_path(self.study_uid, self.series_uid, self.sop_uid)


def _same_bytes(blobs: BlobStore, blob_id: str, path: Path, chunk: int = 1 << 20) -> bool:
    """Whether the stored blob and the file at ``path`` hold the same bytes (blocking)."""
    try:
        reader = blobs.open(blob_id)
    except FileNotFoundError:
        return False
    try:
        with open(path, "rb") as received:
            offset = 0
            while True:
                mine = received.read(chunk)
                try:
                    theirs = reader.pread(len(mine) or 1, offset)
                except FileNotFoundError:
                    return False
                if mine != theirs[: len(mine)] or (not mine and theirs):
                    return False
                if not mine:
                    return True
                offset += len(mine)
    finally:
        reader.close()


def _lock_name(sop: str) -> str:
    """The name of the lock an instance being stored holds."""
    return f"store {sop}"


def being_stored_error(sop: str) -> ServiceError:
    """The 45071 of an instance another request is storing: sent again later, it is found."""
    return ServiceError(
        Code.ALREADY_EXISTS,
        "INSTANCE_STORE_CONFLICT",
        f"the instance {sop} is being stored by another request",
        dicom_status=45071,
        metadata={"sop_instance_uid": sop},
    )


def _failure(reason: str, message: str, status: int, **metadata: str) -> ServiceError:
    return ServiceError(
        Code.INVALID_ARGUMENT, reason, message, dicom_status=status, metadata=metadata
    )


class StoreCore:
    """Stores instances: the one implementation behind StoreInstances and STOW-RS.

    Parameters
    ----------
    settings
        Limits (instance size, inflated size, pixels per frame, sequence nesting depth).
    blobs
        Where files go.
    index
        Where they are recorded.
    workers
        The worker processes parsing runs in, off the event loop (a pool of its own: no decode
        ever holds up a store).
    locks
        The locks shared with the other processes serving the archive: an instance being
        stored holds one named by its SOP instance UID until its commit is done.
    """

    def __init__(
        self,
        settings: Settings,
        blobs: BlobStore,
        index: Index,
        workers: WorkerPool,
        locks: KeyLocks,
    ) -> None:
        self.settings = settings
        self.blobs = blobs
        self.index = index
        self.workers = workers
        # Instances answered, by (outcome, failure reason): what /metrics reports.
        self.outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
        self.locks = locks
        # SOP instance UIDs being persisted right now by this process, with the stream storing
        # each and its commit: a second store of one of them from another stream is 45071, as
        # is one while another process holds the instance's lock.
        self._in_flight: dict[str, tuple[StoreStream, asyncio.Future[int]]] = {}

    def begin(
        self,
        stream: StoreStream,
        client_reference: str = "",
        declared_size: int = 0,
        reception: Reception | None = None,
    ) -> Ingest:
        """Start the next instance of ``stream``: to be received, or received already.

        ``reception`` holds the bytes of an instance received off the event loop (see
        :class:`Reception`); without it the instance is received through
        :meth:`Ingest.write`.
        """
        ingest = Ingest(self, stream, client_reference, reception or Reception(self, declared_size))
        stream.count += 1
        return ingest

    def receive(self) -> Reception:
        """Start receiving an instance's bytes on another thread than the event loop's."""
        return Reception(self)

    def storage_error(self, exc: Exception, step: str) -> ServiceError:
        """The failure of an instance whose file or index write failed with ``exc``."""
        if space_errno(exc) is not None:
            log.warning("%s: %s", step, exc)
            return storage_full(exc, self.settings.data_dir, step)
        log.error("%s failed", step, exc_info=exc)
        return _failure(
            "STORAGE_FAILURE", f"the instance could not be stored: {step} failed: {exc}", 272
        )


class StoreStream:
    """One store request: its study restriction, and the order its instances are decided in.

    Instances of a stream are parsed in parallel, but each is checked against the archive
    (exists? being stored?) only after the one sent before it, so the results are those of
    sending them one after the other: an instance sent twice in one request is stored once and
    then reported as existing (45070), never as a concurrent conflict.
    """

    def __init__(self, study_restriction: str = "") -> None:
        self.study_restriction = study_restriction
        self.count = 0
        self.last_checked: asyncio.Future[None] | None = None


class Reception:
    """An instance's bytes on their way to its upload file, with what went wrong receiving them.

    The file is created at the first byte: an instance that never receives one holds none.
    Past the size limit, or once a write failed, bytes are dropped and the file is removed at
    once; the instance then fails when it is finished, and the request's other instances go
    on. Safe to use from two threads (a DIMSE association receives on its own and hands the
    reception to the event loop once the last byte is in): each call holds a lock.
    """

    def __init__(self, core: StoreCore, declared_size: int = 0) -> None:
        self._core = core
        self.declared = declared_size
        self.received = 0
        self.too_large = declared_size > core.settings.max_instance_bytes
        # Why the bytes are dropped since a write of them failed (no space, say).
        self.write_failure: ServiceError | None = None
        self._upload: Upload | None = None
        self._ended = False
        self._lock = threading.Lock()

    def write(self, data: bytes | memoryview) -> None:
        """Append bytes (dropped once the reception ended, failed or is over the limit)."""
        with self._lock:
            self.received += len(data)
            if self._ended or self.too_large or self.write_failure is not None or not data:
                return
            if self.received > self._core.settings.max_instance_bytes:
                self.too_large = True
                self._drop()
                return
            try:
                if self._upload is None:
                    self._upload = self._core.blobs.new_upload()
                self._upload.write(data)
            except OSError as exc:
                self.write_failure = self._core.storage_error(exc, "writing the instance's file")
                self._drop()

    @property
    def upload(self) -> Upload | None:
        """The file the bytes went to (none before the first byte, or once removed)."""
        return self._upload

    def take(self) -> Upload | None:
        """Hand the upload over to the caller, who removes or commits it from now on."""
        with self._lock:
            upload, self._upload = self._upload, None
            return upload

    def discard(self) -> None:
        """End the reception here: remove the upload unless it was taken (idempotent)."""
        with self._lock:
            self._ended = True
            self._drop()

    def _drop(self) -> None:
        upload, self._upload = self._upload, None
        if upload is None:
            return
        try:
            upload.discard()
        except OSError:
            # Start-up recovery removes what is left under uploads/.
            log.warning("could not remove the upload %s", upload.path, exc_info=True)


class Ingest:
    """One instance on its way in: feed it bytes with :meth:`write`, then :meth:`finish`.

    The instance owns its reception, and with it the upload file, until it hands the file to
    its commit. :meth:`abandon` removes the file wherever the instance ends; it may be called
    any number of times, from any path, and :meth:`finish` always ends with it.
    """

    def __init__(
        self, core: StoreCore, stream: StoreStream, client_reference: str, reception: Reception
    ) -> None:
        self._core = core
        self._stream = stream
        self._reception = reception
        self._restriction = stream.study_restriction
        self.result = InstanceResult(stream.count, client_reference)
        # Decided after the previous instance of the stream (see StoreStream).
        self._after = stream.last_checked
        self._checked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        stream.last_checked = self._checked

    def write(self, data: bytes | memoryview) -> None:
        """Append a chunk (see :class:`Reception` for the size limit and failed writes)."""
        self._reception.write(data)

    def abandon(self) -> None:
        """End the instance here: remove its upload unless a commit owns it (idempotent)."""
        self._reception.discard()
        if not self._checked.done():
            self._checked.set_result(None)  # the next instance of the stream is not held up

    async def finish(self) -> InstanceResult:
        """Check, persist and index the instance; return its result (never raises).

        The outcome is counted in the core's tally (what ``/metrics`` reports).
        """
        result = await self._finish_safely()
        failure = result.failure
        self._core.outcomes[result.outcome.value, failure.reason if failure else ""] += 1
        return result

    async def _finish_safely(self) -> InstanceResult:
        try:
            return await self._finish()
        except ServiceError as exc:
            self.result.failure = exc
            return self.result
        except Exception as exc:
            if space_errno(exc) is not None:
                self.result.failure = self._core.storage_error(exc, "storing the instance")
                return self.result
            log.exception("storing instance %d failed", self.result.index)
            self.result.failure = _failure(
                "STORAGE_FAILURE", f"the instance could not be stored: {exc}", 272
            )
            return self.result
        finally:
            self.abandon()

    async def _finish(self) -> InstanceResult:
        core = self._core
        limit = core.settings.max_instance_bytes
        reception = self._reception
        received, declared = reception.received, reception.declared
        if reception.too_large:
            raise _failure(
                "INSTANCE_TOO_LARGE",
                f"the instance is {max(received, declared)} bytes, more than the "
                f"server's limit of {limit} bytes",
                272,
                limit=str(limit),
            )
        if reception.write_failure is not None:
            raise reception.write_failure
        if declared and received != declared:
            raise _failure(
                "INSTANCE_TRUNCATED",
                f"{received} bytes were sent, but the header announced {declared}",
                272,
            )
        if received == 0:
            raise _failure("INSTANCE_UNPARSABLE", "the instance has no bytes", 272)
        upload = reception.upload
        assert upload is not None
        try:
            upload.close()  # buffered bytes are written now: this too may find no space
        except OSError as exc:
            raise core.storage_error(exc, "writing the instance's file") from exc
        settings = core.settings
        prepared = await core.workers.run(
            prepare,
            upload.path,
            settings.max_sequence_depth,
            what=f"parsing the instance {self.result.client_reference or ''}".rstrip(),
            max_inflated=settings.max_instance_bytes,
            max_frame_pixels=settings.max_frame_pixels,
        )
        validated = prepared.validated
        result = self.result
        result.study_uid, result.series_uid = validated.study_uid, validated.series_uid
        result.sop_uid, result.sop_class_uid = validated.sop_uid, validated.sop_class_uid
        result.transfer_syntax_uid = prepared.transfer_syntax_uid
        if self._restriction and validated.study_uid != self._restriction:
            raise _failure(
                "STUDY_UID_MISMATCH",
                f"the instance's StudyInstanceUID {validated.study_uid} differs from the study "
                f"{self._restriction} this request stores to",
                43265,
                study_instance_uid=validated.study_uid,
            )
        if self._after is not None:
            await asyncio.wait([self._after])
        sop = validated.sop_uid
        earlier = core._in_flight.get(sop)
        if earlier is not None and earlier[0] is self._stream:
            # The same request sent this instance twice: the second waits for the first and
            # then finds it stored (45070), as if they had been sent one after the other.
            await asyncio.wait([earlier[1]])
            earlier = core._in_flight.get(sop)
        if earlier is not None or not core.locks.acquire(_lock_name(sop)):
            raise being_stored_error(sop)
        # Looked up once the lock is held: a store in another process that held it before
        # has committed, and is found here.
        try:
            where = core.index.locate_sop(sop)
        except BaseException:
            core.locks.release(_lock_name(sop))
            raise
        if where is not None:
            core.locks.release(_lock_name(sop))
            same_place = where == (validated.study_uid, validated.series_uid)
            record = core.index.get_instance(*where, sop) if same_place else None
            if record is not None and await self._stored_identically(upload, record):
                result.outcome = Outcome.ALREADY_STORED
                result.version = record.version
                result.size_bytes = upload.size
                self._checked.set_result(None)
                return result
            raise instance_exists_error(
                validated.study_uid,
                validated.series_uid,
                sop,
                where=(
                    ""
                    if where == (validated.study_uid, validated.series_uid)
                    else f"{where[0]}, series {where[1]}"
                ),
            )
        self._check_series(validated)
        commit = asyncio.ensure_future(self._commit(upload, prepared))
        core._in_flight[sop] = (self._stream, commit)
        self._checked.set_result(None)
        # From here on the upload belongs to the commit task.
        reception.take()
        # Shielded: once the file is being persisted, a cancelled stream must not leave the
        # file and the index disagreeing; the commit finishes either way.
        version = await asyncio.shield(commit)
        result.version = version
        result.size_bytes = upload.size
        result.problems = validated.problems
        result.warning_reason = validated.warning_reason
        result.outcome = Outcome.STORED_WITH_WARNINGS if validated.problems else Outcome.STORED
        return result

    def _check_series(self, validated: ValidatedInstance) -> None:
        """Warn when the instance's series UID is already a series of another study.

        A series belongs to one study (PS3.3 C.7.3.1). The archive keys series under their
        study, so it stores such an instance (it is readable and findable under the study it
        names) as a series of its own, but says so on every instance, since a sender that
        reuses a series UID across studies usually has a bug or merged two patients' studies.
        """
        others = [
            study
            for study in self._core.index.studies_of_series(validated.series_uid)
            if study != validated.study_uid
        ]
        if others:
            validated.problems.append(
                AttributeProblem(
                    "0020000E",
                    "SeriesInstanceUID",
                    f"series {validated.series_uid} is also a series of study "
                    f"{', '.join(others[:3])}: a series belongs to one study; stored as a series "
                    f"of study {validated.study_uid}",
                    WARNING_ATTRIBUTES,
                )
            )

    async def _stored_identically(self, upload: Upload, record: InstanceRecord) -> bool:
        """Whether the stored file of ``record`` holds exactly the bytes just received.

        Both had their preamble zeroed as they were written, so a file sent again is equal
        byte for byte. Read in a thread, a chunk of each at a time; a file removed meanwhile (a
        delete) is not the same.
        """
        if record.size_bytes != upload.size:
            return False
        upload.close()
        return await asyncio.get_running_loop().run_in_executor(
            None, _same_bytes, self._core.blobs, record.blob_id, upload.path
        )

    async def _commit(self, upload: Upload, prepared: PreparedInstance) -> int:
        core = self._core
        loop = asyncio.get_running_loop()
        try:
            prepared.new.record.blob_id = await loop.run_in_executor(
                None, core.blobs.persist, upload
            )
            version = await core.index.add_instance(prepared.new)
        except asyncio.CancelledError:
            # The loop is going away; the commit may still happen. The files stay for start-up
            # to judge: kept if the index names them, removed if it does not.
            raise
        except BaseException as exc:
            core.blobs.discard(upload)
            if isinstance(exc, OSError):  # making the file durable found no space, say
                raise core.storage_error(exc, "making the instance's file durable") from exc
            if isinstance(exc, ServiceError) and exc.dicom_status == 45070:
                # Not stored when it was looked up under the lock, stored at the commit: a node
                # sharing the PostgreSQL index (whose nodes share no lock file) stored it
                # meanwhile. The answer is the one this process gives to an overlapping store.
                raise being_stored_error(prepared.validated.sop_uid) from exc
            raise
        finally:
            core._in_flight.pop(prepared.validated.sop_uid, None)
            core.locks.release(_lock_name(prepared.validated.sop_uid))
        core.blobs.committed(upload)
        return version
