"""QIDO-RS query parameters: each bad one is a 400 naming it, never a 500."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from dicomrpc_server.dicomweb.qido import QueryParameters, query_parameters
from dicomrpc_server.errors import Code, ServiceError


def _parse(query: str) -> QueryParameters:
    return query_parameters(Request({"type": "http", "query_string": query.encode()}))


@pytest.mark.parametrize("name", ["limit", "offset"])
@pytest.mark.parametrize(
    "value", ["%C2%B2", "%D9%A1", "1%C2%B9", "%EF%BC%91", "-1", "1.0", "", "+1"]
)
def test_limit_and_offset_are_ascii_whole_numbers(name: str, value: str) -> None:
    # '²', Arabic-Indic one and fullwidth one pass str.isdigit() but not int(): they were 500s.
    with pytest.raises(ServiceError) as caught:
        _parse(f"{name}={value}")
    assert caught.value.code is Code.INVALID_ARGUMENT
    assert caught.value.violations[0].field == name


def test_a_number_too_long_for_any_index_is_refused() -> None:
    # int() refuses more than 4300 digits with a ValueError: it was a 500.
    with pytest.raises(ServiceError) as caught:
        _parse("offset=" + "9" * 5000)
    assert caught.value.violations[0].field == "offset"
    assert "5000 digits" in caught.value.message


def test_leading_zeros_are_a_number() -> None:
    parsed = _parse("limit=" + "0" * 30 + "5&offset=000")
    assert (parsed.limit, parsed.offset) == (5, 0)
