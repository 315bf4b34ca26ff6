"""Errors the gateway answers for its limits, and those it writes on the connection itself."""

from __future__ import annotations

import json

import pytest

from dicomrpc_server.dicomweb.errors import closing_error_response, http_status
from dicomrpc_server.errors import Code, invalid_argument, limit_exceeded


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
    raw = closing_error_response(invalid_argument("request", "is not HTTP"))
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    assert lines[0] == "HTTP/1.1 400 Bad Request"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    assert json.loads(body)["violations"] == [{"field": "request", "description": "is not HTTP"}]
