"""What the archive sends on an association: stored files a PDU at a time, PDUs of bounded length.

pynetdicom sends a C-STORE's data set from a :class:`~pydicom.dataset.Dataset`, encoding it
whole into memory, then cutting it into PDUs of the peer's maximum length; a peer announcing no
maximum (0) gets the whole data set as one PDU. A C-GET or C-MOVE of a 128 MiB instance held
five times its size in the server. Here:

- an instance sent as it is stored goes as a :class:`StoredFile`, which the archive's
  associations hand to pynetdicom as the path of the stored file: pynetdicom then sends it from
  the file, reading one PDU's worth at a time (its ``STORE_SEND_CHUNKED_DATASET`` switch, set
  here), neither parsed nor encoded again;
- every message goes in PDUs of at most :data:`MAX_SENT_PDU_BYTES`, whatever the peer accepts
  (PS3.8 D.1: the maximum is the peer's limit, not a size to use);
- the thread sending a message waits while :data:`QUEUED_BYTES` of its PDUs wait for the DUL
  to send them (:func:`wait_for_room`): a peer slower than the disk does not make the server
  queue the instance.

A transcoded instance, and one of a store whose files are not local (S3), is still held whole
while it is sent, as the retrieve core produces it.
"""

from __future__ import annotations

import time
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID
from pynetdicom import _config
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA

from dicomrpc_server.storage.file_reader import FileRegion

# The longest PDU the archive sends, whatever longer length the peer accepts.
MAX_SENT_PDU_BYTES = 1 << 20
# The most bytes of PDUs queued for the DUL to send, about.
QUEUED_BYTES = 4 << 20
# How long a sender waits before it looks again whether the DUL has sent what was queued.
ROOM_WAIT_S = 0.0005

# pynetdicom sends a data set given as a file's path from the file, a PDU at a time, instead of
# reading and decoding it whole. Only a StoredFile is given as a path.
_config.STORE_SEND_CHUNKED_DATASET = True


class StoredFile(Dataset):
    """An instance to send as it is stored, from its file (see the module's docstring).

    A :class:`~pydicom.dataset.Dataset` to pynetdicom's retrieve service classes, which take
    nothing else: it holds what they read of an instance (its SOP Class and Instance UIDs) and
    its File Meta Information's transfer syntax; the archive's associations send its file.

    Parameters
    ----------
    region
        The stored file, open (a file deleted meanwhile is sent whole all the same).
    sop_class_uid, sop_instance_uid, transfer_syntax_uid
        The instance's, as its record holds them.
    """

    def __init__(
        self,
        region: FileRegion,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
    ) -> None:
        super().__init__()
        self.SOPClassUID = sop_class_uid
        self.SOPInstanceUID = sop_instance_uid
        self.file_meta = FileMetaDataset()
        self.file_meta.TransferSyntaxUID = UID(transfer_syntax_uid)
        self._region = region

    @property
    def path(self) -> Path:
        """A path that opens the file held open, whatever became of its name."""
        fd = self._region.reader.fd
        if fd is None:
            raise ValueError("the stored file was closed")
        return Path(f"/dev/fd/{fd}")

    def close(self) -> None:
        """Close the file (idempotent)."""
        self._region.reader.close()


def sendable(dataset: Dataset) -> Dataset | Path:
    """What to give pynetdicom's ``send_c_store`` for ``dataset``: a stored file's path."""
    return dataset.path if isinstance(dataset, StoredFile) else dataset


def release(dataset: Dataset) -> None:
    """Close the file of a StoredFile once it is sent, or will not be."""
    if isinstance(dataset, StoredFile):
        dataset.close()


class OutgoingDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, sending PDUs of at most :data:`MAX_SENT_PDU_BYTES`."""

    @property
    def maximum_pdu_size(self) -> int:
        """The length of the PDUs sent: the peer's maximum, within MAX_SENT_PDU_BYTES."""
        peer = int(super().maximum_pdu_size or 0)
        return min(peer, MAX_SENT_PDU_BYTES) if peer else MAX_SENT_PDU_BYTES


def wait_for_room(dul: DULServiceProvider, primitive: object) -> bool:
    """Before a P-DATA is queued, wait while the DUL has QUEUED_BYTES to send.

    Returns whether to queue it: not once the DUL has ended, since nothing would send it. Only
    a sender outpacing its peer waits, and then for the peer.
    """
    if not isinstance(primitive, P_DATA):
        return True
    queued = dul.to_provider_queue
    limit = max(4, QUEUED_BYTES // max(1, int(dul.assoc.dimse.maximum_pdu_size)))
    while queued.qsize() >= limit:
        if not dul.is_alive():
            return False
        time.sleep(ROOM_WAIT_S)
    return True
