"""The DIMSE peers C-MOVE may send to: those of the settings, and those added at run time.

A C-MOVE names its destination by AE title (PS3.4 C.4.2); the archive sends only to a peer it
knows, so that a requester cannot make it connect anywhere. Peers come from two places: the
settings (``--dimse-peer NAME=AE@HOST:PORT``, fixed for the server's life) and the registry
kept in the index (``ManagementService.AddDimsePeer``, ``dicomrpc peers add``), which every
process serving the archive reads at each C-MOVE, so that a change applies at once.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from dicomrpc_server.config import check_ae_title
from dicomrpc_server.errors import Code, ServiceError, invalid_argument
from dicomrpc_server.storage import records_pb2

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HOST = re.compile(r"[A-Za-z0-9.:_-]{1,253}")


class PeerSource(enum.Enum):
    """Where a peer comes from."""

    SETTINGS = "settings"  # --dimse-peer: changed by restarting with other settings
    REGISTRY = "registry"  # added at run time, kept in the index until removed


@dataclass(frozen=True)
class Peer:
    """A C-MOVE destination: its name, AE title, host and port."""

    name: str
    ae_title: str
    host: str
    port: int
    source: PeerSource = PeerSource.SETTINGS


class PeerRecords(Protocol):
    """Where the peers added at run time are kept (the index)."""

    def dimse_peers(self) -> list[records_pb2.DimsePeerRecord]:
        """Every peer added at run time."""

    async def put_dimse_peer(self, record: records_pb2.DimsePeerRecord) -> None:
        """Keep a peer (replacing the one of its name)."""

    async def delete_dimse_peer(self, name: str) -> bool:
        """Forget a peer; whether there was one."""


class PeerRegistry:
    """The peers of the settings and of the registry, found by name or AE title.

    Parameters
    ----------
    configured
        The peers of the settings, as ``(name, AE title, host, port)``.
    records
        Where the peers added at run time are kept.
    """

    def __init__(
        self, configured: Sequence[tuple[str, str, str, int]], records: PeerRecords
    ) -> None:
        self._configured = [Peer(*peer) for peer in configured]
        self._records = records

    def list(self) -> list[Peer]:
        """Every peer, by name (a registry peer never shares a name with a configured one)."""
        added = [
            Peer(r.name, r.ae_title, r.host, r.port, PeerSource.REGISTRY)
            for r in self._records.dimse_peers()
        ]
        return sorted([*self._configured, *added], key=lambda peer: peer.name)

    def find(self, ae_title: str) -> Peer | None:
        """The peer with this AE title, or ``None`` (an unknown move destination)."""
        return next((peer for peer in self.list() if peer.ae_title == ae_title), None)

    async def add(self, name: str, ae_title: str, host: str, port: int) -> Peer:
        """Register a peer, or replace the registry peer of that name.

        Raises INVALID_ARGUMENT for a malformed field, FAILED_PRECONDITION for the name of a
        configured peer, ALREADY_EXISTS for an AE title another peer has.
        """
        if not _NAME.fullmatch(name):
            raise invalid_argument("name", f"{name!r} is not 1 to 64 letters, digits, '.-_'")
        try:
            title = check_ae_title(ae_title)
        except ValueError as exc:
            raise invalid_argument("ae_title", str(exc)) from None
        host = host.strip().strip("[]")
        if not _HOST.fullmatch(host):
            raise invalid_argument("host", f"{host!r} is not a host name or an address")
        if not 1 <= port <= 65535:
            raise invalid_argument("port", f"{port} is not 1 to 65535")
        if any(peer.name == name for peer in self._configured):
            raise ServiceError(
                Code.FAILED_PRECONDITION,
                "PEER_CONFIGURED",
                f"peer {name} is set by the server's settings (--dimse-peer); choose another "
                "name, or change the settings",
                metadata={"name": name},
            )
        taken = next(
            (peer for peer in self.list() if peer.ae_title == title and peer.name != name), None
        )
        if taken is not None:
            raise ServiceError(
                Code.ALREADY_EXISTS,
                "PEER_AE_TITLE_TAKEN",
                f"AE title {title} is peer {taken.name}'s: a move destination names one peer",
                metadata={"ae_title": title, "peer": taken.name},
            )
        record = records_pb2.DimsePeerRecord(name=name, ae_title=title, host=host, port=port)
        await self._records.put_dimse_peer(record)
        return Peer(name, title, host, port, PeerSource.REGISTRY)

    async def remove(self, name: str) -> None:
        """Forget a registry peer.

        Raises NOT_FOUND when there is none of that name, FAILED_PRECONDITION for a peer of
        the settings.
        """
        if any(peer.name == name for peer in self._configured):
            raise ServiceError(
                Code.FAILED_PRECONDITION,
                "PEER_CONFIGURED",
                f"peer {name} is set by the server's settings (--dimse-peer): restart without it",
                metadata={"name": name},
            )
        if not await self._records.delete_dimse_peer(name):
            raise ServiceError(
                Code.NOT_FOUND,
                "RESOURCE_NOT_FOUND",
                f"there is no DIMSE peer named {name}",
                metadata={"name": name},
            )
