"""The incremental multipart reader: any split of a body into chunks gives the same parts."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicomrpc_server.dicomweb.multipart import (
    MultipartReader,
    PartData,
    PartEnd,
    PartStart,
    closing,
    part_header,
)
from dicomrpc_server.errors import ServiceError

BOUNDARY = "b0undary"


def _body(parts: list[bytes], preamble: bytes = b"") -> bytes:
    """A body as the gateway writes them (the writer and the reader agree)."""
    out = bytearray(preamble)
    for number, part in enumerate(parts):
        if number:
            out += b"\r\n"
        out += part_header(BOUNDARY, {"Content-Type": "application/dicom"})
        out += part
    return bytes(out + closing(BOUNDARY) + b"epilogue ignored")


def _read(
    body: bytes, cuts: list[int]
) -> tuple[list[bytes], list[dict[str, str]], MultipartReader]:
    reader = MultipartReader(BOUNDARY)
    parts: list[bytes] = []
    headers: list[dict[str, str]] = []
    ends = 0
    edges = sorted({0, *(c % (len(body) + 1) for c in cuts), len(body)})
    for start, end in itertools.pairwise(edges):
        for event in reader.feed(body[start:end]):
            if isinstance(event, PartStart):
                parts.append(b"")
                headers.append(event.headers)
            elif isinstance(event, PartData):
                parts[-1] += event.data
            elif isinstance(event, PartEnd):
                ends += 1
    assert ends == len(parts) - (1 if reader.in_part else 0)
    return parts, headers, reader


# Part bytes that look like the delimiter's beginnings, to test the boundary search.
_PART = st.lists(
    st.sampled_from([b"\r\n", b"--", b"b0und", b"\r\n--b0und", b"x", b"DICM", b"\x00" * 7]),
    max_size=30,
).map(b"".join)


@given(parts=st.lists(_PART, min_size=1, max_size=5), cuts=st.lists(st.integers(0, 10**6)))
def test_any_chunking_yields_the_parts(parts: list[bytes], cuts: list[int]) -> None:
    got, headers, reader = _read(_body(parts, preamble=b"preamble\r\n"), cuts)
    assert got == parts
    assert headers == [{"content-type": "application/dicom"}] * len(parts)
    assert reader.complete


def test_a_body_cut_inside_a_part_is_not_complete() -> None:
    body = _body([b"first", b"second part"])
    cut = body.index(b"second") + 3
    got, _, reader = _read(body[:cut], [])
    # The last bytes are held back until they cannot be the start of a delimiter.
    assert got[0] == b"first" and b"second part".startswith(got[1])
    assert len(got) == 2 and reader.in_part and not reader.complete


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (f"--{BOUNDARY}\r\nno colon\r\n\r\nx".encode(), "header line without a name"),
        (f"--{BOUNDARY}junk\r\n\r\nx".encode(), "followed by other text"),
        (f"--{BOUNDARY}\r\n".encode() + b"X: " + b"y" * 20_000, "header bytes"),
    ],
)
def test_malformed_bodies_fail_clearly(body: bytes, words: str) -> None:
    with pytest.raises(ServiceError) as caught:
        MultipartReader(BOUNDARY).feed(body)
    assert words in caught.value.message
    assert caught.value.violations[0].field == "body"
