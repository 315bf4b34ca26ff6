"""The one mapping from store outcomes and core errors to DIMSE statuses (dimse/statuses.py)."""

from __future__ import annotations

import pytest

from dicomrpc_server.dimse import statuses
from dicomrpc_server.errors import Code, ServiceError, invalid_argument
from dicomrpc_server.store.ingest import InstanceResult, Outcome


def _failed(code: Code, reason: str, dicom_status: int | None) -> InstanceResult:
    result = InstanceResult(0, "")
    result.failure = ServiceError(code, reason, "why", dicom_status=dicom_status)
    return result


def _stored(outcome: Outcome, warning: int = 0) -> InstanceResult:
    result = InstanceResult(0, "", outcome=outcome)
    result.warning_reason = warning
    return result


@pytest.mark.parametrize(
    ("result", "status"),
    [
        (_stored(Outcome.STORED), 0x0000),
        (_stored(Outcome.STORED_WITH_WARNINGS, 1), 0xB000),
        (_stored(Outcome.STORED_WITH_WARNINGS, 45063), 0xB007),
        (_failed(Code.RESOURCE_EXHAUSTED, "STORAGE_FULL", 0xA700), 0xA700),
        (_failed(Code.INVALID_ARGUMENT, "INSTANCE_TOO_LARGE", 272), 0xA700),
        (_failed(Code.INVALID_ARGUMENT, "INSTANCE_VALIDATION_FAILED", 43264), 0xA900),
        (_failed(Code.INVALID_ARGUMENT, "INSTANCE_UNPARSABLE", 272), 0xC000),
        (_failed(Code.INVALID_ARGUMENT, "NOT_PART10", None), 0xC000),
        (_failed(Code.ALREADY_EXISTS, "INSTANCE_EXISTS", 45070), 0x0111),
        (_failed(Code.ALREADY_EXISTS, "INSTANCE_STORE_CONFLICT", 45071), 0xA701),
        (_failed(Code.INVALID_ARGUMENT, "STORAGE_FAILURE", 272), 0x0110),
    ],
)
def test_store_statuses(result: InstanceResult, status: int) -> None:
    assert statuses.store_status(result) == status


def test_query_statuses() -> None:
    assert statuses.query_failure_status(invalid_argument("StudyDate", "bad")) == 0xA900
    busy = ServiceError(Code.FAILED_PRECONDITION, "TAG_REINDEXING", "later")
    assert statuses.query_failure_status(busy) == 0xA900
    exhausted = ServiceError(Code.RESOURCE_EXHAUSTED, "LIMIT_EXCEEDED", "too many")
    assert statuses.query_failure_status(exhausted) == 0xA700
    assert statuses.query_failure_status(ServiceError(Code.INTERNAL, "X", "y")) == 0xC000


def test_error_comments_are_one_short_printable_line() -> None:
    assert statuses.comment("a\nb\\c é") == "a b?c ?"
    long = statuses.comment("x" * 100)
    assert len(long) == 64 and long.endswith("...")


def _workitem_error(code: Code, dicom_status: int | None, reason: str = "WHY") -> ServiceError:
    return ServiceError(code, reason, "why", dicom_status=dicom_status)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        # The Annex CC statuses the core gives pass through, as gRPC and UPS-RS carry them.
        (_workitem_error(Code.FAILED_PRECONDITION, 0xC301), 0xC301),
        (_workitem_error(Code.FAILED_PRECONDITION, 0xC302), 0xC302),
        (_workitem_error(Code.FAILED_PRECONDITION, 0xC304), 0xC304),
        (_workitem_error(Code.NOT_FOUND, 0xC307), 0xC307),
        (_workitem_error(Code.INVALID_ARGUMENT, 0xC309), 0xC309),
        (_workitem_error(Code.FAILED_PRECONDITION, 0xC311), 0xC311),
        (_workitem_error(Code.ALREADY_EXISTS, 0x0111), 0x0111),
        (_workitem_error(Code.INVALID_ARGUMENT, 0x0120), 0x0120),
        (_workitem_error(Code.INVALID_ARGUMENT, 0x0106), 0x0106),
        (_workitem_error(Code.FAILED_PRECONDITION, 0xC308), 0xC308),
        # No DICOM status of its own: by the kind of error.
        (invalid_argument("workitem_uid", "is not a UID"), 0x0106),
        (_workitem_error(Code.RESOURCE_EXHAUSTED, 0xA700, "STORAGE_FULL"), 0x0213),
        (_workitem_error(Code.INTERNAL, None), 0x0110),
        # A store's status is no workitem status.
        (_workitem_error(Code.INVALID_ARGUMENT, 43264), 0x0106),
    ],
)
def test_workitem_statuses(error: ServiceError, status: int) -> None:
    assert statuses.workitem_status(error) == status


def test_an_invalid_action_argument_is_0115() -> None:
    error = invalid_argument("ReceivingAE", "is missing")
    assert statuses.workitem_status(error, statuses.INVALID_ARGUMENT_VALUE) == 0x0115
