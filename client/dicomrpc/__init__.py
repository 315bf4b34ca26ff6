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
from dicomrpc.workitems import Workitem, WorkitemEvent, WorkitemResult, Workitems, WorkitemWatch

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AttributeWarning",
    "Capabilities",
    "Change",
    "Client",
    "ClientConfig",
    "DicomRpcError",
    "DimsePeer",
    "InstanceResult",
    "QueryTag",
    "ReindexStatus",
    "StoreResult",
    "TlsConfig",
    "Workitem",
    "WorkitemEvent",
    "WorkitemResult",
    "WorkitemWatch",
    "Workitems",
]
