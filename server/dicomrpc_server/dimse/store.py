"""C-STORE SCP (PS3.4 Annex B): each received instance stored through the store core.

The data set arrives as the requester encoded it, in the transfer syntax of its presentation
context; with the File Meta Information pynetdicom derives from the request (the affected SOP
Class and Instance UIDs, the context's transfer syntax) it is the Part 10 file a gRPC or
STOW-RS client would send, and goes through the same :class:`StoreRequest`: the same checks,
the same outcome, the same change-feed entry. Nothing of the data set is decoded or copied
here: it is written to the store core a chunk at a time, as a gRPC stream's chunks are, so that
a large instance never holds the event loop for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import Sequence
from typing import cast

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.events import Event

from dicomrpc_server.dimse import statuses
from dicomrpc_server.dimse.audit import DimseAudit
from dicomrpc_server.dimse.find import reply
from dicomrpc_server.dimse.loop import on_loop
from dicomrpc_server.store.ingest import InstanceResult, StoreCore
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
        try:
            # What Event.encoded_dataset() joins into one copy: the preamble and file meta,
            # then the data set as received (PS3.10 §7.1).
            header = b"\x00" * 128 + b"DICM" + encode_file_meta(event.file_meta)
            received = cast(io.BytesIO, request.DataSet).getbuffer()
        except Exception as exc:  # a File Meta value pynetdicom cannot encode, say
            return reply(event, "C-STORE", sop_uid, statuses.CANNOT_UNDERSTAND, str(exc), started)
        try:
            stored = self.store([header, received], sop_uid)
            result = on_loop(self._loop, stored)
        finally:
            # pynetdicom may reuse the buffer once the view is gone; a view still held by a
            # traceback frees it when collected.
            with contextlib.suppress(BufferError):
                received.release()
        self._audit.stored(event.assoc, result)
        message = ""
        if result.failure is not None:
            message = result.failure.message
        elif result.problems:
            message = result.problems[0].comment
        return reply(event, "C-STORE", sop_uid, statuses.store_status(result), message, started)

    async def store(self, parts: Sequence[bytes | memoryview], sop_uid: str) -> InstanceResult:
        """Store one instance's Part 10 bytes as a request of its own; return its result."""
        chunk = self._core.settings.chunk_bytes
        async with StoreRequest(self._core) as store:
            await store.begin(sop_uid, sum(len(part) for part in parts))
            for part in parts:
                view = memoryview(part)
                for start in range(0, len(view), chunk):
                    store.write(view[start : start + chunk])
                    await asyncio.sleep(0)  # other calls are served between the chunks
            (result,) = await store.finish()
        return result
