"""The DIMSE endpoint: a pynetdicom application entity on the archive's cores.

pynetdicom accepts associations on a thread of its own and runs each association, and the
handlers of its messages, on a thread per association. Handlers that need the archive's event
loop (storing, reading, transcoding) hand their work to it; the loop is never blocked by a
DIMSE peer, and a slow peer holds only its own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.utils import make_target

from dicomrpc_server.archive import Archive
from dicomrpc_server.dimse import decoding, statuses
from dicomrpc_server.dimse.audit import DimseAudit
from dicomrpc_server.dimse.commitment import CommitmentHandler
from dicomrpc_server.dimse.contexts import (
    MODALITY_WORKLIST_FIND,
    UPS_MODELS,
    UPS_PULL,
    UPS_WATCH,
    supported_contexts,
)
from dicomrpc_server.dimse.find import Answer, FindHandler
from dicomrpc_server.dimse.get import GetHandler
from dicomrpc_server.dimse.move import MoveHandler
from dicomrpc_server.dimse.requesters import (
    REJECT_CALLING_AE,
    RequesterCheck,
    describe_requester,
)
from dicomrpc_server.dimse.sending import InstanceSource
from dicomrpc_server.dimse.store import StoreHandler
from dicomrpc_server.dimse.transport import ArchiveAE, ArchiveRequestHandler
from dicomrpc_server.dimse.watch import Watchers
from dicomrpc_server.dimse.workitems import WorkitemHandlers
from dicomrpc_server.dimse.worklist import WorklistFindHandler
from dicomrpc_server.ports import port_unavailable
from dicomrpc_server.store.ingest import Reception

log = logging.getLogger("dicomrpc.dimse")

# Connections that have not requested an association yet, at most, at once (see
# DimseServer.takes_connection); pynetdicom's own association count is set out of reach.
MAX_WAITING = 256
UNCOUNTED = 1 << 30
# A-ASSOCIATE-RJ: rejected-transient, by the service provider (presentation), local limit
# exceeded (PS3.8 Table 9-21).
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)


class _AcceptorServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, asking the DIMSE server whether to take a connection."""

    gate: DimseServer | None = None
    # Starts the reception of a C-STORE data set: the store core's (see reception.py).
    receive: Callable[[], Reception]

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Whether to serve a new connection (socketserver closes it otherwise)."""
        return self.gate is None or self.gate.takes_connection(client_address)

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection, its small writes sent at once (``TCP_NODELAY``).

        pynetdicom writes a message as separate PDUs (a C-FIND response's command, then its
        identifier; an A-ASSOCIATE-AC, then the first response): with Nagle's algorithm the
        second waits for the peer's delayed acknowledgement of the first, ~40 ms each time.
        """
        client, address = super().get_request()
        with contextlib.suppress(OSError):
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address


class _SharedPortServer(_AcceptorServer):
    """The acceptor, binding with ``SO_REUSEPORT`` as a group's processes do."""

    def server_bind(self) -> None:
        """Bind as pynetdicom does, the port shared with the group's other processes."""
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


# How often a stopping server looks whether its associations have ended.
_DRAIN_POLL_S = 0.05


FindAnswers = Callable[[Event], Iterator[Answer]]


class _FindByModel:
    """The one EVT_C_FIND handler, answering each C-FIND by the information model it names.

    pynetdicom binds one handler per event; the Query/Retrieve models, the UPS SOP classes and
    the Modality Worklist model each have their own (PS3.4 C.4.1, CC.2.8, K.4.1).
    """

    def __init__(self, default: FindAnswers, by_model: dict[str, FindAnswers]) -> None:
        self._default = default
        self._by_model = by_model

    def __call__(self, event: Event) -> Iterator[Answer]:
        """The answers of the handler of the request's SOP class."""
        model = str(event.request.AffectedSOPClassUID)
        return self._by_model.get(model, self._default)(event)


ActionReply = tuple[int | Dataset, Dataset | None]


class _ActionByModel:
    """The one EVT_N_ACTION handler: the UPS actions, and Storage Commitment's.

    An N-ACTION is read under the SOP class of its presentation context: a UPS N-ACTION names
    UPS Push as its Requested SOP Class on a UPS Pull or Watch context (PS3.4 CC.2.1.2), and
    Storage Commitment checks its own (PS3.4 J.3.2).
    """

    def __init__(
        self,
        workitems: Callable[[Event], ActionReply],
        commitment: Callable[[Event], ActionReply],
    ) -> None:
        self._workitems = workitems
        self._commitment = commitment

    def __call__(self, event: Event) -> ActionReply:
        """The reply of the handler of the request's presentation context."""
        if str(event.context.abstract_syntax) in UPS_MODELS:
            return self._workitems(event)
        return self._commitment(event)


class DimseServer:
    """The archive's DIMSE service class provider: storage, query, retrieve and worklists.

    C-ECHO, C-STORE, C-FIND, C-GET, C-MOVE, Storage Commitment, the UPS Push, Pull and Watch
    SOP classes (with the UPS event reports to subscribers) and the Modality Worklist.

    Parameters
    ----------
    archive
        The opened archive; its settings give the port, the AE title, the requesters allowed,
        the limits and (when set) the TLS certificate, served as DICOM's TLS profile
        (PS3.15 B.1).
    """

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        settings = archive.settings
        self.ae_title = settings.ae_title
        self._requesters = RequesterCheck(settings.dimse_allow)
        self._audit = DimseAudit(archive.auditor)
        ae = ArchiveAE(ae_title=settings.ae_title)
        # One by one: the ``supported_contexts`` setter would drop the roles.
        for context in supported_contexts():
            ae.add_supported_context(
                str(context.abstract_syntax),
                context.transfer_syntax,
                scu_role=context.scu_role,
                scp_role=context.scp_role,
            )
        ae.require_called_aet = True
        # The association limit is kept here (see _on_requested), counting associations that
        # have been requested; pynetdicom would count every connection from its acceptance.
        ae.maximum_associations = UNCOUNTED
        ae.maximum_pdu_size = settings.dimse_max_pdu_bytes
        ae.acse_timeout = settings.dimse_timeout_s
        ae.dimse_timeout = settings.dimse_timeout_s
        ae.network_timeout = settings.dimse_idle_timeout_s
        self._ae = ae
        self._server: ThreadedAssociationServer | None = None
        self._watchers: Watchers | None = None
        self._commitment = CommitmentHandler(
            archive.retrieve,
            archive.peers,
            settings.ae_title,
            self._audit,
            settings.dimse_timeout_s,
        )
        self._requested: set[Association] = set()
        self._requested_lock = threading.Lock()
        self._refused_connections = 0
        self._refusal_logged = 0.0
        self.port = 0
        # pynetdicom narrates every PDU at INFO; the archive logs one line per association and
        # per operation instead (its warnings and errors still show).
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)

    @property
    def associations(self) -> int:
        """How many associations are being served now."""
        return sum(1 for assoc in self._ae.active_associations if assoc.is_acceptor)

    def _ssl_context(self) -> ssl.SSLContext | None:
        tls = self.archive.tls
        if tls is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.cert_path, tls.key_path)
        if tls.client_ca_path is not None:
            context.load_verify_locations(cafile=tls.client_ca_path)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    async def start(self) -> None:
        """Bind the port and start accepting associations.

        Raises
        ------
        StartupError
            When the port cannot be bound (``PORT_IN_USE`` or ``PORT_UNAVAILABLE``).
        """
        archive, settings = self.archive, self.archive.settings
        loop = asyncio.get_running_loop()
        source = InstanceSource(archive.retrieve, archive.search, loop)
        audit = self._audit
        watchers = Watchers(archive.workitems, archive.peers, loop, self.ae_title)
        self._watchers = watchers
        watchers.start()
        workitems = WorkitemHandlers(archive.workitems, loop, audit, watchers, self.ae_title)
        find = _FindByModel(
            FindHandler(archive.search, self.ae_title, audit),
            {
                UPS_PULL: workitems.find,
                UPS_WATCH: workitems.find,
                MODALITY_WORKLIST_FIND: WorklistFindHandler(
                    archive.workitems, audit, self.ae_title
                ),
            },
        )
        handlers: list[EventHandlerType] = [
            (evt.EVT_CONN_OPEN, self._on_opened),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_CONN_CLOSE, self._on_closed),
            (evt.EVT_C_STORE, StoreHandler(archive.store, loop, audit)),
            (evt.EVT_C_FIND, find),
            (evt.EVT_N_CREATE, workitems.n_create),
            (evt.EVT_N_SET, workitems.n_set),
            (evt.EVT_N_GET, workitems.n_get),
            (evt.EVT_N_ACTION, _ActionByModel(workitems.n_action, self._commitment)),
            (evt.EVT_C_GET, GetHandler(source, audit)),
            (evt.EVT_C_MOVE, MoveHandler(source, archive.peers, audit)),
        ]
        try:
            # A group's processes share the port the supervisor reserved (see processes.py).
            server_class = _SharedPortServer if settings.reuse_port else _AcceptorServer
            self._server = self._serve(handlers, server_class)
        except OSError as exc:
            raise port_unavailable(
                "DIMSE", settings.host, settings.dimse_port, "--dimse-port", exc
            ) from None
        assert self._server is not None
        self.port = int(self._server.server_address[1])

    def _serve(
        self, handlers: list[EventHandlerType], server_class: type[_AcceptorServer]
    ) -> ThreadedAssociationServer:
        """Start accepting, as ``AE.start_server(block=False)`` does, with our server class."""
        settings = self.archive.settings
        server = self._ae.make_server(
            (settings.host, settings.dimse_port),
            evt_handlers=handlers,
            ssl_context=self._ssl_context(),
            server_class=server_class,
            request_handler=ArchiveRequestHandler,
        )
        assert isinstance(server, _AcceptorServer)
        server.gate = self
        server.receive = self.archive.store.receive
        thread = threading.Thread(
            target=make_target(server.serve_forever), name="dimse-acceptor", daemon=True
        )
        thread.start()
        self._ae._servers.append(server)
        return server

    async def stop(self, grace: float) -> None:
        """Stop accepting; let associations end for up to ``grace`` seconds, then abort them.

        Runs in a thread: an association finishing a C-STORE needs the event loop meanwhile.
        """
        if self._watchers is not None:
            await self._watchers.stop()
        await asyncio.to_thread(self._stop, grace)

    def _stop(self, grace: float) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        deadline = time.monotonic() + grace
        while self._ae.active_associations and time.monotonic() < deadline:
            time.sleep(_DRAIN_POLL_S)
        for assoc in self._ae.active_associations:
            log.warning("aborting the association of %s at shutdown", describe_requester(assoc))
            assoc.abort()
        for assoc in self._ae.active_associations:
            if isinstance(assoc, threading.Thread):
                assoc.join(grace or 1)
        # The commitment reports still being sent, on new associations, get what is left.
        self._commitment.wait(max(0.0, deadline - time.monotonic()))

    # -- association events ------------------------------------------------------------------

    def _on_opened(self, event: Event) -> None:
        """Before anything is read: input pynetdicom fails on aborts the association."""
        decoding.guard(event.assoc)

    def _on_requested(self, event: Event) -> None:
        """Reject a requester the allow list does not name, before anything is negotiated."""
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        calling = str(primitive.calling_ae_title).strip() if primitive is not None else ""
        if not self._requesters.permits(calling, str(assoc.requestor.address)):
            assoc.acse.send_reject(*REJECT_CALLING_AE)
            # As pynetdicom's own rejections do: the rejection is sent before the connection
            # closes (stopping the DUL waits for its queue to empty).
            assoc.kill()
            log.warning(
                "association from %s rejected: not an allowed requester (--dimse-allow)",
                describe_requester(assoc),
            )
            return
        limit = self.archive.settings.dimse_max_associations
        with self._requested_lock:
            self._forget_ended()
            full = len(self._requested) >= limit
            if not full:
                self._requested.add(assoc)
        if full:
            assoc.acse.send_reject(*REJECT_LOCAL_LIMIT)
            assoc.kill()
            log.warning(
                "association from %s rejected: %d associations are served already "
                "(--dimse-max-associations)",
                describe_requester(assoc),
                limit,
            )

    def _on_established(self, event: Event) -> None:
        assoc = event.assoc
        log.info(
            "association from %s accepted: %d presentation contexts, max PDU %s",
            describe_requester(assoc),
            len(assoc.accepted_contexts),
            assoc.requestor.maximum_length,
        )

    def _on_rejected(self, event: Event) -> None:
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        called = str(primitive.called_ae_title).strip() if primitive is not None else ""
        log.warning(
            "association from %s to %s rejected (AE title, or %d associations already)",
            describe_requester(assoc),
            called,
            self._ae.maximum_associations,
        )

    def _forget_ended(self) -> None:
        """Drop the associations whose thread has ended (call with the lock held).

        An association leaves the count when its connection closes (EVT_CONN_CLOSE), but one
        ended by an abort or a failed negotiation has its socket shut down by pynetdicom's
        server without that event: left counted, 16 such would refuse every requester.
        """
        self._requested = {assoc for assoc in self._requested if assoc.is_alive()}

    def _on_closed(self, event: Event) -> None:
        """The connection is gone: what the association stored goes to the audit trail."""
        with self._requested_lock:
            self._requested.discard(event.assoc)
        self._audit.ended(event.assoc)

    def takes_connection(self, client_address: Any) -> bool:
        """Whether a new connection is taken (it is closed at once otherwise).

        A connection counts against the association limit only once it has requested an
        association: one that sends nothing waits for its request (up to the ACSE timeout)
        without taking a requester's place. So that such connections cannot pile up, at most
        ``MAX_WAITING`` of them wait at once; one more is closed (logged at most once a
        minute).
        """
        with self._requested_lock:
            self._forget_ended()
            requested = set(self._requested)
        waiting = sum(
            1
            for assoc in self._ae.active_associations
            if assoc.is_acceptor and assoc not in requested
        )
        if waiting < MAX_WAITING:
            return True
        self._refused_connections += 1
        now = time.monotonic()
        if now - self._refusal_logged >= 60:
            self._refusal_logged = now
            log.warning(
                "connection from %s closed: %d connections wait for their association request "
                "(%d closed so far)",
                client_address[0] if isinstance(client_address, tuple) else client_address,
                waiting,
                self._refused_connections,
            )
        return False

    def _on_aborted(self, event: Event) -> None:
        log.info("association from %s aborted", describe_requester(event.assoc))

    def _on_echo(self, event: Event) -> Dataset:
        log.info("C-ECHO from %s: 0x0000", describe_requester(event.assoc))
        answer = Dataset()
        answer.Status = statuses.SUCCESS
        return answer
