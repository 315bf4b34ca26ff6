"""The SDK against a server that needs tokens: fixed tokens, providers that are asked again
when the server refuses a token, API keys, and dicomweb-client with its own session headers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from dicomrpc import AsyncClient, Client, DicomRpcError
from dicomrpc.v1 import store_service_pb2 as store_pb
from dicomrpc.v1 import store_service_pb2_grpc
from dicomrpc_server.access.api_keys import create, revoke
from tests.authgen import AUDIENCE, ISSUER, Issuer, write_jwks
from tests.conftest import RunningServer, start_server
from tests.dicomgen import ct_instance

ISSUER_KEY = Issuer("key-1")
STRANGER = Issuer("key-1")  # signs with another key: refused as a bad signature
EVERY = "dicom.read dicom.write dicom.delete workitems.read workitems.write admin"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("clients")
    server = start_server(
        folder / "data",
        auth_jwks=str(write_jwks(folder / "jwks.json", ISSUER_KEY)),
        auth_issuer=ISSUER,
        auth_audience=AUDIENCE,
        auth_api_keys=_key_file(folder),
    )
    yield server
    server.stop()


def _key_file(folder: Path) -> Path:
    path = folder / "keys"
    path.write_text("")
    return path


def provider_of(*tokens: str) -> tuple[Callable[[], str], list[str]]:
    """A provider handing out ``tokens`` in turn, and the list of those it handed out."""
    handed: list[str] = []

    def provide() -> str:
        handed.append(tokens[len(handed)])
        return handed[-1]

    return provide, handed


def test_a_fixed_token_and_its_refusal(secured: RunningServer) -> None:
    with Client(secured.target, token=ISSUER_KEY.token(EVERY)) as client:
        assert client.search_studies().datasets == []
    stranger = Client(secured.target, token=STRANGER.token(EVERY))
    with stranger as client, pytest.raises(DicomRpcError) as refused:
        client.search_studies()
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.reason == "UNAUTHENTICATED"
    assert refused.value.metadata["token_problem"] == "bad_signature"
    expired = Client(secured.target, token=ISSUER_KEY.token(EVERY, lifetime=-600))
    with expired as client, pytest.raises(DicomRpcError) as refused:
        client.capabilities()
    assert refused.value.metadata["token_problem"] == "expired"
    assert "expired at" in refused.value.message


def test_a_provider_is_asked_again_when_a_unary_call_is_refused(secured: RunningServer) -> None:
    provide, handed = provider_of(STRANGER.token(EVERY), ISSUER_KEY.token(EVERY))
    with Client(secured.target, token_provider=provide) as client:
        assert client.search_studies().datasets == []  # refused once, then called again
        assert len(handed) == 2
        client.search_studies()
        assert len(handed) == 2  # the good token is kept


def test_a_response_stream_refused_before_its_first_message_is_made_again(
    secured: RunningServer,
) -> None:
    study = generate_uid()
    with Client(secured.target, token=ISSUER_KEY.token(EVERY)) as client:
        client.store([ct_instance(study)])
    provide, handed = provider_of(STRANGER.token(EVERY), ISSUER_KEY.token(EVERY))
    with Client(secured.target, token_provider=provide) as client:
        assert len(client.metadata(study).datasets) == 1
        assert len(handed) == 2
    provide, handed = provider_of(STRANGER.token(EVERY), ISSUER_KEY.token(EVERY))
    with Client(secured.target, token_provider=provide) as client:
        instances = client.retrieve_study(study)
        assert len(instances) == 1 and len(handed) == 2
    provide, handed = provider_of(STRANGER.token(EVERY), ISSUER_KEY.token(EVERY))
    with Client(secured.target, token_provider=provide) as client:
        with client.watch_changes(0) as changes:  # the watch handle over the remade stream
            assert next(changes).sequence == 1
        assert list(changes) == [] and len(handed) == 2


def test_a_refused_store_stream_draws_a_new_token_for_the_next_call(
    secured: RunningServer,
) -> None:
    provide, handed = provider_of(STRANGER.token(EVERY), ISSUER_KEY.token(EVERY))
    with Client(secured.target, token_provider=provide) as client:
        with pytest.raises(DicomRpcError) as refused:
            client.store([ct_instance()])
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert len(client.store([ct_instance()]).stored) == 1
        assert len(handed) == 2


def test_the_async_client_takes_tokens_and_async_providers(secured: RunningServer) -> None:
    tokens = [STRANGER.token(EVERY), ISSUER_KEY.token(EVERY)]
    handed: list[str] = []

    async def provide() -> str:
        await asyncio.sleep(0)
        handed.append(tokens[len(handed)])
        return handed[-1]

    async def scenario() -> None:
        async with AsyncClient(secured.target, token=ISSUER_KEY.token(EVERY)) as client:
            stored = await client.store([ct_instance()])
            assert len(stored.stored) == 1
            study = stored.stored[0].study_instance_uid
            # Streams carry the token too: a retrieve, and a watch read through its handle.
            assert len(await client.retrieve_study(study)) == 1
            async with client.watch_changes(0) as changes:
                assert (await anext(changes)).sequence == 1
        async with AsyncClient(secured.target) as client:
            with pytest.raises(DicomRpcError) as refused:
                await client.store([ct_instance()])
            assert refused.value.metadata["token_problem"] == "missing"
        async with AsyncClient(secured.target, token_provider=provide) as client:
            with pytest.raises(DicomRpcError):
                await client.store([ct_instance()])
            assert len((await client.store([ct_instance()])).stored) == 1
            assert len(handed) == 2

    asyncio.run(scenario())


def test_the_async_client_hears_every_refused_store_as_its_refusal(
    secured: RunningServer,
) -> None:
    # grpcio's asyncio client reports a status that arrives while it is still writing as
    # INTERNAL: the server reads a refused stream on (within bounds) before refusing it.
    large = ct_instance(rows=1024, columns=1024)  # 2 MiB: several chunks, past the flow window
    refusals: list[tuple[grpc.StatusCode, str | None]] = []

    async def scenario() -> None:
        async with AsyncClient(secured.target, token=STRANGER.token(EVERY)) as client:
            for _ in range(10):
                with pytest.raises(DicomRpcError) as refused:
                    await client.store([large])
                refusals.append((refused.value.code, refused.value.metadata.get("token_problem")))

    asyncio.run(scenario())
    assert refusals == [(grpc.StatusCode.UNAUTHENTICATED, "bad_signature")] * 10


def test_a_refused_stream_is_read_on_only_within_bounds(secured: RunningServer) -> None:
    chunk = store_pb.StoreInstancesRequest(data=bytes(1024 * 1024))
    pulled = 0

    def endless() -> Iterator[store_pb.StoreInstancesRequest]:
        nonlocal pulled
        while pulled < 256:
            pulled += 1
            yield chunk

    token = (("authorization", f"Bearer {STRANGER.token(EVERY)}"),)
    with grpc.insecure_channel(secured.target) as channel:
        stub = store_service_pb2_grpc.StoreServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.StoreInstances(endless(), metadata=token)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert pulled < 64  # 8 MiB read on, and what gRPC's buffers took: not the 256 MiB offered

    async def stalled() -> None:  # one chunk, then nothing, and no end of the stream
        async def one_then_wait() -> AsyncIterator[store_pb.StoreInstancesRequest]:
            yield chunk
            await asyncio.Event().wait()

        async with grpc.aio.insecure_channel(secured.target) as channel:
            stub = store_service_pb2_grpc.StoreServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await asyncio.wait_for(stub.StoreInstances(one_then_wait(), metadata=token), 20)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    asyncio.run(stalled())


@pytest.mark.slow
def test_api_keys_are_bearer_tokens_and_revocation_takes_hold(
    secured: RunningServer,
) -> None:
    keys = secured.settings.auth_api_keys
    assert keys is not None
    key = create(keys, "nightly-export", ["dicom.read"])
    deadline = 10.0
    with Client(secured.target, token=key) as client:
        # The server looks at the file at most once a second.
        _eventually(lambda: client.search_studies() is not None, deadline)
        with pytest.raises(DicomRpcError) as refused:
            client.delete_study(generate_uid())
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert "nightly-export (api-key)" in refused.value.message
        assert revoke(keys, "nightly-export")

        def refused_now() -> bool:
            try:
                client.search_studies()
            except DicomRpcError as error:
                return error.metadata.get("token_problem") == "unknown_api_key"
            return False

        _eventually(refused_now, deadline)


def _eventually(check: Callable[[], bool], timeout: float) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except DicomRpcError:
            pass
        if time.monotonic() > end:
            raise AssertionError("the server did not pick up the key file's change")
        time.sleep(0.1)


def test_dicomweb_client_sends_the_token_with_its_session_headers(
    secured: RunningServer,
) -> None:
    study = generate_uid()
    with Client(secured.target, token=ISSUER_KEY.token(EVERY)) as client:
        client.store([ct_instance(study)])
    web = DICOMwebClient(
        secured.dicomweb_url, headers={"Authorization": f"Bearer {ISSUER_KEY.token(EVERY)}"}
    )
    found = web.search_for_studies(search_filters={"StudyInstanceUID": study})
    assert [s["0020000D"]["Value"][0] for s in found] == [study]
    assert len(web.retrieve_study(study)) == 1
    anonymous = DICOMwebClient(secured.dicomweb_url)
    with pytest.raises(requests.HTTPError) as refused:
        anonymous.search_for_studies()
    assert refused.value.response.status_code == 401
