"""The structural walk refuses every cut of a file that falls inside an element."""

from __future__ import annotations

import io
import tracemalloc
import zlib

import pytest
from pydicom.data import get_testdata_file

from dicomrpc_server.dicom.structure import (
    InflatedTooLargeError,
    MalformedFileError,
    inflate,
    scan,
)


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


class _Sink:
    """A file that counts what is written to it and keeps none of it."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)


def _deflated_zeros(size: int) -> bytes:
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    parts = [deflater.compress(zeros) for _ in range(size >> 20)]
    return b"".join([*parts, deflater.flush()])


@pytest.mark.slow
def test_inflating_stops_at_the_limit_holding_one_chunk() -> None:
    stream = _deflated_zeros(256 << 20)  # 256 KB that inflate to 256 MiB
    sink = _Sink()
    tracemalloc.start()
    try:
        with pytest.raises(InflatedTooLargeError) as caught:
            inflate(io.BytesIO(stream), sink, 8 << 20)  # type: ignore[arg-type]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sink.size <= 8 << 20
    assert peak < 2 << 20  # a chunk in, a chunk out, whatever the inflated size
    assert caught.value.reason == "INSTANCE_TOO_LARGE" and caught.value.dicom_status == 272
    assert "inflates to more than 8388608 bytes" in caught.value.message
    assert caught.value.metadata["limit"] == str(8 << 20)


def test_inflating_within_the_limit_gives_every_byte() -> None:
    data = bytes(range(256)) * 5000
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = deflater.compress(data) + deflater.flush()
    out = io.BytesIO()
    assert inflate(io.BytesIO(stream + b"\x00"), out, len(data)) == len(data)
    assert out.getvalue() == data
    with pytest.raises(MalformedFileError) as caught:
        inflate(io.BytesIO(stream[:-10]), io.BytesIO(), len(data))
    assert caught.value.reason == "INSTANCE_TRUNCATED"
