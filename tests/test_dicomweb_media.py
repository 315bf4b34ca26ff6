"""Accept negotiation: the first producible media range wins; nothing producible is 406."""

from __future__ import annotations

import asyncio
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicomrpc_server.dicomweb.errors import http_status
from dicomrpc_server.dicomweb.media import (
    INLINE_HEADER,
    _split,
    choose_bulk_data,
    choose_frames,
    choose_instances,
    choose_json,
    choose_rendered,
    negotiated,
    parse_accept,
    parse_media_type,
)
from dicomrpc_server.errors import ServiceError


def test_parameters_with_quotes_and_weights() -> None:
    media = parse_media_type('multipart/related; type="application/dicom"; transfer-syntax=*')
    assert media.type == "multipart/related"
    assert media.params == {"type": "application/dicom", "transfer-syntax": "*"}
    ranges = parse_accept('image/png;q=0.5, image/jpeg, text/plain;q=0, a/"b,c"')
    assert [r.type for r in ranges] == ["image/jpeg", 'a/"b,c"', "image/png"]


@pytest.mark.parametrize(
    ("accept", "single", "multipart", "syntax"),
    [
        (None, False, True, "1.2.840.10008.1.2.1"),
        ('multipart/related; type="application/dicom"', True, True, "1.2.840.10008.1.2.1"),
        ('multipart/related; type="application/dicom"; transfer-syntax=*', False, True, "*"),
        (
            "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.90",
            True,
            False,
            "1.2.840.10008.1.2.4.90",
        ),
        ("text/html, */*;q=0.1", False, True, "1.2.840.10008.1.2.1"),
    ],
)
def test_instances(accept: str | None, single: bool, multipart: bool, syntax: str) -> None:
    choice = choose_instances(accept, single)
    assert (choice.multipart, choice.transfer_syntax) == (multipart, syntax)


def test_frames_rendered_json_bulk_data() -> None:
    assert choose_frames(None).part_type == "application/octet-stream"
    jp2 = choose_frames('multipart/related; type="image/jp2"')
    assert (jp2.part_type, jp2.transfer_syntax) == ("image/jp2", "1.2.840.10008.1.2.4.90")
    assert choose_rendered("image/png, image/jpeg;q=0.9") == "image/png"
    assert choose_json("application/json") == "application/dicom+json"
    assert choose_bulk_data('multipart/related; type="application/octet-stream"') is True
    assert choose_bulk_data("application/octet-stream") is False


@pytest.mark.parametrize(
    "choose",
    [
        lambda: choose_instances("text/html", False),
        lambda: choose_frames("image/gif"),
        lambda: choose_rendered("image/gif"),
        lambda: choose_json("application/dicom+xml"),
        lambda: choose_bulk_data("text/plain"),
    ],
)
def test_nothing_producible_is_406(choose: object) -> None:
    with pytest.raises(ServiceError) as caught:
        choose()  # type: ignore[operator]
    assert http_status(caught.value) == 406


def _split_by_characters(text: str, separator: str) -> list[str]:
    """The splitting the parser did before, one character at a time: the reference."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


@given(st.text(alphabet='ab"=;, /*'), st.sampled_from([",", ";"]))
def test_splitting_outside_quotes_matches_the_reference(text: str, separator: str) -> None:
    assert _split(text, separator) == _split_by_characters(text, separator)


async def _negotiated_in(header: str) -> tuple[str, str]:
    loop_thread = threading.current_thread().name

    def choose(value: str) -> str:
        return threading.current_thread().name

    return loop_thread, await negotiated(choose, header)


def test_a_long_header_is_parsed_off_the_event_loop() -> None:
    loop_thread, short = asyncio.run(_negotiated_in("application/dicom+json"))
    assert short == loop_thread
    loop_thread, long = asyncio.run(_negotiated_in("a/b, " * INLINE_HEADER))
    assert long != loop_thread
