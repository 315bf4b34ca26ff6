"""Harness: the STOW-RS multipart reader (``dicomweb/stow.py`` boundary, ``dicomweb/multipart.py``).

The input is read with ``FuzzedDataProvider``: a seed for how the body is cut into chunks, the
request's Content-Type, then the body. The boundary is taken from the Content-Type as STOW
takes it, and the body is fed to :class:`MultipartReader` twice: whole, and in the chunks a
network would deliver. Expected: parts, or a ``ServiceError`` (400 / 415). A bug: any other
exception, a hang, or an outcome (parts, their headers and bytes, completeness, the error)
that depends on how the body was chunked: TCP decides that, not the client.
"""

from __future__ import annotations

import random

import atheris
from starlette.requests import Request

from dicomrpc_server.dicomweb.media import parse_media_type
from dicomrpc_server.dicomweb.multipart import (
    MultipartReader,
    PartData,
    PartEnd,
    PartStart,
    closing,
    content_type,
    part_header,
    part_separator,
)
from dicomrpc_server.dicomweb.stow import boundary_of
from dicomrpc_server.errors import ServiceError
from tests import dicomgen
from tests.fuzz.bugs import CRASH, Bug
from tests.fuzz.seeds import FdpSeed

MAX_CONTENT_TYPE = 300
DICTIONARY = (
    b"\r\n--",
    b"--\r\n",
    b"\r\n\r\n",
    b"Content-Type: application/dicom\r\n",
    b"Content-Length: ",
    b"multipart/related",
    b'type="application/dicom"',
    b"; boundary=",
    b'"',
)

Outcome = tuple[list[tuple[str, object]], bool, int, str]


def _seed(chunking: int, header: str, body: bytes) -> bytes:
    seed = FdpSeed().integer(chunking, 0, 0xFFFF).integer(len(header), 0, MAX_CONTENT_TYPE)
    return seed.data(header.encode("latin-1")).data(body).build()


def _body(boundary: str, parts: list[bytes], headers: dict[str, str] | None = None) -> bytes:
    out = bytearray()
    for number, data in enumerate(parts):
        if number:
            out += part_separator()
        out += part_header(boundary, headers or {"Content-Type": "application/dicom"})
        out += data
    out += closing(boundary)
    return bytes(out)


def seeds() -> dict[str, bytes]:
    one = dicomgen.ct_instance(rows=2, columns=2)
    two = dicomgen.ct_instance(rows=1, columns=1, number=2)
    typed = content_type("application/dicom", "b")
    quoted = 'multipart/related; type="application/dicom"; boundary="a b:c"'
    return {
        "one-part": _seed(1, typed, _body("b", [one])),
        "two-parts": _seed(7, typed, _body("b", [one, two])),
        "quoted-boundary": _seed(3, quoted, _body("a b:c", [one])),
        "preamble-epilogue": _seed(5, typed, b"preamble\r\n" + _body("b", [one]) + b"epilogue"),
        "part-headers": _seed(
            11,
            typed,
            _body(
                "b",
                [b"x" * 40],
                {"Content-Type": "application/dicom", "Content-Length": "40", "X-Other": "1"},
            ),
        ),
        "empty-parts": _seed(2, typed, _body("b", [b"", b"", b""])),
        "no-close": _seed(9, typed, _body("b", [one])[:-8]),
        "long-boundary": _seed(
            4, content_type("application/dicom", "x" * 70), _body("x" * 70, [two])
        ),
    }


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    chunking = fdp.ConsumeIntInRange(0, 0xFFFF)
    header = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, MAX_CONTENT_TYPE))
    body = fdp.ConsumeBytes(fdp.remaining_bytes())
    scope = {"type": "http", "method": "POST", "headers": [(b"content-type", header)]}
    text = Request(scope).headers.get("content-type", "")  # decoded as the gateway does
    try:
        boundary = boundary_of(text, parse_media_type(text))
    except ServiceError:
        return
    try:
        MultipartReader(boundary)
    except UnicodeEncodeError:
        return  # a boundary outside latin-1 cannot have come in a header
    whole = read(boundary, [body])
    chunked = read(boundary, list(_chunks(body, random.Random(chunking))))
    if whole != chunked:
        raise Bug(
            CRASH,
            "multipart: the parts read depend on how the body is chunked",
            f"whole: {_describe(whole)}\nchunked: {_describe(chunked)}",
        )


def _chunks(body: bytes, rng: random.Random) -> list[bytes]:
    out = []
    at = 0
    while at < len(body):
        size = rng.choice((1, 2, 3, 7, 64, 1000, 4096, 65536))
        out.append(body[at : at + size])
        at += size
    return out


def read(boundary: str, chunks: list[bytes]) -> Outcome:
    """What the reader makes of the body: parts (data joined), completeness, parts, error."""
    reader = MultipartReader(boundary)
    events: list[tuple[str, object]] = []
    try:
        for chunk in chunks:
            for event in reader.feed(chunk):
                if isinstance(event, PartStart):
                    events.append(("start", event.headers))
                elif isinstance(event, PartData):
                    if events and events[-1][0] == "data":
                        previous = events.pop()[1]
                        assert isinstance(previous, bytes)
                        events.append(("data", previous + event.data))
                    else:
                        events.append(("data", event.data))
                elif isinstance(event, PartEnd):
                    events.append(("end", None))
    except ServiceError as error:
        # What was handed over before the error depends on the chunks, as it may: only
        # the error itself must not.
        return [], False, reader.parts, error.message
    if reader.error is not None:  # raised by a next feed, after the last chunk's parts
        return [], False, reader.parts, reader.error.message
    return events, reader.complete, reader.parts, ""


def _describe(outcome: Outcome) -> str:
    events, complete, parts, error = outcome
    kinds = [
        f"{kind}({len(value)})" if isinstance(value, bytes) else kind for kind, value in events
    ]
    return f"parts={parts} complete={complete} error={error!r} events={kinds[:20]}"
