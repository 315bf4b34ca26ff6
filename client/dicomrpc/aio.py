"""The asyncio SDK client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from dicomrpc.client import STORE_INSTANCES, ClientConfig, TlsConfig, configured
from dicomrpc.credentials import TokenProvider, aio_interceptors
from dicomrpc.errors import DicomRpcError
from dicomrpc.results import StoreResult
from dicomrpc.sources import Item, Sources, expand, requests
from dicomrpc.v1 import store_service_pb2 as pb
from dicomrpc.wire import serialize


class AsyncClient:
    """An asyncio connection to a dicomrpc server (use as ``async with``).

    ``token``, ``token_provider`` (which may be async) and ``tls`` are those of
    :class:`~dicomrpc.Client`.
    """

    def __init__(
        self,
        target: str = "localhost:50051",
        config: ClientConfig | None = None,
        *,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
        tls: TlsConfig | None = None,
    ) -> None:
        self.target = target
        self.config = configured(config, token, token_provider, tls)
        options = self.config.channel_options()
        source = self.config.token_source()
        interceptors = aio_interceptors(source) if source else None
        tls = self.config.tls
        if tls is not None:
            self.channel = grpc.aio.secure_channel(
                target, tls.credentials(), options, interceptors=interceptors
            )
        else:
            self.channel = grpc.aio.insecure_channel(target, options, interceptors=interceptors)
        self._store_instances = self.channel.stream_unary(
            STORE_INSTANCES,
            request_serializer=serialize,
            response_deserializer=pb.StoreInstancesResponse.FromString,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close()

    async def store(
        self,
        sources: Sources,
        study_instance_uid: str | None = None,
        *,
        timeout: float | None = None,
    ) -> StoreResult:
        """Store instances in one stream; see :meth:`dicomrpc.Client.store`.

        File reads run in a worker thread so the event loop is never blocked on disk.
        """
        items = await asyncio.to_thread(expand, sources)

        async def stream(items: list[Item]) -> AsyncIterator[pb.StoreInstancesRequest | bytes]:
            iterator = requests(items, study_instance_uid, self.config.chunk_size)
            while True:
                request = await asyncio.to_thread(next, iterator, None)
                if request is None:
                    return
                yield request

        try:
            response = await self._store_instances(stream(items), timeout=timeout)
        except grpc.RpcError as error:
            raise DicomRpcError.from_rpc_error(error) from None
        return StoreResult.from_message(response)
