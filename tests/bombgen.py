"""Hostile instances for tests, built small: deflate bombs, lying headers, forged codestreams."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

MIB = 1024 * 1024


def image_dataset(
    rows: int,
    columns: int,
    *,
    frames: int | None = None,
    bits: int = 8,
    samples: int = 1,
    study: str | None = None,
) -> Dataset:
    """A secondary capture image's data set, without Pixel Data and file meta."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "BOMB", "Bomb^Test", "OT"
    ds.Rows, ds.Columns = rows, columns
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    return ds


def part10(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """``ds`` as a Part 10 file, its values written as they are (lies included)."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def native(ds: Dataset, pixel_bytes: bytes) -> bytes:
    """A native (explicit VR little endian) file of ``ds`` with exactly ``pixel_bytes``."""
    ds.PixelData = pixel_bytes
    ds["PixelData"].VR = "OW" if int(ds.get("BitsAllocated", 8)) > 8 else "OB"
    return part10(ds)


def encapsulated(ds: Dataset, fragments: list[bytes], transfer_syntax: str) -> bytes:
    """An encapsulated file of ``ds``: one fragment per item, an empty Basic Offset Table.

    pydicom writes the sequence delimiter of the undefined-length value itself.
    """
    items = [b"\xfe\xff\x00\xe0" + struct.pack("<I", 0)]
    for fragment in fragments:
        padded = fragment + b"\x00" * (len(fragment) % 2)
        items.append(b"\xfe\xff\x00\xe0" + struct.pack("<I", len(padded)) + padded)
    ds.PixelData = b"".join(items)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return part10(ds, transfer_syntax)


def deflate_bomb(side: int = 16384, bits: int = 16) -> bytes:
    """A deflated image whose data set inflates to ``side`` x ``side`` pixels of zeros.

    The image is consistent (one frame, Pixel Data exactly as long as declared): only its
    inflated size is hostile. 16384 x 16384 x 16 bits inflates to 512 MiB from about 510 KB.
    """
    ds = image_dataset(side, side, bits=bits)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_dataset(head, ds)
    length = side * side * bits // 8
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [deflater.compress(head.getvalue() + pixel_header)]
    zeros = bytes(MIB)
    parts.extend(deflater.compress(zeros) for _ in range(length // MIB))
    parts.append(deflater.compress(bytes(length % MIB)))
    parts.append(deflater.flush())
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    body = b"".join(parts)
    return b"\x00" * 128 + b"DICM" + meta.getvalue() + body + b"\x00" * (len(body) % 2)


def j2k_frame(rows: int = 64, columns: int = 64, seed: int = 0) -> bytes:
    """A real JPEG 2000 lossless codestream of an 8-bit grey image."""
    pixels = np.random.default_rng(seed).integers(0, 256, (rows, columns), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoded = get_encoder(JPEG2000Lossless).encode(
            pixels,
            encoding_plugin="pylibjpeg",
            rows=rows,
            columns=columns,
            samples_per_pixel=1,
            bits_allocated=8,
            bits_stored=8,
            pixel_representation=0,
            photometric_interpretation="MONOCHROME2",
            number_of_frames=1,
        )
    return bytes(encoded)


def forge_siz(codestream: bytes, width: int, height: int) -> bytes:
    """``codestream`` with its SIZ marker declaring a ``width`` x ``height`` image, one tile."""
    assert codestream[:4] == b"\xff\x4f\xff\x51"
    size = struct.pack(">8I", width, height, 0, 0, width, height, 0, 0)
    return codestream[:8] + size + codestream[8 + len(size) :]


def forged_j2k_instance(width: int = 40000, height: int = 40000) -> bytes:
    """A 64 x 64 JPEG 2000 instance (a few KB) whose SIZ marker declares a larger image."""
    ds = image_dataset(64, 64)
    return encapsulated(ds, [forge_siz(j2k_frame(), width, height)], JPEG2000Lossless)


def one_kib_instance() -> bytes:
    """A small image instance: 16 x 16 x 8 bits, about 1 KB."""
    ds = image_dataset(16, 16)
    return native(ds, bytes(range(256)))
