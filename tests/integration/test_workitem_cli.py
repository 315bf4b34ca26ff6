"""``dicomrpc workitem``: a whole workflow from the command line, data sets as DICOM JSON."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from dicomrpc.cli import main
from tests.conftest import RunningServer
from tests.upsgen import performed, tag, workitem


def run(capsys: pytest.CaptureFixture[str], server: RunningServer, *argv: str) -> str:
    assert main(["workitem", *argv, "--server", server.target]) == 0
    return capsys.readouterr().out


def test_workflow(
    server: RunningServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "ups.json").write_text(json.dumps(workitem(PatientID="CLI-1")))
    (tmp_path / "done.json").write_text(json.dumps(performed()))
    uid = run(capsys, server, "create", str(tmp_path / "ups.json")).split()[0]
    assert json.loads(run(capsys, server, "get", uid))[tag("PatientID")]["Value"] == ["CLI-1"]
    table = run(capsys, server, "search", "PatientID=CLI-1")
    assert uid in table and "SCHEDULED" in table and table.endswith("1 workitem\n")
    monkeypatch.setattr(
        "sys.stdin", io.StringIO(json.dumps({"00741204": {"vr": "LO", "Value": ["relabelled"]}}))
    )
    assert run(capsys, server, "update", uid, "-") == f"{uid} updated\n"
    transaction = run(capsys, server, "claim", uid).strip()
    assert transaction.startswith("2.25.") or transaction[0].isdigit()
    assert (
        run(
            capsys,
            server,
            "complete",
            uid,
            str(tmp_path / "done.json"),
            "--transaction",
            transaction,
        )
        == f"{uid} COMPLETED\n"
    )
    found = json.loads(run(capsys, server, "search", "ProcedureStepState=COMPLETED", "--json"))
    assert [r[tag("SOPInstanceUID")]["Value"] for r in found] == [[uid]]
    lines = run(capsys, server, "watch", "--uid", uid, "--since", "1", "--count", "3").splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["updated", "state_report", "updated"]
    # --since 0 replays from the first event, as `feed --since 0` does.
    lines = run(capsys, server, "watch", "--uid", uid, "--since", "0", "--count", "2").splitlines()
    assert [json.loads(line)["sequence"] for line in lines] == [1, 2]


def test_errors_print_the_status(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workitem", "claim", "1.2.3.404", "--server", server.target]) == 1
    err = capsys.readouterr().err
    assert "NOT_FOUND" in err and "0xC307" in err


def test_create_takes_a_dicom_file(
    capsys: pytest.CaptureFixture[str], server: RunningServer, tmp_path: Path
) -> None:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = pydicom.Dataset.from_json(workitem(PatientID="CLI-DICOM"))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.34.6.1"  # UPS Push
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "ups.dcm"
    ds.save_as(path, enforce_file_format=True)
    uid = run(capsys, server, "create", str(path)).split()[0]
    assert json.loads(run(capsys, server, "get", uid))[tag("PatientID")]["Value"] == ["CLI-DICOM"]
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SystemExit, match="neither DICOM JSON"):
        main(["workitem", "create", str(tmp_path / "binary.json"), "--server", server.target])


def test_templates_are_taken_as_written(
    capsys: pytest.CaptureFixture[str], server: RunningServer, tmp_path: Path
) -> None:
    for kind in ("create", "complete", "cancel"):
        assert main(["workitem", "template", kind]) == 0
        (tmp_path / f"{kind}.json").write_text(capsys.readouterr().out)
    for finish, state in (("complete", "COMPLETED"), ("cancel", "CANCELED")):
        uid = run(capsys, server, "create", str(tmp_path / "create.json"), "--quiet").strip()
        transaction = run(capsys, server, "claim", uid).strip()
        done = run(
            capsys,
            server,
            finish,
            uid,
            str(tmp_path / f"{finish}.json"),
            "--transaction",
            transaction,
        )
        assert done == f"{uid} {state}\n"
