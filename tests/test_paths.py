"""Every URL the archive builds percent-encodes each component it puts in."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from hypothesis import given
from hypothesis import strategies as st

from dicomrpc_server.dicomweb.qido import _retrieve_url
from dicomrpc_server.dicomweb.stow import response_dataset
from dicomrpc_server.paths import (
    bulk_data_path,
    instance_path,
    segment,
    series_path,
    study_path,
    workitem_path,
)
from dicomrpc_server.store.ingest import InstanceResult, Outcome

HOSTILE = ["1.2/3", "..", "1.2?x=1", "1.2#f", "1.2%2F", "é", "a b", "1.2\x00"]
ROOT = "http://archive.test/dicomweb"


@given(st.text(min_size=1))
def test_a_segment_is_one_segment_and_decodes_back(value: str) -> None:
    encoded = segment(value)
    assert not set(encoded) & set("/?#\\ \x00") and encoded.isascii()
    assert unquote(encoded) == value


@given(st.lists(st.text(min_size=1), min_size=3, max_size=3))
def test_an_instance_path_has_exactly_its_segments(uids: list[str]) -> None:
    study, series, sop = uids
    url = urlsplit(f"{ROOT}/{bulk_data_path(instance_path(study, series, sop), 'x/y')}")
    assert not url.query and not url.fragment
    parts = url.path.split("/")
    expected = ["studies", segment(study), "series", segment(series), "instances", segment(sop)]
    assert parts[2:] == [*expected, "bulkdata", "x%2Fy"]
    assert [unquote(p) for p in parts[3:8:2]] == [study, series, sop]


def test_valid_uids_are_left_as_they_are() -> None:
    assert instance_path("1.2", "1.3", "1.4-a_B") == "studies/1.2/series/1.3/instances/1.4-a_B"
    assert series_path("1.2", "1.3") == "studies/1.2/series/1.3"
    assert study_path("1.2") == "studies/1.2"
    assert workitem_path("2.25.1") == "workitems/2.25.1"


def test_search_results_and_store_responses_encode_what_they_insert() -> None:
    for uid in HOSTILE:
        obj = {"0020000D": {"vr": "UI", "Value": [uid]}, "0020000E": {"vr": "UI", "Value": [uid]}}
        obj["00080018"] = {"vr": "UI", "Value": [uid]}
        assert _retrieve_url(obj, "instance", {}) == instance_path(uid, uid, uid)
        assert _retrieve_url(obj, "series", {}) == series_path(uid, uid)
        result = InstanceResult(0, "", Outcome.STORED, uid, uid, uid, "1.2.840.10008.5.1.4.1.1.2")
        body = response_dataset(ROOT, uid, [result])
        assert body["00081190"]["Value"] == [f"{ROOT}/{study_path(uid)}"]
        item = body["00081199"]["Value"][0]
        assert item["00081190"]["Value"] == [f"{ROOT}/{instance_path(uid, uid, uid)}"]
        assert urlsplit(item["00081190"]["Value"][0]).path.count("/") == 7
