"""Input pynetdicom fails on aborts the association at once, as input it refuses does.

pynetdicom answers a PDU or a DIMSE message it refuses with an A-ABORT and closes the
connection (PS3.8 Table 9-10, Evt19), but only for the failures it expects. Others raise
inside its state machine, which kills the DUL thread without a word to the peer or the
association: an A-ASSOCIATE-RQ whose presentation context ID is even (converting it to a
primitive raises), a command set without its Command Field or Command Data Set Type (the
message decoder raises). The requester then gets no answer and no close, and the association
holds its place until a timeout: the ACSE timeout while it waits for the request that never
comes, the DIMSE timeout in a C-GET waiting for its C-STORE response. Here such failures are
answered as the expected ones are: the message refused with Evt19; the PDU the state machine
failed on with an A-ABORT, the connection closed and the association ended. The same for an
A-ASSOCIATE-RQ negotiation fails on (a presentation context without an abstract syntax), which
killed the association's thread and left the request unanswered.

The archive's own classes for the acceptor (:mod:`.transport`, :mod:`.reception`) do the same
where they override pynetdicom: a DIMSE message that cannot be decoded is refused with Evt19,
and a socket whose shutdown fails is closed all the same. Here are the guards on the objects
the archive takes from pynetdicom as they are: the state machine and the ACSE negotiation.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, cast

from pynetdicom.association import Association
from pynetdicom.pdu import A_ABORT_RQ

from dicomrpc_server.dimse.requesters import describe_requester

log = logging.getLogger("dicomrpc.dimse")

# The state machine's event for an unrecognised or invalid PDU: A-ABORT, then close.
INVALID_PDU = "Evt19"
# A-ABORT source: the service provider (PS3.8 Table 9-26); reason: not specified.
PROVIDER, NOT_SPECIFIED = 0x02, 0x00
# States after which no A-ASSOCIATE request reaches the association: idle (the connection is
# gone) and awaiting the transport's close (after an A-ABORT) (PS3.8 Table 9-10).
_NO_REQUEST_COMING = frozenset({"Sta1", "Sta13"})


def guard(assoc: Association) -> None:
    """Make ``assoc`` abort on input pynetdicom fails on (see the module).

    Called when its connection opens, before anything is read.
    """
    _abort_on_state_machine_failures(assoc)
    _abort_on_negotiation_failures(assoc)


def _abort_on_state_machine_failures(assoc: Association) -> None:
    machine = assoc.dul.state_machine
    do_action = machine.do_action

    def do_action_or_abort(event: str) -> None:
        try:
            do_action(event)
        except Exception as exc:  # the machine stopped the DUL; end the rest here
            log.warning(
                "connection from %s aborted: pynetdicom failed on what it sent (%s: %s)",
                describe_requester(assoc),
                type(exc).__name__,
                exc,
            )
            abort_now(assoc)
            return
        if machine.current_state in _NO_REQUEST_COMING and assoc.requestor.primitive is None:
            # The association's thread waits for a request that will not come (the connection
            # closed, or the request was refused as undecodable): it ends now, not at the ACSE
            # timeout, and frees its place among the connections waiting for their request.
            assoc.dul.to_user_queue.put(cast(Any, None))

    machine.do_action = do_action_or_abort  # type: ignore[method-assign]


def _abort_on_negotiation_failures(assoc: Association) -> None:
    acse = assoc.acse
    negotiate = acse.negotiate_association

    def negotiate_or_abort() -> None:
        try:
            negotiate()
        except Exception as exc:  # the request cannot be negotiated: refused, not unanswered
            log.warning(
                "association from %s aborted: its request cannot be negotiated (%s: %s)",
                describe_requester(assoc),
                type(exc).__name__,
                exc,
            )
            abort_now(assoc)

    acse.negotiate_association = negotiate_or_abort  # type: ignore[method-assign]


def abort_now(assoc: Association) -> None:
    """Send an A-ABORT and end the association, as pynetdicom's DUL does when its loop fails.

    The association's thread may be waiting for the A-ASSOCIATE request: it is woken (an
    empty primitive, as when the ACSE timeout passes), ends and closes the connection.
    """
    dul = assoc.dul
    abort = A_ABORT_RQ()
    abort.source = PROVIDER
    abort.reason_diagnostic = NOT_SPECIFIED
    with contextlib.suppress(Exception):  # the peer may be gone already
        if dul.socket is not None:
            dul.socket.send(abort.encode())
    assoc.is_aborted = True
    assoc.is_established = False
    assoc._kill = True
    dul.kill_dul()
    dul.to_user_queue.put(cast(Any, None))
