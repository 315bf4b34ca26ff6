"""The structural walk refuses every cut of a file that falls inside an element."""

from __future__ import annotations

import io

import pytest
from pydicom.data import get_testdata_file

from dicomrpc_server.dicom.structure import MalformedFileError, scan


def _element_ends(data: bytes) -> set[int]:
    """Offsets where a top-level element ends (a cut there leaves a shorter, valid file)."""
    full = scan(io.BytesIO(data), len(data))
    ends = {full.dataset_offset}
    # Every cut in the header region, then a sample through the (large) values.
    cuts = [*range(full.dataset_offset + 1, 4096), *range(4096, len(data) + 1, 61)]
    for cut in (c for c in cuts if c <= len(data)):
        try:
            scan(io.BytesIO(data[:cut]), cut)
        except MalformedFileError:
            continue
        ends.add(cut)
    return ends


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_RLE.dcm", "rtplan.dcm"])
def test_cuts_inside_elements_fail(name: str) -> None:
    path = get_testdata_file(name)
    assert path is not None
    with open(path, "rb") as fp:
        data = fp.read()
    ends = _element_ends(data)
    # Accepted cuts are few (element boundaries), and never inside the pixel data.
    full = scan(io.BytesIO(data), len(data))
    assert len(ends) < len(data) // 8
    pixels = full.pixel_data
    if pixels is not None:
        start = pixels.value_offset
        end = start + pixels.length if pixels.length is not None else pixels.fragments[-1][0]
        assert not any(start < cut < end for cut in ends)
    with pytest.raises(MalformedFileError) as caught:
        scan(io.BytesIO(data[:-1]), len(data) - 1)
    assert caught.value.reason == "INSTANCE_TRUNCATED"
    assert caught.value.dicom_status == 272


def test_not_part10() -> None:
    with pytest.raises(MalformedFileError, match="DICM"):
        scan(io.BytesIO(b"\x00" * 200), 200)


def test_64_bit_integers_have_a_4_byte_length_in_explicit_vr() -> None:
    """SV and UV (PS3.5 Table 7.1-1) are read with their 4-byte length, as pydicom writes them."""
    from pydicom import dcmread
    from pydicom.uid import ExplicitVRLittleEndian

    from tests.dicomgen import ct_instance

    ds = dcmread(io.BytesIO(ct_instance(rows=4, columns=4)))
    ds.add_new(0x00091010, "LO", "ACME")
    ds.add_new(0x00091011, "SV", [-(2**40), 7])
    ds.add_new(0x00091012, "UV", [2**63 + 5])
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    data = out.getvalue()
    found = scan(io.BytesIO(data), len(data))
    assert found.pixel_data is not None
    assert data[found.pixel_data.value_offset :] == ds.PixelData
