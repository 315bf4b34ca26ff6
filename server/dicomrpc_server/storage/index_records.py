"""What every instance index derives from the records it stores, computed in one place.

The LMDB index (:mod:`.lmdb_index`) and the PostgreSQL index (:mod:`.postgres.index`) keep the
same records and answer the same searches, so they must derive the same things from them:

- the secondary-index terms of a study, series or instance record (:func:`record_terms`), which
  the search planner scans, and the changes of terms when a record is replaced
  (:func:`term_changes`);
- the study and series aggregates after a store or a removal: instance and series counts,
  the modalities of a study with their instance counts (ModalitiesInStudy, PS3.4 C.6.1.1.3),
  and the level attributes, of which the latest stored instance's win;
- the values of extended query tags copied into the level records (:func:`add_extended`).

Each index only writes the results in its own way: a computation here changes both at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from dicomrpc.v1 import dataset_pb2
from dicomrpc_server.dicom.attributes import ATTRIBUTES_BY_LEVEL, NESTED_ATTRIBUTES, Level
from dicomrpc_server.errors import Code, ServiceError
from dicomrpc_server.query.extended import extract
from dicomrpc_server.query.terms import EXACT, NUMBER, value_terms
from dicomrpc_server.storage import keys, records_pb2
from dicomrpc_server.storage.protocols import NewInstance

MODALITIES_IN_STUDY = 0x00080061
Record = records_pb2.StudyRecord | records_pb2.SeriesRecord | records_pb2.InstanceRecord
Terms = set[tuple[int, bytes]]
RECORD_TYPES: dict[Level, type[Record]] = {
    Level.STUDY: records_pb2.StudyRecord,
    Level.SERIES: records_pb2.SeriesRecord,
    Level.INSTANCE: records_pb2.InstanceRecord,
}

_SEARCHABLE: dict[Level, list[tuple[int, str, str]]] = {
    level: [(a.tag, a.hex_tag, a.vr) for a in attrs if a.searchable]
    for level, attrs in ATTRIBUTES_BY_LEVEL.items()
}


def record_terms(level: Level, record: Record, extended: list[records_pb2.QueryTagRecord]) -> Terms:
    """The secondary-index entries of a record: its searchable, valid attribute values.

    The values of extended query tags are indexed as their registered VR says; a value that is
    not valid for it (or too long for a key) is returned by searches but not indexed.
    """
    attributes = record.attributes.attributes
    skip = set(record.unindexed_tags)
    out: Terms = set()
    for tag, hex_tag, vr in _SEARCHABLE[level]:
        if hex_tag in skip or hex_tag not in attributes:
            continue
        for term in value_terms(vr, attribute_values(attributes[hex_tag])):
            out.add((tag, term))
    for nested in NESTED_ATTRIBUTES:
        sequence = nested.sequence
        if sequence.level != level or sequence.hex_tag not in attributes:
            continue
        for item in attributes[sequence.hex_tag].sequence.items:
            leaf = item.attributes.get(nested.leaf.hex_tag)
            if leaf is None:
                continue
            for term in value_terms(nested.leaf.vr, attribute_values(leaf)):
                out.add((nested.leaf.tag, nested.term_kind + term))
    for query_tag in extended:
        hex_tag = query_tag.hex_tag
        if query_tag.level != level or hex_tag not in attributes or hex_tag in skip:
            continue
        try:
            terms = value_terms(query_tag.vr, attribute_values(attributes[hex_tag]))
        except ValueError:
            continue
        out.update((int(hex_tag, 16), t) for t in terms)
    if isinstance(record, records_pb2.StudyRecord):
        for modality, count in record.modality_counts.items():
            if count > 0:
                out.add((MODALITIES_IN_STUDY, EXACT + modality.encode()))
    return out


def term_changes(
    level: Level,
    old: Record | None,
    new: Record | None,
    extended: list[records_pb2.QueryTagRecord],
) -> tuple[Terms, Terms]:
    """The entries to remove and to add when a record changes (``None``: there is none).

    Only what differs moves: a study whose instance count changes keeps its entries.
    """
    old_terms = record_terms(level, old, extended) if old is not None else set()
    new_terms = record_terms(level, new, extended) if new is not None else set()
    return old_terms - new_terms, new_terms - old_terms


def split_term(rest: bytes) -> tuple[bytes, bytes]:
    """The term and the primary key of a secondary-index key, after its level and tag."""
    if rest[:1] == NUMBER:  # fixed width: the 8 bytes may hold NULs
        return rest[: len(NUMBER) + 8], rest[len(NUMBER) + 9 :]
    cut = rest.index(keys.SEP)
    return rest[:cut], rest[cut + 1 :]


def add_extended(new: NewInstance, extended: list[records_pb2.QueryTagRecord]) -> None:
    """Copy the values of the extended query tags from the metadata into the level records."""
    if not extended:
        return
    metadata = dataset_pb2.Dataset.FromString(new.metadata)
    targets = {
        Level.STUDY: new.study_attributes.attributes,
        Level.SERIES: new.series_attributes.attributes,
        Level.INSTANCE: new.record.attributes,
    }
    for tag in extended:
        value = extract(metadata, tag)
        if value is not None:
            targets[Level(tag.level)].attributes[tag.hex_tag].CopyFrom(value)


@dataclass
class Rewrite:
    """A record a re-indexing batch rewrites, and the entries it loses and gains."""

    level: Level
    key: bytes
    record: Record
    removed: Terms
    added: Terms


def reindexed(
    instances: Iterable[tuple[bytes, bytes]],
    load: Callable[[Level, bytes], bytes | None],
    tags: list[records_pb2.QueryTagRecord],
    extended: list[records_pb2.QueryTagRecord],
) -> list[Rewrite]:
    """The records a re-indexing batch rewrites for ``tags``, with their entries' changes.

    ``instances`` are the (key, metadata) of the instances walked; ``load`` reads a record
    of a level by key (None when there is none); ``extended`` is every registered tag, as the
    batch's transaction reads them (``tags`` among them). Each record of the tags' levels that
    holds a walked instance gets the tags' values from the instance's metadata.
    """
    levels = sorted({Level(t.level) for t in tags})
    loaded: dict[tuple[Level, bytes], tuple[Record, Record]] = {}
    for ikey, raw_metadata in instances:
        metadata = dataset_pb2.Dataset.FromString(raw_metadata)
        parts = ikey.split(keys.SEP)
        for level in levels:
            pk = keys.SEP.join(parts[: int(level)])
            if (level, pk) not in loaded:
                raw = load(level, pk)
                if raw is None:
                    continue
                parse = RECORD_TYPES[level].FromString
                loaded[(level, pk)] = (parse(raw), parse(raw))
            record = loaded[(level, pk)][1]
            for tag in tags:
                if tag.level != level:
                    continue
                value = extract(metadata, tag)
                if value is not None:
                    record.attributes.attributes[tag.hex_tag].CopyFrom(value)
    # Before this walk the records had no entries for these tags, whatever they held.
    walked = {t.hex_tag for t in tags}
    before = [t for t in extended if t.hex_tag not in walked]
    out = []
    for (level, pk), (old, new) in loaded.items():
        old_terms = record_terms(level, old, before)
        new_terms = record_terms(level, new, extended)
        out.append(Rewrite(level, pk, new, old_terms - new_terms, new_terms - old_terms))
    return out


def strip_tag(record: Record, hex_tag: str) -> bool:
    """Remove an unregistered extended tag's value from a record; whether it had one."""
    if hex_tag not in record.attributes.attributes:
        return False
    del record.attributes.attributes[hex_tag]
    return True


def kept_by_level(hex_tag: str) -> Level | None:
    """The level whose records keep a standard attribute anyway (returned by searches)."""
    for level, attributes in ATTRIBUTES_BY_LEVEL.items():
        if any(a.hex_tag == hex_tag for a in attributes):
            return level
    return None


def attribute_values(attribute: dataset_pb2.Attribute) -> list[object]:
    """The plain values of an attribute (person names as their alphabetic form)."""
    kind = attribute.WhichOneof("value")
    if kind == "strings":
        return list(attribute.strings.values)
    if kind == "numbers":
        return [int(v) if v.is_integer() else v for v in attribute.numbers.values]
    if kind == "integers":
        return list(attribute.integers.values)
    if kind == "unsigned_integers":
        return list(attribute.unsigned_integers.values)
    if kind == "person_names":
        return [p.alphabetic for p in attribute.person_names.values]
    return []


# -- errors ----------------------------------------------------------------------------------


SERIES_INSTANCE_UID = 0x0020000E
Scan = Callable[..., list[tuple[bytes, bytes]]]


def studies_of_series(scan: Scan, series: str) -> list[str]:
    """The studies holding a series of this SeriesInstanceUID, through the series' UID terms.

    A series belongs to one study (PS3.3 C.7.3.1); the archive keys series under their study,
    so the same UID sent under two studies makes two series, and this finds them.
    """
    term = EXACT + series.encode()
    found = scan(Level.SERIES, SERIES_INSTANCE_UID, term, term + keys.SEP)
    return sorted({pk.split(keys.SEP, 1)[0].decode() for _, pk in found})


# Extended query tags are indexed on every store: their number is bounded, on every index.
MAX_QUERY_TAGS = 128


def query_tag_removing_error(tag: records_pb2.QueryTagRecord) -> ServiceError:
    """The refusal to add a tag whose removal has not finished."""
    return ServiceError(
        Code.FAILED_PRECONDITION,
        "INVALID_REQUEST",
        f"extended query tag {tag.keyword or tag.hex_tag} is still being "
        "removed; add it again once that is done",
        metadata={"tag": tag.hex_tag},
    )


def too_many_query_tags_error(registered: int, adding: int) -> ServiceError:
    """The refusal to register tags past :data:`MAX_QUERY_TAGS`."""
    return ServiceError(
        Code.RESOURCE_EXHAUSTED,
        "LIMIT_EXCEEDED",
        f"{registered} extended query tags are registered; {adding} more would "
        f"pass this archive's limit of {MAX_QUERY_TAGS} (every store indexes them all)",
        metadata={"limit": "max_query_tags", "value": str(MAX_QUERY_TAGS)},
    )


def query_tag_exists_error(tag: records_pb2.QueryTagRecord) -> ServiceError:
    """The refusal to register a tag registered already."""
    return ServiceError(
        Code.ALREADY_EXISTS,
        "INVALID_REQUEST",
        f"extended query tag {tag.keyword or tag.hex_tag} exists already",
        metadata={"tag": tag.hex_tag},
    )


def instance_exists_error(study: str, series: str, sop: str, where: str = "") -> ServiceError:
    """The 45070 error of an instance that is already stored."""
    message = f"an instance with SOPInstanceUID {sop} already exists" + (
        f" in study {where}" if where else f" in study {study}, series {series}"
    )
    return ServiceError(
        Code.ALREADY_EXISTS,
        "INSTANCE_ALREADY_EXISTS",
        message,
        dicom_status=45070,
        metadata={
            "study_instance_uid": study,
            "series_instance_uid": series,
            "sop_instance_uid": sop,
        },
    )


def not_stored_error(study: str, series: str, sop: str) -> ServiceError:
    """The NOT_FOUND error of a delete that names nothing stored."""
    what = (
        f"instance {sop} of series {series} in study {study}"
        if sop
        else f"series {series} in study {study}"
        if series
        else f"study {study}"
    )
    return ServiceError(
        Code.NOT_FOUND,
        "RESOURCE_NOT_FOUND",
        f"{what} is not stored",
        metadata={
            "study_instance_uid": study,
            "series_instance_uid": series,
            "sop_instance_uid": sop,
        },
    )


# -- aggregates ------------------------------------------------------------------------------


def stored_series(
    old: records_pb2.SeriesRecord | None, new: NewInstance, version: int
) -> records_pb2.SeriesRecord:
    """The series record after ``new`` is stored in it (``old``: before, if it existed).

    The series attributes are the new instance's (the latest stored wins); the count grows.
    ``new.series_attributes`` becomes the record.
    """
    record = new.series_attributes
    record.instance_count = (old.instance_count if old else 0) + 1
    record.version = version
    return record


def stored_study(
    old: records_pb2.StudyRecord | None, new: NewInstance, new_series: bool, version: int
) -> records_pb2.StudyRecord:
    """The study record after ``new`` is stored in it; ``new_series``: its series is new.

    ``new.study_attributes`` becomes the record, with the counts and modalities carried on.
    """
    record = new.study_attributes
    record.series_count = (old.series_count if old else 0) + (1 if new_series else 0)
    record.instance_count = (old.instance_count if old else 0) + 1
    if old:
        record.modality_counts.update(old.modality_counts)
    if new.record.modality:
        record.modality_counts[new.record.modality] += 1
    record.version = version
    return record


@dataclass
class Removal:
    """What removing some instances of one study takes from its series and study records."""

    per_series: dict[str, int] = field(default_factory=dict)
    modalities: dict[str, int] = field(default_factory=dict)
    instances: int = 0

    def add(self, series_uid: str, record: records_pb2.InstanceRecord) -> None:
        """Count one removed instance."""
        self.per_series[series_uid] = self.per_series.get(series_uid, 0) + 1
        if record.modality:
            self.modalities[record.modality] = self.modalities.get(record.modality, 0) + 1
        self.instances += 1

    @classmethod
    def of(cls, removed: Iterable[tuple[str, records_pb2.InstanceRecord]]) -> Removal:
        """The removal of these (series UID, instance record) pairs."""
        out = cls()
        for series_uid, record in removed:
            out.add(series_uid, record)
        return out


def series_after_removal(
    old: records_pb2.SeriesRecord, removed: int
) -> records_pb2.SeriesRecord | None:
    """The series record after ``removed`` of its instances are gone; ``None``: it is empty."""
    updated = records_pb2.SeriesRecord()
    updated.CopyFrom(old)
    updated.instance_count -= removed
    return updated if updated.instance_count > 0 else None


def study_after_removal(
    old: records_pb2.StudyRecord, removal: Removal, emptied_series: int
) -> records_pb2.StudyRecord | None:
    """The study record after a removal that emptied ``emptied_series``; ``None``: empty."""
    updated = records_pb2.StudyRecord()
    updated.CopyFrom(old)
    updated.instance_count -= removal.instances
    updated.series_count -= emptied_series
    for modality, count in removal.modalities.items():
        left = updated.modality_counts[modality] - count
        if left > 0:
            updated.modality_counts[modality] = left
        else:
            del updated.modality_counts[modality]
    return updated if updated.instance_count > 0 else None
