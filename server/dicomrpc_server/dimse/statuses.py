"""The one mapping from core outcomes and errors to DIMSE statuses (PS3.7 Annex C, PS3.4).

C-STORE (PS3.4 Table B.2-1):

========================================  ===================================================
Core outcome                              DIMSE status
========================================  ===================================================
stored                                    0x0000 Success
stored with warnings (attributes)         0xB000 Coercion of data elements
stored, data set does not match SOP       0xB007 Data set does not match SOP Class (warning)
class (45063)
no space left (0xA700), instance over     0xA700 Refused: out of resources
the size limit
invalid or missing required attribute     0xA900 Error: data set does not match SOP Class
(43264)
unparsable, truncated (272)               0xC000 Error: cannot understand
already stored (45070)                    0x0111 Duplicate SOP Instance (PS3.7 C.5.8)
being stored by another association       0xA701 Refused: out of resources, a transient
(45071)                                   refusal: sending it again later succeeds or meets
                                          0x0111
a file or index write failed              0x0110 Processing failure
========================================  ===================================================

C-FIND and C-GET (PS3.4 C.4.1.1.4, C.4.3.1.4): a request the search core refuses as invalid
is 0xA900 (identifier does not match SOP Class); one that fails otherwise 0xC000 (unable to
process).

Storage commitment (PS3.4 Annex J): the N-ACTION's statuses are those PS3.7 §10.1.4.1.10
lists for N-ACTION (a missing or malformed argument is 0x0115, Invalid argument value: the
list has no Missing Attribute); each failed instance of the N-EVENT-REPORT carries a Failure
Reason of PS3.4 J.3.3 (0x0112, 0x0119, 0x0122).

The UPS and Modality Worklist C-FIND (PS3.4 CC.2.8, K.4.1.1.4) answer as C-FIND does above.
UPS N-CREATE, N-SET, N-GET and N-ACTION (PS3.4 CC.2.1 to CC.2.7, PS3.7 Annex C) answer the
workitem core's outcome, exactly the status the gRPC API puts in its ErrorInfo
``dicom_status`` and UPS-RS in its body (:func:`workitem_status`):

========================================  ===================================================
Core outcome                              DIMSE status
========================================  ===================================================
done                                      0x0000 Success
done with a warning (created with         the warning: 0xB300, 0xB304, 0xB306
modifications, already CANCELED or
COMPLETED)
a state rule refuses it                   its Annex CC status: 0xC300 may no longer be
                                          updated, 0xC301 Transaction UID missing or wrong,
                                          0xC302 already IN PROGRESS, 0xC303, 0xC304 final
                                          state requirements, 0xC307 no such workitem,
                                          0xC309 created other than SCHEDULED, 0xC310 not IN
                                          PROGRESS, 0xC311 already COMPLETED
UID taken by another workitem             0x0111 Duplicate SOP Instance
a required attribute missing              0x0120 Missing Attribute
an attribute invalid or not allowed       0x0106 Invalid Attribute Value
a subscriber that is not a known peer     0xC308 Receiving AE-TITLE unknown
another invalid request (an action's      0x0115 Invalid Argument Value (N-ACTION) or 0x0106
argument, a UID no request may name)
out of space or another limit             0x0213 Resource Limitation
anything else                             0x0110 Processing Failure
========================================  ===================================================
"""

from __future__ import annotations

from dicomrpc_server.dicom.validation import WARNING_SOP_CLASS_MISMATCH
from dicomrpc_server.errors import Code, ServiceError
from dicomrpc_server.storage.space import OUT_OF_RESOURCES
from dicomrpc_server.store.ingest import InstanceResult, Outcome

SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
COERCION = 0xB000
SOP_CLASS_MISMATCH_WARNING = 0xB007
REFUSED_OUT_OF_RESOURCES = 0xA700
REFUSED_BUSY = 0xA701
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
INVALID_ATTRIBUTE_VALUE = 0x0106
# N-ACTION failures (PS3.7 §10.1.4.1.10, Annex C).
NO_SUCH_SOP_INSTANCE = 0x0112
NO_SUCH_SOP_CLASS = 0x0118
INVALID_ARGUMENT_VALUE = 0x0115
NO_SUCH_ACTION = 0x0123
RESOURCE_LIMITATION = 0x0213
# Failure Reasons of a Storage Commitment result (PS3.4 J.3.3, Table J.3-2's Failed SOP
# Sequence).
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
SOP_CLASS_NOT_SUPPORTED = 0x0122
# PS3.4 CC.2.3: Receiving AE-TITLE is Unknown to this SCP (a subscriber that is no peer).
RECEIVING_AE_UNKNOWN = 0xC308
# The statuses of the workitem core passed through as they are (PS3.4 CC.2, PS3.7 C.4).
_WORKITEM_STATUSES = frozenset(
    {0xC300, 0xC301, 0xC302, 0xC303, 0xC304, 0xC307, 0xC309, 0xC310, 0xC311, 0xC313}
    | {DUPLICATE_SOP_INSTANCE, INVALID_ATTRIBUTE_VALUE, 0x0120, RECEIVING_AE_UNKNOWN}
)

# The core's DICOM statuses of a failed instance, by the status they become.
_FAILURES: dict[int, int] = {
    OUT_OF_RESOURCES: REFUSED_OUT_OF_RESOURCES,
    43264: DOES_NOT_MATCH_SOP_CLASS,
    45070: DUPLICATE_SOP_INSTANCE,
    45071: REFUSED_BUSY,
}
# Failures with the processing-failure status 272 that are no fault of the data set.
_RESOURCE_REASONS = frozenset({"INSTANCE_TOO_LARGE", "LIMIT_EXCEEDED"})
_PROCESSING_REASONS = frozenset({"STORAGE_FAILURE", "INTERNAL_FAILURE"})

# Error Comment (0000,0902) is LO: 64 characters at most (PS3.7 Table E.1-1).
MAX_COMMENT = 64


def store_status(result: InstanceResult) -> int:
    """The C-STORE response status of one instance's result."""
    if result.outcome in (Outcome.STORED, Outcome.ALREADY_STORED):  # a re-send: success
        return SUCCESS
    if result.outcome is Outcome.STORED_WITH_WARNINGS:
        if result.warning_reason == WARNING_SOP_CLASS_MISMATCH:
            return SOP_CLASS_MISMATCH_WARNING
        return COERCION
    failure = result.failure
    assert failure is not None
    return failure_status(failure)


def failure_status(error: ServiceError) -> int:
    """The C-STORE failure status of a core error."""
    if error.reason in _RESOURCE_REASONS or error.code is Code.RESOURCE_EXHAUSTED:
        return REFUSED_OUT_OF_RESOURCES
    if error.reason in _PROCESSING_REASONS:
        return PROCESSING_FAILURE
    return _FAILURES.get(error.dicom_status or 0, CANNOT_UNDERSTAND)


def query_failure_status(error: ServiceError) -> int:
    """The C-FIND or C-GET failure status of a core error."""
    if error.code is Code.RESOURCE_EXHAUSTED:
        return REFUSED_OUT_OF_RESOURCES
    if error.code in (Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION, Code.NOT_FOUND):
        return DOES_NOT_MATCH_SOP_CLASS
    return CANNOT_UNDERSTAND


def comment(message: str) -> str:
    """An Error Comment: the message on one line, in printable ASCII, cut to 64 characters."""
    text = "".join(c if " " <= c <= "~" and c != "\\" else "?" for c in " ".join(message.split()))
    return text if len(text) <= MAX_COMMENT else text[: MAX_COMMENT - 3] + "..."


def workitem_status(error: ServiceError, invalid: int = INVALID_ATTRIBUTE_VALUE) -> int:
    """The N-CREATE, N-SET, N-GET or N-ACTION failure status of a workitem core error.

    ``invalid`` is the status of an invalid request the core gives no DICOM status of its own:
    0x0106 for an attribute list, 0x0115 for an N-ACTION's action information.
    """
    if error.dicom_status in _WORKITEM_STATUSES:
        return int(error.dicom_status or 0)
    if error.code is Code.RESOURCE_EXHAUSTED:
        return RESOURCE_LIMITATION
    if error.code is Code.INVALID_ARGUMENT:
        return invalid
    return PROCESSING_FAILURE
