"""Seed material shared by the harnesses: real Part 10 files, and structured-input encoding.

The structured harnesses read their input with atheris' ``FuzzedDataProvider``, which takes
integers from the end of the data and bytes from the front. :class:`FdpSeed` writes the bytes
that give a chosen sequence of reads back, so that seeds can be built from real requests.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from tests import dicomgen

QUERY_TOKENS = (
    b"includefield=",
    b"limit=",
    b"offset=",
    b"fuzzymatching=true",
    b"&",
    b"=",
    b"*",
    b"?",
    b"-",
    b"%5C",
    b"%00",
)
"""Dictionary entries of the query-string harnesses: the parameters of every search, the
separators, wildcards and range dash, and escapes that must be refused or matched literally."""


class FdpSeed:
    """Builds an input that ``atheris.FuzzedDataProvider`` reads back as the values given.

    Call the methods in the order the harness reads: :meth:`integer` for each
    ``ConsumeIntInRange``, :meth:`data` for each ``ConsumeBytes``; :meth:`build` joins them.
    """

    def __init__(self) -> None:
        self._front = bytearray()
        self._back = bytearray()  # in the order the provider takes them (from the end)

    def integer(self, value: int, low: int, high: int) -> FdpSeed:
        """The next ``ConsumeIntInRange(low, high)`` returns ``value``."""
        if not low <= value <= high:
            raise ValueError(f"{value} is outside {low}..{high}")
        span, offset = high - low, value - low
        width = 0
        while width < 64 and span >> width:
            width += 8
        # The provider makes the integer from its bytes most significant first.
        for shift in range(width - 8, -8, -8):
            self._back.append((offset >> shift) & 0xFF)
        return self

    def data(self, data: bytes) -> FdpSeed:
        """The next ``ConsumeBytes(len(data))`` returns ``data``."""
        self._front += data
        return self

    def build(self) -> bytes:
        """The input."""
        return bytes(self._front) + bytes(reversed(self._back))


def part10_files(max_size: int) -> dict[str, bytes]:
    """Part 10 files: pydicom's test files up to ``max_size`` bytes, and generated instances.

    pydicom's files cover the transfer syntaxes (implicit, explicit, big endian, deflated,
    encapsulated JPEG, JPEG-LS, JPEG 2000, RLE), sequences (private, UN, nested), and files
    that are truncated or lack their meta information.
    """
    import pydicom.data

    folder = Path(pydicom.data.__file__).parent / "test_files"
    out: dict[str, bytes] = {}
    for path in sorted(folder.glob("*.dcm")):
        if path.stat().st_size <= max_size:
            out[path.name] = path.read_bytes()
    out["dicomgen-ct.dcm"] = dicomgen.ct_instance(rows=4, columns=4)
    out["dicomgen-ct-name.dcm"] = dicomgen.ct_instance(
        rows=2, columns=3, patient_name="Müller^José"
    )
    out["dicomgen-ct-nested.dcm"] = _nested_instance()
    return out


def _nested_instance() -> bytes:
    """A generated instance with a sequence three levels deep, of undefined lengths."""
    import io

    from pydicom import dcmread
    from pydicom.dataset import Dataset

    ds = dcmread(io.BytesIO(dicomgen.ct_instance(rows=2, columns=2)))
    inner = Dataset()
    inner.CodeValue = "T-D3000"
    middle = Dataset()
    middle.ConceptNameCodeSequence = [inner]
    outer = Dataset()
    outer.ContentSequence = [middle]
    ds.ReferencedRequestSequence = [outer]
    ds["ReferencedRequestSequence"].is_undefined_length = True
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
