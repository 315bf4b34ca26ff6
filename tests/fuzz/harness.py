"""The harnesses: what each fuzzes, what atheris instruments for it, and its input limits.

This module imports nothing of the archive, so that the runner can import each harness (and
with it the code under test) inside atheris' instrumentation.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

KIB = 1024


@dataclass(frozen=True)
class Spec:
    """One harness.

    Attributes
    ----------
    name
        The name ``python -m tests.fuzz`` and ``bench/fuzz.py`` take.
    module
        The module exposing ``TestOneInput`` and ``seeds``.
    instrument
        The packages atheris instruments, so that their coverage guides the mutations.
    max_len
        The longest input libFuzzer generates.
    timeout_s
        How long one input may run before it counts as a hang.
    target
        What the harness fuzzes, for reports.
    """

    name: str
    module: str
    instrument: tuple[str, ...]
    max_len: int
    timeout_s: int
    target: str


_OURS = ("dicomrpc_server", "dicomrpc")

HARNESSES: dict[str, Spec] = {
    spec.name: spec
    for spec in (
        Spec(
            "structure",
            "tests.fuzz.structure",
            _OURS,
            64 * KIB,
            10,
            "Part 10 structure walk (dicom/structure.py scan)",
        ),
        Spec(
            "prepare",
            "tests.fuzz.prepare",
            (*_OURS, "pydicom"),
            64 * KIB,
            20,
            "instance preparation (store/prepare.py prepare on a file)",
        ),
        Spec(
            "multipart",
            "tests.fuzz.multipart",
            _OURS,
            64 * KIB,
            10,
            "STOW multipart reader (Content-Type boundary, dicomweb/multipart.py)",
        ),
        Spec(
            "dicom_json",
            "tests.fuzz.dicom_json",
            (*_OURS, "pydicom"),
            64 * KIB,
            10,
            "DICOM JSON reader (bytes → JSON → Dataset → pydicom, dicomrpc/datasets.py)",
        ),
        Spec(
            "qido",
            "tests.fuzz.qido",
            _OURS,
            4 * KIB,
            10,
            "QIDO query parser (query string → SearchRequest → terms → index scans)",
        ),
        Spec(
            "workitems",
            "tests.fuzz.workitems",
            _OURS,
            4 * KIB,
            10,
            "workitem query parser (query string → WorkitemQuery → terms; event filters)",
        ),
        Spec(
            "dimse_find",
            "tests.fuzz.dimse_find",
            (*_OURS, "pydicom"),
            16 * KIB,
            20,
            "C-FIND identifier (bytes → identifier → search → responses, dimse/identifiers.py)",
        ),
        Spec(
            "dimse",
            "tests.fuzz.dimse",
            (*_OURS, "pynetdicom"),
            64 * KIB,
            60,
            "DIMSE port, live on loopback (associations, PDUs, DIMSE messages, data sets)",
        ),
        Spec(
            "http",
            "tests.fuzz.http_gateway",
            _OURS,
            64 * KIB,
            60,
            "HTTP gateway, live on loopback (paths, headers, bodies on every route and method)",
        ),
    )
}


def load(spec: Spec, instrument: bool = False) -> ModuleType:
    """Import a harness, with atheris instrumenting ``spec.instrument`` when asked."""
    if not instrument:
        return importlib.import_module(spec.module)
    import atheris

    with atheris.instrument_imports(include=list(spec.instrument)):
        return importlib.import_module(spec.module)
