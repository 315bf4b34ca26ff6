"""The tables of the DICOM Conformance Statement (``docs/conformance.md``, PS3.2), from the code.

Why this module exists: a conformance statement that is typed by hand drifts from what the
archive does. Every table in the statement that lists something the code holds as data (the
presentation contexts the DIMSE acceptor offers, the transfer syntaxes and what can be
transcoded to what, the attributes a search matches, the status each outcome becomes, the UPS
state tables, the DICOMweb routes, the limits and the ``serve`` options) is rendered here from
that data, and ``tests/test_conformance_doc.py`` fails when the committed document differs.

The document holds each table between two markers::

    <!-- generated: NAME -->
    ...
    <!-- end generated -->

``python -m dicomrpc_server.conformance docs/conformance.md`` (``make docs``) rewrites every
such block in place and leaves the prose around them untouched; ``--check`` only reports the
blocks that differ. Status rows are computed by calling the mapping functions with the errors
the cores raise, so a row cannot claim a status the code would not answer.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pynetdicom
from pydicom.uid import UID
from starlette.routing import Route

from dicomrpc.datasets import NestingTooDeep
from dicomrpc_server import config
from dicomrpc_server.config import Settings, add_serve_arguments
from dicomrpc_server.dicom.attributes import (
    ATTRIBUTES_BY_LEVEL,
    NESTED_ATTRIBUTES,
    IndexedAttribute,
    Level,
)
from dicomrpc_server.dicom.nesting import too_deep
from dicomrpc_server.dicom.structure import InflatedTooLargeError, MalformedFileError, truncated
from dicomrpc_server.dicom.uids import MAX_UID_LENGTH
from dicomrpc_server.dicom.validation import (
    WARNING_ATTRIBUTES,
    WARNING_SOP_CLASS_MISMATCH,
    ValidationFailed,
)
from dicomrpc_server.dicomweb import app as dicomweb_app
from dicomrpc_server.dicomweb import delete, qido, stow, wado, workitems
from dicomrpc_server.dicomweb.errors import http_status
from dicomrpc_server.dicomweb.media import IMAGE_FRAME_TYPES
from dicomrpc_server.dimse import (
    commitment,
    contexts,
    identifiers,
    outgoing,
    sending,
    server,
    statuses,
    transport,
    watch,
)
from dicomrpc_server.errors import Code, ServiceError
from dicomrpc_server.query import engine
from dicomrpc_server.retrieve import capabilities, syntaxes
from dicomrpc_server.storage.index_records import instance_exists_error
from dicomrpc_server.storage.space import OUT_OF_RESOURCES, STORAGE_FULL
from dicomrpc_server.store.ingest import InstanceResult, Outcome, being_stored_error
from dicomrpc_server.ups import index as ups_index
from dicomrpc_server.ups import states

BEGIN = re.compile(r"<!-- generated: ([a-z0-9-]+) -->\n")
END = "<!-- end generated -->"
REGENERATE = "python -m dicomrpc_server.conformance docs/conformance.md (make docs)"


def _table(header: Iterable[str], rows: Iterable[Iterable[object]]) -> str:
    """A Markdown table, newline-terminated; ``|`` in a cell is escaped."""
    head = list(header)
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        cells = [str(cell).replace("|", "\\|") for cell in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# pynetdicom's keywords of the storage SOP classes, for those pydicom's dictionary has no
# name for (SOP classes newer than its copy of PS3.6).
_KEYWORDS: dict[str, str] = {
    str(uid): keyword
    for keyword, uid in getattr(pynetdicom.sop_class, "_STORAGE_CLASSES", {}).items()
}


def _name(uid: str) -> str:
    """The standard name of a UID (PS3.6 Annex A), as pydicom's dictionary has it.

    A UID pydicom does not know is named by pynetdicom's keyword (``LabelMapSegmentationStorage``)
    split into words, or left as the UID.
    """
    name = str(UID(uid).name)
    if name != uid or uid not in _KEYWORDS:
        return name
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", _KEYWORDS[uid])


def _hex(status: int) -> str:
    return f"0x{status:04X}"


def _size(value: int) -> str:
    """A byte count as its exact binary multiple when it is one (4 GiB), else the number."""
    for unit, size in (("GiB", config.GIB), ("MiB", config.MIB), ("KiB", config.KIB)):
        if value >= size and value % size == 0:
            return f"{value // size} {unit}"
    return f"{value} bytes"


# -- 1. network services: the overview and the presentation contexts -----------------------


@dataclass(frozen=True)
class Service:
    """One SOP class of the overview table: whether the archive is its SCU and its SCP."""

    uid: str
    scu: str
    scp: str


# The non-storage SOP classes, in the order of PS3.2 Table A.1-1's groups. The roles are the
# archive's: it is the UPS Event SCP (it sends the N-EVENT-REPORTs, PS3.4 CC.3.1) and the
# Storage Commitment SCP (PS3.4 J.3); it acts as a storage SCU only inside C-GET and C-MOVE.
SERVICES: tuple[Service, ...] = (
    Service(contexts.VERIFICATION, "No", "Yes"),
    Service(contexts.STORAGE_COMMITMENT, "No", "Yes"),
    *(Service(uid, "No", "Yes") for uid in contexts.FIND_MODELS),
    *(Service(uid, "No", "Yes") for uid in contexts.MOVE_MODELS),
    *(Service(uid, "No", "Yes") for uid in contexts.GET_MODELS),
    Service(contexts.MODALITY_WORKLIST_FIND, "No", "Yes"),
    Service(contexts.UPS_PUSH, "No", "Yes"),
    Service(contexts.UPS_PULL, "No", "Yes"),
    Service(contexts.UPS_WATCH, "No", "Yes"),
    Service(contexts.UPS_EVENT, "No", "Yes (N-EVENT-REPORT to subscribers)"),
)


def network_services() -> str:
    """PS3.2 A.1's summary table of the network services."""
    rows: list[tuple[str, str, str, str]] = [
        (
            f"Storage: each of the {len(contexts.STORAGE_SOP_CLASSES)} storage SOP classes "
            "(see 4.2.1.3)",
            "see 4.2.1.3",
            "Yes, as C-GET and C-MOVE sub-operations",
            "Yes",
        )
    ]
    rows += [(_name(s.uid), f"`{s.uid}`", s.scu, s.scp) for s in SERVICES]
    return _table(("SOP class", "UID", "SCU", "SCP"), rows)


def _syntaxes(uids: Iterable[str]) -> str:
    return ", ".join(syntaxes.syntax_name(uid) for uid in uids)


def presentation_contexts() -> str:
    """The contexts the acceptor offers, other than storage (PS3.2 A.4.2.2.3)."""
    rows = []
    for context in contexts.supported_contexts():
        uid = str(context.abstract_syntax)
        if uid in contexts.STORAGE_SOP_CLASSES:
            continue
        rows.append((_name(uid), f"`{uid}`", _syntaxes(context.transfer_syntax), "SCP", "None"))
    return _table(
        ("Abstract syntax", "UID", "Transfer syntaxes", "Role", "Extended negotiation"), rows
    )


def storage_transfer_syntaxes() -> str:
    """Every storage context's transfer syntaxes, in the acceptor's order of preference."""
    sources = capabilities.capabilities()
    targets = {target for t in sources.values() for target in t}
    rows = []
    for order, uid in enumerate(contexts.STORAGE_SYNTAXES, 1):
        rows.append(
            (
                order,
                _name(uid),
                f"`{uid}`",
                "lossy" if syntaxes.is_lossy(uid) else "lossless",
                "yes" if uid in sources else "no: sent only as stored",
                "yes" if uid in targets else "no",
            )
        )
    return _table(
        (
            "Preference",
            "Transfer syntax",
            "UID",
            "Pixel data",
            "Decoded (transcoded from)",
            "Produced (transcoded to)",
        ),
        rows,
    )


def storage_sop_classes() -> str:
    """The storage SOP classes accepted, each in every syntax of the table above."""
    rows = [
        (_name(uid), f"`{uid}`", "SCP; SCU in C-GET / C-MOVE")
        for uid in sorted(contexts.STORAGE_SOP_CLASSES, key=_name)
    ]
    return _table(("SOP class", "UID", "Role"), rows)


def transcoding_matrix() -> str:
    """What each stored syntax can be transcoded to with the codecs installed."""
    return capabilities.capability_table_markdown()


def frame_media_types() -> str:
    """The compressed-frame media types of WADO-RS and the syntax each means (PS3.18 8.7.3)."""
    rows = [(f"`{media}`", _name(uid), f"`{uid}`") for media, uid in IMAGE_FRAME_TYPES.items()]
    return _table(("Media type", "Default transfer syntax", "UID"), rows)


def implementation() -> str:
    """Implementation Class UID and Version Name sent in every A-ASSOCIATE (PS3.7 D.3.3.2)."""
    rows = [
        ("Implementation Class UID", f"`{pynetdicom.PYNETDICOM_IMPLEMENTATION_UID}`"),
        ("Implementation Version Name", f"`{pynetdicom.PYNETDICOM_IMPLEMENTATION_VERSION}`"),
        ("AE title (default)", f"`{Settings.ae_title}`"),
        ("Port (default)", Settings.dimse_port),
        ("Maximum PDU length received (default)", f"{Settings.dimse_max_pdu_bytes} bytes"),
        (
            "Longest PDU sent",
            f"the peer's maximum, at most {outgoing.MAX_SENT_PDU_BYTES} bytes",
        ),
    ]
    return _table(("Item", "Value"), rows)


# -- 2. searching ----------------------------------------------------------------------------

_INTEGER_VRS = ("IS", "US", "SS", "UL", "SL")
_DECIMAL_VRS = ("DS", "FL", "FD")
# PS3.4 C.2.2.2 matching, as query/engine.py's TermMatcher applies it to each VR.
MATCHING: dict[str, str] = {
    "UI": "single value or UID list (`,` or `\\`)",
    "PN": "case- and accent-insensitive; `*` `?` wildcards; fuzzy: word prefixes",
    "DA": "single date or range (`a-b`, `-b`, `a-`)",
    "TM": "single time (its whole minute, second...) or range",
    "DT": "single date-time (prefix) or range",
    **dict.fromkeys(_INTEGER_VRS, "single value (numeric)"),
    **dict.fromkeys(_DECIMAL_VRS, "single value (numeric: `5` matches `5.0`)"),
}
_TEXT_MATCHING = "single value (case-sensitive); `*` `?` wildcards"


def matching_of(attribute: IndexedAttribute) -> str:
    """The matching an attribute's VR gets (PS3.4 C.2.2.2; see ``TermMatcher``)."""
    return MATCHING.get(attribute.vr, _TEXT_MATCHING)


def _tag(attribute: IndexedAttribute) -> str:
    return f"({attribute.hex_tag[:4]},{attribute.hex_tag[4:]})"


def search_attributes() -> str:
    """The attributes each level keeps: matching keys with their matching, or return only."""
    rows = []
    levels = {Level.STUDY: "Study", Level.SERIES: "Series", Level.INSTANCE: "Instance"}
    for level, name in levels.items():
        attributes = list(ATTRIBUTES_BY_LEVEL[level])
        if level is Level.STUDY:  # computed, searchable: after the indexed matching keys
            attributes.insert(sum(a.searchable for a in attributes), engine.MODALITIES)
        for attribute in attributes:
            matching = matching_of(attribute) if attribute.searchable else "return key only"
            if attribute is engine.MODALITIES:
                matching = "computed from the series; " + matching
            rows.append((name, attribute.keyword, _tag(attribute), attribute.vr, matching))
        for nested in NESTED_ATTRIBUTES:
            if nested.sequence.level is level:
                path = f"{nested.sequence.keyword} > {nested.leaf.keyword}"
                rows.append(
                    (
                        name,
                        path,
                        _tag(nested.sequence) + " > " + _tag(nested.leaf),
                        "SQ > " + nested.leaf.vr,
                        "exact single value inside any item",
                    )
                )
    return _table(("Level", "Attribute", "Tag", "VR", "Matching"), rows)


def patient_keys() -> str:
    """The keys matched at the C-FIND PATIENT level (PS3.4 Table C.6-1)."""
    from pydicom.datadict import dictionary_VR, keyword_for_tag

    rows = [
        (keyword_for_tag(tag), f"({tag >> 16:04X},{tag & 0xFFFF:04X})", dictionary_VR(tag))
        for tag in sorted(identifiers.PATIENT_KEYS)
    ]
    return _table(("Attribute", "Tag", "VR"), rows)


def workitem_keys() -> str:
    """The workitem matching keys of UPS C-FIND, UPS-RS search and filtered subscriptions."""
    rows = [(a.keyword, _tag(a), a.vr, matching_of(a)) for a in ups_index.MATCHING_KEYS]
    rows += [
        (
            f"{n.sequence.keyword} > {n.leaf.keyword}",
            _tag(n.sequence) + " > " + _tag(n.leaf),
            "SQ > " + n.leaf.vr,
            "exact single value inside any item",
        )
        for n in ups_index.NESTED_KEYS
    ]
    return _table(("Attribute", "Tag", "VR", "Matching"), rows)


# -- 3. statuses -----------------------------------------------------------------------------


def _error(code: Code, reason: str, status: int | None) -> ServiceError:
    return ServiceError(code, reason, reason.lower(), dicom_status=status)


def _failed(error: ServiceError) -> InstanceResult:
    return InstanceResult(0, "", Outcome.FAILED, failure=error)


# The store core's outcomes (store/ingest.py, dicom/validation.py, dicom/structure.py,
# storage/space.py, storage/index_records.py), as the C-STORE SCP receives them.
STORE_OUTCOMES: tuple[tuple[str, InstanceResult], ...] = (
    ("stored", InstanceResult(0, "", Outcome.STORED)),
    (
        "already stored with the same bytes (a re-send)",
        InstanceResult(0, "", Outcome.ALREADY_STORED),
    ),
    (
        f"stored with attribute warnings (warning reason {WARNING_ATTRIBUTES}); the data set is "
        "kept as sent",
        InstanceResult(0, "", Outcome.STORED_WITH_WARNINGS, warning_reason=WARNING_ATTRIBUTES),
    ),
    (
        f"stored; the data set does not match its SOP class ({WARNING_SOP_CLASS_MISMATCH})",
        InstanceResult(
            0, "", Outcome.STORED_WITH_WARNINGS, warning_reason=WARNING_SOP_CLASS_MISMATCH
        ),
    ),
    (
        "no space left on the archive's storage (`STORAGE_FULL`)",
        _failed(_error(Code.RESOURCE_EXHAUSTED, STORAGE_FULL, OUT_OF_RESOURCES)),
    ),
    (
        "larger than `--max-instance-bytes`, or a Deflated data set inflating past it "
        "(`INSTANCE_TOO_LARGE`)",
        _failed(InflatedTooLargeError(Settings.max_instance_bytes, 1)),
    ),
    (
        "sequences nested deeper than `--max-sequence-depth` (`LIMIT_EXCEEDED`)",
        _failed(too_deep(NestingTooDeep("0040A730", Settings.max_sequence_depth))),
    ),
    (
        "a required attribute missing or invalid (43264): the four UIDs, the Image Pixel module",
        _failed(ValidationFailed("missing", "Rows")),
    ),
    ("not a readable Part 10 file (272)", _failed(MalformedFileError("unreadable"))),
    ("truncated (272)", _failed(truncated("truncated"))),
    (
        "SOP Instance UID already stored with other bytes (45070)",
        _failed(instance_exists_error("1", "1", "1")),
    ),
    (
        "being stored by another association at this moment (45071)",
        _failed(being_stored_error("1")),
    ),
    (
        "a file or index write failed (`STORAGE_FAILURE`)",
        _failed(_error(Code.INVALID_ARGUMENT, "STORAGE_FAILURE", 272)),
    ),
)

_STATUS_NAMES: dict[int, str] = {
    statuses.SUCCESS: "Success",
    statuses.COERCION: "Warning: Coercion of data elements",
    statuses.SOP_CLASS_MISMATCH_WARNING: "Warning: Data set does not match SOP Class",
    statuses.REFUSED_OUT_OF_RESOURCES: "Refused: Out of resources",
    statuses.REFUSED_BUSY: "Refused: Out of resources (transient: send again)",
    statuses.DOES_NOT_MATCH_SOP_CLASS: "Error: Data set / identifier does not match SOP Class",
    statuses.CANNOT_UNDERSTAND: "Error: Cannot understand / Unable to process",
    statuses.PROCESSING_FAILURE: "Failure: Processing failure",
    statuses.DUPLICATE_SOP_INSTANCE: "Failure: Duplicate SOP Instance",
    statuses.INVALID_ATTRIBUTE_VALUE: "Failure: Invalid attribute value",
    statuses.INVALID_ARGUMENT_VALUE: "Failure: Invalid argument value",
    statuses.RESOURCE_LIMITATION: "Failure: Resource limitation",
    statuses.RECEIVING_AE_UNKNOWN: "Failure: Receiving AE-TITLE unknown",
    0x0120: "Failure: Missing attribute",
    # PS3.4 Annex CC's UPS statuses, by the workitem core's names of them.
    **{
        int(status): status.name.replace("_", " ").capitalize().replace(" uid ", " UID ")
        for status in states.Status
        if status not in (states.Status.DUPLICATE_WORKITEM,)
    },
}


def _status(status: int) -> str:
    name = _STATUS_NAMES.get(status)
    return f"{_hex(status)} {name}" if name else _hex(status)


def store_statuses() -> str:
    """The C-STORE response status of each store outcome (``statuses.store_status``)."""
    rows = [(what, _status(statuses.store_status(result))) for what, result in STORE_OUTCOMES]
    return _table(("Store outcome", "C-STORE status"), rows)


# Errors the search and retrieve cores raise, as the C-FIND and C-GET SCPs receive them.
QUERY_OUTCOMES: tuple[tuple[str, ServiceError], ...] = (
    (
        "identifier refused: no or a wrong Query/Retrieve Level, a malformed value",
        _error(Code.INVALID_ARGUMENT, "INVALID_QUERY", None),
    ),
    (
        "a search on an extended query tag still re-indexing",
        _error(Code.FAILED_PRECONDITION, "TAG_REINDEXING", None),
    ),
    ("a limit passed", _error(Code.RESOURCE_EXHAUSTED, "LIMIT_EXCEEDED", None)),
    ("any other failure", _error(Code.INTERNAL, "INTERNAL_FAILURE", None)),
)


def query_statuses() -> str:
    """The C-FIND and C-GET failure status of each core error (``query_failure_status``)."""
    rows = [(what, _status(statuses.query_failure_status(e))) for what, e in QUERY_OUTCOMES]
    return _table(("Outcome", "C-FIND / C-GET status"), rows)


def _ups_outcomes() -> tuple[tuple[str, ServiceError], ...]:
    """The workitem core's errors (ups/states.py, ups/service.py), built as the core builds them."""
    uid = "1.2.3"
    state = states.State
    status = states.Status
    rows: list[tuple[str, ServiceError]] = [
        (
            "change of a COMPLETED or CANCELED workitem",
            states.refusal(status.MAY_NO_LONGER_BE_UPDATED, uid, state.COMPLETED),
        ),
        (
            "Transaction UID missing",
            _lock_error(uid, ""),
        ),
        ("Transaction UID wrong", _lock_error(uid, "9.9")),
        (
            "claim of a workitem already IN PROGRESS",
            states.refusal(status.ALREADY_IN_PROGRESS, uid, state.IN_PROGRESS),
        ),
        (
            "change to SCHEDULED",
            states.refusal(status.SCHEDULED_ONLY_BY_CREATE, uid, state.IN_PROGRESS),
        ),
        (
            "final-state requirements not met",
            states.final_state_unmet(uid, state.COMPLETED, ["ProcedureStepProgressInformation"]),
        ),
        ("no such workitem", states.not_found(uid)),
        (
            "created other than SCHEDULED",
            ServiceError(
                Code.INVALID_ARGUMENT,
                "WORKITEM_ATTRIBUTES_INVALID",
                "not scheduled",
                dicom_status=int(status.CREATE_STATE_NOT_SCHEDULED),
            ),
        ),
        (
            "COMPLETED or CANCELED asked of a SCHEDULED workitem",
            states.refusal(status.NOT_IN_PROGRESS, uid, state.SCHEDULED),
        ),
        (
            "cancellation of a COMPLETED workitem",
            states.refusal(status.ALREADY_COMPLETED, uid, state.COMPLETED),
        ),
        ("create with a UID already taken", states.already_exists(uid)),
        (
            "a required attribute missing",
            ServiceError(
                Code.INVALID_ARGUMENT, "WORKITEM_ATTRIBUTES_INVALID", "missing", dicom_status=0x0120
            ),
        ),
        (
            "an attribute invalid, or one the operation may not set",
            _error(Code.INVALID_ARGUMENT, "WORKITEM_ATTRIBUTES_INVALID", None),
        ),
        ("no space left (`STORAGE_FULL`)", _error(Code.RESOURCE_EXHAUSTED, STORAGE_FULL, None)),
        ("another limit passed", _error(Code.RESOURCE_EXHAUSTED, "LIMIT_EXCEEDED", None)),
        ("anything else", _error(Code.INTERNAL, "INTERNAL_FAILURE", None)),
    ]
    return tuple(rows)


def _lock_error(uid: str, given: str) -> ServiceError:
    try:
        states.check_lock(uid, states.State.IN_PROGRESS, "1.2.4", given)
    except ServiceError as error:
        return error
    raise AssertionError("check_lock accepted a missing or wrong Transaction UID")


def ups_statuses() -> str:
    """The DIMSE status and UPS-RS HTTP status of each workitem core failure."""
    rows = [
        (what, _status(statuses.workitem_status(error)), http_status(error))
        for what, error in _ups_outcomes()
    ]
    return _table(("Workitem outcome", "DIMSE status", "UPS-RS HTTP status"), rows)


def ups_transitions() -> str:
    """PS3.4 CC.1.1's state machine as ``ups/states.py`` holds it: change state, update, cancel."""
    order = list(states.State)

    def cell(step: states.Step) -> str:
        kinds = {
            states.Kind.CLAIM: "claimed (new Transaction UID)",
            states.Kind.LOCKED: "done (with the Transaction UID)",
            states.Kind.FREE: "done (no Transaction UID)",
        }
        if step.kind is states.Kind.REFUSE:
            return f"refused {_hex(int(step.status or 0))}"
        if step.kind is states.Kind.ALREADY:
            return f"unchanged, warning {_hex(int(step.status or 0))}"
        return kinds[step.kind]

    def cancel_cell(step: states.Step) -> str:
        # A request names no Transaction UID: FREE cancels a SCHEDULED workitem at once,
        # LOCKED records the request for the performer (ups/service.py).
        if step.kind is states.Kind.FREE:
            return "CANCELED at once"
        if step.kind is states.Kind.LOCKED:
            return "recorded, Cancel Requested reported; the performer decides"
        return cell(step)

    rows = [
        (
            current.value,
            *(cell(states.TRANSITIONS[current, target]) for target in order),
            cell(states.UPDATES[current]),
            cancel_cell(states.CANCEL_REQUESTS[current]),
        )
        for current in order
    ]
    header = (
        "Current state",
        *(f"to {s.value}" for s in order),
        "Update (N-SET, POST)",
        "Request cancellation",
    )
    return _table(header, rows)


# -- 4. DICOMweb -----------------------------------------------------------------------------

_SERVICE_OF = {
    stow.__name__: "STOW-RS",
    qido.__name__: "QIDO-RS",
    wado.__name__: "WADO-RS",
    delete.__name__: "Delete",
    workitems.__name__: "UPS-RS",
}


def _routes() -> Iterable[Route]:
    for group in dicomweb_app.RESOURCE_ROUTES:
        for route in group:
            assert isinstance(route, Route)
            yield route


def web_resources() -> str:
    """The DICOMweb resources under the service root, with the handler's own summary."""
    rows = []
    for route in _routes():
        doc = (route.endpoint.__doc__ or "").strip().splitlines()
        methods = ", ".join(sorted(m for m in route.methods or () if m != "HEAD"))
        rows.append(
            (
                _SERVICE_OF[route.endpoint.__module__],
                methods,
                f"`{route.path}`",
                doc[0] if doc else "",
            )
        )
    return _table(("Service", "Method", "Resource (under `/dicomweb`)", "What it does"), rows)


# -- 5. limits and configuration -------------------------------------------------------------

_DEFAULTS = Settings()


def limits() -> str:
    """The archive's limits, with their defaults as ``Settings`` and the modules hold them."""
    s = _DEFAULTS
    pauses = ", ".join(f"{p:g} s" for p in watch.RETRY_PAUSES_S)
    rows: list[tuple[str, object, str]] = [
        ("Instance size", _size(s.max_instance_bytes), "`--max-instance-bytes`"),
        (
            "Pixels per frame (Rows x Columns)",
            f"2^{s.max_frame_pixels.bit_length() - 1}",
            "`--max-frame-pixels`",
        ),
        ("Sequence nesting depth", s.max_sequence_depth, "`--max-sequence-depth`"),
        ("UID length", f"{MAX_UID_LENGTH} characters", "fixed (PS3.5 9.1)"),
        (
            "Frames per WADO-RS / RetrieveFrames request",
            s.max_frames_per_request,
            "`DICOMRPC_MAX_FRAMES_PER_REQUEST`",
        ),
        (
            "Search results per page (default / most)",
            f"{engine.DEFAULT_LIMIT} / {engine.MAX_LIMIT}",
            "`limit` of each search",
        ),
        ("One decode, transcode or render", f"{s.codec_timeout_s:g} s", "`--codec-timeout-s`"),
        ("DIMSE associations at once", s.dimse_max_associations, "`--dimse-max-associations`"),
        ("DIMSE connections waiting for their association request", server.MAX_WAITING, "fixed"),
        (
            "DIMSE maximum PDU length received",
            _size(s.dimse_max_pdu_bytes),
            "`--dimse-max-pdu-bytes`",
        ),
        ("DIMSE PDU other than P-DATA-TF", _size(transport.MAX_OTHER_PDU_BYTES), "fixed"),
        ("DIMSE PDU sent", _size(outgoing.MAX_SENT_PDU_BYTES), "fixed (less if the peer says so)"),
        ("DIMSE ACSE / DIMSE message timeout", f"{s.dimse_timeout_s:g} s", "`--dimse-timeout`"),
        ("DIMSE idle association", f"{s.dimse_idle_timeout_s:g} s", "`--dimse-idle-timeout`"),
        (
            "Instances one C-GET or C-MOVE sends (more: 0xA700)",
            sending.MAX_SUBOPERATIONS,
            "fixed (a US count, PS3.7 9.3)",
        ),
        ("Presentation contexts a C-MOVE proposes", contexts.MAX_PROPOSED, "fixed (PS3.8 9.3.2.2)"),
        ("Storage commitment reports pending", commitment.MAX_PENDING, "fixed"),
        (
            "UPS event report attempts per subscriber",
            f"until answered (pauses {pauses}, the last repeated)",
            "fixed",
        ),
        (
            "UPS event delivery lease (a stopped sender's is taken over after it)",
            f"{watch.LEASE_S:g} s (renewed every {watch.RENEW_S:g} s)",
            "fixed",
        ),
        ("Error Comment (0000,0902)", f"{statuses.MAX_COMMENT} characters", "fixed (PS3.7 E.1)"),
        ("HTTP connections at once", s.http_max_connections, "`--http-max-connections`"),
        ("HTTP request head", _size(s.http_max_header_bytes), "`--http-max-header-bytes`"),
        ("HTTP request target", _size(s.http_max_url_bytes), "`--http-max-url-bytes`"),
        ("HTTP request head time", f"{s.http_header_timeout_s:g} s", "`--http-header-timeout`"),
        ("HTTP body stall", f"{s.http_body_timeout_s:g} s", "`--http-body-timeout`"),
        ("Parts of one STOW-RS request", s.http_max_stow_parts, "`--http-max-stow-parts`"),
    ]
    return _table(("Limit", "Default", "Set by"), rows)


def serve_options() -> str:
    """Every ``dicomrpc serve`` option with its help (environment variable and default)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_serve_arguments(parser)
    rows = []
    for action in parser._actions:
        flags = ", ".join(f"`{flag}`" for flag in action.option_strings)
        text = " ".join((action.help or "").split())
        rows.append((flags, text))
    return _table(("Option", "What it sets (environment variable, default)"), rows)


# -- the document ----------------------------------------------------------------------------

TABLES: dict[str, Callable[[], str]] = {
    "network-services": network_services,
    "implementation": implementation,
    "presentation-contexts": presentation_contexts,
    "storage-transfer-syntaxes": storage_transfer_syntaxes,
    "storage-sop-classes": storage_sop_classes,
    "transcoding-matrix": transcoding_matrix,
    "store-statuses": store_statuses,
    "search-attributes": search_attributes,
    "patient-keys": patient_keys,
    "query-statuses": query_statuses,
    "workitem-keys": workitem_keys,
    "ups-transitions": ups_transitions,
    "ups-statuses": ups_statuses,
    "web-resources": web_resources,
    "frame-media-types": frame_media_types,
    "limits": limits,
    "serve-options": serve_options,
}


def blocks(text: str) -> dict[str, str]:
    """The generated blocks of a document: name to content (between the markers)."""
    out: dict[str, str] = {}
    for match in BEGIN.finditer(text):
        end = text.find(END, match.end())
        if end < 0:
            raise ValueError(f"generated block {match.group(1)!r} has no {END!r}")
        out[match.group(1)] = text[match.end() : end]
    return out


def regenerate(text: str) -> str:
    """``text`` with every generated block rewritten from the code; unknown names raise."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in TABLES:
            raise ValueError(f"unknown generated block {name!r} (known: {', '.join(TABLES)})")
        return f"<!-- generated: {name} -->\n{TABLES[name]()}{END}"

    pattern = re.compile(BEGIN.pattern + r".*?" + re.escape(END), re.S)
    return pattern.sub(replace, text)


def stale(text: str) -> list[str]:
    """The names of the blocks whose content differs from what the code gives now."""
    return [name for name, body in blocks(text).items() if TABLES[name]() != body]


def main(argv: list[str] | None = None) -> int:
    """Rewrite the generated tables of a conformance statement, or check them (``--check``)."""
    parser = argparse.ArgumentParser(
        prog="python -m dicomrpc_server.conformance", description=main.__doc__
    )
    parser.add_argument("document", type=Path)
    parser.add_argument("--check", action="store_true", help="only report stale tables")
    args = parser.parse_args(argv)
    text = args.document.read_text(encoding="utf-8")
    if args.check:
        names = stale(text)
        for name in names:
            print(f"{args.document}: table {name!r} differs from the code", file=sys.stderr)
        return 1 if names else 0
    updated = regenerate(text)
    if updated != text:
        args.document.write_text(updated, encoding="utf-8")
        print(f"{args.document}: tables rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
