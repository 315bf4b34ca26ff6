"""Media types: parsing Content-Type and Accept, and choosing what to send (PS3.18 §8.7).

Each resource has its own choice function. They walk the Accept header's media ranges from the
most to the least preferred (by ``q``, then order) and take the first one they can produce; a
header that names nothing producible fails with 406, naming what was asked for and what is
offered.

Parsing takes time in proportion to the header, which may be as long as the request head limit
allows: handlers call a choice function (or :func:`parse_media_type`) through
:func:`negotiated`, which parses a long header in a thread so that the event loop serves other
requests meanwhile.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Concatenate, ParamSpec, TypeVar

from dicomrpc_server.dicomweb.errors import not_acceptable
from dicomrpc_server.errors import ServiceError

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
OCTET_STREAM = "application/octet-stream"
MULTIPART = "multipart/related"
JPEG = "image/jpeg"
PNG = "image/png"

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
AS_STORED = "*"

# The compressed-frame media types and the transfer syntax each means by default (PS3.18
# Table 8.7.3-2); a ``transfer-syntax`` parameter overrides it.
IMAGE_FRAME_TYPES: dict[str, str] = {
    JPEG: "1.2.840.10008.1.2.4.50",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jphc": "1.2.840.10008.1.2.4.201",
    "image/dicom-rle": "1.2.840.10008.1.2.5",
}


@dataclass(frozen=True)
class MediaType:
    """A media type or range with its parameters (names lower-cased, quotes removed)."""

    type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0


# A quoted string (to its closing quote, or the end), a run of other text, or a separator.
_TOKENS = {sep: re.compile(rf'"[^"]*"?|[^"{sep}]+|{sep}') for sep in ",;"}
# Headers up to this length are parsed on the event loop (well under a millisecond).
INLINE_HEADER = 1024

P = ParamSpec("P")
T = TypeVar("T")
H = TypeVar("H", str, str | None)


async def negotiated(
    parse: Callable[Concatenate[H, P], T], header: H, *args: P.args, **kwargs: P.kwargs
) -> T:
    """``parse(header, ...)``, in a thread when the header is long."""
    if header is None or len(header) <= INLINE_HEADER:
        return parse(header, *args, **kwargs)
    return await asyncio.to_thread(parse, header, *args, **kwargs)


def _split(text: str, separator: str) -> list[str]:
    """Split on ``separator`` (``,`` or ``;``) outside double quotes, in linear time."""
    if '"' not in text:
        return text.split(separator)
    parts: list[str] = []
    current: list[str] = []
    for token in _TOKENS[separator].findall(text):
        if token == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(token)
    parts.append("".join(current))
    return parts


def parse_media_type(text: str) -> MediaType:
    """Parse one ``type/subtype; name=value; ...`` (``q`` becomes the weight)."""
    pieces = _split(text, ";")
    params: dict[str, str] = {}
    q = 1.0
    for piece in pieces[1:]:
        name, _, value = piece.partition("=")
        name, value = name.strip().lower(), value.strip().strip('"')
        if name == "q":
            try:
                q = float(value)
            except ValueError:
                q = 0.0
        elif name:
            params[name] = value
    return MediaType(pieces[0].strip().lower(), params, q)


def parse_accept(header: str | None) -> list[MediaType]:
    """The media ranges of an Accept header, most preferred first (``*/*`` when absent)."""
    if not header or not header.strip():
        return [MediaType("*/*")]
    ranges = [parse_media_type(item) for item in _split(header, ",") if item.strip()]
    ranges = [r for r in ranges if r.q > 0]
    return sorted(ranges, key=lambda r: -r.q)  # sorted() is stable: ties keep their order


def _offered(header: str | None, offers: str) -> ServiceError:
    return not_acceptable(f"{header!r} names nothing this resource can send; it sends {offers}")


@dataclass(frozen=True)
class InstanceChoice:
    """How to send instances: as a multipart body or (one instance) a single part."""

    multipart: bool
    transfer_syntax: str


def choose_instances(header: str | None, single_allowed: bool) -> InstanceChoice:
    """Instances are sent as ``application/dicom`` parts (PS3.18 §8.7.3.5.1).

    Without a ``transfer-syntax`` parameter PS3.18 asks for Explicit VR Little Endian; ``*``
    asks for the stored bytes.
    """
    for media in parse_accept(header):
        syntax = media.params.get("transfer-syntax", EXPLICIT_VR_LITTLE_ENDIAN)
        if media.type == MULTIPART:
            if media.params.get("type", DICOM).lower() in (DICOM, "*/*", "application/*"):
                return InstanceChoice(True, syntax)
        elif media.type == DICOM:
            return InstanceChoice(not single_allowed, syntax)
        elif media.type in ("*/*", "multipart/*", "application/*"):
            return InstanceChoice(True, EXPLICIT_VR_LITTLE_ENDIAN)
    raise _offered(header, f'multipart/related; type="{DICOM}"')


@dataclass(frozen=True)
class FrameChoice:
    """How to send frames: the media type of each part and the transfer syntax asked for."""

    part_type: str
    transfer_syntax: str


def choose_frames(header: str | None) -> FrameChoice:
    """Frames are ``application/octet-stream`` (raw, by default) or compressed image parts."""
    for media in parse_accept(header):
        part = media.type
        if media.type == MULTIPART:
            part = media.params.get("type", OCTET_STREAM).lower()
        if part in (OCTET_STREAM, "*/*", "multipart/*", "application/*"):
            syntax = media.params.get("transfer-syntax", EXPLICIT_VR_LITTLE_ENDIAN)
            return FrameChoice(OCTET_STREAM, syntax)
        if part in IMAGE_FRAME_TYPES:
            return FrameChoice(part, media.params.get("transfer-syntax", IMAGE_FRAME_TYPES[part]))
    offers = ", ".join([OCTET_STREAM, *IMAGE_FRAME_TYPES])
    raise _offered(header, f"multipart/related parts of {offers}")


def choose_rendered(header: str | None) -> str:
    """A rendered image is JPEG (the default) or PNG."""
    for media in parse_accept(header):
        if media.type in (JPEG, PNG):
            return media.type
        if media.type in ("*/*", "image/*"):
            return JPEG
    raise _offered(header, f"{JPEG} or {PNG}")


def choose_json(header: str | None) -> str:
    """Metadata and search results are DICOM JSON."""
    for media in parse_accept(header):
        if media.type in (DICOM_JSON, "application/json", "*/*", "application/*"):
            return DICOM_JSON
    raise _offered(header, DICOM_JSON)


def choose_bulk_data(header: str | None) -> bool:
    """Bulk data is an ``application/octet-stream`` part; return whether to wrap it in multipart."""
    for media in parse_accept(header):
        if media.type == MULTIPART and media.params.get("type", OCTET_STREAM).lower() in (
            OCTET_STREAM,
            "*/*",
        ):
            return True
        if media.type == OCTET_STREAM:
            return False
        if media.type in ("*/*", "multipart/*", "application/*"):
            return True
    raise _offered(header, f'multipart/related; type="{OCTET_STREAM}"')
