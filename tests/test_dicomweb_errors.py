"""The HTTP status of every workitem error the core raises (PS3.18 §11), from the one mapping."""

from __future__ import annotations

import pytest

from dicomrpc_server.dicomweb.errors import http_status
from dicomrpc_server.errors import ServiceError
from dicomrpc_server.ups import states
from dicomrpc_server.ups.states import State, Status

UID, LOCK = "1.2.3", "1.2.3.9"


def _lock_error(given: str) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        states.check_lock(UID, State.IN_PROGRESS, LOCK, given)
    return caught.value


def _name(error: ServiceError) -> str:
    problem = error.metadata.get(states.TRANSACTION_UID_PROBLEM, "")
    return f"0x{error.dicom_status or 0:04X}" + (f" {problem}" if problem else "")


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (states.refusal(Status.MAY_NO_LONGER_BE_UPDATED, UID, State.COMPLETED), 409),
        (_lock_error(""), 400),
        (states.claim_needs_uid(UID), 400),
        (_lock_error("1.2.3.8"), 409),
        (states.refusal(Status.ALREADY_IN_PROGRESS, UID, State.IN_PROGRESS), 409),
        (states.refusal(Status.SCHEDULED_ONLY_BY_CREATE, UID, State.SCHEDULED), 409),
        (states.final_state_unmet(UID, State.COMPLETED, ["PerformedStationNameCodeSequence"]), 409),
        (states.not_found(UID), 404),
        (states.refusal(Status.NOT_IN_PROGRESS, UID, State.SCHEDULED), 409),
        (states.refusal(Status.ALREADY_COMPLETED, UID, State.COMPLETED), 409),
        (states.refusal(Status.PERFORMER_CHOOSES_NOT_TO_CANCEL, UID, State.IN_PROGRESS), 409),
        (states.already_exists(UID), 409),
    ],
    ids=lambda value: _name(value) if isinstance(value, ServiceError) else str(value),
)
def test_workitem_errors_map_to_the_spec_table(error: ServiceError, status: int) -> None:
    assert http_status(error) == status
