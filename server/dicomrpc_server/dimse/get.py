"""C-GET SCP (PS3.4 C.4.3): the instances an identifier names, sent back on the association.

The retrieve core resolves what the identifier names and reads each instance as stored.
An instance goes out in its stored transfer syntax when the requester accepted a storage
context for its SOP class in that syntax; otherwise the retrieve core transcodes it to one
the requester did accept (explicit little endian first), never to a lossy one. An instance
no accepted context can carry is a failed sub-operation, listed in the Failed SOP Instance
UID List of the final response, like one the requester refuses.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
import warnings
from collections.abc import Iterator

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pynetdicom.association import Association
from pynetdicom.events import Event

from dicomrpc_server.dimse import statuses
from dicomrpc_server.dimse.contexts import PATIENT_ROOT_MODELS
from dicomrpc_server.dimse.find import Answer, failure
from dicomrpc_server.dimse.identifiers import PATIENT_ID, level_of, match_value, search_pages
from dicomrpc_server.dimse.requesters import describe_requester
from dicomrpc_server.errors import Code, ServiceError, invalid_argument
from dicomrpc_server.query.engine import SearchCore, uid_list
from dicomrpc_server.retrieve.scope import StoredInstance
from dicomrpc_server.retrieve.service import RetrieveCore
from dicomrpc_server.retrieve.transcode import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    check_transcodable,
)

log = logging.getLogger("dicomrpc.dimse")

GET_LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
# The transcoding targets preferred when the stored syntax was not accepted.
_PREFERRED = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
# Number of ... Sub-operations are US (PS3.7 Table 9.3-4): a C-GET sends at most this many.
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
    """The transfer syntaxes the requester accepted for storing ``sop_class`` to it."""
    return [
        str(cx.transfer_syntax[0])
        for cx in assoc.accepted_contexts
        if cx.abstract_syntax == sop_class and cx.as_scu
    ]


class GetHandler:
    """The EVT_C_GET handler.

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
        except Exception as exc:  # an identifier pydicom cannot decode
            yield 1
            yield failure(statuses.CANNOT_UNDERSTAND, f"the identifier cannot be read: {exc}"), None
            return
        try:
            level = level_of(identifier, model in PATIENT_ROOT_MODELS, GET_LEVELS)
            found = self._resolve(identifier, level)
        except ServiceError as error:
            yield 1
            yield failure(statuses.query_failure_status(error), error.message), None
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
        yield len(found)
        for instance in found:
            if event.is_cancelled:
                yield statuses.CANCEL, None
                return
            yield statuses.PENDING, self._dataset(event.assoc, instance)

    def _resolve(self, identifier: Dataset, level: str) -> list[StoredInstance]:
        """The stored instances an identifier names (PS3.4 C.4.3.1.3.1), in key order."""
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
        sops = _uids(identifier, "SOPInstanceUID")
        found: list[StoredInstance] = []
        for sop in sops:
            series_uid = _single(series, "SeriesInstanceUID")
            study_uid = study
            if not series_uid or not study_uid:
                where = self._core.index.locate_sop(sop)
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

    def _dataset(self, assoc: Association, instance: StoredInstance) -> Dataset:
        """The instance as pynetdicom sends it, in a syntax the requester accepted.

        One that no accepted context can carry is returned without File Meta Information:
        pynetdicom then finds no context to send it on, and counts it as a failed
        sub-operation listed by its SOP Instance UID.
        """
        record = instance.record
        accepted = accepted_syntaxes(assoc, record.sop_class_uid)
        target = target_syntax(record.transfer_syntax_uid, accepted)
        if target is None:
            log.warning(
                "C-GET: instance %s (%s) cannot go in any syntax %s accepted (%s)",
                instance.sop_uid,
                record.transfer_syntax_uid,
                describe_requester(assoc),
                ", ".join(accepted) or "none for its SOP class",
            )
            return _unsendable(instance)
        try:
            data = asyncio.run_coroutine_threadsafe(
                self._read(instance, target), self._loop
            ).result()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom's remarks on values as stored
                return dcmread(io.BytesIO(data))
        except Exception as exc:
            log.warning("C-GET: instance %s could not be read: %s", instance.sop_uid, exc)
            return _unsendable(instance)

    async def _read(self, instance: StoredInstance, target: str) -> bytes:
        outgoing = await self._core.outgoing(instance, target, False, self._core.chunk_bytes)
        return b"".join([chunk async for chunk in outgoing.chunks])


def _unsendable(instance: StoredInstance) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = instance.record.sop_class_uid
    ds.SOPInstanceUID = instance.sop_uid
    return ds
