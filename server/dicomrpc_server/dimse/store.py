"""C-STORE SCP (PS3.4 Annex B): each received instance stored through the store core.

The data set was written, as it arrived, to a reception of the store core (see
:mod:`.reception`), after the File Meta Information derived from the request: the Part 10 file
a gRPC or STOW-RS client would send. The handler hands it to a :class:`StoreRequest` of its
own, so it passes the same checks, gets the same outcome and the same change-feed entry; the
store core owns the file from then on, and removes it unless it stores it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import cast

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from dicomrpc_server.dimse import statuses
from dicomrpc_server.dimse.audit import DimseAudit
from dicomrpc_server.dimse.find import reply
from dicomrpc_server.dimse.loop import on_loop
from dicomrpc_server.dimse.reception import ArchiveDIMSE, ReceivedDataSet
from dicomrpc_server.store.ingest import InstanceResult, Reception, StoreCore
from dicomrpc_server.store.request import StoreRequest

log = logging.getLogger("dicomrpc.dimse")


class StoreHandler:
    """The EVT_C_STORE handler: runs on an association's thread, stores on the archive's loop.

    Parameters
    ----------
    core
        The store core.
    loop
        The archive's event loop: the store core's tasks, futures and index writer belong to
        it, so the work is handed over (``run_coroutine_threadsafe``), never run on a loop of
        this thread's own.
    audit
        The audit hook, told each instance's result.
    """

    def __init__(self, core: StoreCore, loop: asyncio.AbstractEventLoop, audit: DimseAudit) -> None:
        self._core = core
        self._loop = loop
        self._audit = audit

    def __call__(self, event: Event) -> Dataset:
        """Store the instance of one C-STORE request; answer its status."""
        started = time.monotonic()
        request = cast(C_STORE, event.request)
        sop_uid = str(request.AffectedSOPInstanceUID or "")
        data_set = request.DataSet
        dimse = event.assoc.dimse
        reception = None
        if isinstance(data_set, ReceivedDataSet) and isinstance(dimse, ArchiveDIMSE):
            reception = dimse.claim(data_set)
        if reception is None:
            failure = getattr(data_set, "failure", "") or "the request has no data set"
            return reply(event, "C-STORE", sop_uid, statuses.CANNOT_UNDERSTAND, failure, started)
        try:
            result = on_loop(self._loop, self.store(reception, sop_uid))
        except BaseException:
            # The archive is stopping (its loop closed before taking the store): the file goes
            # now. A store the loop began removes or commits it itself; this is then a no-op.
            reception.discard()
            raise
        self._audit.stored(event.assoc, result)
        message = ""
        if result.failure is not None:
            message = result.failure.message
        elif result.problems:
            message = result.problems[0].comment
        return reply(event, "C-STORE", sop_uid, statuses.store_status(result), message, started)

    async def store(self, reception: Reception, sop_uid: str) -> InstanceResult:
        """Store one received instance as a request of its own; return its result."""
        async with StoreRequest(self._core) as store:
            await store.add(reception, sop_uid)
            (result,) = await store.finish()
        return result
