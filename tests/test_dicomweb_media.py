"""Accept negotiation: the first producible media range wins; nothing producible is 406."""

from __future__ import annotations

import pytest

from dicomrpc_server.dicomweb.errors import http_status
from dicomrpc_server.dicomweb.media import (
    choose_bulk_data,
    choose_frames,
    choose_instances,
    choose_json,
    choose_rendered,
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
