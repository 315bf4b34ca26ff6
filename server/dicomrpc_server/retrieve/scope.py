"""What a retrieve names: a study, a series or an instance, resolved against the index.

Every retrieve (instances, frames, rendered, metadata, bulk data) resolves through here, so
here the UIDs a request names are checked (:mod:`dicomrpc_server.dicom.uids`) before any
reaches the index, on every adapter.
"""

from __future__ import annotations

from dataclasses import dataclass

from dicomrpc_server.dicom.uids import check_request_uid
from dicomrpc_server.errors import Code, ServiceError, invalid_argument
from dicomrpc_server.storage import records_pb2
from dicomrpc_server.storage.protocols import InstanceReads


@dataclass(frozen=True)
class StoredInstance:
    """One stored instance: its UIDs and its index record."""

    study_uid: str
    series_uid: str
    sop_uid: str
    record: records_pb2.InstanceRecord


def not_found(what: str, **uids: str) -> ServiceError:
    """The NOT_FOUND error of a study, series, instance or frame that is not stored."""
    return ServiceError(
        Code.NOT_FOUND, "RESOURCE_NOT_FOUND", f"{what} is not stored", metadata=uids
    )


def check_scope(study: str, series: str = "", sop: str = "") -> None:
    """Refuse a study, series or instance a request cannot name, naming the field at fault.

    The fields are named as the API names them; the DICOMweb gateway checks its own path
    parameters, under their own names, before a request gets here.
    """
    if not study:
        raise invalid_argument("study_instance_uid", "is required")
    if sop and not series:
        raise invalid_argument("series_instance_uid", "is required with sop_instance_uid")
    check_request_uid("study_instance_uid", study)
    check_request_uid("series_instance_uid", series)
    check_request_uid("sop_instance_uid", sop)


def resolve(
    index: InstanceReads, study: str, series: str = "", sop: str = ""
) -> list[StoredInstance]:
    """The stored instances a request names, in key order; NOT_FOUND when there are none."""
    check_scope(study, series, sop)
    if sop:
        record = index.get_instance(study, series, sop)
        if record is None:
            raise not_found(
                f"instance {sop} of series {series} in study {study}",
                study_instance_uid=study,
                series_instance_uid=series,
                sop_instance_uid=sop,
            )
        return [StoredInstance(study, series, sop, record)]
    found = [
        StoredInstance(st, se, so, record)
        for st, se, so, record in index.list_instances(study, series or None)
    ]
    if not found:
        if series:
            raise not_found(
                f"series {series} in study {study}",
                study_instance_uid=study,
                series_instance_uid=series,
            )
        raise not_found(f"study {study}", study_instance_uid=study)
    return found
