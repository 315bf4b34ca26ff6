"""C-STORE data sets written to the store core's upload files as they arrive, never held whole.

pynetdicom assembles a message's data set in memory before any handler sees it: a 4 GiB
instance would be held whole by the server, and one over the archive's size limit too, before
being refused. Here, as each fragment of a C-STORE-RQ's data set arrives on the association's
DUL thread, it goes to a :class:`~dicomrpc_server.store.ingest.Reception` of the store core,
after the File Meta Information derived from the request (the affected SOP Class and Instance
UIDs and the presentation context's transfer syntax, PS3.10 7.1, as pynetdicom derives it):
the file is the Part 10 file a gRPC or STOW-RS client would have sent, written as it comes,
and the size limit and a disk that fills up apply while it comes. The C-STORE handler then
hands the reception to the store core, which checks, persists and indexes it.

A reception that no handler takes (a message pynetdicom refuses, an association aborted
mid-message) is discarded when its message has been served or its association ends, so no
file or descriptor outlives the association.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from pynetdicom.pdu_primitives import P_DATA

from dicomrpc_server.dimse.decoding import INVALID_PDU
from dicomrpc_server.dimse.outgoing import OutgoingDIMSE
from dicomrpc_server.dimse.requesters import describe_association
from dicomrpc_server.store.ingest import Reception

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

log = logging.getLogger("dicomrpc.dimse")

# What precedes the File Meta Information in a Part 10 file (PS3.10 7.1).
PREAMBLE_AND_PREFIX = b"\x00" * 128 + b"DICM"


class ReceivedDataSet(io.BytesIO):
    """A C-STORE request's data set, going to its reception instead of to memory.

    To pynetdicom it is the ``BytesIO`` its primitives require; it holds no bytes itself.

    Parameters
    ----------
    reception
        Where the bytes go; none when the data set cannot be stored at all.
    failure
        Why it cannot (its File Meta Information cannot be derived), for the C-STORE response.
    """

    def __init__(self, reception: Reception | None, failure: str = "") -> None:
        super().__init__()
        self.reception = reception
        self.failure = failure

    def write(self, data: ReadableBuffer) -> int:
        """Append a fragment of the data set to the reception (dropped without one)."""
        view = memoryview(data)
        if self.reception is not None:
            self.reception.write(view)
        return len(view)


class ArchiveDIMSE(OutgoingDIMSE):
    """pynetdicom's DIMSE provider, writing C-STORE data sets to receptions of the store core.

    It sends as :mod:`.outgoing` says.

    Parameters
    ----------
    assoc
        The association.
    receive
        Starts a reception (the store core's :meth:`~dicomrpc_server.store.ingest.StoreCore.
        receive`); none where data sets are not taken (an association the archive requests).
    """

    def __init__(self, assoc: Any, receive: Callable[[], Reception] | None) -> None:
        super().__init__(assoc)
        self._receive = receive
        # The data sets being received, or received and not claimed by a handler: the
        # association discards them when their message is served or when it ends.
        self._unclaimed: list[ReceivedDataSet] = []
        self._lock = threading.Lock()

    def receive_primitive(self, primitive: P_DATA) -> None:
        """Decode a P-DATA, one presentation data value at a time.

        One at a time, so that the fragment ending a C-STORE-RQ's command set is decoded
        before the first of its data set, which then goes to the reception. A message that
        cannot be decoded (a command set without its Command Field, say) is refused as
        pynetdicom refuses the failures it expects (Evt19: A-ABORT, PS3.8 Table 9-10), where
        it would raise in the DUL thread and leave the requester unanswered.
        """
        values = primitive.presentation_data_value_list
        try:
            if len(values) == 1:
                self._receive_value(primitive)
                return
            for value in values:
                single = P_DATA()
                single.presentation_data_value_list.append(value)
                self._receive_value(single)
        except Exception as exc:  # any decoding failure: the message is refused, not the DUL
            self.message = None
            log.warning(
                "association %s aborted: a DIMSE message that cannot be decoded (%s: %s)",
                describe_association(self.assoc),
                type(exc).__name__,
                exc,
            )
            self.dul.event_queue.put(INVALID_PDU)

    def _receive_value(self, primitive: P_DATA) -> None:
        super().receive_primitive(primitive)
        message = self.message
        if isinstance(message, C_STORE_RQ) and not isinstance(message.data_set, ReceivedDataSet):
            # The command set is whole and announces a data set: it comes next.
            message.data_set = self._start(message)

    def _start(self, message: C_STORE_RQ) -> ReceivedDataSet:
        if self._receive is None:
            return ReceivedDataSet(None, "this association takes no data sets")
        command = message.command_set
        try:
            context = self.assoc._accepted_cx[cast(int, message.context_id)]
            meta = create_file_meta(
                sop_class_uid=command.AffectedSOPClassUID,
                sop_instance_uid=command.AffectedSOPInstanceUID,
                transfer_syntax=context.transfer_syntax[0],
            )
            header = PREAMBLE_AND_PREFIX + encode_file_meta(meta)
        except Exception as exc:  # a UID pydicom cannot encode, say: the handler answers it
            return ReceivedDataSet(None, f"no File Meta Information for the data set: {exc}")
        data_set = ReceivedDataSet(self._receive())
        with self._lock:
            self._unclaimed.append(data_set)
        data_set.write(header)
        return data_set

    def claim(self, data_set: ReceivedDataSet) -> Reception | None:
        """Take ``data_set``'s reception: the caller removes or stores it from now on.

        None when it has none, or it was claimed or discarded already.
        """
        with self._lock:
            if data_set not in self._unclaimed:
                return None
            self._unclaimed.remove(data_set)
        return data_set.reception

    def served(self, data_set: ReceivedDataSet) -> None:
        """The message of ``data_set`` was served: its reception, if no handler took it, goes."""
        reception = self.claim(data_set)
        if reception is not None:
            reception.discard()

    def discard_all(self) -> None:
        """The association ended: every reception no handler took goes."""
        with self._lock:
            unclaimed, self._unclaimed = self._unclaimed, []
        for data_set in unclaimed:
            if data_set.reception is not None:
                data_set.reception.discard()
