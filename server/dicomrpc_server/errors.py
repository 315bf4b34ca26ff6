"""The one exception family the core raises, translated once by each adapter.

The core knows nothing of gRPC or HTTP: it raises :class:`ServiceError` with a canonical
:class:`Code` (named as gRPC names them, the vocabulary both adapters map from), a stable
reason (an ``ErrorReason`` name of the API), a message, the DICOM status code where the
standard has one, and the request fields at fault.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class Code(enum.Enum):
    """Canonical error codes, as gRPC defines them."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAVAILABLE = "UNAVAILABLE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"


@dataclass(frozen=True)
class FieldViolation:
    """One bad request field: which, and why."""

    field: str
    description: str


@dataclass
class ServiceError(Exception):
    """A failure the core reports to a caller.

    Parameters
    ----------
    code
        The canonical code.
    reason
        A stable UPPER_SNAKE name from the API's ``ErrorReason`` enum.
    message
        A sentence for people, naming the values at fault.
    dicom_status
        The DICOM status or reason code, when the standard defines one.
    metadata
        Every dynamic value of the message, for machines.
    violations
        The request fields at fault, for INVALID_ARGUMENT.
    """

    code: Code
    reason: str
    message: str
    dicom_status: int | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    violations: tuple[FieldViolation, ...] = ()

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[type[ServiceError], tuple[object, ...]]:
        # Errors cross process boundaries (parsing runs in worker processes): rebuild them as
        # the base class with every field, whatever the subclass's constructor takes.
        return (
            ServiceError,
            (
                self.code,
                self.reason,
                self.message,
                self.dicom_status,
                dict(self.metadata),
                self.violations,
            ),
        )


def invalid_argument(field_name: str, description: str) -> ServiceError:
    """Build the error of a request field that is invalid."""
    return ServiceError(
        Code.INVALID_ARGUMENT,
        "INVALID_REQUEST",
        f"{field_name}: {description}",
        violations=(FieldViolation(field_name, description),),
        metadata={"field": field_name},
    )


def limit_exceeded(
    limit: str,
    value: object,
    message: str,
    code: Code = Code.RESOURCE_EXHAUSTED,
    **details: str,
) -> ServiceError:
    """Build the error of a request beyond a configured limit.

    ``limit`` is the name of the setting (``Settings`` field) and ``value`` its value: both go
    in the metadata, with ``details``, so a client can tell which limit it met without parsing
    the message.
    """
    metadata = {"limit": limit, "value": str(value), **details}
    return ServiceError(code, "LIMIT_EXCEEDED", message, metadata=metadata)


class StartupError(Exception):
    """The archive cannot be opened or served: the message says what was found and what to do.

    Raised at start-up only (a data folder in use, an index missing or behind its files, a port
    taken); ``dicomrpc serve`` prints the message and exits without serving.

    Parameters
    ----------
    reason
        A stable UPPER_SNAKE name: ``DATA_FOLDER_IN_USE``, ``INDEX_MISSING``,
        ``UNINDEXED_FILES``, ``REBUILD_UNFINISHED``, ``PORT_IN_USE``, ``PORT_UNAVAILABLE``,
        ``PLAINTEXT_REFUSED``, ``ACCESS_SETTINGS_INVALID``, ``INDEX_UNAVAILABLE`` (the
        PostgreSQL index cannot be reached), ``INDEX_SCHEMA_NEWER`` (a newer release
        migrated it), ``INDEX_CHANGED`` (a data folder served with another index than its own)
        or ``BLOB_STORE_REQUIRED`` (a PostgreSQL index without a shared blob store).
    message
        Sentences for the operator, naming the folder, file counts or port at fault.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
