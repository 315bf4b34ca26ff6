"""multipart/related bodies (RFC 2387 over RFC 2046): read incrementally, written part by part.

The reader is fed the request body chunk by chunk and hands back each part's headers and bytes
as they arrive, holding at most one chunk plus a delimiter's length: a STOW body of any size
goes to the store without being held in memory.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from dicomrpc_server.errors import ServiceError, invalid_argument

# The most header bytes one part may carry.
MAX_PART_HEADERS = 16 * 1024
# The most bytes (transport padding, RFC 2046 §5.1.1) a delimiter line may carry after the
# boundary.
MAX_DELIMITER_LINE = 1024


def new_boundary() -> str:
    """A boundary that no part's bytes will contain by chance."""
    return f"dicomrpc-{secrets.token_hex(16)}"


def content_type(part_type: str, boundary: str, **params: str) -> str:
    """The Content-Type of a multipart/related body whose parts are ``part_type``."""
    extra = "".join(f"; {name}={value}" for name, value in params.items())
    return f'multipart/related; type="{part_type}"; boundary={boundary}{extra}'


def part_header(boundary: str, headers: dict[str, str]) -> bytes:
    """The delimiter and headers that open a part (each part's bytes follow)."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"--{boundary}\r\n{lines}\r\n".encode("latin-1")


def closing(boundary: str) -> bytes:
    """The close delimiter that ends the body (after the last part's bytes)."""
    return f"\r\n--{boundary}--\r\n".encode("latin-1")


def part_separator() -> bytes:
    """What ends a part's bytes before the next delimiter."""
    return b"\r\n"


@dataclass(frozen=True)
class PartStart:
    """A part begins: its headers (names lower-cased)."""

    headers: dict[str, str]


@dataclass(frozen=True)
class PartData:
    """The next bytes of the current part."""

    data: bytes


@dataclass(frozen=True)
class PartEnd:
    """The current part is complete (its delimiter has been read)."""


Event = PartStart | PartData | PartEnd


def malformed(description: str) -> ServiceError:
    """The error of a body that is not the multipart/related it claims to be."""
    return invalid_argument("body", f"malformed multipart/related body: {description}")


class MultipartReader:
    """An incremental multipart parser: :meth:`feed` chunks, :meth:`close` at the end.

    Parameters
    ----------
    boundary
        The ``boundary`` parameter of the body's Content-Type.
    """

    _PREAMBLE, _AFTER_DELIMITER, _HEADERS, _BODY, _DONE = range(5)

    def __init__(self, boundary: str) -> None:
        # The body is read as if it began with CRLF, so the first delimiter is found like the
        # others (RFC 2046: a delimiter is CRLF "--" boundary; the first may start the body).
        self.boundary = boundary
        self._delimiter = b"\r\n--" + boundary.encode("latin-1")
        self._buffer = bytearray(b"\r\n")
        self._state = self._PREAMBLE
        self.parts = 0
        # What made the body malformed after the last feed's events (raised by the next feed).
        self.error: ServiceError | None = None

    @property
    def complete(self) -> bool:
        """Whether the close delimiter has been read."""
        return self._state == self._DONE

    @property
    def in_part(self) -> bool:
        """Whether a part has begun and not ended."""
        return self._state == self._BODY

    def feed(self, data: bytes) -> list[Event]:
        """Take the next bytes of the body; return what they complete, in order.

        Raises
        ------
        ServiceError
            When the body is malformed. The parts the same bytes completed before the fault
            are returned first: the error is then kept in :attr:`error` and raised by the
            next call, so that whatever the chunking, every part before it is handed over.
        """
        if self.error is not None:
            raise self.error
        if self._state == self._DONE:
            return []  # the epilogue is ignored
        self._buffer += data
        events: list[Event] = []
        try:
            while self._step(events):
                pass
        except ServiceError as error:
            if not events:
                raise
            self.error = error
        return events

    def _step(self, events: list[Event]) -> bool:
        """Advance by one state if the buffer allows; return whether it did."""
        buffer, delimiter = self._buffer, self._delimiter
        if self._state == self._PREAMBLE:
            at = buffer.find(delimiter)
            if at < 0:
                del buffer[: max(0, len(buffer) - len(delimiter))]
                return False
            del buffer[: at + len(delimiter)]
            self._state = self._AFTER_DELIMITER
            return True
        if self._state == self._AFTER_DELIMITER:
            if len(buffer) < 2:
                return False
            if buffer[:2] == b"--":
                self._state = self._DONE
                buffer.clear()
                return False
            end = buffer.find(b"\r\n")
            if end < 0 and len(buffer) <= MAX_DELIMITER_LINE:
                return False
            if end < 0 or end > MAX_DELIMITER_LINE:  # however the bytes arrived
                raise malformed("a boundary delimiter is not followed by a line end")
            if buffer[:end].strip(b" \t"):
                raise malformed("a boundary delimiter is followed by other text on its line")
            del buffer[: end + 2]
            self._state = self._HEADERS
            return True
        if self._state == self._HEADERS:
            if buffer[:2] == b"\r\n":
                headers: dict[str, str] = {}
                del buffer[:2]
            else:
                end = buffer.find(b"\r\n\r\n")
                if end < 0 and len(buffer) <= MAX_PART_HEADERS:
                    return False
                if end < 0 or end > MAX_PART_HEADERS:  # however the bytes arrived
                    raise malformed(
                        f"part {self.parts + 1} has over {MAX_PART_HEADERS} header bytes"
                    )
                headers = _parse_headers(bytes(buffer[:end]), self.parts + 1)
                del buffer[: end + 4]
            self.parts += 1
            events.append(PartStart(headers))
            self._state = self._BODY
            return True
        if self._state == self._BODY:
            at = buffer.find(delimiter)
            if at < 0:
                # Everything but a possible start of the delimiter goes out now.
                keep = len(delimiter) - 1
                if len(buffer) > keep:
                    events.append(PartData(_take(buffer, len(buffer) - keep)))
                return False
            if at:
                events.append(PartData(_take(buffer, at)))
            del buffer[: len(delimiter)]
            events.append(PartEnd())
            self._state = self._AFTER_DELIMITER
            return True
        return False


def _take(buffer: bytearray, count: int) -> bytes:
    """Remove the first ``count`` bytes of ``buffer`` and return them (copied once)."""
    with memoryview(buffer) as view:
        taken = view[:count].tobytes()
    del buffer[:count]
    return taken


def _parse_headers(block: bytes, number: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise malformed(f"part {number} has a header line without a name: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers
