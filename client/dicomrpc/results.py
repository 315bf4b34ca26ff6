"""Typed results the SDK returns, decoded from the API's messages."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from dicomrpc.v1 import management_service_pb2 as mpb
from dicomrpc.v1 import store_service_pb2 as pb

_OUTCOMES = {
    pb.INSTANCE_STORE_OUTCOME_STORED: "stored",
    pb.INSTANCE_STORE_OUTCOME_STORED_WITH_WARNINGS: "stored_with_warnings",
    pb.INSTANCE_STORE_OUTCOME_FAILED: "failed",
    pb.INSTANCE_STORE_OUTCOME_ALREADY_STORED: "already_stored",
}
_STATUSES = {
    pb.STORE_STATUS_ALL_STORED: "all_stored",
    pb.STORE_STATUS_PARTIALLY_STORED: "partially_stored",
    pb.STORE_STATUS_NONE_STORED: "none_stored",
}


@dataclass(frozen=True)
class AttributeWarning:
    """A warning about one attribute of a stored instance."""

    tag: str
    keyword: str
    comment: str
    warning_reason: int


@dataclass(frozen=True)
class InstanceResult:
    """What became of one instance of a store.

    ``outcome`` is ``"stored"``, ``"stored_with_warnings"``, ``"already_stored"`` (the same
    bytes were stored before: nothing changed) or ``"failed"``; a failure has its
    DICOM ``failure_reason`` (272, 43264, 43265, 45070, 45071, or 0xA700 when the archive's
    storage is full), its stable ``failure_reason_name`` and a ``failure_message``.
    """

    index: int
    client_reference: str
    outcome: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    retrieve_location: str
    failure_reason: int
    failure_reason_name: str
    failure_message: str
    warning_reason: int
    warnings: tuple[AttributeWarning, ...]
    version: int
    size_bytes: int
    transfer_syntax_uid: str

    @property
    def stored(self) -> bool:
        """Whether the instance is in the archive now."""
        return self.outcome != "failed"

    @classmethod
    def from_message(cls, m: pb.InstanceStoreResult) -> InstanceResult:
        """Decode an ``InstanceStoreResult`` message."""
        return cls(
            index=m.index,
            client_reference=m.client_reference,
            outcome=_OUTCOMES.get(m.outcome, "failed"),
            sop_class_uid=m.sop_class_uid,
            sop_instance_uid=m.sop_instance_uid,
            study_instance_uid=m.study_instance_uid,
            series_instance_uid=m.series_instance_uid,
            retrieve_location=m.retrieve_location,
            failure_reason=m.failure_reason,
            failure_reason_name=m.failure_reason_name,
            failure_message=m.failure_message,
            warning_reason=m.warning_reason,
            warnings=tuple(
                AttributeWarning(w.tag, w.keyword, w.comment, w.warning_reason) for w in m.warnings
            ),
            version=m.version,
            size_bytes=m.size_bytes,
            transfer_syntax_uid=m.transfer_syntax_uid,
        )


@dataclass(frozen=True)
class StoreResult:
    """The results of one store request, in the order the instances were sent."""

    instances: list[InstanceResult]
    status: str

    @property
    def stored(self) -> list[InstanceResult]:
        """The instances now in the archive (with or without warnings)."""
        return [r for r in self.instances if r.stored]

    @property
    def failed(self) -> list[InstanceResult]:
        """The instances that were not stored."""
        return [r for r in self.instances if not r.stored]

    @classmethod
    def from_message(cls, m: pb.StoreInstancesResponse) -> StoreResult:
        """Decode a ``StoreInstancesResponse``."""
        return cls(
            [InstanceResult.from_message(r) for r in m.results],
            _STATUSES.get(m.status, "none_stored"),
        )


@dataclass(frozen=True)
class Capabilities:
    """What a server supports (``ManagementService.GetCapabilities``)."""

    server_version: str
    storable_transfer_syntaxes: list[str]
    transcodings: dict[str, list[str]]
    max_instance_bytes: int
    max_chunk_bytes: int
    max_search_limit: int

    @classmethod
    def from_message(cls, m: mpb.GetCapabilitiesResponse) -> Capabilities:
        """Decode a ``GetCapabilitiesResponse``."""
        return cls(
            m.server_version,
            list(m.storable_transfer_syntax_uids),
            {
                t.source_transfer_syntax_uid: list(t.target_transfer_syntax_uids)
                for t in m.transcodings
            },
            m.max_instance_bytes,
            m.max_chunk_bytes,
            m.max_search_limit,
        )


_ACTIONS = {
    mpb.CHANGE_ACTION_CREATED: "created",
    mpb.CHANGE_ACTION_DELETED: "deleted",
    mpb.CHANGE_ACTION_UPDATED: "updated",
}
_STATES = {
    mpb.CHANGE_STATE_CURRENT: "current",
    mpb.CHANGE_STATE_REPLACED: "replaced",
    mpb.CHANGE_STATE_DELETED: "deleted",
}


@dataclass(frozen=True)
class Change:
    """One change feed entry.

    ``action`` is ``"created"``, ``"deleted"`` or ``"updated"``; ``state`` says whether the
    instance is still as the entry left it: ``"current"``, ``"replaced"`` or ``"deleted"``.
    """

    sequence: int
    action: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    version: int
    time: datetime.datetime
    state: str

    @classmethod
    def from_message(cls, m: mpb.ChangeFeedEntry) -> Change:
        """Decode a ``ChangeFeedEntry``."""
        return cls(
            m.sequence,
            _ACTIONS.get(m.action, "unspecified"),
            m.study_instance_uid,
            m.series_instance_uid,
            m.sop_instance_uid,
            m.version,
            m.commit_time.ToDatetime(tzinfo=datetime.UTC),
            _STATES.get(m.state, "unspecified"),
        )


_LEVELS = {
    mpb.QUERY_TAG_LEVEL_STUDY: "study",
    mpb.QUERY_TAG_LEVEL_SERIES: "series",
    mpb.QUERY_TAG_LEVEL_INSTANCE: "instance",
}


@dataclass(frozen=True)
class QueryTag:
    """An extended query tag: an attribute the server indexes because it was asked to.

    Attributes
    ----------
    tag
        The tag, 8 hexadecimal digits.
    vr
        The value representation its values are indexed as.
    level
        ``"study"``, ``"series"`` or ``"instance"``: the level searched by it.
    private_creator
        The private creator of a private tag, else ``""``.
    ready
        False while stored instances are being re-indexed (searches on it fail until then).
    """

    tag: str
    vr: str
    level: str
    private_creator: str
    ready: bool

    @classmethod
    def from_message(cls, m: mpb.ExtendedQueryTag) -> QueryTag:
        """Decode an ``ExtendedQueryTag``."""
        return cls(
            m.tag,
            m.vr,
            _LEVELS.get(m.level, ""),
            m.private_creator,
            m.status == mpb.QUERY_TAG_STATUS_READY,
        )


_PEER_SOURCES = {
    mpb.DIMSE_PEER_SOURCE_SETTINGS: "settings",
    mpb.DIMSE_PEER_SOURCE_REGISTRY: "registry",
}


@dataclass(frozen=True)
class DimsePeer:
    """A DIMSE peer the archive's C-MOVE may send to.

    Attributes
    ----------
    name
        Its name in the registry.
    ae_title
        The AE title a C-MOVE names as its destination.
    host, port
        Where it listens.
    source
        ``"settings"`` (``--dimse-peer``: fixed while the server runs) or ``"registry"``
        (added with :meth:`~dicomrpc.Client.add_dimse_peer`).
    """

    name: str
    ae_title: str
    host: str
    port: int
    source: str

    @classmethod
    def from_message(cls, m: mpb.DimsePeer) -> DimsePeer:
        """Decode a ``DimsePeer``."""
        return cls(m.name, m.ae_title, m.host, m.port, _PEER_SOURCES.get(m.source, ""))


@dataclass(frozen=True)
class ReindexStatus:
    """The progress of a re-indexing operation started by adding query tags."""

    operation_id: str
    processed_instances: int
    total_instances: int
    done: bool

    @classmethod
    def from_message(cls, m: mpb.GetReindexStatusResponse) -> ReindexStatus:
        """Decode a ``GetReindexStatusResponse``."""
        return cls(m.operation_id, m.processed_instances, m.total_instances, m.done)
