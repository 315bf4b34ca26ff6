"""Harness: the DICOM JSON reader (``dicomrpc/datasets.py``: bytes → JSON → Dataset → pydicom).

The input is a request body as the gateway receives it (a workitem, a change-state body) or a
file a client reads. Expected: ``ValueError`` (the readers' documented error: not JSON, not a
data set, a value the message cannot carry, a value pydicom refuses). A bug: any other
exception (a ``RecursionError`` is a 500 on the gateway), a hang, a message that ``to_json``
cannot write although ``from_json`` accepted it, or written JSON that does not read back as the
same message.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from dicomrpc.datasets import from_json_text, from_pydicom, to_json, to_json_text, to_pydicom
from tests import upsgen
from tests.fuzz.bugs import CRASH, Bug
from tests.fuzz.seeds import part10_files

DICTIONARY = (
    b'"vr"',
    b'"Value"',
    b'"InlineBinary"',
    b'"BulkDataURI"',
    b'"Alphabetic"',
    b'"Ideographic"',
    b'"Phonetic"',
    b'"00100010"',
    b'"00081199"',
    b'"SQ"',
    b'"PN"',
    b'"DS"',
    b'"IS"',
    b'"UV"',
    b'"SV"',
    b'"OB"',
    b'"FD"',
    b"null",
    b"1e400",
    b"-0.0",
    b"\\u0000",
    b"[{",
)


def seeds() -> dict[str, bytes]:
    import pydicom
    import pydicom.data

    out: dict[str, bytes] = {}
    folder = Path(pydicom.data.__file__).parent / "test_files"
    for name in ("test1.json", "test_PN.json"):
        out[name] = (folder / name).read_bytes()
    out["workitem.json"] = json.dumps(upsgen.workitem()).encode()
    out["workitem-array.json"] = json.dumps([upsgen.workitem()]).encode()
    out["performed.json"] = json.dumps(upsgen.performed()).encode()
    out["state.json"] = (
        b'{"00741000":{"vr":"CS","Value":["IN PROGRESS"]},'
        b'"00081195":{"vr":"UI","Value":["1.2.3.6"]}}'
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, data in part10_files(16 * 1024).items():
            try:
                ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
                text = to_json_text(from_pydicom(ds, bulk_data_threshold=64))
            except Exception:  # a file pydicom cannot convert is no seed
                continue
            out[name.replace(".dcm", ".json")] = text.encode()
    return out


def TestOneInput(data: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about invalid values: not a bug
        try:
            message = from_json_text(data)
        except ValueError:
            return
        written = to_json_text(message)  # must not raise: from_json accepted the message
        to_json(message)
        again = from_json_text(written)
        if again.SerializeToString(deterministic=True) != message.SerializeToString(
            deterministic=True
        ):
            raise Bug(CRASH, "dicom_json: written JSON reads back as another message", written)
        try:
            to_pydicom(message)
        except ValueError:
            return
