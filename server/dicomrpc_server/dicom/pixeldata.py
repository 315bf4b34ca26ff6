"""The Image Pixel module of an instance: what one frame holds, read from the header.

Rows, Columns, Samples per Pixel, Bits Allocated and Number of Frames say how large every frame
is and how many there are. Everything that sizes a frame reads them here: the store checks
them against the Pixel Data, the frame table cuts native frames by them, and the codecs are
held to them (a compressed frame must declare the same size in its own header). Refusing
what does not add up keeps a few bytes from claiming millions of frames or gigapixels.
"""

from __future__ import annotations

from dataclasses import dataclass

from dicomrpc_server.dicom.elements import ElementValues, UnreadableValue

SAMPLES_PER_PIXEL = 0x00280002
PHOTOMETRIC_INTERPRETATION = 0x00280004
NUMBER_OF_FRAMES = 0x00280008
ROWS = 0x00280010
COLUMNS = 0x00280011
BITS_ALLOCATED = 0x00280100
BITS_STORED = 0x00280101
EXTENDED_OFFSET_TABLE = 0x7FE00001
PIXEL_DATA = 0x7FE00010
FLOAT_PIXEL_DATA = 0x7FE00008
DOUBLE_FLOAT_PIXEL_DATA = 0x7FE00009
# The Bits Allocated of the float pixel data elements, fixed by their VRs (PS3.3 C.7.6.3).
_FLOAT_BITS = {FLOAT_PIXEL_DATA: 32, DOUBLE_FLOAT_PIXEL_DATA: 64}


class GeometryError(ValueError):
    """An Image Pixel attribute that is missing or invalid, named by its keyword."""

    def __init__(self, keyword: str, tag: int, message: str) -> None:
        super().__init__(f"{keyword} ({tag:08X}) {message}")
        self.keyword = keyword


@dataclass(frozen=True)
class FrameGeometry:
    """The size of every frame, as the Image Pixel module declares it.

    Attributes
    ----------
    rows, columns
        Rows and Columns.
    samples_per_pixel
        Samples per Pixel.
    bits_allocated
        Bits Allocated (32 or 64 for Float and Double Float Pixel Data).
    bits_stored
        Bits Stored (Bits Allocated when absent).
    photometric_interpretation
        Photometric Interpretation, upper case, without padding.
    """

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    photometric_interpretation: str

    @property
    def pixels(self) -> int:
        """The pixels of one frame (Rows x Columns)."""
        return self.rows * self.columns

    @property
    def frame_bits(self) -> int:
        """The size of one native (uncompressed) frame in bits (PS3.5 8.1.1).

        YBR_FULL_422 holds two samples per pixel in native form: two luminance values share
        one pair of chrominance values (PS3.3 C.7.6.3.1.2).
        """
        samples = self.samples_per_pixel
        if self.photometric_interpretation == "YBR_FULL_422" and samples == 3:
            samples = 2
        return self.pixels * samples * self.bits_allocated


def _positive(elements: ElementValues, keyword: str, tag: int, default: int | None) -> int:
    """A positive integer attribute; ``default`` when absent (``None``: it is required)."""
    if tag not in elements:
        if default is None:
            raise GeometryError(keyword, tag, "is missing, but the instance has Pixel Data")
        return default
    try:
        value = elements.value(tag, None)
    except UnreadableValue as exc:
        raise GeometryError(keyword, tag, f"cannot be read: {exc.reason}") from None
    try:
        number = int(value[0] if isinstance(value, list) else value)
    except (TypeError, ValueError, IndexError):
        raise GeometryError(keyword, tag, "is not an integer") from None
    if number < 1:
        raise GeometryError(keyword, tag, f"is {number}, but the instance has Pixel Data")
    return number


def frame_geometry(elements: ElementValues, pixel_tag: int = PIXEL_DATA) -> FrameGeometry:
    """The frame size the header declares for the pixel data element ``pixel_tag``.

    Raises
    ------
    GeometryError
        When Rows, Columns or (for Pixel Data) Bits Allocated is missing, or any of them or
        Samples per Pixel is not a positive integer.
    """
    rows = _positive(elements, "Rows", ROWS, None)
    columns = _positive(elements, "Columns", COLUMNS, None)
    samples = _positive(elements, "SamplesPerPixel", SAMPLES_PER_PIXEL, 1)
    if pixel_tag in _FLOAT_BITS:
        bits = _FLOAT_BITS[pixel_tag]
    else:
        bits = _positive(elements, "BitsAllocated", BITS_ALLOCATED, None)
    try:
        stored = _positive(elements, "BitsStored", BITS_STORED, bits)
    except GeometryError:
        stored = bits
    photometric = (elements.text(PHOTOMETRIC_INTERPRETATION) or "").strip().upper()
    return FrameGeometry(rows, columns, samples, bits, stored, photometric)


def declared_frames(elements: ElementValues) -> tuple[int, str]:
    """NumberOfFrames, and why it was read as 1 when it is not a positive integer (or "")."""
    if NUMBER_OF_FRAMES not in elements:
        return 1, ""
    try:
        value = elements.value(NUMBER_OF_FRAMES, None)
        number = int(value[0] if isinstance(value, list) else value)
    except (TypeError, ValueError, IndexError):
        return 1, "is not an integer: read as 1"
    if number < 1:
        return 1, f"is {number}: read as 1"
    return number, ""


def offset_table_entries(elements: ElementValues, basic_offset_table: bytes) -> int:
    """How many frames the offset table of encapsulated pixel data lists (0 without one).

    The Extended Offset Table (one 8-byte offset per frame) takes precedence over the Basic
    Offset Table (4 bytes per frame), as PS3.5 A.4 has it.
    """
    if EXTENDED_OFFSET_TABLE in elements:
        try:
            raw = elements.value(EXTENDED_OFFSET_TABLE, b"")
            return len(raw) // 8 if isinstance(raw, bytes | bytearray) else 0
        except Exception:
            return 0
    return len(basic_offset_table) // 4


def too_many_pixels(geometry: FrameGeometry, limit: int) -> str:
    """Why a frame of ``geometry`` is over ``limit`` pixels, or ``""``."""
    if geometry.pixels <= limit:
        return ""
    return (
        f"Rows x Columns ({geometry.rows} x {geometry.columns} = {geometry.pixels} pixels) is "
        f"more than this server's limit of {limit} pixels per frame (max_frame_pixels)"
    )
