"""What C-GET and C-MOVE share: the instances an identifier names, in syntaxes received.

The instances are those of PS3.4 C.4.2.1.4 and C.4.3.1.3; each goes as a data set in a syntax
the receiving association accepted.

The retrieve core resolves what the identifier names and reads each instance as stored.
An instance goes out in its stored transfer syntax when the receiver accepted a storage
context for its SOP class in that syntax; otherwise the retrieve core transcodes it to one
the receiver did accept (explicit little endian first), never to a lossy one. An instance no
accepted context can carry is a failed sub-operation, listed in the Failed SOP Instance UID
List of the final response, like one the receiver refuses.
"""

from __future__ import annotations

import asyncio
import io
import logging
import warnings
from collections.abc import Iterator

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pynetdicom.association import Association

from dicomrpc_server.dimse import statuses
from dicomrpc_server.dimse.identifiers import PATIENT_ID, match_value, search_pages
from dicomrpc_server.dimse.loop import on_loop
from dicomrpc_server.dimse.outgoing import StoredFile, release
from dicomrpc_server.dimse.requesters import describe_peer
from dicomrpc_server.errors import Code, ServiceError, invalid_argument
from dicomrpc_server.query.engine import SearchCore, uid_list
from dicomrpc_server.retrieve.capabilities import check_transcodable
from dicomrpc_server.retrieve.scope import StoredInstance
from dicomrpc_server.retrieve.service import RetrieveCore
from dicomrpc_server.retrieve.syntaxes import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN

log = logging.getLogger("dicomrpc.dimse")

RETRIEVE_LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
# The transcoding targets preferred when the stored syntax was not accepted.
_PREFERRED = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
# Number of ... Sub-operations are US (PS3.7 Table 9.3-4): a retrieve sends at most this many.
MAX_SUBOPERATIONS = 65535

_TAGS = {
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
    "SOPInstanceUID": 0x00080018,
}


def _uids(identifier: Dataset, keyword: str) -> list[str]:
    element = identifier.get(_TAGS[keyword])
    return uid_list(match_value(element)) if isinstance(element, DataElement) else []


def _single(uids: list[str], keyword: str) -> str:
    if len(uids) > 1:
        raise invalid_argument(keyword, "names more than one UID above the retrieve level")
    return uids[0] if uids else ""


def target_syntax(stored: str, accepted: list[str]) -> str | None:
    """The syntax to send a stored instance in: "" as stored, a lossless target, or None."""
    if stored in accepted:
        return ""
    ordered = [s for s in _PREFERRED if s in accepted] + [
        s for s in accepted if s not in _PREFERRED
    ]
    for candidate in ordered:
        try:
            check_transcodable(stored, candidate, allow_lossy=False)
        except ServiceError:
            continue
        return candidate
    return None


def accepted_syntaxes(assoc: Association, sop_class: str) -> list[str]:
    """The transfer syntaxes the receiver accepted for storing ``sop_class`` to it."""
    return [
        str(cx.transfer_syntax[0])
        for cx in assoc.accepted_contexts
        if cx.abstract_syntax == sop_class and cx.as_scu
    ]


class InstanceSource:
    """Resolves retrieve identifiers and reads the instances to send.

    Parameters
    ----------
    core
        The retrieve core.
    search
        The search core (a PATIENT level retrieve names the patient's studies by Patient ID).
    loop
        The archive's event loop, which reads and transcodes.
    """

    def __init__(
        self, core: RetrieveCore, search: SearchCore, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._core = core
        self._search = search
        self._loop = loop

    def resolve(self, identifier: Dataset, level: str) -> list[StoredInstance]:
        """The stored instances an identifier names (PS3.4 C.4.2.1.4), in key order."""
        studies = _uids(identifier, "StudyInstanceUID")
        if level == "PATIENT":
            patient = identifier.get(PATIENT_ID)
            patient_id = match_value(patient) if patient is not None else ""
            if not patient_id or "*" in patient_id or "?" in patient_id:
                raise invalid_argument("PatientID", "a PATIENT level retrieve names one patient")
            studies = [
                str(ds.StudyInstanceUID)
                for ds in search_pages(self._search, "study", {"00100020": patient_id})
            ]
            return self._each(studies, [""], [""])
        if level == "STUDY":
            return self._each(studies, [""], [""])
        study = _single(studies, "StudyInstanceUID")
        series = _uids(identifier, "SeriesInstanceUID")
        if level == "SERIES":
            return self._each([study], series, [""])
        found: list[StoredInstance] = []
        for sop in _uids(identifier, "SOPInstanceUID"):
            series_uid = _single(series, "SeriesInstanceUID")
            study_uid = study
            if not series_uid or not study_uid:
                where = self._core.locate(sop)
                if where is None:
                    continue
                study_uid, series_uid = study_uid or where[0], series_uid or where[1]
            found.extend(self._each([study_uid], [series_uid], [sop]))
        return found

    def _each(self, studies: list[str], series: list[str], sops: list[str]) -> list[StoredInstance]:
        if not studies or not series:
            raise invalid_argument("Identifier", "names no UID at the retrieve level")
        found: list[StoredInstance] = []
        for study in studies:
            for one_series in series:
                for sop in sops:
                    try:
                        found.extend(self._core.instances(study, one_series, sop))
                    except ServiceError as error:
                        if error.code is not Code.NOT_FOUND:
                            raise
        return found

    def dataset(self, assoc: Association, instance: StoredInstance) -> Dataset:
        """The instance as pynetdicom sends it, in a syntax the receiver accepted.

        One sent as stored from a local file is a :class:`~.outgoing.StoredFile`, to be passed
        to :func:`~.outgoing.release` once it is sent (:meth:`pending` does). One that no
        accepted context can carry is returned without File Meta Information: pynetdicom then
        finds no context to send it on, and counts it as a failed sub-operation listed by its
        SOP Instance UID.
        """
        record = instance.record
        accepted = accepted_syntaxes(assoc, record.sop_class_uid)
        target = target_syntax(record.transfer_syntax_uid, accepted)
        if target is None:
            log.warning(
                "instance %s (%s) cannot go in any syntax %s accepted (%s)",
                instance.sop_uid,
                record.transfer_syntax_uid,
                describe_peer(assoc),
                ", ".join(accepted) or "none for its SOP class",
            )
            return self.unsendable(instance)
        try:
            if not target:
                region = self._core.file_region(instance, record.transfer_syntax_uid)
                if region is not None:  # a local file: sent from it, a PDU at a time
                    return StoredFile(
                        region, record.sop_class_uid, instance.sop_uid, record.transfer_syntax_uid
                    )
            data = on_loop(self._loop, self._read(instance, target))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom's remarks on values as stored
                return dcmread(io.BytesIO(data))
        except Exception as exc:
            log.warning("instance %s could not be read: %s", instance.sop_uid, exc)
            return self.unsendable(instance)

    def pending(
        self, assoc: Association, instance: StoredInstance
    ) -> Iterator[tuple[int, Dataset]]:
        """The pending answer that has pynetdicom send ``instance`` (see :meth:`dataset`).

        A generator, so that the instance's stored file, held open for the send, is closed when
        pynetdicom asks for the next answer, or when it stops asking.
        """
        dataset = self.dataset(assoc, instance)
        try:
            yield statuses.PENDING, dataset
        finally:  # sent by now, or never to be
            release(dataset)

    @staticmethod
    def unsendable(instance: StoredInstance) -> Dataset:
        """An instance pynetdicom counts as a failed sub-operation: it has no syntax to go in."""
        ds = Dataset()
        ds.SOPClassUID = instance.record.sop_class_uid
        ds.SOPInstanceUID = instance.sop_uid
        return ds

    async def _read(self, instance: StoredInstance, target: str) -> bytes:
        outgoing = await self._core.outgoing(instance, target, False, self._core.chunk_bytes)
        return b"".join([chunk async for chunk in outgoing.chunks])
