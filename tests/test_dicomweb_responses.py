"""Responses the gateway builds from data: Warning headers, errors written on the connection."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicomrpc_server.dicomweb.errors import (
    MAX_WARNING_TEXT,
    closing_error_response,
    http_status,
    warning_header,
)
from dicomrpc_server.errors import Code, invalid_argument, limit_exceeded

# RFC 9111 §5.5: warn-code SP warn-agent SP warn-text, warn-text a quoted-string (RFC 9110
# §5.6.4) of HTAB, SP, visible ASCII other than '"' and '\', or quoted pairs.
QDTEXT = set("\t ") | {chr(c) for c in range(0x21, 0x7F)} - {'"', "\\"}


def _quoted_text(header: str) -> str:
    prefix = '299 dicomrpc "'
    assert header.startswith(prefix) and header.endswith('"')
    text, out, i = header[len(prefix) : -1], [], 0
    while i < len(text):
        if text[i] == "\\":
            out.append(text[i + 1])
            i += 2
            continue
        assert text[i] in QDTEXT, repr(text[i])
        out.append(text[i])
        i += 1
    return "".join(out)


def test_a_multi_line_codec_message_becomes_one_line() -> None:
    message = 'cannot decode:\r\n  gdcm: "bad"\n\tpillow: C:\\path\x00\x1b[0m'
    assert (
        _quoted_text(warning_header(message)) == 'cannot decode: gdcm: "bad" pillow: C:\\path??[0m'
    )


def test_a_long_message_is_cut_and_non_ascii_replaced() -> None:
    text = _quoted_text(warning_header("é" + "x" * 5000))
    assert len(text) == MAX_WARNING_TEXT
    assert text.startswith("?x") and text.endswith("...")


@given(st.text())
def test_any_message_makes_a_valid_header(message: str) -> None:
    header = warning_header(message)
    _quoted_text(header)
    header.encode("ascii")
    assert "\r" not in header and "\n" not in header


@pytest.mark.parametrize(
    ("limit", "code", "status"),
    [
        ("http_max_url_bytes", Code.RESOURCE_EXHAUSTED, 414),
        ("http_max_header_bytes", Code.RESOURCE_EXHAUSTED, 431),
        ("http_max_stow_parts", Code.RESOURCE_EXHAUSTED, 413),
        ("http_header_timeout_s", Code.DEADLINE_EXCEEDED, 408),
        ("http_body_timeout_s", Code.DEADLINE_EXCEEDED, 408),
        ("http_max_connections", Code.UNAVAILABLE, 503),
        ("max_frames_per_request", Code.RESOURCE_EXHAUSTED, 413),
    ],
)
def test_each_limit_has_its_status(limit: str, code: Code, status: int) -> None:
    assert http_status(limit_exceeded(limit, 1, "over", code=code)) == status


def test_an_error_written_on_the_connection_is_a_whole_response() -> None:
    raw = closing_error_response(invalid_argument("request", "is not\r\nHTTP"))
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    assert lines[0] == "HTTP/1.1 400 Bad Request"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    assert json.loads(body)["violations"] == [{"field": "request", "description": "is not\r\nHTTP"}]
