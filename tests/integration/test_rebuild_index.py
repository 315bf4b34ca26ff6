"""``dicomrpc rebuild-index`` on real processes: a lost or stale index comes back from the files,
every study byte-identical with the same search answers; killed, it resumes; run again, it has
nothing to do."""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lmdb
import pydicom.data
import pytest
from pydicom.uid import generate_uid

from dicomrpc import Client
from tests.conftest import ServerProcess, spawn_server
from tests.dicomgen import ct_instance
from tests.integration.test_startup_checks import dicomrpc, serve
from tests.upsgen import workitem

pytestmark = pytest.mark.slow

PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
# Several transfer syntaxes, pixel-less objects, a deflated data set, a multi-frame image.
PYDICOM_NAMES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "examples_jpeg2k.dcm",
    "examples_palette.dcm",
    "image_dfl.dcm",
    "liver_1frame.dcm",
    "reportsi.dcm",
    "SC_rgb_small_odd.dcm",
    "waveform_ecg.dcm",
    "dicomdirtests/77654033/CT2/17106",
]


def _corpus() -> list[bytes]:
    out = [(PYDICOM_FILES / name).read_bytes() for name in PYDICOM_NAMES]
    for patient in range(3):
        study = generate_uid()
        for series in (generate_uid(), generate_uid()):
            out.extend(
                ct_instance(
                    study=study,
                    series=series,
                    number=i,
                    patient_id=f"PAT-{patient}",
                    patient_name=f"Doe^Patient{patient}",
                    seed=i,
                )
                for i in range(3)
            )
    return out


def _tiny_study(size: int) -> list[bytes]:
    """``size`` tiny instances of one study, copied from one file with another SOP UID each."""
    study, series, root = generate_uid(), generate_uid(), generate_uid(prefix=None)
    template_sop = f"{root}.100000"
    template = ct_instance(study=study, series=series, sop=template_sop, rows=2, columns=2)
    return [
        template.replace(template_sop.encode(), f"{root}.{100_000 + i}".encode())
        for i in range(size)
    ]


def _answers(target: str) -> dict[str, Any]:
    """What the archive answers: searches at every level with every attribute, and bytes."""
    with Client(target) as client:
        studies = client.search_studies(include=["all"], limit=1000).as_json()
        answers: dict[str, Any] = {
            "studies": studies,
            "series": client.search_series(include=["all"], limit=1000).as_json(),
            "instances": client.search_instances(include=["all"], limit=1000).as_json(),
        }
        for study in studies:
            uid = study["0020000D"]["Value"][0]
            retrieved = client.iter_instances(uid)
            answers[uid] = {
                i.sop_instance_uid: hashlib.sha256(i.data).hexdigest() for i in retrieved
            }
            answers[f"{uid} metadata"] = client.metadata(uid).as_json()
    return answers


def _files(data_dir: Path) -> dict[str, str]:
    return {
        p.relative_to(data_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((data_dir / "blobs").rglob("*.dcm"))
    }


def _stored_archive(data_dir: Path, instances: list[bytes]) -> dict[str, Any]:
    server = spawn_server(data_dir)
    try:
        with Client(server.target) as client:
            result = client.store(instances)
        assert all(r.stored for r in result.instances), result.instances
        return _answers(server.target)
    finally:
        assert server.stop() == 0


def _served(data_dir: Path) -> ServerProcess:
    return spawn_server(data_dir)


def test_a_lost_index_is_rebuilt_from_the_files(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    before = _stored_archive(data_dir, _corpus())
    files = _files(data_dir)
    shutil.rmtree(data_dir / "index")  # a failed mount

    refused = serve(data_dir)
    assert refused.returncode == 1
    assert f"holds {len(files)} instance files but its index" in refused.stderr
    assert f"dicomrpc rebuild-index --data {data_dir}" in refused.stderr
    assert _files(data_dir) == files, "the refused start changed the instance files"

    rebuilt = dicomrpc("rebuild-index", "--data", str(data_dir), "--quiet")
    assert rebuilt.returncode == 0, rebuilt.stderr
    studies = len([k for k in before if k.endswith(" metadata")])
    assert (
        f"rebuilt the index of {data_dir}: {len(files)} instances in {studies} studies"
        in rebuilt.stdout
    )
    assert "the change feed start again from 1" in rebuilt.stdout
    assert _files(data_dir) == files

    server = _served(data_dir)
    try:
        assert _answers(server.target) == before
        with Client(server.target) as client:
            feed = client.read_changes(0, 1000)
        assert [c.sequence for c in feed] == list(range(1, len(files) + 1))
    finally:
        assert server.stop() == 0


def _rebuilt_instances(index_dir: Path) -> int:
    """How many instances a rebuild has committed so far (read beside it, as LMDB allows)."""
    if not (index_dir / "data.mdb").exists():
        return 0
    env = lmdb.open(str(index_dir), readonly=True, max_dbs=32)
    try:
        with env.begin() as txn:
            try:
                db = env.open_db(b"instances", txn=txn, create=False)
            except lmdb.NotFoundError:
                return 0
            return int(txn.stat(db)["entries"])
    finally:
        env.close()


KILLED_REBUILD_SIZE = 600


def test_a_killed_rebuild_resumes_and_a_third_run_has_nothing_to_do(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    before = _stored_archive(data_dir, _tiny_study(KILLED_REBUILD_SIZE))
    shutil.rmtree(data_dir / "index")

    rebuilding = data_dir / "index.rebuilding"
    process = subprocess.Popen(
        [sys.executable, "-m", "dicomrpc.cli", "rebuild-index", "--data", str(data_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if _rebuilt_instances(rebuilding) > 0:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(60)
    committed = _rebuilt_instances(rebuilding)
    assert 0 < committed < KILLED_REBUILD_SIZE, f"the kill did not land midway ({committed})"

    refused = serve(data_dir)
    assert refused.returncode == 1
    assert "a rebuild of the index of data folder" in refused.stderr
    assert "is unfinished" in refused.stderr

    resumed = dicomrpc("rebuild-index", "--data", str(data_dir), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{KILLED_REBUILD_SIZE} instances in 1 studies" in resumed.stdout
    assert f"({committed} indexed before this run resumed)" in resumed.stdout
    assert not rebuilding.exists()
    server = _served(data_dir)
    try:
        assert _answers(server.target) == before
    finally:
        assert server.stop() == 0

    index = (data_dir / "index" / "data.mdb").read_bytes()
    again = dicomrpc("rebuild-index", "--data", str(data_dir), "--quiet")
    assert again.returncode == 0, again.stderr
    assert "is up to date: it names every instance file; nothing was rebuilt" in again.stdout
    assert (data_dir / "index" / "data.mdb").read_bytes() == index
    assert not list(data_dir.glob("index.replaced-*")), "there was no index to replace"


def test_a_restored_backup_is_rebuilt_keeping_workitems_tags_and_peers(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    early, late = _tiny_study(5), _tiny_study(7)
    server = spawn_server(data_dir)
    try:
        with Client(server.target) as client:
            assert len(client.store(early).stored) == 5
            uid = client.workitems.create(workitem()).workitem_uid
            _, operation = client.add_query_tags(["Rows"], level="instance")
            client.wait_for_reindex(operation, timeout_s=60)
            client.add_dimse_peer("viewer", "VIEWER", "127.0.0.1", 11112)
    finally:
        assert server.stop() == 0
    shutil.copytree(data_dir / "index", tmp_path / "backup")
    server = spawn_server(data_dir)
    try:
        with Client(server.target) as client:
            assert len(client.store(late).stored) == 7
        before = _answers(server.target)
    finally:
        assert server.stop() == 0
    shutil.rmtree(data_dir / "index")
    shutil.copytree(tmp_path / "backup", data_dir / "index")  # restored: older than the files

    refused = serve(data_dir)
    assert refused.returncode == 1
    assert "holds 7 instance files that its index does not name" in refused.stderr

    rebuilt = dicomrpc("rebuild-index", "--data", str(data_dir), "--quiet")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "12 instances in 2 studies" in rebuilt.stdout
    assert "carried over from the previous index: 1 workitems, 1 extended query tags" in (
        rebuilt.stdout
    )
    [replaced] = data_dir.glob("index.replaced-*")
    assert rebuilt.stdout.strip().endswith("the change feed start again from 1")
    assert f"the previous index is kept at {replaced}" in rebuilt.stdout

    server = _served(data_dir)
    try:
        assert _answers(server.target) == before
        with Client(server.target) as client:
            assert client.workitems.get(uid).state == "SCHEDULED"
            [tag] = client.query_tags()
            assert tag.ready
            assert [p.ae_title for p in client.dimse_peers()] == ["VIEWER"]
            found = client.search_instances({"Rows": "2"}, limit=1000).datasets
            assert len(found) == 12
    finally:
        assert server.stop() == 0
