"""The synchronous SDK client."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import grpc

from dicomrpc.errors import DicomRpcError
from dicomrpc.results import StoreResult
from dicomrpc.sources import DEFAULT_CHUNK, Item, Sources, iter_items, requests
from dicomrpc.v1 import store_service_pb2_grpc

MAX_MESSAGE = 64 * 1024 * 1024


@dataclass(frozen=True)
class TlsConfig:
    """TLS settings: the CA to trust and, for mTLS, the client's certificate and key (PEM)."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None


@dataclass(frozen=True)
class ClientConfig:
    """How a client connects and streams.

    Attributes
    ----------
    chunk_size
        Bytes per streamed chunk (64 KiB .. 1 MiB is what the server expects).
    tls
        TLS settings, or ``None`` for a plaintext channel.
    token
        A bearer token sent with every call, or ``None``.
    options
        Extra gRPC channel options.
    """

    chunk_size: int = DEFAULT_CHUNK
    tls: TlsConfig | None = None
    token: str | None = None
    options: tuple[tuple[str, object], ...] = field(default_factory=tuple)

    def channel_options(self) -> list[tuple[str, object]]:
        """The channel options: message limits, then the caller's."""
        return [
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            *self.options,
        ]

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata (the bearer token)."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


class Client:
    """A connection to a dicomrpc server.

    Examples
    --------
    >>> client = Client("localhost:50051")  # doctest: +SKIP
    >>> result = client.store(["study/"])  # doctest: +SKIP
    >>> [r.sop_instance_uid for r in result.stored]  # doctest: +SKIP
    """

    def __init__(self, target: str = "localhost:50051", config: ClientConfig | None = None) -> None:
        self.target = target
        self.config = config or ClientConfig()
        tls = self.config.tls
        if tls is not None:
            credentials = grpc.ssl_channel_credentials(
                tls.root_certificates, tls.private_key, tls.certificate_chain
            )
            self.channel = grpc.secure_channel(target, credentials, self.config.channel_options())
        else:
            self.channel = grpc.insecure_channel(target, self.config.channel_options())
        self._store = store_service_pb2_grpc.StoreServiceStub(self.channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def store(
        self,
        sources: Sources | Iterable[Item],
        study_instance_uid: str | None = None,
        *,
        on_bytes: Callable[[Item, int], None] | None = None,
        timeout: float | None = None,
    ) -> StoreResult:
        """Store instances in one stream, reading each in chunks (never whole in memory).

        Parameters
        ----------
        sources
            Files, folders (recursive), bytes or open binary files, or an iterable of them
            (a generator streams as it yields).
        study_instance_uid
            Restrict the request to one study: any instance of another fails with 43265.
        on_bytes
            Called after each chunk is handed to gRPC, for progress reporting.
        timeout
            A deadline for the whole request, in seconds.

        Returns
        -------
        StoreResult
            One result per instance, in order. Per-instance failures are results, not errors.

        Raises
        ------
        DicomRpcError
            When the request as a whole fails.
        """
        stream = requests(iter_items(sources), study_instance_uid, self.config.chunk_size, on_bytes)
        try:
            response = self._store.StoreInstances(
                stream, timeout=timeout, metadata=self.config.metadata()
            )
        except grpc.RpcError as error:
            raise DicomRpcError.from_rpc_error(error) from None
        return StoreResult.from_message(response)
