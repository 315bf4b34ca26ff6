"""C-FIND SCP (PS3.4 C.4.1): Patient Root and Study Root queries answered by the search core.

Matches stream as pending responses while the search pages through the index, paced to the
peer's reading (dimse/pacing.py); a C-CANCEL is looked for before each one and ends the query
with status Cancel (PS3.4 C.4.1.2.3).
Searching reads the index only: it runs on the association's own thread, as gRPC runs it on
a worker thread, and never on the archive's event loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from dicomrpc_server.dimse import statuses
from dicomrpc_server.dimse.audit import DimseAudit
from dicomrpc_server.dimse.contexts import PATIENT_ROOT_MODELS
from dicomrpc_server.dimse.identifiers import find_results, level_of, read_query, response
from dicomrpc_server.dimse.pacing import make_way
from dicomrpc_server.dimse.requesters import describe_requester
from dicomrpc_server.errors import ServiceError
from dicomrpc_server.query.engine import SearchCore

log = logging.getLogger("dicomrpc.dimse")

FIND_LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")

Answer = tuple[int | Dataset, Dataset | None]


def logged_find(what: str, event: Event, answers: Iterator[Answer]) -> Iterator[Answer]:
    """Pass a C-FIND's answers on, then log one line: matches, final status and time."""
    started = time.monotonic()
    matches = 0
    final: int = statuses.SUCCESS
    try:
        for answer in answers:
            if answer[0] == statuses.PENDING:
                matches += 1
            else:
                final = answer[0] if isinstance(answer[0], int) else int(answer[0].Status)
            yield answer
    finally:
        log.info(
            "%s from %s: %d matches, 0x%04X in %.0f ms",
            what,
            describe_requester(event.assoc),
            matches,
            final,
            (time.monotonic() - started) * 1000,
        )


def reply(
    event: Event, operation: str, uid: str, status: int, message: str, started: float
) -> Dataset:
    """A response's status (and Error Comment on a non-success), logged as one line."""
    log.info(
        "%s %s from %s: 0x%04X in %.0f ms%s",
        operation,
        uid,
        describe_requester(event.assoc),
        status,
        (time.monotonic() - started) * 1000,
        f" ({message})" if message else "",
    )
    answer = Dataset()
    answer.Status = status
    if message and status != statuses.SUCCESS:
        answer.ErrorComment = statuses.comment(message)
    return answer


def failure(status: int, message: str) -> Dataset:
    """A failure status with its Error Comment."""
    answer = Dataset()
    answer.Status = status
    answer.ErrorComment = statuses.comment(message)
    return answer


class FindHandler:
    """The EVT_C_FIND handler.

    Parameters
    ----------
    core
        The search core.
    ae_title
        The archive's AE title, returned as Retrieve AE Title (0008,0054) when asked for.
    audit
        The audit hook: one record per query.
    """

    def __init__(self, core: SearchCore, ae_title: str, audit: DimseAudit) -> None:
        self._core = core
        self._ae_title = ae_title
        self._audit = audit

    def __call__(self, event: Event) -> Iterator[Answer]:
        """Yield a pending response per match, then the final status."""
        return logged_find("C-FIND", event, self._answers(event))

    def _answers(self, event: Event) -> Iterator[Answer]:
        model = str(event.request.AffectedSOPClassUID)
        level = ""
        try:
            identifier = event.identifier
            level = level_of(identifier, model in PATIENT_ROOT_MODELS, FIND_LEVELS)
            query = read_query(identifier, level, self._core)
            results = find_results(self._core, query)
            self._audit.searched(event.assoc, model, level, query.match, None)
            for found in results:
                make_way(event.assoc)
                if event.is_cancelled:
                    yield statuses.CANCEL, None
                    return
                yield statuses.PENDING, response(query, found, self._ae_title)
        except ServiceError as error:
            self._audit.searched(event.assoc, model, level, {}, error)
            yield failure(statuses.query_failure_status(error), error.message), None
            return
        except Exception as exc:  # an identifier (or a value in it) pydicom cannot decode
            log.warning("C-FIND from %s failed", describe_requester(event.assoc), exc_info=True)
            yield failure(statuses.CANNOT_UNDERSTAND, f"the query cannot be answered: {exc}"), None
            return
        yield statuses.SUCCESS, None
