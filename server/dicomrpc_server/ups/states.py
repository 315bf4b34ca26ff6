"""The UPS state machine of PS3.4 CC.1.1 and the Annex CC status codes, as tables.

Every (current state, requested state) pair, every state an update or a cancellation request
meets, maps to one :class:`Step`: refused with a status, claimed, finished, or already there
(a warning). The core looks the step up; no transition rule is written anywhere else.

The Transaction UID is the lock of an IN PROGRESS workitem. A missing and a wrong one both
fail with 0xC301; the ErrorInfo metadata ``transaction_uid_problem`` says which (``missing`` or
``wrong``), so that the DICOMweb gateway answers 400 for a missing one and 409 for a wrong one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from dicomrpc_server.errors import Code, FieldViolation, ServiceError

# The ErrorInfo metadata key of a 0xC301 that says whether the UID was missing or wrong.
TRANSACTION_UID_PROBLEM = "transaction_uid_problem"


class State(enum.Enum):
    """The states of a UPS, valued as ProcedureStepState (0074,1000) spells them."""

    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    CANCELED = "CANCELED"

    @property
    def final(self) -> bool:
        """Whether nothing can change the workitem any more."""
        return self in (State.COMPLETED, State.CANCELED)


class Status(enum.IntEnum):
    """The PS3.4 Annex CC status codes the core answers with."""

    MAY_NO_LONGER_BE_UPDATED = 0xC300
    TRANSACTION_UID_INCORRECT = 0xC301
    ALREADY_IN_PROGRESS = 0xC302
    SCHEDULED_ONLY_BY_CREATE = 0xC303
    FINAL_STATE_REQUIREMENTS_NOT_MET = 0xC304
    NO_SUCH_WORKITEM = 0xC307
    CREATE_STATE_NOT_SCHEDULED = 0xC309
    NOT_IN_PROGRESS = 0xC310
    ALREADY_COMPLETED = 0xC311
    PERFORMER_CHOOSES_NOT_TO_CANCEL = 0xC313
    DUPLICATE_WORKITEM = 0x0111
    CREATED_WITH_MODIFICATIONS = 0xB300
    ALREADY_CANCELED_WARNING = 0xB304
    ALREADY_COMPLETED_WARNING = 0xB306


_MEANINGS: dict[Status, str] = {
    Status.MAY_NO_LONGER_BE_UPDATED: "is {state} and may no longer be updated",
    Status.ALREADY_IN_PROGRESS: "is already IN PROGRESS",
    Status.SCHEDULED_ONLY_BY_CREATE: "may only become SCHEDULED when it is created",
    Status.NOT_IN_PROGRESS: "is not IN PROGRESS yet (it is {state})",
    Status.ALREADY_COMPLETED: "is already COMPLETED",
    Status.PERFORMER_CHOOSES_NOT_TO_CANCEL: "is not canceled: its performer chose not to",
    Status.ALREADY_CANCELED_WARNING: "is already CANCELED",
    Status.ALREADY_COMPLETED_WARNING: "is already COMPLETED",
}


class Kind(enum.Enum):
    """What a step does."""

    REFUSE = "refuse"
    """Fail with the step's status, whatever the Transaction UID."""
    CLAIM = "claim"
    """Needs a new Transaction UID, which becomes the lock."""
    LOCKED = "locked"
    """Needs the workitem's Transaction UID."""
    FREE = "free"
    """Needs no Transaction UID."""
    ALREADY = "already"
    """Nothing changes: answer the step's warning status."""


@dataclass(frozen=True)
class Step:
    """The outcome the tables give an operation: its kind and status (refusal or warning)."""

    kind: Kind
    status: Status | None = None


def _refuse(status: Status) -> Step:
    return Step(Kind.REFUSE, status)


S, IP, C, X = State.SCHEDULED, State.IN_PROGRESS, State.COMPLETED, State.CANCELED

# ChangeWorkitemState: (current, requested) -> step. Finishing (LOCKED) also checks the
# final-state requirements of the requested state (0xC304).
TRANSITIONS: dict[tuple[State, State], Step] = {
    (S, S): _refuse(Status.SCHEDULED_ONLY_BY_CREATE),
    (S, IP): Step(Kind.CLAIM),
    (S, C): _refuse(Status.NOT_IN_PROGRESS),
    (S, X): _refuse(Status.NOT_IN_PROGRESS),
    (IP, S): _refuse(Status.SCHEDULED_ONLY_BY_CREATE),
    (IP, IP): _refuse(Status.ALREADY_IN_PROGRESS),
    (IP, C): Step(Kind.LOCKED),
    (IP, X): Step(Kind.LOCKED),
    (C, S): _refuse(Status.SCHEDULED_ONLY_BY_CREATE),
    (C, IP): _refuse(Status.MAY_NO_LONGER_BE_UPDATED),
    (C, C): Step(Kind.ALREADY, Status.ALREADY_COMPLETED_WARNING),
    (C, X): _refuse(Status.ALREADY_COMPLETED),
    (X, S): _refuse(Status.SCHEDULED_ONLY_BY_CREATE),
    (X, IP): _refuse(Status.MAY_NO_LONGER_BE_UPDATED),
    (X, C): _refuse(Status.MAY_NO_LONGER_BE_UPDATED),
    (X, X): Step(Kind.ALREADY, Status.ALREADY_CANCELED_WARNING),
}

# UpdateWorkitem: current state -> step.
UPDATES: dict[State, Step] = {
    S: Step(Kind.FREE),
    IP: Step(Kind.LOCKED),
    C: _refuse(Status.MAY_NO_LONGER_BE_UPDATED),
    X: _refuse(Status.MAY_NO_LONGER_BE_UPDATED),
}

# RequestWorkitemCancellation: current state -> step. FREE cancels a SCHEDULED workitem at
# once; LOCKED records the request for the performer of an IN PROGRESS one (who decides).
CANCEL_REQUESTS: dict[State, Step] = {
    S: Step(Kind.FREE),
    IP: Step(Kind.LOCKED),
    C: _refuse(Status.ALREADY_COMPLETED),
    X: Step(Kind.ALREADY, Status.ALREADY_CANCELED_WARNING),
}


def meaning(status: Status, state: State) -> str:
    """The sentence describing ``status`` for a workitem in ``state``."""
    return _MEANINGS[status].format(state=state.value)


def refusal(status: Status, uid: str, state: State) -> ServiceError:
    """The error of a step the tables refuse."""
    return ServiceError(
        Code.FAILED_PRECONDITION,
        "WORKITEM_STATE_CONFLICT",
        f"workitem {uid} {meaning(status, state)} (0x{status:04X})",
        dicom_status=int(status),
        metadata={"workitem_uid": uid, "state": state.value},
    )


def check_lock(uid: str, state: State, lock: str, given: str) -> None:
    """Raise 0xC301 unless ``given`` is the workitem's Transaction UID ``lock``."""
    if given == lock and lock:
        return
    problem = "missing" if not given else "wrong"
    raise ServiceError(
        Code.FAILED_PRECONDITION,
        "WORKITEM_TRANSACTION_UID_INVALID",
        f"workitem {uid} is {state.value}: the Transaction UID is {problem} (0xC301)",
        dicom_status=int(Status.TRANSACTION_UID_INCORRECT),
        metadata={"workitem_uid": uid, "state": state.value, TRANSACTION_UID_PROBLEM: problem},
    )


def claim_needs_uid(uid: str) -> ServiceError:
    """The 0xC301 error of a claim that brings no Transaction UID."""
    return ServiceError(
        Code.FAILED_PRECONDITION,
        "WORKITEM_TRANSACTION_UID_INVALID",
        f"claiming workitem {uid} needs a new Transaction UID, which becomes its lock (0xC301)",
        dicom_status=int(Status.TRANSACTION_UID_INCORRECT),
        metadata={
            "workitem_uid": uid,
            "state": State.SCHEDULED.value,
            TRANSACTION_UID_PROBLEM: "missing",
        },
    )


def not_found(uid: str) -> ServiceError:
    """The 0xC307 error of a workitem that does not exist."""
    return ServiceError(
        Code.NOT_FOUND,
        "RESOURCE_NOT_FOUND",
        f"workitem {uid} does not exist (0xC307)",
        dicom_status=int(Status.NO_SUCH_WORKITEM),
        metadata={"workitem_uid": uid},
    )


def already_exists(uid: str) -> ServiceError:
    """The 0x0111 error of a create whose UID is taken."""
    return ServiceError(
        Code.ALREADY_EXISTS,
        "WORKITEM_ALREADY_EXISTS",
        f"a workitem with UID {uid} already exists (0x0111)",
        dicom_status=int(Status.DUPLICATE_WORKITEM),
        metadata={"workitem_uid": uid},
    )


def final_state_unmet(uid: str, target: State, missing: list[str]) -> ServiceError:
    """The 0xC304 error of a finish whose final-state requirements do not hold."""
    names = ", ".join(missing)
    return ServiceError(
        Code.FAILED_PRECONDITION,
        "WORKITEM_STATE_CONFLICT",
        f"workitem {uid} cannot become {target.value}: it lacks {names} (0xC304)",
        dicom_status=int(Status.FINAL_STATE_REQUIREMENTS_NOT_MET),
        metadata={"workitem_uid": uid, "state": State.IN_PROGRESS.value, "missing": names},
        violations=tuple(
            FieldViolation(name, f"is required to become {target.value}") for name in missing
        ),
    )
