"""The DICOMweb paths the archive writes into what it answers, each component percent-encoded.

RetrieveURLs (store results, search results), bulk data URIs (metadata) and workitem
``Location`` headers name resources by their UIDs. UIDs that may name a resource are safe keys
(:mod:`dicomrpc_server.dicom.uids`), which percent-encoding leaves as they are; encoding each
component anyway (RFC 3986 §2.1, with nothing kept as a delimiter) means that no value the
archive puts in a path can ever add a segment, a query or a fragment to it.

Paths are relative to the DICOMweb service root: the gRPC API returns them as they are, and the
gateway prefixes its root.
"""

from __future__ import annotations

from urllib.parse import quote


def segment(value: str) -> str:
    """One path segment: ``value`` with every character outside RFC 3986's unreserved encoded."""
    return quote(value, safe="")


def study_path(study: str) -> str:
    """``studies/{study}``."""
    return f"studies/{segment(study)}"


def series_path(study: str, series: str) -> str:
    """``studies/{study}/series/{series}``."""
    return f"{study_path(study)}/series/{segment(series)}"


def instance_path(study: str, series: str, sop: str) -> str:
    """``studies/{study}/series/{series}/instances/{instance}``."""
    return f"{series_path(study, series)}/instances/{segment(sop)}"


def bulk_data_path(instance: str, tag_path: str) -> str:
    """The bulk data URI of the element at ``tag_path`` of the instance at path ``instance``."""
    return f"{instance}/bulkdata/{segment(tag_path)}"


def workitem_path(workitem: str) -> str:
    """``workitems/{workitem}``."""
    return f"workitems/{segment(workitem)}"
