"""The asyncio SDK client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from dicomrpc.client import STORE_INSTANCES, ClientConfig
from dicomrpc.errors import DicomRpcError
from dicomrpc.results import StoreResult
from dicomrpc.sources import Item, Sources, expand, requests
from dicomrpc.v1 import store_service_pb2 as pb
from dicomrpc.wire import serialize


class AsyncClient:
    """An asyncio connection to a dicomrpc server (use as ``async with``)."""

    def __init__(self, target: str = "localhost:50051", config: ClientConfig | None = None) -> None:
        self.target = target
        self.config = config or ClientConfig()
        tls = self.config.tls
        if tls is not None:
            credentials = grpc.ssl_channel_credentials(
                tls.root_certificates, tls.private_key, tls.certificate_chain
            )
            self.channel = grpc.aio.secure_channel(
                target, credentials, self.config.channel_options()
            )
        else:
            self.channel = grpc.aio.insecure_channel(target, self.config.channel_options())
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
            response = await self._store_instances(
                stream(items), timeout=timeout, metadata=self.config.metadata()
            )
        except grpc.RpcError as error:
            raise DicomRpcError.from_rpc_error(error) from None
        return StoreResult.from_message(response)
