"""Decoded frames written in a target syntax: the encoders installed, and encoding with them.

Why this module exists: which encoder produces each encapsulated syntax, the settings of the
lossy ones, and what pixels each syntax may hold are one concern, apart from decoding and from
deciding whether a transcoding is allowed.

* Encoding uses pydicom's encoders (pylibjpeg-rle or pydicom for RLE, pyjpegls for JPEG-LS,
  pylibjpeg-openjpeg for JPEG 2000) and imagecodecs where pydicom has none: libjpeg-turbo
  (``jpeg8_encode``) for JPEG baseline and for JPEG lossless with selection value 1, OpenJPH
  (``htj2k_encode``) for HTJ2K. imagecodecs' ``ljpeg_encode`` (liblj92) is not used: it
  writes predictor 6, which *JPEG Lossless SV1* forbids, and it cannot encode colour.
* Which encoders work is found out at run time, once per process (:func:`encoders`).
* A frame for a native target is written as native pixel bytes (:func:`native_bytes`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.pixels.encoders.base import ENCODING_PROFILES, get_encoder
from pydicom.pixels.utils import pack_bits
from pydicom.uid import UID

from dicomrpc_server.retrieve.decoding import PixelDescription
from dicomrpc_server.retrieve.syntaxes import (
    HTJ2K,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    JPEG_2000,
    JPEG_2000_LOSSLESS,
    JPEG_BASELINE,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    RLE_LOSSLESS,
    syntax_name,
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

FrameEncoder = Callable[[NDArray[Any], PixelDescription], tuple[bytes, str]]


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
def encoders() -> dict[str, FrameEncoder]:
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


def encode_frame(target_uid: str, arr: NDArray[Any], desc: PixelDescription) -> tuple[bytes, str]:
    """One decoded frame encoded in ``target_uid``; the bitstream and its photometric."""
    _check_encodable(target_uid, desc)
    return encoders()[target_uid](np.ascontiguousarray(arr), desc)


def native_bytes(arr: NDArray[Any], desc: PixelDescription, big_endian: bool) -> bytes:
    """One decoded frame as native pixel bytes (bit-packed for Bits Allocated 1)."""
    if desc.bits_allocated == 1:
        return pack_bits(arr, pad=False)
    dtype = arr.dtype.newbyteorder(">") if big_endian else arr.dtype.newbyteorder("<")
    return arr.astype(dtype, copy=False).tobytes()
