"""StoreInstances rules: duplicates, study restriction, limits, stream order, concurrency."""

from __future__ import annotations

import asyncio
import threading
import warnings
from pathlib import Path

import grpc
import pytest
from pydicom.uid import generate_uid

from dicomrpc import AsyncClient, Client, DicomRpcError
from dicomrpc.v1 import store_service_pb2 as pb
from dicomrpc.v1 import store_service_pb2_grpc
from tests.conftest import RunningServer, start_server
from tests.dicomgen import ct_instance


def test_a_resend_is_already_stored_and_a_changed_file_is_45070(
    server: RunningServer, client: Client
) -> None:
    data = ct_instance()
    first = client.store(data).instances[0]
    assert first.outcome == "stored"
    latest = client.latest_change()
    # The same bytes again (a retry of a store that landed): already stored, nothing changed.
    again = client.store(data)
    (same,) = again.instances
    assert again.status == "all_stored"
    assert (same.outcome, same.failure_reason, same.version) == ("already_stored", 0, first.version)
    assert same.retrieve_location == first.retrieve_location
    assert client.latest_change() == latest  # no change recorded
    # The same SOP Instance UID with other bytes: a conflict, and the first stays.
    changed = bytearray(data)
    changed[-1] ^= 0xFF  # the last pixel byte
    conflict = client.store(bytes(changed)).instances[0]
    assert (conflict.outcome, conflict.failure_reason) == ("failed", 45070)
    assert conflict.failure_reason_name == "INSTANCE_ALREADY_EXISTS"
    # The same bytes but for the preamble, which the archive never keeps: the same file.
    preamble = b"\x7fELF" + bytes(124)
    assert client.store(preamble + data[128:]).instances[0].outcome == "already_stored"
    assert server.archive.index.counts().instances == 1
    record = server.archive.index.get_instance(
        first.study_instance_uid, first.series_instance_uid, first.sop_instance_uid
    )
    assert record is not None and record.version == first.version
    (stored,) = client.retrieve_study(first.study_instance_uid)
    assert stored.data[128:] == data[128:]
    assert not any((server.settings.data_dir / "uploads").iterdir())  # the resent files went


def test_study_restriction_fails_every_other_study_with_43265(
    server: RunningServer, client: Client
) -> None:
    study = generate_uid()
    result = client.store(
        [ct_instance(), ct_instance(study=study), ct_instance()], study_instance_uid=study
    )
    assert [(r.outcome, r.failure_reason) for r in result.instances] == [
        ("failed", 43265),
        ("stored", 0),
        ("failed", 43265),
    ]
    assert result.status == "partially_stored"
    assert server.archive.index.counts().instances == 1


def test_preamble_is_zeroed(server: RunningServer, client: Client) -> None:
    data = ct_instance(preamble=b"MZ" + b"\x90" * 126)
    r = client.store(data).instances[0]
    record = server.archive.index.get_instance(
        r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid
    )
    assert record is not None
    stored = server.archive.blobs.path(record.blob_id).read_bytes()
    assert stored == bytes(128) + data[128:]


@pytest.mark.parametrize(
    ("cut", "reason"),
    [(100, "INSTANCE_UNPARSABLE"), (600, "INSTANCE_TRUNCATED"), (-7, "INSTANCE_TRUNCATED")],
)
def test_truncated_bytes_fail_with_272(client: Client, cut: int, reason: str) -> None:
    data = ct_instance()[:cut]
    r = client.store(data).instances[0]
    assert (r.outcome, r.failure_reason, r.failure_reason_name) == ("failed", 272, reason)


def test_missing_required_attribute_fails_with_43264(client: Client) -> None:
    from io import BytesIO

    from pydicom import dcmread

    ds = dcmread(BytesIO(ct_instance()))
    del ds.SeriesInstanceUID
    out = BytesIO()
    ds.save_as(out)
    r = client.store(out.getvalue()).instances[0]
    assert (r.outcome, r.failure_reason) == ("failed", 43264)
    assert "SeriesInstanceUID" in r.failure_message


def test_uid_rules(client: Client) -> None:
    leading_zero = "1.2.03.4"
    unsafe = "1.2/3"
    results = client.store(
        [ct_instance(sop=leading_zero), ct_instance(study=unsafe), ct_instance(sop="1" * 65)]
    ).instances
    assert results[0].outcome == "stored_with_warnings"
    assert any(w.keyword == "SOPInstanceUID" for w in results[0].warnings)
    assert (results[1].outcome, results[1].failure_reason) == ("failed", 43264)
    assert (results[2].outcome, results[2].failure_reason) == ("failed", 43264)


def test_missing_patient_id_and_bad_date_are_warnings_and_not_indexed(
    server: RunningServer, client: Client
) -> None:
    from io import BytesIO

    from pydicom import dcmread

    ds = dcmread(BytesIO(ct_instance()))
    del ds.PatientID
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the invalid date is the point
        ds.StudyDate = "2024-01-02"
        out = BytesIO()
        ds.save_as(out)
    r = client.store(out.getvalue()).instances[0]
    assert (r.outcome, r.warning_reason) == ("stored_with_warnings", 1)
    assert {w.keyword for w in r.warnings} >= {"PatientID", "StudyDate"}
    study = server.archive.index.get_study(r.study_instance_uid)
    assert study is not None and "00080020" in study.unindexed_tags
    from dicomrpc_server.dicom.attributes import Level
    from dicomrpc_server.query.terms import EXACT

    assert server.archive.index.term_entries(Level.STUDY, 0x00080020, EXACT + b"2024-01-02") == []
    assert server.archive.index.term_entries(
        Level.STUDY, 0x0020000D, EXACT + r.study_instance_uid.encode()
    ) == [r.study_instance_uid.encode()]


def test_oversized_instance_fails_and_the_stream_goes_on(tmp_path: Path) -> None:
    running = start_server(tmp_path / "data", max_instance_bytes=4000)
    try:
        with Client(running.target) as client:
            small = ct_instance(rows=8, columns=8)
            big = ct_instance(rows=64, columns=64)
            results = client.store([small, big, ct_instance(rows=8, columns=8)]).instances
        assert [r.outcome for r in results] == ["stored", "failed", "stored"]
        assert (results[1].failure_reason, results[1].failure_reason_name) == (
            272,
            "INSTANCE_TOO_LARGE",
        )
        assert len(list((tmp_path / "data" / "uploads").iterdir())) == 0
    finally:
        running.stop()


def test_data_before_header_is_invalid_argument_with_details(server: RunningServer) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = store_service_pb2_grpc.StoreServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.StoreInstances(iter([pb.StoreInstancesRequest(data=b"x")]))
    error = DicomRpcError.from_rpc_error(caught.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "STREAM_PROTOCOL_VIOLATION"


def test_invalid_study_restriction_names_the_field(client: Client) -> None:
    with pytest.raises(DicomRpcError) as caught:
        client.store(ct_instance(), study_instance_uid="bad uid")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field_violations[0][0] == "study_instance_uid"


def test_empty_stream_stores_nothing(client: Client) -> None:
    result = client.store([])
    assert result.instances == [] and result.status == "none_stored"


def test_two_clients_storing_the_same_new_instance(server: RunningServer) -> None:
    for _ in range(10):
        data = ct_instance(rows=128, columns=128)
        outcomes: list[tuple[str, int]] = []
        barrier = threading.Barrier(2)

        def store(
            data: bytes = data,
            barrier: threading.Barrier = barrier,
            outcomes: list[tuple[str, int]] = outcomes,
        ) -> None:
            with Client(server.target) as client:
                barrier.wait()
                r = client.store(data).instances[0]
                outcomes.append((r.outcome, r.failure_reason))

        threads = [threading.Thread(target=store) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # One stores it; the other finds it being stored (45071) or stored, with the same
        # bytes (already stored): never two stores, never another failure.
        assert sorted(o for o, _ in outcomes) in (
            ["failed", "stored"],
            ["already_stored", "stored"],
        )
        assert {c for o, c in outcomes if o == "failed"} <= {45071}
    assert server.archive.index.counts().instances == 10


def test_async_client_stores_and_reports(server: RunningServer) -> None:
    async def run() -> list[str]:
        async with AsyncClient(server.target) as client:
            result = await client.store([ct_instance(), ct_instance(), b"not dicom"])
        return [r.outcome for r in result.instances]

    assert asyncio.run(run()) == ["stored", "stored", "failed"]
    assert server.archive.index.counts().instances == 2


def test_a_series_uid_reused_under_another_study_is_stored_with_a_warning(
    server: RunningServer, client: Client
) -> None:
    series = generate_uid()
    first, second = generate_uid(), generate_uid()
    (a,) = client.store(ct_instance(study=first, series=series)).instances
    assert (a.outcome, a.warning_reason) == ("stored", 0)
    (b,) = client.store(ct_instance(study=second, series=series)).instances
    assert (b.outcome, b.warning_reason) == ("stored_with_warnings", 1)
    (warning,) = b.warnings
    assert warning.keyword == "SeriesInstanceUID"
    assert f"also a series of study {first}" in warning.comment
    # Each instance says so, the ones sent to the first study too; each study keeps its own.
    (c,) = client.store(ct_instance(study=first, series=series, number=2)).instances
    assert c.outcome == "stored_with_warnings" and second in c.warnings[0].comment
    assert len(client.search_instances(study=first).datasets) == 2
    assert len(client.search_instances(study=second).datasets) == 1
