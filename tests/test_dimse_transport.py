"""The DIMSE transport's parts: the queues that wake a reactor, and the sockets of the
associations the archive requests."""

from __future__ import annotations

import socket

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicomrpc_server.dimse.transport import (
    ArchiveAE,
    ArchiveAssociation,
    ArchiveDUL,
    ArchiveSocket,
    WakingQueue,
)


def test_a_queue_wakes_its_reader_on_every_put_or_only_when_it_was_empty() -> None:
    wakes: list[str] = []
    every: WakingQueue[int] = WakingQueue(lambda: wakes.append("every"))
    first: WakingQueue[int] = WakingQueue(lambda: wakes.append("first"), when_empty=True)
    for number in range(3):
        every.put(number)
        first.put(number)
    assert wakes.count("every") == 3
    assert wakes.count("first") == 1  # the reader empties the queue before it waits again
    while not first.empty():
        first.get()
    first.put(3)
    assert wakes.count("first") == 2


def test_a_requested_association_is_the_archives_and_sends_small_writes_at_once() -> None:
    peer = AE(ae_title="PEER")
    peer.add_supported_context(Verification)
    server = peer.start_server(("127.0.0.1", 0), block=False)
    try:
        port = server.server_address[1]
        ae = ArchiveAE(ae_title="DICOMRPC")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="PEER")
        assert assoc.is_established
        try:
            # The archive's own classes, requesting: threads that wait rather than poll.
            assert isinstance(assoc, ArchiveAssociation) and assoc.is_requestor
            assert isinstance(assoc.dul, ArchiveDUL)
            transport = assoc.dul.socket
            assert isinstance(transport, ArchiveSocket)
            assert transport.socket is not None
            # Nagle's algorithm off: a C-STORE's data set does not wait ~40 ms behind its
            # command for the peer's delayed acknowledgement.
            assert transport.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            status = assoc.send_c_echo()
            assert status.Status == 0x0000
        finally:
            assoc.release()
        assert not assoc.is_established
    finally:
        server.shutdown()
