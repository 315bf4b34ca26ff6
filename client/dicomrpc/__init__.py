"""dicomrpc: the SDK and command line of the dicomrpc DICOM archive.

>>> from dicomrpc import Client
>>> with Client("localhost:50051") as client:  # doctest: +SKIP
...     result = client.store(["study/"])
"""

from dicomrpc.aio import AsyncClient
from dicomrpc.client import Client, ClientConfig, TlsConfig
from dicomrpc.errors import DicomRpcError
from dicomrpc.results import (
    AttributeWarning,
    Capabilities,
    Change,
    DimsePeer,
    InstanceResult,
    QueryTag,
    ReindexStatus,
    StoreResult,
)
from dicomrpc.retries import RetryPolicy
from dicomrpc.retrieval import Frame, MetadataResult, RetrievedInstance, SearchResult
from dicomrpc.watch import AsyncWatch, Watch
from dicomrpc.workitems import (
    AsyncWorkitems,
    Workitem,
    WorkitemEvent,
    WorkitemResult,
    Workitems,
    WorkitemState,
    WorkitemWatch,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AsyncWatch",
    "AsyncWorkitems",
    "AttributeWarning",
    "Capabilities",
    "Change",
    "Client",
    "ClientConfig",
    "DicomRpcError",
    "DimsePeer",
    "Frame",
    "InstanceResult",
    "MetadataResult",
    "QueryTag",
    "ReindexStatus",
    "RetrievedInstance",
    "RetryPolicy",
    "SearchResult",
    "StoreResult",
    "TlsConfig",
    "Watch",
    "Workitem",
    "WorkitemEvent",
    "WorkitemResult",
    "WorkitemState",
    "WorkitemWatch",
    "Workitems",
]
