"""Bulk data lookup: large values are located in the file, small or unlocatable ones read."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicomrpc_server.errors import ServiceError
from dicomrpc_server.retrieve.bulkdata import ByteRange, locate_bulk_data
from tests.dicomgen import ct_instance

EXPLICIT = "1.2.840.10008.1.2.1"


def test_a_large_value_is_a_byte_range_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ct.dcm"
    path.write_bytes(ct_instance(rows=256, columns=256))
    found = locate_bulk_data(path, "7FE00010", EXPLICIT)
    assert isinstance(found, ByteRange)
    data = path.read_bytes()[found.offset : found.offset + found.length]
    assert data == pydicom.dcmread(path).PixelData


def test_encapsulated_and_deflated_values_are_read() -> None:
    j2k = Path(str(get_testdata_file("examples_jpeg2k.dcm")))
    found = locate_bulk_data(j2k, "7FE00010", "1.2.840.10008.1.2.4.90")
    assert found == pydicom.dcmread(j2k).PixelData
    deflated = Path(str(get_testdata_file("image_dfl.dcm")))
    found = locate_bulk_data(deflated, "7FE00010", "1.2.840.10008.1.2.1.99")
    assert found == pydicom.dcmread(deflated).PixelData


@pytest.mark.parametrize(
    ("tag_path", "reason"),
    [
        ("7FE00011", "RESOURCE_NOT_FOUND"),
        ("00080016", "RESOURCE_NOT_FOUND"),
        ("00880200.0.7FE00010", "RESOURCE_NOT_FOUND"),
        ("7FE0", "INVALID_REQUEST"),
    ],
)
def test_missing_or_bad_paths(tmp_path: Path, tag_path: str, reason: str) -> None:
    path = tmp_path / "ct.dcm"
    path.write_bytes(ct_instance())
    with pytest.raises(ServiceError) as caught:
        locate_bulk_data(path, tag_path, EXPLICIT)
    assert caught.value.reason == reason
