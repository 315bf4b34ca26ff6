"""Reading a study or series over the server's HTTP gateway, with a retrieve grant.

The server's gRPC API grants a short-lived signed URL (``RetrieveService.GetRetrieveUrl``) of
its WADO-RS retrieve (PS3.18 10.4): the same stored bytes RetrieveStudy streams, sent as one
``multipart/related`` body, which moves large studies faster than gRPC's messages. This module
reads that body with the standard library only (``http.client``, ``ssl``) and turns it into
the very stream RetrieveStudy gives (an ``InstanceHeader`` message, then the instance's bytes
as ``memoryview`` chunks), so that :mod:`dicomrpc.retrieval` groups or saves either the same
way and the results are identical.

The body is read into fresh buffers of :data:`CHUNK` bytes (``readinto``, no copy); each
instance's bytes are handed out as views of them, delimited by the part's Content-Length
(or, without one, found with ``bytes.find``). At most one buffer is held beyond what the
caller keeps.

Anything that goes wrong before the first part (the URL refused, the connection failing, a
body that is not the expected multipart) is :class:`PullRefused`: the client then streams
over gRPC. A failure after that raises :class:`~dicomrpc.errors.DicomRpcError`.
"""

from __future__ import annotations

import functools
import http.client
import os
import ssl
import tempfile
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc

from dicomrpc.errors import DicomRpcError
from dicomrpc.v1 import retrieve_service_pb2 as rpb

if TYPE_CHECKING:
    from dicomrpc.client import TlsConfig

ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
"""The stored bytes, whatever their transfer syntax (PS3.18 8.7.3.5.2)."""
CHUNK = 1024 * 1024
TIMEOUT_S = 120.0
"""How long one read of the body may stall before the pull fails."""
INSTANCE_HEADER = b"dicomrpc-instance"
MAX_PART_HEADERS = 16 * 1024
MAX_DELIMITER_LINE = 1024


class PullRefused(Exception):
    """The pull could not start; nothing was read, the caller may stream over gRPC."""


def broken(message: str) -> DicomRpcError:
    """The error of a pull that failed after it started."""
    return DicomRpcError(grpc.StatusCode.UNAVAILABLE, f"the HTTP retrieve failed: {message}")


@functools.lru_cache(maxsize=8)
def ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """An SSL context trusting what the gRPC channel trusts, with its client certificate.

    Kept per TLS configuration: a client's pulls share one (and its session cache).
    """
    context = ssl.create_default_context()
    if tls.root_certificates:
        context.load_verify_locations(cadata=tls.root_certificates.decode("ascii"))
    if tls.certificate_chain and tls.private_key:
        # ssl loads a certificate and key from files only: private ones, removed at once.
        with tempfile.TemporaryDirectory() as folder:
            cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
            for path, data in ((cert, tls.certificate_chain), (key, tls.private_key)):
                with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as fp:
                    fp.write(data)
            context.load_cert_chain(cert, key)
    return context


def open_body(url: str, tls: TlsConfig | None) -> Body:
    """GET the signed URL: its body, once it is the multipart it should be.

    Raises
    ------
    PullRefused
        When the request fails or is refused, or the response is not multipart/related.
    """
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port
    connection: http.client.HTTPConnection | None = None
    if parts.scheme not in ("http", "https"):
        raise PullRefused(f"a URL of the scheme {parts.scheme!r}")
    try:
        if parts.scheme == "https":
            context = ssl_context(tls) if tls is not None else ssl.create_default_context()
            connection = http.client.HTTPSConnection(host, port, timeout=TIMEOUT_S, context=context)
        else:
            connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request("GET", target, headers={"Accept": ACCEPT})
        response = connection.getresponse()
    except (OSError, http.client.HTTPException, ssl.SSLError, ValueError) as exc:
        if connection is not None:
            connection.close()
        raise PullRefused(str(exc)) from None
    boundary = _boundary(response.getheader("Content-Type", ""))
    if response.status != 200 or boundary is None:
        connection.close()
        raise PullRefused(f"HTTP {response.status} {response.reason}")
    return Body(connection, response, boundary)


def _boundary(content_type: str) -> bytes | None:
    """The boundary of a ``multipart/related`` Content-Type, or ``None``."""
    kind, _, rest = content_type.partition(";")
    if kind.strip().lower() != "multipart/related":
        return None
    for item in rest.split(";"):
        name, _, value = item.strip().partition("=")
        if name.lower() == "boundary" and value:
            return value.strip('"').encode("latin-1")
    return None


class Body:
    """The body read into fresh buffers, each handed out once and never written again.

    The unread bytes are ``_buffer[_start:_end]``.
    """

    def __init__(
        self,
        connection: http.client.HTTPConnection,
        response: http.client.HTTPResponse,
        boundary: bytes,
    ) -> None:
        self.connection = connection
        self.response = response
        self.boundary = boundary
        self._response = response
        self._buffer = bytearray()
        self._start = self._end = 0

    def _fill(self) -> None:
        """Read the next buffer, after the unread tail of the last one (a few bytes at most)."""
        kept = self._end - self._start
        buffer = bytearray(CHUNK + kept)
        buffer[:kept] = memoryview(self._buffer)[self._start : self._end]
        try:
            n = self._response.readinto(memoryview(buffer)[kept:])
        except http.client.IncompleteRead:
            n = 0
        except (OSError, http.client.HTTPException) as exc:
            raise broken(f"{type(exc).__name__}: {exc}") from None
        if not n:
            raise broken(
                "the server cut the response before its end (its log says why; "
                "Client(..., http_retrieve=False) streams over gRPC, which says it too)"
            )
        self._buffer, self._start, self._end = buffer, 0, kept + n

    def until(self, end: bytes, limit: int) -> bytes:
        """The bytes up to ``end`` (consumed, not returned), at most ``limit`` of them."""
        collected = bytearray()
        while True:
            if self._start == self._end:
                self._fill()
            search_from = max(0, len(collected) - len(end) + 1)
            before = len(collected)
            stop = min(self._end, self._start + limit + len(end) - before)
            collected += memoryview(self._buffer)[self._start : stop]
            found = collected.find(end, search_from)
            if found >= 0:
                self._start += found + len(end) - before
                return bytes(collected[:found])
            self._start = stop
            if len(collected) >= limit + len(end):
                raise broken(f"no {end!r} within {limit} bytes: the body is malformed")

    def exactly(self, size: int) -> Iterator[memoryview]:
        """The next ``size`` bytes, as views of the buffers that hold them."""
        while size:
            if self._start == self._end:
                self._fill()
            stop = min(self._end, self._start + size)
            yield memoryview(self._buffer)[self._start : stop]
            size -= stop - self._start
            self._start = stop

    def before(self, delimiter: bytes) -> Iterator[memoryview]:
        """The bytes up to ``delimiter`` (left unread), found with ``bytearray.find``."""
        while True:
            if self._end - self._start < len(delimiter):
                self._fill()
            found = self._buffer.find(delimiter, self._start, self._end)
            stop = found if found >= 0 else max(self._start, self._end - len(delimiter) + 1)
            if stop > self._start:
                yield memoryview(self._buffer)[self._start : stop]
            self._start = stop
            if found >= 0:
                return
            self._fill()


def _headers(block: bytes) -> dict[bytes, bytes]:
    headers = {}
    for line in block.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    return headers


def _header_message(headers: dict[bytes, bytes], size: int) -> rpb.RetrieveInstancesResponse:
    """The InstanceHeader RetrieveStudy would send, from a part's headers."""
    named = headers.get(INSTANCE_HEADER, b"").decode("latin-1")
    uids, *params = (item.strip() for item in named.split(";"))
    values = dict(p.partition("=")[::2] for p in params)
    study, _, rest = uids.partition("/")
    series, _, sop = rest.partition("/")
    syntax = ""
    for item in headers.get(b"content-type", b"").decode("latin-1").split(";")[1:]:
        name, _, value = item.strip().partition("=")
        if name.lower() == "transfer-syntax":
            syntax = value.strip('"')
    if not (study and series and sop and syntax):
        raise broken("a part does not name its instance and transfer syntax")
    return rpb.RetrieveInstancesResponse(
        instance=rpb.InstanceHeader(
            study_instance_uid=study,
            series_instance_uid=series,
            sop_instance_uid=sop,
            sop_class_uid=values.get("sop-class", ""),
            transfer_syntax_uid=syntax,
            size_bytes=max(size, 0),
            version=int(values.get("version", "0") or 0),
        )
    )


def messages(body: Body) -> Iterator[rpb.RetrieveInstancesResponse | memoryview]:
    """The body as RetrieveStudy's stream: a header message per part, then its bytes.

    The connection is closed when the body ends or the iteration is abandoned.

    Raises
    ------
    DicomRpcError
        UNAVAILABLE when the body is cut or malformed.
    """
    dash = b"--" + body.boundary
    try:
        body.until(dash, MAX_DELIMITER_LINE)  # the preamble, if any (RFC 2046 5.1.1)
        while True:
            line = body.until(b"\r\n", MAX_DELIMITER_LINE)
            if line.startswith(b"--"):  # the close delimiter
                return
            headers = _headers(body.until(b"\r\n\r\n", MAX_PART_HEADERS))
            length = headers.get(b"content-length", b"")
            size = int(length) if length.isdigit() else -1
            yield _header_message(headers, size)
            if size >= 0:
                yield from body.exactly(size)
            else:
                yield from body.before(b"\r\n" + dash)
            if body.until(dash, 2) != b"\r\n":
                raise broken("a part is longer than its Content-Length")
    finally:
        body.response.close()
        body.connection.close()
