"""The SDK's surface, sync and asyncio side by side, against a real server on loopback.

Every call of :class:`~dicomrpc.Client` is on :class:`~dicomrpc.AsyncClient` with the same
answer; retrieves return values, ``save_*`` files and ``iter_instances`` a stream; the
watches of the change feed and of workitems are one closable handle; errors carry their
decoded ``google.rpc`` details.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from pydicom.data import get_testdata_file

from dicomrpc import (
    AsyncClient,
    AsyncWatch,
    Change,
    Client,
    DicomRpcError,
    RetrievedInstance,
    SearchResult,
    Watch,
    WorkitemEvent,
    WorkitemState,
    http_pull,
)
from dicomrpc.workitem_templates import template
from tests.conftest import RunningServer

FILES = ("CT_small.dcm", "MR_small.dcm")


def _data(name: str) -> bytes:
    return Path(get_testdata_file(name)).read_bytes()


@pytest.fixture(scope="module")
def stored(running: RunningServer) -> Iterator[dict[str, tuple[str, str, str]]]:
    """The UIDs of each test file, stored once for the module."""
    with Client(running.target) as client:
        result = client.store([get_testdata_file(name) for name in FILES])
    assert len(result.stored) == len(FILES), result
    yield {
        name: (r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid)
        for name, r in zip(FILES, result.instances, strict=True)
    }


@pytest.mark.parametrize("http_retrieve", [True, False])
def test_retrieves_return_values_and_saves_write_files(
    running: RunningServer,
    stored: dict[str, tuple[str, str, str]],
    tmp_path: Path,
    http_retrieve: bool,
) -> None:
    study, series, sop = stored["CT_small.dcm"]
    sent = _data("CT_small.dcm")
    with Client(running.target, http_retrieve=http_retrieve) as client:
        (whole,) = client.retrieve_study(study)
        assert isinstance(whole, RetrievedInstance) and whole.data[128:] == sent[128:]
        assert client.retrieve_series(study, series) == [whole]
        assert client.retrieve_instance(study, series, sop) == whole
        assert list(client.iter_instances(study)) == [whole]
        (path,) = client.save_study(study, tmp_path / "study")
        assert path == tmp_path / "study" / study / series / f"{sop}.dcm"
        assert path.read_bytes() == whole.data
        assert client.save_series(study, series, tmp_path / "series") == [
            tmp_path / "series" / study / series / f"{sop}.dcm"
        ]
        saved = client.save_instance(study, series, sop, tmp_path / "one")
        assert isinstance(saved, Path) and saved.read_bytes() == whole.data


def test_the_async_client_answers_as_the_sync_one(
    running: RunningServer, stored: dict[str, tuple[str, str, str]], tmp_path: Path
) -> None:
    study, series, sop = stored["MR_small.dcm"]
    with Client(running.target) as client:
        want_instances = client.retrieve_study(study)
        want_metadata = client.metadata(study)
        want_frames = client.frames(study, series, sop, [1])
        want_rendered = client.rendered(study, series, sop, media_type="image/png")
        want_search = client.search_instances(study=study, include=["all"])
        want_capabilities = client.capabilities()
        want_changes = client.read_changes(0, 10)
        want_latest = client.latest_change()
        want_tags = client.query_tags()
        want_peers = client.dimse_peers()

    async def scenario() -> None:
        async with AsyncClient(running.target) as aclient:
            assert await aclient.retrieve_study(study) == want_instances
            assert await aclient.retrieve_series(study, series) == want_instances
            assert await aclient.retrieve_instance(study, series, sop) == want_instances[0]
            assert [i async for i in aclient.iter_instances(study)] == want_instances
            (path,) = await aclient.save_study(study, tmp_path)
            assert path.read_bytes() == want_instances[0].data
            assert await aclient.save_instance(study, series, sop, tmp_path / "one") == (
                tmp_path / "one" / study / series / f"{sop}.dcm"
            )
            assert await aclient.metadata(study) == want_metadata
            assert await aclient.frames(study, series, sop, [1]) == want_frames
            rendered = await aclient.rendered(study, series, sop, media_type="image/png")
            assert rendered == want_rendered
            found = await aclient.search_instances(study=study, include=["all"])
            assert isinstance(found, SearchResult) and found == want_search
            assert await aclient.capabilities() == want_capabilities
            assert await aclient.read_changes(0, 10) == want_changes
            assert await aclient.latest_change() == want_latest
            assert await aclient.query_tags() == want_tags
            assert await aclient.dimse_peers() == want_peers

    asyncio.run(scenario())


def test_the_async_client_stores_deletes_and_manages(
    running: RunningServer, stored: dict[str, tuple[str, str, str]]
) -> None:
    async def scenario() -> None:
        async with AsyncClient(running.target) as aclient:
            result = await aclient.store(
                [_data("CT_small.dcm")[:128] + _data("CT_small.dcm")[128:]]
            )
            assert result.instances[0].outcome in ("stored", "already_stored")
            peer = await aclient.add_dimse_peer("viewer", "VIEWER", "127.0.0.1", 11112)
            assert [p.name for p in await aclient.dimse_peers()] == [peer.name]
            await aclient.remove_dimse_peer("viewer")
            assert await aclient.dimse_peers() == []
            with pytest.raises(DicomRpcError) as caught:
                await aclient.delete_study("1.2.3.999")
            assert caught.value.code == grpc.StatusCode.NOT_FOUND

    asyncio.run(scenario())


def test_workitems_use_the_state_enum_and_the_search_result(running: RunningServer) -> None:
    with Client(running.target) as client:
        created = client.workitems.create(template("create"))
        assert created.state is WorkitemState.SCHEDULED
        uid = created.workitem_uid
        found = client.workitems.search(SOPInstanceUID=uid)
        assert isinstance(found, SearchResult) and len(found.datasets) == 1
        assert found.next_page_token == ""
        transaction = client.workitems.claim(uid)
        assert client.workitems.get(uid).state is WorkitemState.IN_PROGRESS
        assert WorkitemState.IN_PROGRESS == "IN PROGRESS"  # the DICOM string, as before
        done = client.workitems.complete(uid, transaction, template("complete"))
        assert done.state is WorkitemState.COMPLETED

    async def scenario() -> None:
        async with AsyncClient(running.target) as aclient:
            made = await aclient.workitems.create(template("create"))
            auid = made.workitem_uid
            found = await aclient.workitems.search(SOPInstanceUID=auid)
            assert isinstance(found, SearchResult) and len(found) == 1
            lock = await aclient.workitems.claim(auid)
            assert (await aclient.workitems.get(auid)).state is WorkitemState.IN_PROGRESS
            cancelled = await aclient.workitems.cancel(auid, lock, template("cancel"))
            assert cancelled.state is WorkitemState.CANCELED

    asyncio.run(scenario())


def test_both_watches_are_one_closable_handle(
    running: RunningServer, stored: dict[str, tuple[str, str, str]]
) -> None:
    with Client(running.target) as client:
        uid = client.workitems.create(template("create")).workitem_uid
        with client.watch_changes(0) as changes:
            assert isinstance(changes, Watch)
            first = next(changes)
            assert isinstance(first, Change) and first.sequence == 1
        assert list(changes) == []  # closed: the iteration ends, no error
        events = client.workitems.watch(uid, since=0)
        assert isinstance(events, Watch)
        seen: list[WorkitemEvent] = []
        reader = threading.Thread(target=lambda: seen.extend(events))
        reader.start()
        client.workitems.claim(uid)
        for _ in range(200):
            if seen:
                break
            time.sleep(0.05)
        events.close()  # from another thread than the reader's: it ends cleanly
        reader.join(10)
        assert not reader.is_alive()
        assert seen and seen[-1].state is WorkitemState.IN_PROGRESS

    async def scenario() -> None:
        async with AsyncClient(running.target) as aclient:
            async with aclient.watch_changes(0) as feed:
                assert isinstance(feed, AsyncWatch)
                got = [await anext(feed), await anext(feed)]
                assert [c.sequence for c in got] == [1, 2]
            assert [c async for c in feed] == []
            watch = aclient.workitems.watch(uid, since=0)
            assert isinstance(watch, AsyncWatch)
            async with watch:
                event = await anext(watch)
                assert event.workitem_uid == uid

            reading = aclient.watch_changes(10**9)  # nothing yet: the reader waits
            task = asyncio.create_task(anext(reading, None))
            await asyncio.sleep(0.2)
            reading.close()
            assert await asyncio.wait_for(task, 10) is None

    asyncio.run(scenario())


def test_error_details_are_the_decoded_google_rpc_details(running: RunningServer) -> None:
    with Client(running.target) as client:
        with pytest.raises(DicomRpcError) as missing:
            client.retrieve_study("1.2.3.999")
        error = missing.value
        assert error.code == grpc.StatusCode.NOT_FOUND
        assert isinstance(error.message, str) and error.message
        (info,) = [d for d in error.details if isinstance(d, error_details_pb2.ErrorInfo)]
        assert info.reason == error.reason == "RESOURCE_NOT_FOUND"
        assert dict(info.metadata) == error.metadata

        with pytest.raises(DicomRpcError) as invalid:
            client.delete_study("1.2.3\x004")
        (bad,) = [d for d in invalid.value.details if isinstance(d, error_details_pb2.BadRequest)]
        assert [v.field for v in bad.field_violations] == ["study_instance_uid"]
        assert invalid.value.field_violations == [
            (v.field, v.description) for v in bad.field_violations
        ]


@pytest.mark.parametrize("http_retrieve", [True, False])
def test_the_async_client_pulls_a_study_over_http_as_the_sync_one_does(
    running: RunningServer,
    stored: dict[str, tuple[str, str, str]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    http_retrieve: bool,
) -> None:
    study, series, _ = stored["CT_small.dcm"]
    pulled: list[str] = []
    original = http_pull.open_body

    def spy(url: str, tls: Any) -> http_pull.Body:
        pulled.append(url)
        return original(url, tls)

    monkeypatch.setattr(http_pull, "open_body", spy)
    with Client(running.target, http_retrieve=False) as client:
        want = client.retrieve_study(study)

    async def scenario() -> None:
        async with AsyncClient(running.target, http_retrieve=http_retrieve) as aclient:
            assert await aclient.retrieve_study(study) == want
            assert await aclient.retrieve_series(study, series) == want
            (path,) = await aclient.save_study(study, tmp_path)
            assert path.read_bytes() == want[0].data

    asyncio.run(scenario())
    assert len(pulled) == (3 if http_retrieve else 0)
