"""C-GET SCP (PS3.4 C.4.3): the instances an identifier names, sent back on the association.

Which instances, and in which syntax each goes, is :mod:`.sending`'s, shared with C-MOVE.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from pynetdicom.events import Event

from dicomrpc_server.dimse import statuses
from dicomrpc_server.dimse.audit import DimseAudit
from dicomrpc_server.dimse.contexts import PATIENT_ROOT_MODELS
from dicomrpc_server.dimse.find import Answer, failure
from dicomrpc_server.dimse.identifiers import level_of
from dicomrpc_server.dimse.requesters import describe_requester
from dicomrpc_server.dimse.sending import MAX_SUBOPERATIONS, RETRIEVE_LEVELS, InstanceSource
from dicomrpc_server.errors import ServiceError

log = logging.getLogger("dicomrpc.dimse")


class GetHandler:
    """The EVT_C_GET handler.

    Parameters
    ----------
    source
        Resolves the identifier and reads the instances.
    audit
        The audit hook: one record per retrieve.
    """

    def __init__(self, source: InstanceSource, audit: DimseAudit) -> None:
        self._source = source
        self._audit = audit

    def __call__(self, event: Event) -> Iterator[int | Answer]:
        """Yield the number of sub-operations, then each instance to send, then the end."""
        started = time.monotonic()
        sent = 0
        try:
            for answer in self._answers(event):
                if isinstance(answer, tuple) and answer[0] == statuses.PENDING:
                    sent += 1
                yield answer
        finally:
            log.info(
                "C-GET from %s: %d instances sent or tried in %.0f ms",
                describe_requester(event.assoc),
                sent,
                (time.monotonic() - started) * 1000,
            )

    def _answers(self, event: Event) -> Iterator[int | Answer]:
        model = str(event.request.AffectedSOPClassUID)
        try:
            identifier = event.identifier
            level = level_of(identifier, model in PATIENT_ROOT_MODELS, RETRIEVE_LEVELS)
            found = self._source.resolve(identifier, level)
        except ServiceError as error:
            self._audit.retrieved(event.assoc, f"C-GET {model}", [], error)
            yield 1
            yield failure(statuses.query_failure_status(error), error.message), None
            return
        except Exception as exc:  # an identifier pydicom cannot decode
            yield 1
            yield failure(statuses.CANNOT_UNDERSTAND, f"the identifier cannot be read: {exc}"), None
            return
        if len(found) > MAX_SUBOPERATIONS:
            yield 1
            yield (
                failure(
                    statuses.REFUSED_OUT_OF_RESOURCES,
                    f"{len(found)} instances match, more than {MAX_SUBOPERATIONS}",
                ),
                None,
            )
            return
        self._audit.retrieved(event.assoc, f"C-GET {model}", found, None)
        yield len(found)
        for instance in found:
            if event.is_cancelled:
                yield statuses.CANCEL, None
                return
            yield from self._source.pending(event.assoc, instance)
