"""Which requesters may associate, and how they are named in the log.

A DIMSE requester proves nothing but its calling AE title, which anyone can claim. So the
archive accepts a title only from the host it is registered with (``--dimse-allow AE@HOST``)
and, with no registration, any title from loopback only: a deployment that opens DIMSE to
the network names its modalities. A refusal is an A-ASSOCIATE-RJ, rejected-permanent, by the
service user, "calling AE title not recognised" (PS3.8 §9.3.4).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from functools import cache

from pynetdicom.association import Association

from dicomrpc_server.access.setup import is_loopback

# A-ASSOCIATE-RJ: rejected-permanent, service user, calling AE title not recognised.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)


@cache
def _addresses(host: str) -> frozenset[str]:
    """The addresses a host name or address stands for (an address stands for itself)."""
    try:
        return frozenset({str(ipaddress.ip_address(host))})
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return frozenset()
    return frozenset(str(ipaddress.ip_address(info[4][0])) for info in infos)


def _canonical(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


class RequesterCheck:
    """Decides whether a calling AE title may associate from an address.

    Parameters
    ----------
    allowed
        ``(AE title, host)`` pairs; empty allows any title from a loopback address.
    """

    def __init__(self, allowed: Iterable[tuple[str, str]]) -> None:
        self._allowed = tuple((title.strip(), host) for title, host in allowed)

    def permits(self, calling_ae: str, address: str) -> bool:
        """Whether ``calling_ae`` may associate from ``address``."""
        address = _canonical(address)
        if not self._allowed:
            return is_loopback(address)
        title = calling_ae.strip()
        return any(
            title == allowed and address in _addresses(host) for allowed, host in self._allowed
        )


def calling_ae_title(assoc: Association) -> str:
    """The requester's AE title (before negotiation, as its request names it)."""
    remote = assoc.requestor
    title = str(remote.ae_title).strip()
    if not title and remote.primitive is not None:
        title = str(remote.primitive.calling_ae_title).strip()
    return title


def _host_port(host: object, port: int) -> str:
    """``host:port``, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def requester_address(assoc: Association) -> str:
    """``host:port`` of an association's requester (an IPv6 host in brackets)."""
    return _host_port(assoc.requestor.address, assoc.requestor.port)


def describe_requester(assoc: Association) -> str:
    """``AE@host:port`` of an association's requester, for the log."""
    return f"{calling_ae_title(assoc)}@{requester_address(assoc)}"


def describe_peer(assoc: Association) -> str:
    """``AE@host:port`` of the other side: the requester, or the peer the archive called."""
    if assoc.is_acceptor:
        return describe_requester(assoc)
    peer = assoc.acceptor
    return f"{str(peer.ae_title).strip()}@{_host_port(peer.address, peer.port)}"


def describe_association(assoc: Association) -> str:
    """``from AE@host:port`` (its requester) or, for one the archive requested, ``to`` its peer."""
    return f"{'from' if assoc.is_acceptor else 'to'} {describe_peer(assoc)}"
