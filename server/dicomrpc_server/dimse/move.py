"""C-MOVE SCP (PS3.4 C.4.2): the instances an identifier names, sent to a registered peer.

The move destination is an AE title; the archive sends only to a known peer (set with
``--dimse-peer NAME=AE@HOST:PORT`` or added at run time, :mod:`dicomrpc_server.peers`; an
unknown one is 0xA801), looked up at each C-MOVE, on an association of its own
whose presentation contexts are built from the instances to send. Which instances, and in
which syntax each goes, is :mod:`.sending`'s, shared with C-GET.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_MOVE
from pynetdicom.events import Event

from dicomrpc_server.dimse import statuses
from dicomrpc_server.dimse.audit import DimseAudit
from dicomrpc_server.dimse.contexts import PATIENT_ROOT_MODELS, move_contexts
from dicomrpc_server.dimse.find import Answer, failure
from dicomrpc_server.dimse.identifiers import level_of
from dicomrpc_server.dimse.requesters import describe_requester
from dicomrpc_server.dimse.sending import MAX_SUBOPERATIONS, RETRIEVE_LEVELS, InstanceSource
from dicomrpc_server.errors import ServiceError
from dicomrpc_server.peers import PeerRegistry
from dicomrpc_server.retrieve.scope import StoredInstance

log = logging.getLogger("dicomrpc.dimse")


Destination = tuple[str | None, int | None] | tuple[str, int, dict[str, Any]]


class _Opened:
    """The association pynetdicom opens to the destination, caught as it is established."""

    def __init__(self) -> None:
        self.assoc: Association | None = None
        self.ready = threading.Event()

    def __call__(self, event: Event) -> None:
        self.assoc = event.assoc
        self.ready.set()


class MoveHandler:
    """The EVT_C_MOVE handler.

    Parameters
    ----------
    source
        Resolves the identifier and reads the instances.
    peers
        The known destinations.
    audit
        The audit hook: one record per retrieve.
    """

    def __init__(self, source: InstanceSource, peers: PeerRegistry, audit: DimseAudit) -> None:
        self._source = source
        self._peers = peers
        self._audit = audit

    def __call__(self, event: Event) -> Iterator[Destination | int | Answer]:
        """Yield the destination, the number of sub-operations, each instance, the end."""
        started = time.monotonic()
        sent = 0
        request = event.request
        assert isinstance(request, C_MOVE)
        destination = str(request.MoveDestination or "").strip()
        try:
            for answer in self._answers(event, destination):
                if isinstance(answer, tuple) and answer[0] == statuses.PENDING:
                    sent += 1
                yield answer
        finally:
            log.info(
                "C-MOVE from %s to %s: %d instances sent or tried in %.0f ms",
                describe_requester(event.assoc),
                destination,
                sent,
                (time.monotonic() - started) * 1000,
            )

    def _answers(self, event: Event, destination: str) -> Iterator[Destination | int | Answer]:
        peer = self._peers.find(destination)
        if peer is None:
            log.warning("C-MOVE to %r: not a known peer (dicomrpc peers list)", destination)
            yield None, None  # pynetdicom answers 0xA801, move destination unknown
            return
        model = str(event.request.AffectedSOPClassUID)
        found: list[StoredInstance] = []
        refusal: Dataset | None = None
        endpoint = f"C-MOVE {model} to {destination}"
        try:
            identifier = event.identifier
            level = level_of(identifier, model in PATIENT_ROOT_MODELS, RETRIEVE_LEVELS)
            found = self._source.resolve(identifier, level)
            self._audit.retrieved(event.assoc, endpoint, found, None)
        except ServiceError as error:
            self._audit.retrieved(event.assoc, endpoint, [], error)
            refusal = failure(statuses.query_failure_status(error), error.message)
        except Exception as exc:  # an identifier pydicom cannot decode
            refusal = failure(statuses.CANNOT_UNDERSTAND, f"the identifier cannot be read: {exc}")
        if refusal is None and len(found) > MAX_SUBOPERATIONS:
            refusal = failure(
                statuses.REFUSED_OUT_OF_RESOURCES,
                f"{len(found)} instances match, more than {MAX_SUBOPERATIONS}",
            )
        opened = _Opened()
        syntaxes: dict[str, set[str]] = {}
        for instance in found:
            record = instance.record
            syntaxes.setdefault(record.sop_class_uid, set()).add(record.transfer_syntax_uid)
        yield (
            peer.host,
            peer.port,
            {
                "contexts": move_contexts(syntaxes) or move_contexts({"1.2.840.10008.1.1": set()}),
                "evt_handlers": [(evt.EVT_ESTABLISHED, opened)],
            },
        )
        if refusal is not None:
            yield 1
            yield refusal, None
            return
        yield len(found)
        if not found:
            return
        # pynetdicom opens the association after the count, before it asks for an instance.
        opened.ready.wait(1)
        for instance in found:
            if event.is_cancelled:
                yield statuses.CANCEL, None
                return
            assoc = opened.assoc
            if assoc is None or not assoc.is_established:
                yield statuses.PENDING, self._source.unsendable(instance)
                continue
            yield from self._source.pending(assoc, instance)
