"""Transcoding: an instance or its frames re-encoded in another transfer syntax.

Why this module exists: a client may ask for a transfer syntax other than the stored one
(PS3.18 and PS3.4 both let it), and the archive must either produce exactly that syntax or
refuse before sending a byte. Everything that decides *whether* a syntax can be produced, and
everything that produces it, lives here, so the answer given by :func:`capabilities` (served
by ``GetCapabilities`` and printed in the README) is the answer the code acts on.

How it works:

* The capability matrix is computed at run time from the codecs that are importable, never
  from a hard-coded claim. Decoding uses pydicom's decoders (pylibjpeg-openjpeg for JPEG 2000
  and HTJ2K, pylibjpeg-rle or pydicom for RLE, pyjpegls or GDCM for JPEG-LS, GDCM or Pillow
  for the JPEG family); the ``pylibjpeg`` plugin is never used for the JPEG and JPEG-LS
  family because behind it is pylibjpeg-libjpeg, which is GPL and this project is Apache-2.0.
  Encoding uses pydicom's encoders (pylibjpeg-rle or pydicom for RLE, pyjpegls for JPEG-LS,
  pylibjpeg-openjpeg for JPEG 2000) and imagecodecs where pydicom has none: libjpeg-turbo
  (``jpeg8_encode``) for JPEG baseline and for JPEG lossless with selection value 1, OpenJPH
  (``htj2k_encode``) for HTJ2K. imagecodecs' ``ljpeg_encode`` (liblj92) is not used: it
  writes predictor 6, which *JPEG Lossless SV1* forbids, and it cannot encode colour.
* Between the native syntaxes (implicit / explicit little endian, deflated, explicit big
  endian) nothing is decoded: the data set is rewritten, and when the byte order changes the
  values pydicom leaves as bytes (OW, OF, OL, OD, OV, and Pixel Data by its Bits Allocated)
  are byte-swapped here, because pydicom's writer does not swap them.
* Otherwise every frame is decoded as :attr:`pydicom.dataset.Dataset.pixel_array` decodes
  it (YCbCr converted to RGB, planes interleaved) and re-encoded; the Image Pixel module is
  updated to describe the new pixels. The SOP Instance UID is kept: a retrieve returns the
  instance that was asked for, in the representation asked for.
* Lossy targets are refused unless the caller explicitly allows them; when a lossy target is
  produced, Lossy Image Compression (0028,2110), its ratio and method are recorded.
* No frame is decoded beyond the limits its header sets: Rows x Columns at most
  ``max_frame_pixels``, and a compressed frame's own codestream header must declare what the
  data set does (:mod:`dicomrpc_server.dicom.codestreams`) before a codec is given it.
* pydicom's warnings are caught inside each function, so none escapes to the caller.
"""

from __future__ import annotations

import functools
import io
import struct
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.filewriter import correct_ambiguous_vr, dcmwrite
from pydicom.pixels.decoders.base import DecodeRunner, get_decoder
from pydicom.pixels.encoders.base import ENCODING_PROFILES, get_encoder
from pydicom.pixels.utils import as_pixel_options, get_nr_frames, pack_bits
from pydicom.uid import UID
from pydicom.valuerep import VR

from dicomrpc_server.config import Settings
from dicomrpc_server.dicom.codestreams import check_frame, encoded_frame
from dicomrpc_server.dicom.elements import ElementValues
from dicomrpc_server.dicom.pixeldata import FrameGeometry, frame_geometry, too_many_pixels
from dicomrpc_server.errors import Code, ServiceError
from dicomrpc_server.storage.protocols import BlobRef
from dicomrpc_server.storage.sources import (
    Source,
    file_size,
    open_source,
    read_source,
    source_name,
)

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

NATIVE_SYNTAXES = (
    IMPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
)

#: Short names, for messages and the README table.
SHORT_NAMES: dict[str, str] = {
    IMPLICIT_VR_LITTLE_ENDIAN: "Implicit VR LE",
    EXPLICIT_VR_LITTLE_ENDIAN: "Explicit VR LE",
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: "Deflated Explicit VR LE",
    EXPLICIT_VR_BIG_ENDIAN: "Explicit VR BE",
    JPEG_BASELINE: "JPEG Baseline",
    JPEG_EXTENDED: "JPEG Extended",
    JPEG_LOSSLESS: "JPEG Lossless",
    JPEG_LOSSLESS_SV1: "JPEG Lossless SV1",
    JPEG_LS_LOSSLESS: "JPEG-LS Lossless",
    JPEG_LS_NEAR_LOSSLESS: "JPEG-LS Near-Lossless",
    JPEG_2000_LOSSLESS: "JPEG 2000 Lossless",
    JPEG_2000: "JPEG 2000",
    HTJ2K_LOSSLESS: "HTJ2K Lossless",
    HTJ2K_LOSSLESS_RPCL: "HTJ2K Lossless RPCL",
    HTJ2K: "HTJ2K",
    RLE_LOSSLESS: "RLE Lossless",
}

# Syntaxes whose pixel data may have lost information. JPEG 2000 (.91) and HTJ2K (.203) may
# also carry reversible codestreams, but this module encodes them irreversibly, and a caller
# asking for them must accept that.
_LOSSY_SYNTAXES = frozenset(
    {
        JPEG_BASELINE,
        JPEG_EXTENDED,
        "1.2.840.10008.1.2.4.52",
        "1.2.840.10008.1.2.4.53",
        "1.2.840.10008.1.2.4.54",
        "1.2.840.10008.1.2.4.55",
        "1.2.840.10008.1.2.4.56",
        "1.2.840.10008.1.2.4.59",
        "1.2.840.10008.1.2.4.60",
        "1.2.840.10008.1.2.4.61",
        "1.2.840.10008.1.2.4.62",
        "1.2.840.10008.1.2.4.63",
        "1.2.840.10008.1.2.4.64",
        JPEG_LS_NEAR_LOSSLESS,
        JPEG_2000,
        "1.2.840.10008.1.2.4.93",
        HTJ2K,
        "1.2.840.10008.1.2.4.100",
        "1.2.840.10008.1.2.4.101",
        "1.2.840.10008.1.2.4.102",
        "1.2.840.10008.1.2.4.103",
        "1.2.840.10008.1.2.4.104",
        "1.2.840.10008.1.2.4.105",
        "1.2.840.10008.1.2.4.106",
        "1.2.840.10008.1.2.4.107",
        "1.2.840.10008.1.2.4.108",
        "1.2.840.10008.1.2.4.110",
        "1.2.840.10008.1.2.4.111",
        "1.2.840.10008.1.2.4.112",
    }
)

# Lossy Image Compression Method (0028,2114) values, PS3.3 C.7.6.1.1.5.1.
_LOSSY_METHODS: dict[str, str] = {
    JPEG_BASELINE: "ISO_10918_1",
    JPEG_LS_NEAR_LOSSLESS: "ISO_14495_1",
    JPEG_2000: "ISO_15444_1",
    HTJ2K: "ISO_15444_15",
}

# Decoding plugins never used: pydicom's "pylibjpeg" plugin for these syntaxes is
# pylibjpeg-libjpeg (GPL-3.0).
_GPL_DECODER_PLUGINS: dict[str, frozenset[str]] = {
    uid: frozenset({"pylibjpeg"})
    for uid in (
        JPEG_BASELINE,
        JPEG_EXTENDED,
        JPEG_LOSSLESS,
        JPEG_LOSSLESS_SV1,
        JPEG_LS_LOSSLESS,
        JPEG_LS_NEAR_LOSSLESS,
    )
}

# Encapsulated syntaxes pydicom can decode (and whose decoders are looked at). JPEG Extended
# (.51) is left out: neither GDCM nor Pillow decodes its 12-bit samples, the reason it exists.
_DECODABLE_ENCAPSULATED = (
    JPEG_BASELINE,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    JPEG_2000_LOSSLESS,
    JPEG_2000,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    HTJ2K,
    RLE_LOSSLESS,
)

# pydicom encoders and the plugin preferred for each (the first one available is used).
_PYDICOM_ENCODER_PLUGINS: dict[str, tuple[str, ...]] = {
    RLE_LOSSLESS: ("pylibjpeg", "pydicom"),
    JPEG_LS_LOSSLESS: ("pyjpegls",),
    JPEG_LS_NEAR_LOSSLESS: ("pyjpegls",),
    JPEG_2000_LOSSLESS: ("pylibjpeg",),
    JPEG_2000: ("pylibjpeg",),
}

# Encoder settings for the lossy targets.
_JPEG_BASELINE_QUALITY = 90
_JPEG_LS_NEAR_ERROR = 2
_JPEG_2000_PSNR = 50.0
_HTJ2K_QSTEP = 0.001
# pylibjpeg-openjpeg always writes 6 resolutions (5 decompositions): 32 pixels at least.
_J2K_MIN_SIZE = 32

# Value sizes of the VRs whose values pydicom keeps as bytes and does not byte-swap.
_WORD_SIZES: dict[str, int] = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_PIXEL_DATA_TAG = 0x7FE00010
PIXEL_DATA_TAGS = (_PIXEL_DATA_TAG, 0x7FE00008, 0x7FE00009)
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# Elements that describe encapsulated pixel data only.
_ENCAPSULATION_KEYWORDS = ("ExtendedOffsetTable", "ExtendedOffsetTableLengths")

FrameEncoder = Callable[[NDArray[Any], "PixelDescription"], tuple[bytes, str]]


@dataclass(frozen=True)
class PixelDescription:
    """The Image Pixel module values that describe one decoded frame."""

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric_interpretation: str

    def encoder_options(self) -> dict[str, int | str]:
        """The keyword arguments pydicom's encoders take to describe one frame."""
        return {
            "rows": self.rows,
            "columns": self.columns,
            "samples_per_pixel": self.samples_per_pixel,
            "bits_allocated": self.bits_allocated,
            "bits_stored": self.bits_stored,
            "pixel_representation": self.pixel_representation,
            "photometric_interpretation": self.photometric_interpretation,
            "number_of_frames": 1,
            "planar_configuration": 0,
        }


def syntax_name(uid: str) -> str:
    """A short human name of a transfer syntax, or the UID when it is not known.

    Parameters
    ----------
    uid
        A transfer syntax UID.

    Returns
    -------
    str
        For example ``"JPEG 2000 Lossless"``.
    """
    return SHORT_NAMES.get(uid, uid)


def is_lossy(transfer_syntax_uid: str) -> bool:
    """Whether pixel data in ``transfer_syntax_uid`` may have lost information.

    Parameters
    ----------
    transfer_syntax_uid
        A transfer syntax UID.

    Returns
    -------
    bool
        True for the lossy (or possibly lossy) syntaxes: JPEG baseline and extended, JPEG-LS
        near-lossless, JPEG 2000 (.91), HTJ2K (.203), the MPEG / HEVC family.

    Examples
    --------
    >>> is_lossy("1.2.840.10008.1.2.4.50"), is_lossy("1.2.840.10008.1.2.4.90")
    (True, False)
    """
    return transfer_syntax_uid in _LOSSY_SYNTAXES


# -- what can be done ----------------------------------------------------------------------


def _decoding_plugin(uid: str) -> str | None:
    """The pydicom decoding plugin to use for ``uid``, ``""`` for all, ``None`` for none."""
    if uid in NATIVE_SYNTAXES:
        return ""
    if uid not in _DECODABLE_ENCAPSULATED:
        return None
    decoder = get_decoder(UID(uid))
    excluded = _GPL_DECODER_PLUGINS.get(uid, frozenset())
    available = list(decoder.available_plugins)
    allowed = [name for name in available if name not in excluded]
    if not allowed:
        return None
    # Let pydicom try every plugin in its own order unless a GPL one is among them.
    return "" if allowed == available else allowed[0]


def _pydicom_encoder_plugin(uid: str) -> str | None:
    """The pydicom encoding plugin to use for ``uid``, or ``None`` when none is installed."""
    preferred = _PYDICOM_ENCODER_PLUGINS.get(uid)
    if preferred is None:
        return None
    available = get_encoder(UID(uid)).available_plugins
    for name in preferred:
        if name in available:
            return name
    return None


def _imagecodecs_available(codec: str) -> bool:
    """Whether imagecodecs is importable and its ``codec`` (``"JPEG8"``, ``"HTJ2K"``) works."""
    try:
        import imagecodecs
    except ImportError:
        return False
    if codec == "JPEG8":
        return bool(imagecodecs.JPEG8.available)
    if codec == "HTJ2K":
        return bool(imagecodecs.HTJ2K.available)
    return False


def _jpeg_lossless_available() -> bool:
    """Whether imagecodecs' libjpeg-turbo writes lossless JPEG (libjpeg-turbo 3 and later)."""
    if not _imagecodecs_available("JPEG8"):
        return False
    import imagecodecs

    probe = np.arange(16, dtype=np.uint16).reshape(4, 4)
    try:
        encoded = imagecodecs.jpeg8_encode(probe, lossless=True, predictor=1, bitspersample=12)
    except Exception:
        return False
    return bytes(encoded[:2]) == b"\xff\xd8" and b"\xff\xc3" in bytes(encoded)


@functools.cache
def _encoders() -> dict[str, FrameEncoder]:
    """The encapsulated targets that can be produced now, each with its frame encoder."""
    out: dict[str, FrameEncoder] = {}
    for uid in _PYDICOM_ENCODER_PLUGINS:
        if _pydicom_encoder_plugin(uid) is not None:
            out[uid] = functools.partial(_encode_pydicom, uid)
    if _imagecodecs_available("JPEG8"):
        out[JPEG_BASELINE] = _encode_jpeg_baseline
    if _jpeg_lossless_available():
        out[JPEG_LOSSLESS] = _encode_jpeg_lossless
        out[JPEG_LOSSLESS_SV1] = _encode_jpeg_lossless
    if _imagecodecs_available("HTJ2K"):
        out[HTJ2K_LOSSLESS] = functools.partial(_encode_htj2k, HTJ2K_LOSSLESS)
        out[HTJ2K_LOSSLESS_RPCL] = functools.partial(_encode_htj2k, HTJ2K_LOSSLESS_RPCL)
        out[HTJ2K] = functools.partial(_encode_htj2k, HTJ2K)
    return out


@functools.cache
def capabilities() -> dict[str, list[str]]:
    """Which stored syntax can be transcoded to which, given the codecs installed.

    Returns
    -------
    dict[str, list[str]]
        Each source syntax that can be decoded (native syntaxes always) mapped to the sorted
        UIDs of the syntaxes it can be transcoded to, the source itself excluded. Computed
        once per process.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sources = [uid for uid in SHORT_NAMES if _decoding_plugin(uid) is not None]
        targets = [*NATIVE_SYNTAXES, *_encoders()]
    return {source: sorted(t for t in targets if t != source) for source in sources}


def _unsupported(source_uid: str, target_uid: str, why: str) -> ServiceError:
    """The FAILED_PRECONDITION error of a syntax that cannot be produced."""
    return ServiceError(
        Code.FAILED_PRECONDITION,
        "TRANSFER_SYNTAX_UNSUPPORTED",
        f"transfer syntax {target_uid} ({syntax_name(target_uid)}) cannot be produced from "
        f"the stored {source_uid} ({syntax_name(source_uid)}): {why}",
        metadata={"transfer_syntax_uid": target_uid, "stored_transfer_syntax_uid": source_uid},
    )


def check_transcodable(source_uid: str, target_uid: str, *, allow_lossy: bool) -> None:
    """Refuse a transcoding the installed codecs cannot do, or a lossy one not allowed.

    Parameters
    ----------
    source_uid
        The stored transfer syntax.
    target_uid
        The transfer syntax asked for.
    allow_lossy
        Whether the caller accepts a lossy target.

    Raises
    ------
    ServiceError
        FAILED_PRECONDITION, reason ``TRANSFER_SYNTAX_UNSUPPORTED``, naming both syntaxes.
    """
    if source_uid == target_uid:
        return
    table = capabilities()
    if source_uid not in table:
        raise _unsupported(source_uid, target_uid, "no installed codec decodes the stored syntax")
    if target_uid not in table[source_uid]:
        raise _unsupported(source_uid, target_uid, "no installed codec encodes it")
    if is_lossy(target_uid) and not allow_lossy:
        raise _unsupported(
            source_uid, target_uid, "it is lossy, and lossy compression was not allowed"
        )


# -- reading and writing -------------------------------------------------------------------


def _read(source: Source) -> FileDataset:
    """The Part 10 file ``source``, every element parsed."""
    try:
        with open_source(source) as fp:
            ds = dcmread(fp)
    except ServiceError:  # the blob store could not be read
        raise
    except Exception as exc:
        raise ServiceError(
            Code.FAILED_PRECONDITION,
            "TRANSFER_SYNTAX_UNSUPPORTED",
            f"the stored file {source_name(source)} cannot be parsed for transcoding: {exc}",
        ) from exc
    return ds


@dataclass(frozen=True)
class _PixelValue:
    """Where the Pixel Data value of a stored file lies, so frames are read from the file.

    ``length`` is None for encapsulated (undefined length) pixel data; ``vr`` is the VR the
    fully parsed data set would give the element.
    """

    source: Source
    offset: int
    length: int | None
    vr: str


class _Sized:
    """A stand-in buffer of ``length`` bytes, for pydicom's check of the pixel data size."""

    def __init__(self, length: int) -> None:
        self._length = length

    def __len__(self) -> int:
        return self._length


# Explicit VRs with a 4-byte length after two reserved bytes, those Pixel Data may have.
_PIXEL_VRS = (b"OB", b"OW", b"UN")


def _locate_pixels(ds: FileDataset, source: Source, fp: Any) -> _PixelValue | None:
    """The Pixel Data value that ``fp`` (stopped before the pixels) is at, if regular.

    None when the file must be parsed whole instead: no Pixel Data (or Float Pixel Data
    first), a header that is not the expected one, a value running past the end of the file,
    or a length that does not fit the syntax (defined for native, undefined for encapsulated).
    """
    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        return None
    order = "<" if little else ">"
    header = fp.read(8)
    if len(header) != 8:
        return None
    group, element = struct.unpack(f"{order}HH", header[:4])
    if (group, element) != (0x7FE0, 0x0010):
        return None
    if implicit:
        (length,) = struct.unpack(f"{order}L", header[4:])
        # As pydicom resolves "OB or OW" for implicit VR (PS3.5 A.1 and A.4).
        vr = "OB" if length == 0xFFFFFFFF else "OW"
    else:
        raw_vr = header[4:6]
        rest = fp.read(4)
        if raw_vr not in _PIXEL_VRS or len(rest) != 4:
            return None
        (length,) = struct.unpack(f"{order}L", rest)
        vr = raw_vr.decode("ascii")
    offset = int(fp.tell())
    native = _stored_syntax(ds) in NATIVE_SYNTAXES
    if length == 0xFFFFFFFF:
        return None if native else _PixelValue(source, offset, None, vr)
    if not native or offset + length > file_size(fp):
        return None
    return _PixelValue(source, offset, length, vr)


def _read_for_frames(source: Source) -> tuple[FileDataset, _PixelValue | None]:
    """The data set in ``source`` without reading its pixels, and where the pixels lie.

    Only the elements before Pixel Data are parsed. When the pixels cannot be read from the
    file directly (deflated files, no Pixel Data, anything irregular) the file is parsed
    whole, as :func:`_read` does, and the second value is None.
    """
    try:
        with open_source(source) as fp:
            ds = dcmread(fp, stop_before_pixels=True)
            if _stored_syntax(ds) == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
                pixels = None
            else:
                pixels = _locate_pixels(ds, source, fp)
    except ServiceError:
        raise
    except Exception as exc:
        raise ServiceError(
            Code.FAILED_PRECONDITION,
            "TRANSFER_SYNTAX_UNSUPPORTED",
            f"the stored file {source_name(source)} cannot be parsed for transcoding: {exc}",
        ) from exc
    if pixels is None:
        return _read(source), None
    return ds, pixels


def _read_range(source: Source, start: int, length: int) -> bytes:
    """``length`` bytes of ``source`` from ``start`` (fewer at its end)."""
    with open_source(source) as fp:
        fp.seek(start)
        return fp.read(max(length, 0))


def _stored_syntax(ds: FileDataset) -> str:
    """The transfer syntax of a data set read from a Part 10 file."""
    return str(ds.file_meta.get("TransferSyntaxUID", EXPLICIT_VR_LITTLE_ENDIAN))


def _write(ds: FileDataset, target_uid: str) -> bytes:
    """``ds`` as a Part 10 file in ``target_uid``, with a preamble of zeros."""
    ds.file_meta.TransferSyntaxUID = UID(target_uid)
    ds.preamble = b"\x00" * 128
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _swap(data: bytes, size: int) -> bytes:
    """``data`` with the byte order of each ``size``-byte value reversed."""
    if size < 2 or len(data) % size:
        return data
    return np.frombuffer(data, dtype=f"<u{size}").byteswap().tobytes()


def _pixel_word_size(ds: Dataset, vr: str, big_endian_source: bool) -> int:
    """The size of the values byte-swapped in Pixel Data between byte orders.

    pydicom reads big endian Pixel Data with a sample size of Bits Allocated, and big endian
    8-bit data encoded as OW as swapped 16-bit words; this follows it. Little endian 8-bit
    data is a plain byte stream whatever its VR.
    """
    bits = int(ds.get("BitsAllocated", 8))
    if bits >= 16 and bits % 8 == 0:
        return bits // 8
    return 2 if vr == "OW" and big_endian_source else 1


def _swap_values(ds: Dataset, big_endian_source: bool) -> None:
    """Byte-swap, in place and recursively, the values pydicom writes as stored bytes."""
    for elem in ds:
        if elem.VR == VR.SQ:
            for item in elem.value:
                _swap_values(item, big_endian_source)
            continue
        if not isinstance(elem.value, bytes | bytearray) or elem.is_undefined_length:
            continue
        if elem.tag == _PIXEL_DATA_TAG:
            size = _pixel_word_size(ds, str(elem.VR), big_endian_source)
            elem.value = _swap(bytes(elem.value), size)
            elem.VR = VR.OB if int(ds.get("BitsAllocated", 8)) <= 8 else VR.OW
        elif str(elem.VR) in _WORD_SIZES:
            elem.value = _swap(bytes(elem.value), _WORD_SIZES[str(elem.VR)])


def _native_to_native(ds: FileDataset, source_uid: str, target_uid: str) -> bytes:
    """Rewrite a native data set in another native syntax; no pixel is decoded."""
    source_little = source_uid != EXPLICIT_VR_BIG_ENDIAN
    target_little = target_uid != EXPLICIT_VR_BIG_ENDIAN
    # Resolve "US or SS", "OB or OW" in the source's byte order before anything else.
    correct_ambiguous_vr(ds, source_little)
    if source_little != target_little:
        _swap_values(ds, not source_little)
    return _write(ds, target_uid)


# -- decoding ------------------------------------------------------------------------------


def _undecodable(source_uid: str, target_uid: str, exc: Exception) -> ServiceError:
    """The error of pixel data that cannot be decoded or encoded."""
    return _unsupported(source_uid, target_uid, f"the pixel data could not be transcoded: {exc}")


def _decode_from_file(
    ds: Dataset, source_uid: str, pixels: _PixelValue, index: int, plugin: str
) -> tuple[NDArray[Any], dict[str, Any]]:
    """One frame decoded from the file, reading only what the frame needs.

    The decoder gets the options it would take from the data set, and a file positioned at
    the Pixel Data value; for native data the size check pydicom makes of an in-memory value
    is made first, with the value's length, so the same data is refused the same way.
    """
    options: dict[str, Any] = as_pixel_options(
        ds, pixel_keyword="PixelData", pixel_vr=pixels.vr, as_rgb=True
    )
    if pixels.length is not None:
        runner = DecodeRunner(UID(source_uid))
        runner.set_source(_Sized(pixels.length))  # type: ignore[arg-type]
        runner.set_options(**options)
        runner.validate()
    with open_source(pixels.source) as fp:
        fp.seek(pixels.offset)
        decoder = get_decoder(UID(source_uid))
        arr, props = decoder.as_array(fp, index=index, decoding_plugin=plugin, **options)
    return arr, props


def within_limits(ds: Dataset, max_pixels: int) -> FrameGeometry:
    """The frame size ``ds`` declares, refused when over ``max_pixels`` pixels.

    Raises
    ------
    ServiceError
        RESOURCE_EXHAUSTED (``LIMIT_EXCEEDED``) naming ``max_frame_pixels``.
    GeometryError
        When Rows, Columns or Bits Allocated is missing or invalid.
    """
    elements = ElementValues(ds)
    tag = next((t for t in PIXEL_DATA_TAGS if t in elements), PIXEL_DATA_TAGS[0])
    geometry = frame_geometry(elements, tag)
    why = too_many_pixels(geometry, max_pixels)
    if why:
        raise ServiceError(
            Code.RESOURCE_EXHAUSTED,
            "LIMIT_EXCEEDED",
            f"instance {ds.get('SOPInstanceUID', '')} is not decoded: {why}",
            metadata={"limit": "max_frame_pixels", "value": str(max_pixels)},
        )
    return geometry


def check_encoded_frame(
    ds: Dataset,
    source_uid: str,
    index: int,
    geometry: FrameGeometry,
    max_pixels: int,
    at: tuple[Source | BinaryIO, int] | None = None,
) -> None:
    """Hold frame ``index`` (0-based) of encapsulated data to its header before decoding it.

    The frame is found as pydicom's decoders find it: in ``ds.PixelData``, or in the file
    ``at[0]`` (a source, or a file object already open on it) whose Pixel Data value starts
    at byte ``at[1]``.
    """
    count = get_nr_frames(ds, warn=False)
    offsets = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    if at is None:
        frame = encoded_frame(ds.PixelData, index, count, offsets)
    elif isinstance(at[0], Path | BlobRef):
        with open_source(at[0]) as fp:
            fp.seek(at[1])
            frame = encoded_frame(fp, index, count, offsets)
    else:
        at[0].seek(at[1])
        frame = encoded_frame(at[0], index, count, offsets)
    what = f"frame {index + 1} of instance {ds.get('SOPInstanceUID', '')}"
    check_frame(frame, source_uid, geometry, max_pixels, what)


def _iter_decoded(
    ds: Dataset,
    source_uid: str,
    indices: list[int] | None,
    pixels: _PixelValue | None = None,
    max_pixels: int = Settings.max_frame_pixels,
) -> Iterator[tuple[NDArray[Any], PixelDescription]]:
    """Each frame at ``indices`` (0-based; all when None), decoded as ``pixel_array`` does.

    With ``pixels`` the frames are read from the file, not from ``ds`` (which then holds no
    Pixel Data). No frame over ``max_pixels`` pixels is decoded, nor a compressed one whose
    header disagrees with the data set.
    """
    plugin = _decoding_plugin(source_uid) or ""
    decoder = get_decoder(UID(source_uid))
    geometry = within_limits(ds, max_pixels)
    if indices is None:
        indices = list(range(get_nr_frames(ds, warn=False)))
    for index in indices:
        if source_uid not in NATIVE_SYNTAXES:
            at = None if pixels is None else (pixels.source, pixels.offset)
            check_encoded_frame(ds, source_uid, index, geometry, max_pixels, at)
        # One frame at a time with as_array: iter_array fails on read-only buffers when it
        # corrects the sign of JPEG 2000 samples (pydicom 3.0).
        if pixels is not None:
            arr, props = _decode_from_file(ds, source_uid, pixels, index, plugin)
        else:
            options: dict[str, Any] = {"as_rgb": True}
            arr, props = decoder.as_array(ds, index=index, decoding_plugin=plugin, **options)
        yield (
            arr,
            PixelDescription(
                rows=int(props["rows"]),
                columns=int(props["columns"]),
                samples_per_pixel=int(props["samples_per_pixel"]),
                bits_allocated=int(props["bits_allocated"]),
                bits_stored=int(props.get("bits_stored", props["bits_allocated"])),
                pixel_representation=int(props.get("pixel_representation", 0)),
                photometric_interpretation=str(props["photometric_interpretation"]),
            ),
        )


def _native_bytes(arr: NDArray[Any], desc: PixelDescription, big_endian: bool) -> bytes:
    """One decoded frame as native pixel bytes (bit-packed for Bits Allocated 1)."""
    if desc.bits_allocated == 1:
        return pack_bits(arr, pad=False)
    dtype = arr.dtype.newbyteorder(">") if big_endian else arr.dtype.newbyteorder("<")
    return arr.astype(dtype, copy=False).tobytes()


# -- encoding ------------------------------------------------------------------------------


def _fits_profile(uid: str, desc: PixelDescription) -> bool:
    """Whether the standard allows these pixels in ``uid`` (PS3.5 section 8.2 tables)."""
    if uid in (HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL, HTJ2K):
        # Not in pydicom's table; what OpenJPH encodes and PS3.5 Table 8.2.4-1 allows.
        photometric = {"MONOCHROME1", "MONOCHROME2", "RGB"}
        if uid != HTJ2K:
            photometric.add("PALETTE COLOR")
        return (
            desc.photometric_interpretation in photometric
            and desc.samples_per_pixel in (1, 3)
            and desc.bits_allocated in (8, 16)
            and 1 <= desc.bits_stored <= desc.bits_allocated
            and (desc.samples_per_pixel == 1 or desc.pixel_representation == 0)
        )
    profiles = ENCODING_PROFILES.get(UID(uid))
    if profiles is None:
        return True
    return any(
        desc.photometric_interpretation == pi
        and desc.samples_per_pixel == spp
        and desc.pixel_representation in representations
        and desc.bits_allocated in allocated
        and desc.bits_stored in stored
        for pi, spp, representations, allocated, stored in profiles
    )


def _check_encodable(uid: str, desc: PixelDescription) -> None:
    """Refuse pixels ``uid`` cannot hold, or its encoder cannot encode, saying why."""
    if not _fits_profile(uid, desc):
        raise ValueError(
            f"{syntax_name(uid)} cannot hold {desc.samples_per_pixel}-sample "
            f"{desc.photometric_interpretation} pixels with Bits Allocated "
            f"{desc.bits_allocated}, Bits Stored {desc.bits_stored}, Pixel Representation "
            f"{desc.pixel_representation} (PS3.5 section 8.2)"
        )
    if uid in (JPEG_2000_LOSSLESS, JPEG_2000) and min(desc.rows, desc.columns) < _J2K_MIN_SIZE:
        raise ValueError(
            f"pylibjpeg-openjpeg encodes {_J2K_MIN_SIZE} x {_J2K_MIN_SIZE} pixels at least "
            f"(it always uses 6 wavelet resolutions), not {desc.rows} x {desc.columns}"
        )


def _encode_pydicom(uid: str, arr: NDArray[Any], desc: PixelDescription) -> tuple[bytes, str]:
    """One frame encoded by a pydicom encoder; the photometric interpretation is unchanged."""
    options: dict[str, Any] = desc.encoder_options()
    if uid == JPEG_2000:
        options["j2k_psnr"] = [_JPEG_2000_PSNR]
    elif uid == JPEG_LS_NEAR_LOSSLESS:
        options["jls_error"] = _JPEG_LS_NEAR_ERROR
    plugin = _pydicom_encoder_plugin(uid) or ""
    encoded = get_encoder(UID(uid)).encode(arr, encoding_plugin=plugin, **options)
    return bytes(encoded), desc.photometric_interpretation


def _encode_jpeg_baseline(arr: NDArray[Any], desc: PixelDescription) -> tuple[bytes, str]:
    """One 8-bit frame as JPEG baseline (libjpeg-turbo); colour becomes YBR_FULL_422."""
    import imagecodecs

    if desc.samples_per_pixel == 3:
        encoded = imagecodecs.jpeg8_encode(arr, level=_JPEG_BASELINE_QUALITY, subsampling="422")
        return bytes(encoded), "YBR_FULL_422"
    encoded = imagecodecs.jpeg8_encode(arr, level=_JPEG_BASELINE_QUALITY)
    return bytes(encoded), desc.photometric_interpretation


def _encode_jpeg_lossless(arr: NDArray[Any], desc: PixelDescription) -> tuple[bytes, str]:
    """One frame as lossless JPEG, selection value 1 (libjpeg-turbo).

    JPEG has no sign: signed samples are written as their Bits Stored two's complement bit
    pattern, which decoders sign-extend by Pixel Representation.
    """
    import imagecodecs

    bits = max(desc.bits_stored, 2)
    unsigned = np.uint8 if bits <= 8 else np.uint16
    mask = (1 << desc.bits_stored) - 1
    data = (arr.astype(np.int64) & mask).astype(unsigned)
    encoded = imagecodecs.jpeg8_encode(data, lossless=True, predictor=1, bitspersample=bits)
    return bytes(encoded), desc.photometric_interpretation


def _encode_htj2k(uid: str, arr: NDArray[Any], desc: PixelDescription) -> tuple[bytes, str]:
    """One frame as an HTJ2K codestream (OpenJPH), colour without a component transform.

    OpenJPH writes RPCL progression; for the RPCL syntax (.202) a TLM marker and tile-parts
    per resolution are added, as PS3.5 requires.
    """
    import imagecodecs

    if uid == HTJ2K:
        encoded = imagecodecs.htj2k_encode(arr, _HTJ2K_QSTEP, reversible=False, rgb=False)
    elif uid == HTJ2K_LOSSLESS_RPCL:
        encoded = imagecodecs.htj2k_encode(
            arr,
            reversible=True,
            rgb=False,
            tlm=True,
            tilepart=imagecodecs.HTJ2K.TILEPART.RESOLUTIONS,
        )
    else:
        encoded = imagecodecs.htj2k_encode(arr, reversible=True, rgb=False)
    return bytes(encoded), desc.photometric_interpretation


def _encode_frame(target_uid: str, arr: NDArray[Any], desc: PixelDescription) -> tuple[bytes, str]:
    """One decoded frame encoded in ``target_uid``; the bitstream and its photometric."""
    _check_encodable(target_uid, desc)
    return _encoders()[target_uid](np.ascontiguousarray(arr), desc)


# -- the API -------------------------------------------------------------------------------


def _mark_lossy(ds: Dataset, target_uid: str, raw_size: int, encoded_size: int) -> None:
    """Record lossy compression in the General Image module (PS3.3 C.7.6.1.1.5)."""
    ds.LossyImageCompression = "01"
    ratios = [str(v) for v in ds.get("LossyImageCompressionRatio", [])]
    methods = [str(v) for v in ds.get("LossyImageCompressionMethod", [])]
    ratio = raw_size / encoded_size if encoded_size else 1.0
    ratios.append(f"{ratio:.4g}"[:16])
    methods.append(_LOSSY_METHODS.get(target_uid, "ISO_10918_1"))
    ds.LossyImageCompressionRatio = ratios
    ds.LossyImageCompressionMethod = methods


def _set_image_pixel(ds: Dataset, desc: PixelDescription, photometric: str, frames: int) -> None:
    """Make the Image Pixel module describe the new pixels."""
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = desc.bits_allocated
    if desc.samples_per_pixel > 1:
        ds.PlanarConfiguration = 0
    if "NumberOfFrames" in ds or frames > 1:
        ds.NumberOfFrames = frames


def _repixel(ds: FileDataset, source_uid: str, target_uid: str, max_pixels: int) -> bytes:
    """Decode every frame and write them in ``target_uid`` (native or encapsulated)."""
    for keyword in _ENCAPSULATION_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)
    frames: list[bytes] = []
    desc: PixelDescription | None = None
    photometric = ""
    raw_size = 0
    encapsulated = target_uid not in NATIVE_SYNTAXES
    for arr, frame_desc in _iter_decoded(ds, source_uid, None, max_pixels=max_pixels):
        desc = frame_desc
        raw_size += arr.nbytes
        if encapsulated:
            encoded, photometric = _encode_frame(target_uid, arr, frame_desc)
            frames.append(encoded)
        else:
            frames.append(_native_bytes(arr, frame_desc, target_uid == EXPLICIT_VR_BIG_ENDIAN))
            photometric = frame_desc.photometric_interpretation
    if desc is None:
        raise ValueError("the pixel data holds no frame")
    _set_image_pixel(ds, desc, photometric, len(frames))
    elem = ds["PixelData"]
    if encapsulated:
        total = sum(len(f) + 8 for f in frames)
        if total > 2**32 - 1:
            ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = (
                encapsulate_extended(frames)
            )
        else:
            ds.PixelData = encapsulate(frames)
        elem = ds["PixelData"]
        elem.VR = VR.OB
        elem.is_undefined_length = True
        if is_lossy(target_uid):
            _mark_lossy(ds, target_uid, raw_size, sum(len(f) for f in frames))
    else:
        data = b"".join(frames)
        elem.value = data + b"\x00" if len(data) % 2 else data
        elem.VR = VR.OB if desc.bits_allocated <= 8 else VR.OW
        elem.is_undefined_length = False
    return _write(ds, target_uid)


def _has_pixels(ds: Dataset) -> bool:
    """Whether the data set holds pixel data of any kind."""
    return any(keyword in ds for keyword in _PIXEL_DATA_KEYWORDS)


def transcode_instance(
    source: Source,
    target_uid: str,
    *,
    allow_lossy: bool,
    max_frame_pixels: int = Settings.max_frame_pixels,
) -> bytes:
    """The whole Part 10 file ``source`` re-encoded in ``target_uid``.

    Parameters
    ----------
    source
        The stored Part 10 file: a path, or a blob of the archive's store.
    target_uid
        The transfer syntax asked for.
    allow_lossy
        Whether a lossy target is acceptable.
    max_frame_pixels
        The most pixels a frame may have to be decoded.

    Returns
    -------
    bytes
        A Part 10 file: zero preamble, file meta with the new Transfer Syntax UID, the data
        set in that syntax. The stored bytes when the syntax is the stored one.

    Raises
    ------
    ServiceError
        FAILED_PRECONDITION (``TRANSFER_SYNTAX_UNSUPPORTED``) when the syntax cannot be
        produced, is lossy and not allowed, or the pixel data cannot be transcoded;
        FAILED_PRECONDITION (``FRAME_HEADER_MISMATCH``) when a compressed frame's header
        disagrees with the data set; RESOURCE_EXHAUSTED (``LIMIT_EXCEEDED``) when a frame
        has more than ``max_frame_pixels`` pixels.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = _read(source)
        source_uid = _stored_syntax(ds)
        check_transcodable(source_uid, target_uid, allow_lossy=allow_lossy)
        if source_uid == target_uid:
            return read_source(source)
        try:
            if source_uid in NATIVE_SYNTAXES and target_uid in NATIVE_SYNTAXES:
                return _native_to_native(ds, source_uid, target_uid)
            if "PixelData" not in ds:
                if _has_pixels(ds) and target_uid not in NATIVE_SYNTAXES:
                    raise ValueError("float pixel data cannot be compressed")
                return _native_to_native(ds, EXPLICIT_VR_LITTLE_ENDIAN, target_uid)
            return _repixel(ds, source_uid, target_uid, max_frame_pixels)
        except ServiceError:
            raise
        except Exception as exc:
            raise _undecodable(source_uid, target_uid, exc) from exc


def _frame_range_error(outside: list[int], count: int) -> ServiceError:
    """The OUT_OF_RANGE error of frame numbers the instance does not have."""
    return ServiceError(
        Code.OUT_OF_RANGE,
        "FRAME_OUT_OF_RANGE",
        f"frame {', '.join(map(str, outside))} is outside 1..{count}",
        metadata={"frames": ",".join(map(str, outside)), "number_of_frames": str(count)},
    )


def _native_frame_source(
    ds: Dataset, source_uid: str, target_uid: str
) -> Callable[[int], bytes] | None:
    """Frame bytes cut from native pixel data with no decode, or None if a decode is needed."""
    bits = int(ds.get("BitsAllocated", 1))
    if source_uid not in NATIVE_SYNTAXES or target_uid not in NATIVE_SYNTAXES or bits % 8:
        return None
    correct_ambiguous_vr(ds, source_uid != EXPLICIT_VR_BIG_ENDIAN)
    elem = ds["PixelData"]
    data = bytes(elem.value)
    if source_uid == EXPLICIT_VR_BIG_ENDIAN:
        data = _swap(data, _pixel_word_size(ds, str(elem.VR), True))
    samples = int(ds.get("SamplesPerPixel", 1))
    size = int(ds.Rows) * int(ds.Columns) * samples * (bits // 8)
    if str(ds.get("PhotometricInterpretation", "")) == "YBR_FULL_422":
        size = size * 2 // 3
    big = target_uid == EXPLICIT_VR_BIG_ENDIAN

    def frame(number: int) -> bytes:
        chunk = data[(number - 1) * size : number * size]
        return _swap(chunk, bits // 8) if big else chunk

    return frame


def _native_file_source(
    ds: Dataset, pixels: _PixelValue, source_uid: str, target_uid: str
) -> Callable[[int], bytes] | None:
    """:func:`_native_frame_source` reading each frame from the file instead of memory."""
    bits = int(ds.get("BitsAllocated", 1))
    if source_uid not in NATIVE_SYNTAXES or target_uid not in NATIVE_SYNTAXES or bits % 8:
        return None
    correct_ambiguous_vr(ds, source_uid != EXPLICIT_VR_BIG_ENDIAN)
    total = pixels.length or 0
    # The stored value is byte-swapped as a whole, by words, when its length allows it.
    word = 1
    if source_uid == EXPLICIT_VR_BIG_ENDIAN:
        word = _pixel_word_size(ds, pixels.vr, True)
        if word < 2 or total % word:
            word = 1
    samples = int(ds.get("SamplesPerPixel", 1))
    size = int(ds.Rows) * int(ds.Columns) * samples * (bits // 8)
    if str(ds.get("PhotometricInterpretation", "")) == "YBR_FULL_422":
        size = size * 2 // 3
    big = target_uid == EXPLICIT_VR_BIG_ENDIAN

    def frame(number: int) -> bytes:
        # The slice data[(number - 1) * size : number * size] of the (swapped) value.
        start = min(max((number - 1) * size, 0), total)
        stop = min(max(number * size, start), total)
        first = start - start % word
        last = min(stop + (-stop) % word, total)
        data = _read_range(pixels.source, pixels.offset + first, last - first)
        if word > 1:
            data = _swap(data, word)
        chunk = data[start - first : stop - first]
        return _swap(chunk, bits // 8) if big else chunk

    return frame


def transcode_frames(
    source: Source,
    numbers: list[int],
    target_uid: str,
    *,
    allow_lossy: bool,
    max_frame_pixels: int = Settings.max_frame_pixels,
) -> Iterator[bytes]:
    """Each requested frame of the instance ``source``, in ``target_uid``.

    Everything that can be checked is checked on the call, before the iterator is returned:
    the syntax, the frame numbers and the first frame's transcoding, so a failure never
    comes half-way through.

    Parameters
    ----------
    source
        The stored Part 10 file: a path, or a blob of the archive's store.
    numbers
        1-based frame numbers, in the order wanted.
    target_uid
        The transfer syntax asked for.
    allow_lossy
        Whether a lossy target is acceptable.
    max_frame_pixels
        The most pixels a frame may have to be decoded.

    Returns
    -------
    Iterator[bytes]
        For a native target, the frame's raw pixel bytes (little endian samples; big endian
        for Explicit VR Big Endian; bit-packed when Bits Allocated is 1). For an
        encapsulated target, the frame's compressed bitstream in that syntax.

    Raises
    ------
    ServiceError
        As :func:`transcode_instance`; FAILED_PRECONDITION (``NO_PIXEL_DATA``) or
        OUT_OF_RANGE (``FRAME_OUT_OF_RANGE``).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds, pixels = _read_for_frames(source)
        source_uid = _stored_syntax(ds)
        check_transcodable(source_uid, target_uid, allow_lossy=allow_lossy)
        if pixels is None and "PixelData" not in ds:
            raise ServiceError(
                Code.FAILED_PRECONDITION,
                "NO_PIXEL_DATA",
                f"the instance in {source_name(source)} has no pixel data",
                metadata={"transfer_syntax_uid": target_uid},
            )
        count = get_nr_frames(ds, warn=False)
        outside = sorted({n for n in numbers if not 1 <= n <= count})
        if outside:
            raise _frame_range_error(outside, count)
        try:
            if pixels is None:
                cut = _native_frame_source(ds, source_uid, target_uid)
            else:
                cut = _native_file_source(ds, pixels, source_uid, target_uid)
            first = b""
            if numbers and cut is not None:
                first = cut(numbers[0])
            elif numbers:
                first = _decode_frame(
                    ds, source_uid, target_uid, numbers[0], pixels, max_frame_pixels
                )
        except ServiceError:
            raise
        except Exception as exc:
            raise _undecodable(source_uid, target_uid, exc) from exc
    return _frames_after(ds, source_uid, target_uid, numbers, first, cut, pixels, max_frame_pixels)


def _decode_frame(
    ds: Dataset,
    source_uid: str,
    target_uid: str,
    number: int,
    pixels: _PixelValue | None,
    max_pixels: int,
) -> bytes:
    """One frame decoded and, for an encapsulated target, re-encoded."""
    for arr, desc in _iter_decoded(ds, source_uid, [number - 1], pixels, max_pixels):
        if target_uid in NATIVE_SYNTAXES:
            return _native_bytes(arr, desc, target_uid == EXPLICIT_VR_BIG_ENDIAN)
        return _encode_frame(target_uid, arr, desc)[0]
    raise ValueError(f"frame {number} could not be decoded")


def _frames_after(
    ds: Dataset,
    source_uid: str,
    target_uid: str,
    numbers: list[int],
    first: bytes,
    cut: Callable[[int], bytes] | None,
    pixels: _PixelValue | None,
    max_pixels: int,
) -> Iterator[bytes]:
    """Yield the first frame (already made), then make and yield the others one by one."""
    if not numbers:
        return
    yield first
    for number in numbers[1:]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                data = (
                    cut(number)
                    if cut is not None
                    else _decode_frame(ds, source_uid, target_uid, number, pixels, max_pixels)
                )
            except ServiceError:
                raise
            except Exception as exc:
                raise _undecodable(source_uid, target_uid, exc) from exc
        yield data


def capability_table_markdown() -> str:
    """The capability matrix as a Markdown table, for the README.

    Returns
    -------
    str
        One row per stored syntax (name and UID), with the lossless and the lossy targets it
        can be transcoded to (short names), newline-terminated.
    """
    lines = [
        "| Stored syntax | UID | Lossless targets | Lossy targets (need `allow_lossy`) |",
        "| --- | --- | --- | --- |",
    ]
    for source, targets in capabilities().items():
        lossless = ", ".join(syntax_name(t) for t in targets if not is_lossy(t)) or "none"
        lossy = ", ".join(syntax_name(t) for t in targets if is_lossy(t)) or "none"
        lines.append(f"| {syntax_name(source)} | `{source}` | {lossless} | {lossy} |")
    return "\n".join(lines) + "\n"
