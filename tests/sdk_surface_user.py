"""A user's program that calls the whole public surface of the SDK, sync and asyncio.

It is never run: ``tests/test_sdk_typing.py`` type-checks it with ``mypy --strict``, so that
every call of :class:`dicomrpc.Client` and :class:`dicomrpc.AsyncClient` keeps the types a
user writes against (``assert_type`` fails the check when one changes).
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import assert_type

from google.protobuf.message import Message

from dicomrpc import (
    AsyncClient,
    AsyncWatch,
    AsyncWorkitems,
    AttributeWarning,
    Capabilities,
    Change,
    Client,
    ClientConfig,
    DicomRpcError,
    DimsePeer,
    Frame,
    InstanceResult,
    MetadataResult,
    QueryTag,
    ReindexStatus,
    RetrievedInstance,
    RetryPolicy,
    SearchResult,
    StoreResult,
    TlsConfig,
    Watch,
    Workitem,
    WorkitemEvent,
    WorkitemResult,
    Workitems,
    WorkitemState,
    WorkitemWatch,
)
from dicomrpc.v1 import dataset_pb2

STUDY, SERIES, SOP = "1.2.3", "1.2.3.1", "1.2.3.1.1"
CONFIG = ClientConfig(
    timeout=10.0,
    retry=RetryPolicy(max_attempts=4, initial_backoff=0.2, max_backoff=2.0),
    tls=TlsConfig(),
    http_retrieve=False,
)


def stores(client: Client) -> None:
    result = client.store(["study/"], on_bytes=lambda item, n: None, timeout=60.0)
    assert_type(result, StoreResult)
    one: InstanceResult = result.instances[0]
    assert_type(one.outcome, str)
    warnings: tuple[AttributeWarning, ...] = one.warnings
    assert_type(result.stored, list[InstanceResult])
    assert_type(result.failed, list[InstanceResult])
    del warnings


def retrieves(client: Client, out: Path) -> None:
    assert_type(client.retrieve_study(STUDY), list[RetrievedInstance])
    assert_type(client.retrieve_series(STUDY, SERIES, transfer_syntax="*"), list[RetrievedInstance])
    instance = client.retrieve_instance(STUDY, SERIES, SOP, allow_lossy=False)
    assert_type(instance, RetrievedInstance)
    assert_type(instance.data, bytes)
    for streamed in client.iter_instances(STUDY, SERIES):
        assert_type(streamed, RetrievedInstance)
    assert_type(client.save_study(STUDY, out, on_bytes=lambda n: None), list[Path])
    assert_type(client.save_series(STUDY, SERIES, out), list[Path])
    assert_type(client.save_instance(STUDY, SERIES, SOP, out), Path)
    frames = client.frames(STUDY, SERIES, SOP, [1, 2])
    assert_type(frames, list[Frame])
    assert_type(frames[0].number, int)
    metadata = client.metadata(STUDY, if_none_match="")
    assert_type(metadata, MetadataResult)
    assert_type(metadata.datasets, list[dataset_pb2.Dataset])
    assert_type(client.rendered(STUDY, SERIES, SOP, window=(40.0, 400.0)), tuple[str, bytes])


def searches(client: Client) -> None:
    studies = client.search_studies({"PatientName": "doe"}, fuzzy=True, PatientID="7")
    assert_type(studies, SearchResult)
    assert_type(studies.next_page_token, str)
    assert_type(client.search_series(study=STUDY), SearchResult)
    assert_type(client.search_instances(study=STUDY, series=SERIES, page_size=10), SearchResult)
    assert_type(client.workitems.search(ProcedureStepState="SCHEDULED"), SearchResult)
    for dataset in studies:
        assert_type(dataset, dataset_pb2.Dataset)


def manages(client: Client) -> None:
    assert_type(client.delete_study(STUDY), int)
    assert_type(client.delete_series(STUDY, SERIES), int)
    assert_type(client.delete_instance(STUDY, SERIES, SOP), int)
    assert_type(client.read_changes(0, 10), list[Change])
    assert_type(client.latest_change(), Change | None)
    assert_type(client.dimse_peers(), list[DimsePeer])
    assert_type(client.add_dimse_peer("viewer", "VIEWER", "host", 104), DimsePeer)
    assert_type(client.remove_dimse_peer("viewer"), None)
    assert_type(client.capabilities(), Capabilities)
    tags, operation = client.add_query_tags(["SeriesDescription"], level="series")
    assert_type(tags, list[QueryTag])
    assert_type(client.query_tags(), list[QueryTag])
    assert_type(client.delete_query_tag("SeriesDescription"), None)
    assert_type(client.reindex_status(operation), ReindexStatus)
    assert_type(client.wait_for_reindex(operation, timeout_s=60.0), ReindexStatus)


def watches(client: Client) -> None:
    with client.watch_changes(since=0) as changes:
        assert_type(changes, Watch[Change])
        for change in changes:
            assert_type(change.time, datetime.datetime)
            changes.close()
    events = client.workitems.watch(filter={"PatientID": "7"}, since=0)
    assert_type(events, WorkitemWatch)
    assert_type(events, Watch[WorkitemEvent])
    with events:
        for event in events:
            assert_type(event.state, WorkitemState | None)


def workitems(client: Client) -> None:
    calls: Workitems = client.workitems
    created = calls.create({"00100020": {"vr": "LO", "Value": ["7"]}})
    assert_type(created, WorkitemResult)
    uid = created.workitem_uid
    got = calls.get(uid)
    assert_type(got, Workitem)
    if got.state is WorkitemState.SCHEDULED:
        transaction = calls.claim(uid)
        assert_type(transaction, str)
        assert_type(calls.update(uid, dataset_pb2.Dataset(), transaction), WorkitemResult)
        assert_type(calls.complete(uid, transaction, None), WorkitemResult)
        assert_type(calls.cancel(uid, transaction), WorkitemResult)
        assert_type(calls.change_state(uid, WorkitemState.CANCELED, transaction), WorkitemResult)
    assert_type(calls.request_cancel(uid, reason="wrong patient"), WorkitemResult)


def errors(client: Client) -> None:
    try:
        client.capabilities()
    except DicomRpcError as error:
        assert_type(error.message, str)
        assert_type(error.details, list[Message])
        assert_type(error.reason, str)
        assert_type(error.dicom_status, int | None)
        assert_type(error.metadata, dict[str, str])
        assert_type(error.field_violations, list[tuple[str, str]])


def sync_user() -> None:
    with Client("localhost:50051", CONFIG, token="secret") as client:
        stores(client)
        retrieves(client, Path("out"))
        searches(client)
        manages(client)
        watches(client)
        workitems(client)
        errors(client)


async def async_user(out: Path) -> None:
    async with AsyncClient("localhost:50051", CONFIG) as client:
        assert_type(await client.store([b"..."]), StoreResult)
        assert_type(await client.retrieve_study(STUDY), list[RetrievedInstance])
        assert_type(await client.retrieve_series(STUDY, SERIES), list[RetrievedInstance])
        assert_type(await client.retrieve_instance(STUDY, SERIES, SOP), RetrievedInstance)
        async for instance in client.iter_instances(STUDY):
            assert_type(instance, RetrievedInstance)
        assert_type(await client.save_study(STUDY, out), list[Path])
        assert_type(await client.save_series(STUDY, SERIES, out), list[Path])
        assert_type(await client.save_instance(STUDY, SERIES, SOP, out), Path)
        assert_type(await client.frames(STUDY, SERIES, SOP, [1]), list[Frame])
        assert_type(await client.metadata(STUDY, SERIES), MetadataResult)
        assert_type(await client.rendered(STUDY, SERIES, SOP), tuple[str, bytes])
        assert_type(await client.search_studies(PatientID="7"), SearchResult)
        assert_type(await client.search_series(study=STUDY), SearchResult)
        assert_type(await client.search_instances(study=STUDY), SearchResult)
        assert_type(await client.delete_study(STUDY), int)
        assert_type(await client.delete_series(STUDY, SERIES), int)
        assert_type(await client.delete_instance(STUDY, SERIES, SOP), int)
        assert_type(await client.read_changes(), list[Change])
        assert_type(await client.latest_change(), Change | None)
        assert_type(await client.dimse_peers(), list[DimsePeer])
        assert_type(await client.add_dimse_peer("v", "V", "h", 104), DimsePeer)
        assert_type(await client.remove_dimse_peer("v"), None)
        assert_type(await client.capabilities(), Capabilities)
        tags, operation = await client.add_query_tags([{"tag": "00181000"}])
        assert_type(tags, list[QueryTag])
        assert_type(await client.query_tags(), list[QueryTag])
        assert_type(await client.delete_query_tag("00181000"), None)
        assert_type(await client.reindex_status(operation), ReindexStatus)
        assert_type(await client.wait_for_reindex(operation), ReindexStatus)
        async with client.watch_changes(0) as changes:
            assert_type(changes, AsyncWatch[Change])
            async for change in changes:
                assert_type(change, Change)
                changes.close()
        calls: AsyncWorkitems = client.workitems
        created = await calls.create(dataset_pb2.Dataset())
        assert_type(created, WorkitemResult)
        assert_type(await calls.get(created.workitem_uid), Workitem)
        transaction = await calls.claim(created.workitem_uid)
        assert_type(await calls.update(created.workitem_uid, {}, transaction), WorkitemResult)
        assert_type(await calls.complete(created.workitem_uid, transaction), WorkitemResult)
        assert_type(await calls.cancel(created.workitem_uid, transaction), WorkitemResult)
        assert_type(
            await calls.change_state(created.workitem_uid, "COMPLETED", transaction),
            WorkitemResult,
        )
        assert_type(await calls.request_cancel(created.workitem_uid), WorkitemResult)
        assert_type(await calls.search(PatientID="7"), SearchResult)
        async with calls.watch(created.workitem_uid) as events:
            assert_type(events, AsyncWatch[WorkitemEvent])
            async for event in events:
                assert_type(event.state, WorkitemState | None)
                events.close()
