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


def test_errors_print_the_status(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workitem", "claim", "1.2.3.404", "--server", server.target]) == 1
    err = capsys.readouterr().err
    assert "NOT_FOUND" in err and "0xC307" in err
