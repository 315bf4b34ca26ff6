"""The gRPC server: servicers, health, reflection, limits, access control, TLS, shutdown."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from dicomrpc.v1 import (
    management_service_pb2,
    management_service_pb2_grpc,
    retrieve_service_pb2,
    search_service_pb2,
    search_service_pb2_grpc,
    store_service_pb2,
    workitem_service_pb2,
    workitem_service_pb2_grpc,
)
from dicomrpc_server.archive import Archive
from dicomrpc_server.grpc.audit import AuditObserver
from dicomrpc_server.grpc.auth import AccessInterceptor
from dicomrpc_server.grpc.decoding import DecodingInterceptor
from dicomrpc_server.grpc.interception import CallObserver, ObservingInterceptor
from dicomrpc_server.grpc.logging import AccessLog
from dicomrpc_server.grpc.management import ManagementServicer
from dicomrpc_server.grpc.retrieve import RetrieveServicer
from dicomrpc_server.grpc.search import SearchServicer
from dicomrpc_server.grpc.store import STORE_CHUNK_FIELD, StoreServicer
from dicomrpc_server.grpc.wire import add_chunked_servicer
from dicomrpc_server.grpc.workitems import WorkitemServicer
from dicomrpc_server.ports import port_unavailable

ENVELOPE = 64 * 1024


class GrpcServer:
    """The archive's gRPC endpoint.

    Parameters
    ----------
    archive
        The opened archive.
    interceptors
        Interceptors run inside the access log and the audit hook (an authentication check,
        say): a call one of them refuses is still logged and audited.
    """

    def __init__(
        self, archive: Archive, interceptors: Sequence[grpc.aio.ServerInterceptor] = ()
    ) -> None:
        settings = archive.settings
        self.archive = archive
        observers: list[CallObserver] = [AccessLog(archive.metrics)]
        if archive.auditor.enabled:
            observers.append(AuditObserver(archive.auditor))
        self.server = grpc.aio.server(
            # The access log and the audit see every call, refused ones included; access control
            # answers before a request's content counts (a request that cannot be parsed is
            # refused as such only once the call is let through).
            interceptors=[
                ObservingInterceptor(observers),
                AccessInterceptor(archive.access, archive.tls is not None and archive.tls.mutual),
                *interceptors,
                DecodingInterceptor(),
            ],
            options=[
                ("grpc.max_receive_message_length", settings.max_chunk_bytes + ENVELOPE),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                # gRPC sets SO_REUSEPORT by default: a second server on the port would then
                # share it, the kernel spreading connections between two archives. Only the
                # processes of one group share their ports (see processes.py).
                ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
            ],
        )
        # The two services that move bytes take and give chunks without protobuf's copies.
        add_chunked_servicer(
            self.server,
            StoreServicer(archive.store),
            store_service_pb2.DESCRIPTOR.services_by_name["StoreService"],
            store_service_pb2,
            {"StoreInstances": STORE_CHUNK_FIELD},
        )
        add_chunked_servicer(
            self.server,
            RetrieveServicer(archive.retrieve, archive.grants),
            retrieve_service_pb2.DESCRIPTOR.services_by_name["RetrieveService"],
            retrieve_service_pb2,
        )
        search_service_pb2_grpc.add_SearchServiceServicer_to_server(
            SearchServicer(archive.search), self.server
        )
        management_service_pb2_grpc.add_ManagementServiceServicer_to_server(
            ManagementServicer(
                settings, archive.delete, archive.feed, archive.query_tags, archive.peers
            ),
            self.server,
        )
        workitem_service_pb2_grpc.add_WorkitemServiceServicer_to_server(
            WorkitemServicer(archive.workitems), self.server
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [
            store_service_pb2.DESCRIPTOR.services_by_name["StoreService"].full_name,
            retrieve_service_pb2.DESCRIPTOR.services_by_name["RetrieveService"].full_name,
            management_service_pb2.DESCRIPTOR.services_by_name["ManagementService"].full_name,
            search_service_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name,
            workitem_service_pb2.DESCRIPTOR.services_by_name["WorkitemService"].full_name,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        ]
        reflection.enable_server_reflection(names, self.server)
        self._names = names
        address = f"{settings.host}:{settings.grpc_port}"
        tls = archive.tls
        try:
            if tls is None:
                self.port = self.server.add_insecure_port(address)
            else:
                credentials = grpc.ssl_server_credentials(
                    [(tls.private_key, tls.certificate_chain)],
                    root_certificates=tls.client_ca,
                    require_client_auth=tls.client_ca is not None,
                )
                self.port = self.server.add_secure_port(address, credentials)
        except RuntimeError:
            raise port_unavailable(
                "gRPC", settings.host, settings.grpc_port, "--grpc-port"
            ) from None

    async def start(self) -> None:
        """Start serving and report every service as SERVING."""
        await self.server.start()
        self.archive.query_tags.resume()
        for name in ("", *self._names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float) -> None:
        """Stop taking calls, let in-flight ones (stores included) finish for ``grace`` s."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.archive.query_tags.stop()

    async def wait(self) -> None:
        """Wait until the server stops."""
        await self.server.wait_for_termination()
