"""Instance files as objects in S3-compatible storage (``--blobs s3://bucket/prefix``).

Objects are named ``<prefix>/<blob id>.dcm`` (a random id, never a UID) and written once.
Uploads spool to ``s3-uploads/`` in the data folder, and a marker there says which objects are
not yet committed (:mod:`.spooled`, the rule every store outside the data folder keeps); an
upload is sent in parts, concurrently, past :data:`MULTIPART_BYTES` (boto3's transfer
manager), and the object is durable when the upload returns.

Reads are ranged GETs: one per frame range, one streamed GET per whole instance or bulk data
value, read a chunk at a time as the consumer asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import urlsplit

import boto3
import botocore.config
import botocore.exceptions
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig

from dicomrpc_server.errors import Code, ServiceError, StartupError
from dicomrpc_server.storage.protocols import BlobRef
from dicomrpc_server.storage.spooled import SpooledBlobStore

log = logging.getLogger(__name__)

UPLOADS_DIR = "s3-uploads"
OBJECT_SUFFIX = ".dcm"
# Uploads larger than this go in parts of PART_BYTES, several at once.
MULTIPART_BYTES = 64 * 1024 * 1024
PART_BYTES = 16 * 1024 * 1024
# A worker's file object over an object reads this much per GET (pydicom reads in small steps).
READ_BUFFER = 256 * 1024
# The most keys one DeleteObjects request may name (the S3 API's limit).
DELETE_BATCH = 1000
_MISSING = {"NoSuchKey", "404", "NotFound"}
# What boto3 raises: an error answer, or no answer (connection, timeout, a body cut short).
_S3_ERRORS = (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)


@dataclass(frozen=True)
class S3Location:
    """Where the objects are: bucket, key prefix, endpoint and region (picklable).

    Credentials are not part of it: boto3 reads them from the standard variables
    (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``) or the shared
    files, in every process, as it reads ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` when
    ``region`` is empty.
    """

    bucket: str
    prefix: str = ""
    endpoint: str = ""
    region: str = ""

    @classmethod
    def parse(cls, url: str, endpoint: str = "", region: str = "") -> S3Location:
        """The location of ``s3://bucket/prefix`` (``ValueError`` naming what is wrong)."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"--blobs {url!r} is not s3://bucket or s3://bucket/prefix")
        if parts.query or parts.fragment:
            raise ValueError(f"--blobs {url!r} has a query or fragment; name a bucket and prefix")
        return cls(parts.netloc, parts.path.strip("/"), endpoint, region)

    @property
    def url(self) -> str:
        """``s3://bucket/prefix``, as the command line takes it."""
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, blob_id: str) -> str:
        """The object key of a blob id."""
        name = f"{blob_id}{OBJECT_SUFFIX}"
        return f"{self.prefix}/{name}" if self.prefix else name

    @property
    def list_prefix(self) -> str:
        """The prefix every object key of this store starts with."""
        return f"{self.prefix}/" if self.prefix else ""

    def client(self) -> Any:
        """The S3 client of this process for the location (clients are thread-safe; one is kept)."""
        with _clients_lock:
            found = _clients.get(self)
            if found is None:
                options: dict[str, Any] = {"retries": {"max_attempts": 5, "mode": "standard"}}
                options["max_pool_connections"] = 32
                if self.endpoint:
                    # S3-compatible services answer on a host name or address of their own, and
                    # many take no checksum trailers on uploads: send them only where required.
                    options["s3"] = {"addressing_style": "path"}
                    options["request_checksum_calculation"] = "when_required"
                    options["response_checksum_validation"] = "when_required"
                found = boto3.session.Session().client(
                    "s3",
                    endpoint_url=self.endpoint or None,
                    region_name=self.region or None,
                    config=botocore.config.Config(**options),
                )
                _clients[self] = found
            return found

    def open_file(self, blob_id: str) -> BinaryIO:
        """A seekable, buffered file object over the blob's object (ranged GETs)."""
        return cast(BinaryIO, _ObjectFile(S3Reader(self.client(), self.bucket, self.key(blob_id))))


# One client per location and process: worker processes build theirs on their first job.
_clients: dict[S3Location, Any] = {}
_clients_lock = threading.Lock()


def _error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Reader:
    """One object opened for reading: ranged GETs, the size asked for only when needed.

    Opening costs no request; a missing object raises ``FileNotFoundError`` at the first read
    (or at :attr:`size`).
    """

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self._client = client
        self._bucket = bucket
        self._key = key
        self._size: int | None = None

    @property
    def size(self) -> int:
        """The object's size (a HEAD request the first time)."""
        if self._size is None:
            try:
                head = self._client.head_object(Bucket=self._bucket, Key=self._key)
            except _S3_ERRORS as exc:
                raise self._translate(exc) from exc
            self._size = int(head["ContentLength"])
        return self._size

    def _translate(self, exc: Exception) -> Exception:
        """``FileNotFoundError`` for a missing object, UNAVAILABLE for any other failure."""
        where = f"s3://{self._bucket}/{self._key}"
        if isinstance(exc, botocore.exceptions.ClientError) and _error_code(exc) in _MISSING:
            return FileNotFoundError(f"no object {where}")
        return ServiceError(
            Code.UNAVAILABLE,
            "SERVER_UNAVAILABLE",
            f"the blob store cannot be read ({where}): {exc}; retrying may succeed",
            metadata={"object": where},
        )

    def _get(self, offset: int, length: int) -> Any:
        """The streaming body of bytes ``offset .. offset + length``, or None past the end."""
        try:
            response = self._client.get_object(
                Bucket=self._bucket, Key=self._key, Range=f"bytes={offset}-{offset + length - 1}"
            )
        except _S3_ERRORS as exc:
            if (
                isinstance(exc, botocore.exceptions.ClientError)
                and _error_code(exc) == "InvalidRange"
            ):  # at or past the end
                return None
            raise self._translate(exc) from exc
        total = str(response.get("ContentRange", "")).rpartition("/")[2]
        if total.isdigit():
            self._size = int(total)
        return response["Body"]

    def pread(self, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes at ``offset``: one ranged GET (blocking)."""
        if size <= 0:
            return b""
        body = self._get(offset, size)
        if body is None:
            return b""
        try:
            with contextlib.closing(body):
                data: bytes = body.read()
        except _S3_ERRORS as exc:  # the connection failed while the body was read
            raise self._translate(exc) from exc
        return data

    async def chunks(self, offset: int, length: int, chunk: int) -> AsyncIterator[bytes]:
        """The bytes of ``offset .. offset + length``: one GET, its body read chunk by chunk."""
        if length <= 0:
            return
        body = await asyncio.to_thread(self._get, offset, length)
        if body is None:
            return
        try:
            while data := await asyncio.to_thread(self._read_body, body, chunk):
                yield data
        finally:
            body.close()

    def _read_body(self, body: Any, size: int) -> bytes:
        try:
            data: bytes = body.read(size)
        except _S3_ERRORS as exc:
            raise self._translate(exc) from exc
        return data

    def close(self) -> None:
        """Nothing to release: every GET's body is closed when it has been read."""


class _ObjectFile(io.RawIOBase):
    """A seekable file over an object, for pydicom and the codecs in worker processes.

    Small reads are served from a window of :data:`READ_BUFFER` bytes fetched in one GET
    (pydicom reads a data set a few bytes at a time). It is deliberately not an
    ``io.BufferedReader``: pydicom takes one of those for a local file and reopens it by name
    to read deferred values, where this one must be read from itself.
    """

    def __init__(self, reader: S3Reader) -> None:
        self._reader = reader
        self._position = 0
        self._window = b""
        self._window_start = 0
        reader.size  # noqa: B018 - a missing object fails here, as open() of a file would

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            position = offset
        elif whence == io.SEEK_CUR:
            position = self._position + offset
        elif whence == io.SEEK_END:
            position = self._reader.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if position < 0:
            raise OSError(f"negative seek position {position}")
        self._position = position
        return position

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer``; fewer bytes only at the end of the object.

        Callers such as pydicom take a short read for the end of the file, so a read that
        starts in the window and runs past it goes on from the object.
        """
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view):
            wanted = len(view) - filled
            at = self._position - self._window_start
            if 0 <= at < len(self._window):
                data = self._window[at : at + wanted]
            elif wanted >= READ_BUFFER:  # a large read goes straight to the object
                data = self._reader.pread(wanted, self._position)
            else:
                self._window = self._reader.pread(READ_BUFFER, self._position)
                self._window_start = self._position
                data = self._window[:wanted]
            if not data:
                break
            view[filled : filled + len(data)] = data
            filled += len(data)
            self._position += len(data)
        return filled


class S3Objects:
    """The objects of one bucket and prefix: the :class:`~.spooled.ObjectStore` of S3.

    Parameters
    ----------
    location
        The bucket and prefix (and endpoint, region).
    multipart_bytes, part_bytes
        Uploads of more than ``multipart_bytes`` go in parts of ``part_bytes`` (S3 takes parts
        of 5 MiB and more, all but the last).
    """

    spool_folder = UPLOADS_DIR

    def __init__(
        self,
        location: S3Location,
        *,
        multipart_bytes: int = MULTIPART_BYTES,
        part_bytes: int = PART_BYTES,
    ) -> None:
        self.location = location
        self._client = location.client()
        self._transfer = TransferConfig(
            multipart_threshold=multipart_bytes, multipart_chunksize=part_bytes, max_concurrency=4
        )

    @property
    def url(self) -> str:
        """``s3://bucket/prefix``."""
        return self.location.url

    def check(self) -> None:
        """Fail at start-up, naming the bucket, when it cannot be reached or does not exist."""
        try:
            self._client.head_bucket(Bucket=self.location.bucket)
        except _S3_ERRORS as exc:
            raise StartupError(
                "BLOB_STORE_UNAVAILABLE",
                f"the S3 bucket of --blobs {self.location.url} cannot be used "
                f"(endpoint {self.location.endpoint or 'from the AWS configuration'}): {exc}. "
                "Check the bucket name, --s3-endpoint and the AWS_* credential variables",
            ) from exc

    def new_blob_id(self) -> str:
        """A random id (object keys need no shard folders)."""
        return uuid.uuid4().hex

    def key(self, blob_id: str) -> str:
        """The blob's object key."""
        return self.location.key(blob_id)

    def put(self, path: Path, blob_id: str) -> None:
        """Upload the file as the blob's object (durable when S3 has answered)."""
        key = self.location.key(blob_id)
        try:
            self._client.upload_file(
                str(path),
                self.location.bucket,
                key,
                ExtraArgs={"ContentType": "application/dicom"},
                Config=self._transfer,
            )
        except (
            Boto3Error,
            botocore.exceptions.BotoCoreError,
            botocore.exceptions.ClientError,
        ) as exc:
            # An OSError, as a failed write to a file is: the store answers STORAGE_FAILURE.
            raise OSError(f"uploading s3://{self.location.bucket}/{key}: {exc}") from exc

    def open(self, blob_id: str) -> S3Reader:
        """A reader of the blob's object (no request until the first read)."""
        return S3Reader(self._client, self.location.bucket, self.location.key(blob_id))

    def ref(self, blob_id: str) -> BlobRef:
        """A reference worker processes open through their own client."""
        return BlobRef(self.location, blob_id)

    def remove(self, blob_ids: list[str]) -> None:
        """Delete the objects (missing ones are not an error), a thousand per request."""
        keys = [self.location.key(blob_id) for blob_id in blob_ids]
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            try:
                response = self._client.delete_objects(
                    Bucket=self.location.bucket,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )
            except _S3_ERRORS as exc:
                raise OSError(f"deleting objects of s3://{self.location.bucket}: {exc}") from exc
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise OSError(
                    f"{len(errors)} objects of s3://{self.location.bucket} could not be "
                    f"deleted; {first.get('Key')}: {first.get('Code')} {first.get('Message')}"
                )

    def blob_ids(self) -> Iterator[str]:
        """Every blob id under the prefix (one listing request per thousand objects)."""
        return (blob_id for blob_id, _ in self.blob_sizes())

    def blob_sizes(self) -> Iterator[tuple[str, int]]:
        """Every blob id under the prefix with its object's size (what ``migrate`` verifies)."""
        paginator = self._client.get_paginator("list_objects_v2")
        prefix = self.location.list_prefix
        for page in paginator.paginate(Bucket=self.location.bucket, Prefix=prefix):
            for item in page.get("Contents", ()):
                name = str(item["Key"])[len(prefix) :]
                if name.endswith(OBJECT_SUFFIX) and "/" not in name:
                    yield name[: -len(OBJECT_SUFFIX)], int(item["Size"])


class S3BlobStore(SpooledBlobStore):
    """The S3 :class:`~dicomrpc_server.storage.protocols.BlobStore`: objects, spooled uploads.

    Parameters
    ----------
    location
        The bucket and prefix (and endpoint, region).
    data_dir
        The data folder: uploads spool to, and their markers are kept in, ``s3-uploads/``.
    uploads_dir
        Another folder for them (one per process of a group).
    multipart_bytes, part_bytes
        As :class:`S3Objects` takes them.
    """

    def __init__(
        self,
        location: S3Location,
        data_dir: Path,
        *,
        uploads_dir: Path | None = None,
        multipart_bytes: int = MULTIPART_BYTES,
        part_bytes: int = PART_BYTES,
    ) -> None:
        objects = S3Objects(location, multipart_bytes=multipart_bytes, part_bytes=part_bytes)
        super().__init__(objects, data_dir, uploads_dir=uploads_dir)
        self.location = location
