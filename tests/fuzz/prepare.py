"""Harness: preparing a received instance (``store/prepare.py``, ``prepare`` on a file).

The input is the file as received. ``prepare`` runs in a worker process in production, so its
answer, and its error, must also survive pickling back to the server. Expected: a prepared
instance, or a ``ServiceError`` (272 / 43264 with a reason). A bug: any other exception (the
store reports it as an unexplained STORAGE_FAILURE and logs a traceback), a hang, an answer
that cannot cross the process boundary, metadata that cannot be read back (DICOMweb and gRPC
metadata parse it), or a frame table pointing outside the file.
"""

from __future__ import annotations

import pickle
import shutil
import tempfile
from pathlib import Path

from dicomrpc.datasets import to_json
from dicomrpc.v1 import dataset_pb2
from dicomrpc_server.errors import ServiceError
from dicomrpc_server.store.prepare import PreparedInstance, prepare
from tests.fuzz.bugs import CRASH, Bug
from tests.fuzz.seeds import part10_files
from tests.fuzz.structure import DICTIONARY as STRUCTURE_DICTIONARY

DICTIONARY = (
    *STRUCTURE_DICTIONARY,
    b"\x08\x00\x18\x00UI",  # SOPInstanceUID
    b"\x20\x00\x0d\x00UI",  # StudyInstanceUID
    b"\x28\x00\x08\x00IS",  # NumberOfFrames
    b"\x28\x00\x10\x00US",  # Rows
    b"\x08\x00\x05\x00CS",  # SpecificCharacterSet
    b"ISO_IR 192",
    b"ISO 2022 IR 87",
)

_folder: Path | None = None


def seeds() -> dict[str, bytes]:
    return part10_files(64 * 1024)


def setup() -> None:
    global _folder
    _folder = Path(tempfile.mkdtemp(prefix="fuzz-prepare-"))


def teardown() -> None:
    if _folder is not None:
        shutil.rmtree(_folder, ignore_errors=True)


def TestOneInput(data: bytes) -> None:
    if _folder is None:
        setup()
    assert _folder is not None
    path = _folder / "instance.dcm"
    path.write_bytes(data)
    try:
        prepared = prepare(path)
    except ServiceError as error:
        pickle.loads(pickle.dumps(error))  # errors come back from the worker process
        return
    check(pickle.loads(pickle.dumps(prepared)), len(data))


def check(prepared: PreparedInstance, size: int) -> None:
    """The index entry can be read back, and its frames lie inside the file."""
    new = prepared.new
    to_json(dataset_pb2.Dataset.FromString(new.metadata))
    if new.frames is None:
        return
    for frame in new.frames.frames:
        for offset, length in zip(frame.offsets, frame.lengths, strict=True):
            if offset < 0 or offset + length > size:
                raise Bug(CRASH, "prepare: a frame lies outside the file")
