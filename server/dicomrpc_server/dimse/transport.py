"""The DIMSE receive path: pynetdicom's association, woken by what happens instead of polling.

pynetdicom runs each association on two threads, its DICOM Upper Layer (DUL) reactor and the
association's own, and both poll: each sleeps a millisecond, looks at the socket and its
queues, and sleeps again. Under load that is thousands of wake-ups a second per association,
each taking the GIL from the threads doing the work, and up to a millisecond of delay at each
of the hand-offs a C-STORE passes through; and the DUL reads a PDU 4 KiB at a time. Here the
same state machine and the same queues are used, but each thread blocks until it has
something to do:

- the DUL thread waits in ``poll`` for the peer's bytes, or a byte on a wake-up socket that
  the association writes when it queues a primitive to send (``poll``, not ``select``, which
  fails on descriptors past 1024: pynetdicom took those for closed connections);
- the association thread waits on an event set when a DIMSE message or an ACSE primitive is
  queued for it, or when the DUL ends;
- a PDU is read with ``recv_into`` into one buffer, in as few calls as the kernel allows, and
  one longer than the archive accepts is refused before it is read (an A-ABORT, as for any
  invalid PDU: PS3.8 Table 9-10, Evt19): a P-DATA-TF longer than the maximum length the
  archive announced (PS3.8 D.1), any other PDU longer than ``MAX_OTHER_PDU_BYTES``;
- when the DUL thread ends, the connection closes, even while the association's thread still
  serves a request (a search the requester aborted, say).

Both threads still wake at least every ``MAX_WAIT_S``, for the timers they watch (ARTIM, the
idle timeout) and as a safety net.

The associations the archive requests (:class:`ArchiveAE`: a C-MOVE's, storage commitment and
UPS event reports) are the same, requesting; every connection sends its small writes at once.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import queue
import select
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom._globals import DEFAULT_MAX_LENGTH, MODE_ACCEPTOR, MODE_REQUESTOR
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AddressInformation, AssociationSocket, RequestHandler

from dicomrpc_server.dimse.decoding import INVALID_PDU, abort_now
from dicomrpc_server.dimse.outgoing import sendable, wait_for_room
from dicomrpc_server.dimse.reception import ArchiveDIMSE, ReceivedDataSet
from dicomrpc_server.dimse.requesters import describe_association
from dicomrpc_server.store.ingest import Reception

log = logging.getLogger("dicomrpc.dimse")

# The longest either thread waits before looking at its timers again.
MAX_WAIT_S = 0.05
# The longest PDU accepted other than P-DATA-TF: an A-ASSOCIATE-RQ with many presentation
# contexts and a user identity assertion is tens of KiB.
MAX_OTHER_PDU_BYTES = 1 << 20
# The most bytes a read allocates ahead of their arrival; a longer PDU's buffer grows as its
# bytes come, so a length the peer announces but never sends costs no memory.
READ_AHEAD_BYTES = 1 << 20
P_DATA_TF_TYPE = 0x04
# The most P-DATA-TF bytes the DUL sends in one write.
SEND_BATCH_BYTES = 1 << 20
_PDU_TYPES = frozenset(range(0x01, 0x08))
# The state machine's events (PS3.8 Table 9-10): transport closed, ARTIM expired.
TRANSPORT_CLOSED, ARTIM_EXPIRED = "Evt17", "Evt18"

T = TypeVar("T")


class WakingQueue(queue.Queue[T]):
    """A queue that wakes its reader (calls ``wake``) when something is put in it.

    With ``when_empty``, only a put into an empty queue wakes it: enough for a reader that
    empties the queue before it waits again, and one wake per message rather than one per PDU
    where a wake costs a system call.
    """

    def __init__(self, wake: Callable[[], None], when_empty: bool = False) -> None:
        super().__init__()
        self._wake = wake
        self._when_empty = when_empty

    def _put(self, item: T) -> None:
        # Under the queue's lock, as the reader's gets are: the emptiness seen is the reader's.
        wake = not (self._when_empty and self.queue)
        super()._put(item)
        if wake:
            self._wake()


class ArchiveSocket(AssociationSocket):
    """The association's socket, reading a PDU in as few ``recv_into`` calls as it arrives in."""

    def _create_socket(self, address: AddressInformation) -> socket.socket:
        """A socket for an association the archive requests, its small writes sent at once.

        pynetdicom writes a message as separate PDUs (a C-STORE's command, then its data set):
        with Nagle's algorithm each waits for the peer's delayed acknowledgement of the one
        before, up to 40 ms. A C-MOVE sent its instances at a third of the rate of a C-GET.
        """
        sock = super()._create_socket(address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    @property
    def ready(self) -> bool:
        """Whether the peer has sent bytes not read yet, or closed (Evt17 when polling fails).

        As pynetdicom's, with ``poll``: its ``select`` fails on a descriptor past 1024, which
        it takes for the connection closed.
        """
        sock = self.socket
        if sock is None or not self._is_connected:
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True  # decrypted bytes the kernel no longer holds
        poller = select.poll()
        try:
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            self.event_queue.put(TRANSPORT_CLOSED)
            return False

    def send(self, bytestream: bytes) -> None:
        """Send ``bytestream`` whole; Evt17 when the connection fails.

        As pynetdicom's, which copies what is left of the bytes after each partial write.
        """
        sock = self.socket
        try:
            assert sock is not None
            sock.sendall(bytestream)
            evt.trigger(self.assoc, evt.EVT_DATA_SENT, {"data": bytestream})
        except Exception:
            self.event_queue.put(TRANSPORT_CLOSED)

    def _shutdown_socket(self) -> None:
        """Shut the connection down and close it, closed even when the shutdown fails.

        pynetdicom closes the socket only after a successful ``shutdown()``, which fails once
        the peer has reset the connection: the descriptor then stayed open until the socket
        object was collected.
        """
        sock = self.socket
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes`` (fewer only when the connection closes first)."""
        sock = self.socket
        assert sock is not None
        data = bytearray(min(nr_bytes, READ_AHEAD_BYTES))
        view = memoryview(data)
        got = 0
        try:
            while got < nr_bytes:
                if got == len(data):
                    # The peer has sent this much already: grow by as much again, at most.
                    view.release()
                    data.extend(bytes(min(nr_bytes - got, len(data))))
                    view = memoryview(data)
                count = sock.recv_into(view[got:])
                if not count:
                    break
                got += count
        finally:
            view.release()
        del data[got:]
        return data


class ArchiveDUL(DULServiceProvider):
    """pynetdicom's DUL reactor, blocking until the peer sends or the association queues."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._wake_reader: socket.socket | None = None
        self._wake_writer: socket.socket | None = None
        # A PDU was refused unread: what follows it cannot be told apart into PDUs.
        self._unframed = False
        # Events come from the reactor's own turns, and from other threads now and then (the
        # association closing the socket): those wake it.
        self.event_queue = WakingQueue(self._wake_from_elsewhere)
        # Primitives to send come from the association's threads; the reactor sends them
        # all before it waits again.
        self.to_provider_queue = WakingQueue(self._wake_from_elsewhere, when_empty=True)

    def send_pdu(self, primitive: Any) -> None:
        """Queue a primitive to send, once there is room (see :mod:`.outgoing`)."""
        if wait_for_room(self, primitive):
            super().send_pdu(primitive)

    def kill_dul(self) -> None:
        """Stop the reactor at its next turn, which comes now."""
        super().kill_dul()
        self._wake()

    def stop_dul(self) -> bool:
        """Stop the reactor once the connection is closed (Sta1), at once; else False."""
        if self.state_machine.current_state != "Sta1":
            return False
        self._kill_thread = True
        self._wake()
        if self.is_alive() and threading.current_thread() is not self:
            self.join()
        return True

    def _wake_from_elsewhere(self) -> None:
        if threading.current_thread() is not self:
            self._wake()

    def _wake(self) -> None:
        writer = self._wake_writer
        if writer is not None:
            # Full (the reactor has not drained it yet) or closed (the reactor has ended):
            # either way nothing is left to wake.
            with contextlib.suppress(OSError):
                writer.send(b"\x00")

    def run_reactor(self) -> None:
        """Run pynetdicom's reactor loop, waiting for input instead of sleeping between turns."""
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        try:
            self._run()
        finally:
            # Nothing reads the connection any more: it closes now, not when the association's
            # thread is done with what it serves (a search, say, after an A-ABORT).
            transport = self.socket
            if transport is not None and transport.socket is not None:
                with contextlib.suppress(Exception):
                    transport.close()
            reader, writer = self._wake_reader, self._wake_writer
            self._wake_writer = None
            writer.close()
            reader.close()
            # No data set comes any more: what no handler took goes. And the association's
            # thread, which looks whether the DUL is alive, looks now.
            assoc = self.assoc
            if isinstance(assoc, ArchiveAssociation):
                assoc.dimse.discard_all()
                assoc.woken.set()

    def _run(self) -> None:
        self._idle_timer.start()
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
            if self._kill_thread:
                return
            if self.artim_timer.expired:
                self.event_queue.put(ARTIM_EXPIRED)
            try:
                # A turn sends the data queued, or takes the next other primitive to send, or
                # reads one PDU.
                if self._send_data():
                    continue
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception:
                # As pynetdicom's reactor does: abort, bypassing a state machine in disorder.
                log.exception("the DIMSE reactor failed; aborting the association")
                abort_now(self.assoc)
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                self._wait()
                continue
            self.state_machine.do_action(event)

    def _send_data(self) -> bool:
        """Send the P-DATA primitives at the head of the queue in one write; whether any went.

        Each would be Evt9, then DT-1 (send a P-DATA-TF PDU), then Sta6 again (PS3.8 Table
        9-10): the PDUs of a message go out together, not a reactor turn and a write each. A
        0.5 MB data set is 32 PDUs to a peer taking 16 KiB, dcmtk's default.
        """
        if self.state_machine.current_state != "Sta6" or self.socket is None:
            return False
        if not self.event_queue.empty():
            return False  # an event first: the connection closed by a failed write, say
        queued = self.to_provider_queue
        pdus: list[P_DATA_TF] = []
        encoded: list[bytes] = []
        size = 0
        # Only this thread takes from the queue: the head it sees is the one it gets.
        while size < SEND_BATCH_BYTES and queued.queue and isinstance(queued.queue[0], P_DATA):
            primitive = queued.get(block=False)
            assert isinstance(primitive, P_DATA)
            pdu = P_DATA_TF(primitive)
            pdus.append(pdu)
            encoded.append(pdu.encode())
            size += len(encoded[-1])
        if not pdus:
            return False
        self.socket.send(b"".join(encoded))
        for pdu in pdus:
            evt.trigger(self.assoc, evt.EVT_PDU_SENT, {"pdu": pdu})
        return True

    def _wait(self) -> None:
        """Block until the peer sends, a primitive is queued, or a timer may be due."""
        assert self._wake_reader is not None
        timeout = MAX_WAIT_S
        if self.artim_timer.timeout is not None:
            timeout = max(0.0, min(timeout, self.artim_timer.remaining))
        # poll, not select: a busy server's descriptors pass select's limit of 1024.
        poller = select.poll()
        poller.register(self._wake_reader, select.POLLIN)
        transport = self.socket
        try:
            if transport is not None and transport.socket is not None:
                poller.register(transport.socket, select.POLLIN)
            poller.poll(timeout * 1000)
        except (OSError, ValueError):
            # The socket was closed meanwhile: the next turn finds the connection gone.
            return
        with contextlib.suppress(OSError):
            while self._wake_reader.recv(4096):
                pass

    def _is_transport_event(self) -> bool:
        """Read the next PDU; after one refused unread, close the connection instead.

        pynetdicom reads on while it waits for the connection to close after an A-ABORT
        (Sta13), taking whatever follows for PDUs: behind a PDU left unread that is its body,
        and a partial header there would hold the connection open until the peer closes it.
        """
        transport = self.socket
        if self._unframed and self.state_machine.current_state == "Sta13" and transport:
            transport.close()  # Evt17: the connection is closed
            return True
        return bool(super()._is_transport_event())

    def _read_pdu_data(self) -> None:
        """Read one PDU, refusing one longer than the archive accepts before reading it.

        Emits what pynetdicom's reader emits (PS3.8 Table 9-10): the PDU's event, Evt17 when
        the connection closes before the PDU is whole, Evt19 for an unknown PDU type, a PDU too
        long or one that cannot be decoded.
        """
        transport = self.socket
        assert transport is not None
        try:
            header = transport.recv(6)
            if len(header) < 6:
                self.event_queue.put(TRANSPORT_CLOSED)
                return
            pdu_type, _, length = struct.unpack(">BBL", header)
            if pdu_type not in _PDU_TYPES:
                log.warning(
                    "association %s aborted: unknown PDU type 0x%02X",
                    describe_association(self.assoc),
                    pdu_type,
                )
                self._unframed = True
                self.event_queue.put(INVALID_PDU)
                return
            limit = self._length_limit(pdu_type)
            if length > limit:
                log.warning(
                    "association %s aborted: a PDU of type 0x%02X and %d bytes, more "
                    "than the %d accepted",
                    describe_association(self.assoc),
                    pdu_type,
                    length,
                    limit,
                )
                self._unframed = True
                self.event_queue.put(INVALID_PDU)
                return
            body = transport.recv(length)
        except (OSError, TimeoutError):
            self.event_queue.put(TRANSPORT_CLOSED)
            return
        if len(body) != length:
            self.event_queue.put(TRANSPORT_CLOSED)
            return
        try:
            pdu, event = self._decode_pdu(header + body)
        except Exception as exc:
            log.warning(
                "association %s aborted: a PDU that cannot be decoded (%s: %s)",
                describe_association(self.assoc),
                type(exc).__name__,
                exc,
            )
            self.event_queue.put(INVALID_PDU)
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _length_limit(self, pdu_type: int) -> int:
        """The longest PDU of ``pdu_type`` accepted (its length field, PS3.8 9.3)."""
        if pdu_type == P_DATA_TF_TYPE:
            assoc = self.assoc
            announced = (assoc.requestor if assoc.is_requestor else assoc.acceptor).maximum_length
            if announced:
                # The announced maximum counts the PDV items (PS3.8 D.1); a PDU header's
                # worth more is let through for peers that count it too.
                return int(announced) + 6
        return MAX_OTHER_PDU_BYTES


class ArchiveAssociation(Association):
    """An association whose thread waits for its messages instead of polling.

    Parameters
    ----------
    ae
        The archive's application entity.
    receive
        Starts the reception of a C-STORE data set (see :mod:`.reception`); none on an
        association the archive requests, which takes no data sets.
    mode
        ``MODE_ACCEPTOR``, or ``MODE_REQUESTOR`` for an association the archive requests.
    """

    dimse: ArchiveDIMSE

    def __init__(
        self, ae: Any, receive: Callable[[], Reception] | None, mode: str = MODE_ACCEPTOR
    ) -> None:
        super().__init__(ae, mode)
        self.woken = threading.Event()
        self.dul = ArchiveDUL(self)
        self.dul.to_user_queue = WakingQueue(self.woken.set)
        self.dimse = ArchiveDIMSE(self, receive)
        self.dimse.msg_queue = WakingQueue(self.woken.set)
        # The timers pynetdicom set on the providers replaced here, set on these.
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout

    def kill(self) -> None:
        """End the association's thread, at once if it is waiting."""
        self.woken.set()
        super().kill()

    def send_c_store(self, dataset: Dataset | str | Path, *args: Any, **kwargs: Any) -> Dataset:
        """pynetdicom's, sending a StoredFile from its file (see :mod:`.outgoing`)."""
        sent = sendable(dataset) if isinstance(dataset, Dataset) else dataset
        return super().send_c_store(sent, *args, **kwargs)

    def _serve_request(self, msg: Any, context_id: int) -> None:
        """Serve a message; a data set received for it that its handler did not take goes."""
        try:
            super()._serve_request(msg, context_id)
        finally:
            data_set = getattr(msg, "DataSet", None)
            if isinstance(data_set, ReceivedDataSet):
                self.dimse.served(data_set)

    def _run_reactor(self) -> None:
        """The reactor loop of pynetdicom (PS3.7, PS3.8), waiting for work between its turns.

        While it waits the reactor counts as paused: a thread sending on the association
        (``send_*``, ``release``) need not wait for it to come round.
        """
        self._is_paused = False
        while not self._kill:
            self._is_paused = True
            self.woken.wait(MAX_WAIT_S)
            self.woken.clear()
            # Held here while another thread sends on the association (see pynetdicom).
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, int(context_id or 0))
                # More may be queued behind it: the next turn comes at once.
                self.woken.set()

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                # So that EVT_ACSE_RECV fires for its subscribers.
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                log.warning("association %s idle too long: aborted", describe_association(self))
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


class ArchiveRequestHandler(RequestHandler):
    """Serves a new connection with an :class:`ArchiveAssociation` on an :class:`ArchiveSocket`.

    What pynetdicom's handler does, with these classes; the server's supported contexts are
    shared by every association as they are (negotiation only reads them, and the accepted
    contexts it builds are new objects), where pynetdicom deep-copies the archive's 177
    contexts and 2,748 transfer syntaxes, 40 ms or more of one core, for each connection.
    """

    def _create_association(self) -> Association:
        server: Any = self.server
        ae = self.ae
        assoc = ArchiveAssociation(ae, server.receive)
        assoc._server = server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        assoc.set_socket(ArchiveSocket(assoc, client_socket=self.request))

        assoc.acceptor.maximum_length = ae.maximum_pdu_size
        assoc.acceptor.ae_title = server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = ae.implementation_version_name
        assoc.acceptor.supported_contexts = list(server.contexts)
        assoc.requestor.address_info = self.remote

        for event, handlers in server._handlers.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *handlers)
            elif isinstance(event, evt.NotificationEvent):
                for handler, args in handlers:
                    assoc.bind(event, handler, args)
        return assoc


class ArchiveAE(AE):
    """The archive's application entity: what it requests is an :class:`ArchiveAssociation`.

    The associations the archive requests (a C-MOVE's to its destination, a storage
    commitment report to its requester, UPS event reports to subscribers) are the ones it
    accepts, requesting: their threads wait rather than poll, they send as :mod:`.outgoing`
    says, on the same socket (small writes sent at once, ``poll`` rather than ``select``, a PDU
    read in as few calls as it arrives in).
    """

    def associate(
        self,
        addr: str | tuple[str, int, int],
        port: int,
        contexts: list[Any] | None = None,
        ae_title: str = "ANY-SCP",
        max_pdu: int = DEFAULT_MAX_LENGTH,
        ext_neg: list[Any] | None = None,
        bind_address: tuple[str, int] | tuple[str, int, int, int] | None = None,
        tls_args: tuple[ssl.SSLContext, str] | None = None,
        evt_handlers: list[Any] | None = None,
    ) -> Association:
        """Request an association with a peer, as pynetdicom's ``associate`` does.

        Its steps, with the archive's association class: pynetdicom builds its own.
        """
        remote = AddressInformation.from_addr_port(addr, port)
        if bind_address is None:
            bind_address = ("::0", 0) if remote.address_family == socket.AF_INET6 else ("", 0)
        local = AddressInformation.from_tuple(bind_address)
        assoc = ArchiveAssociation(self, None, MODE_REQUESTOR)
        assoc.name = f"RequestorThread@{datetime.now():%Y%m%d%H%M%S}"
        assoc.set_socket(self._create_socket(assoc, local, tls_args))
        assoc.acceptor.ae_title = ae_title
        assoc.acceptor.address_info = remote
        assoc.requestor.address_info = local
        assoc.requestor.ae_title = self.ae_title
        assoc.requestor.maximum_length = max_pdu
        assoc.requestor.implementation_class_uid = self.implementation_class_uid
        assoc.requestor.implementation_version_name = self.implementation_version_name
        for item in ext_neg or []:
            assoc.requestor.add_negotiation_item(item)
        requested = copy.deepcopy(contexts or self.requested_contexts)
        self._validate_requested_contexts(requested)
        if not requested:
            raise RuntimeError("an association needs one presentation context or more")
        for number, context in enumerate(requested):
            context.context_id = 2 * number + 1
        assoc.requestor.requested_contexts = requested
        for binding in evt_handlers or []:
            assoc.bind(*binding)
        assoc.request()
        if assoc.is_established:
            assoc.start()
        return assoc

    def _create_socket(
        self, assoc: Association, address: AddressInformation, tls_args: Any
    ) -> ArchiveSocket:
        sock = ArchiveSocket(assoc, address=address)
        sock.tls_args = tls_args
        return sock
