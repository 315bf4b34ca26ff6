"""Instance preparation of values pydicom cannot decode: refused, naming the element."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomrpc_server.errors import ServiceError
from dicomrpc_server.store.prepare import prepare
from tests.dicomgen import ct_instance

COLUMNS_US = b"\x28\x00\x11\x00US\x02\x00"


@pytest.mark.parametrize(
    ("element", "why"),
    [
        # UL holds 4 bytes a value: 2 bytes is no value pydicom can decode.
        (b"\x28\x00\x11\x00UL\x02\x00", "cannot be read"),
        # FD holds 8.
        (b"\x28\x00\x11\x00FD\x02\x00", "cannot be read"),
    ],
)
def test_an_image_pixel_value_of_the_wrong_length_is_refused_naming_it(
    tmp_path: Path, element: bytes, why: str
) -> None:
    data = ct_instance()
    assert data.count(COLUMNS_US) == 1
    path = tmp_path / "bad.dcm"
    path.write_bytes(data.replace(COLUMNS_US, element))
    with pytest.raises(ServiceError) as caught:
        prepare(path)
    error = caught.value
    # Refused as every Image Pixel value that does not describe the pixel data (0xA900).
    assert (error.reason, error.dicom_status) == ("INSTANCE_VALIDATION_FAILED", 0xA900)
    assert error.metadata == {"attribute": "Columns"}
    assert error.message.startswith(f"Columns (00280011) {why}: ")


def test_a_file_meta_value_pydicom_cannot_decode_is_272(tmp_path: Path) -> None:
    # MediaStorageSOPClassUID declared UL: 26 bytes are no whole number of 4-byte values.
    data = ct_instance()
    meta = b"\x02\x00\x02\x00UI"
    assert data.count(meta) == 1
    path = tmp_path / "bad.dcm"
    path.write_bytes(data.replace(meta, b"\x02\x00\x02\x00UL"))
    with pytest.raises(ServiceError) as caught:
        prepare(path)
    error = caught.value
    assert error.dicom_status == 272
    assert "(00020002) cannot be read" in error.message
