"""Pacing of pending responses, so that memory stays bounded and a C-CANCEL is heard.

pynetdicom's association thread hands each response to the DUL thread through an unbounded
queue, and the DUL reads the socket only in a turn when it has nothing to send. A handler
that yields matches as fast as it finds them would therefore queue every encoded response
in memory when the peer reads slowly, and a C-CANCEL from the peer (PS3.7 9.3.2.3) would
stay unread until the last match was sent. Before each pending response the handler waits
until at most a few responses are queued, and, while the peer has sent something not yet
read, until the queue is empty so that the DUL takes its turn to read it.
"""

from __future__ import annotations

import time

from pynetdicom.association import Association

# Responses queued for the DUL thread beyond which a handler waits.
BACKLOG = 16
# How long a handler sleeps between looks at the queue.
POLL_S = 0.0005


def make_way(assoc: Association, backlog: int = BACKLOG) -> None:
    """Return when the next response may be queued: the backlog is short and nothing is unread."""
    dul = assoc.dul
    while assoc.is_established:
        queued = dul.to_provider_queue.qsize()
        if queued == 0:
            return
        if queued <= backlog and not _unread(assoc):
            return
        time.sleep(POLL_S)


def _unread(assoc: Association) -> bool:
    """Whether the peer has sent bytes the DUL thread has not read yet."""
    sock = assoc.dul.socket
    return sock is not None and bool(sock.ready)
