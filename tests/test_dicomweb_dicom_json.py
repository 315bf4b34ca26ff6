"""DICOM JSON written in slices is the JSON ``json.dumps`` writes."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dicomrpc_server.dicomweb.dicom_json import SLICE_ITEMS, encode

_values = st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=5))


def _attributes(datasets: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Any]:
    plain = st.fixed_dictionaries(
        {"vr": st.sampled_from(["LO", "DS"])}, optional={"Value": st.lists(_values, max_size=3)}
    )
    sequence = st.fixed_dictionaries(
        {"vr": st.just("SQ")}, optional={"Value": st.lists(datasets, max_size=4)}
    )
    return st.one_of(plain, sequence, st.text(max_size=3))


_datasets = st.recursive(
    st.dictionaries(st.text(max_size=8), st.fixed_dictionaries({"vr": st.just("UI")}), max_size=3),
    lambda inner: st.dictionaries(st.text(max_size=8), _attributes(inner), max_size=4),
    max_leaves=30,
)


@given(st.lists(_datasets, max_size=4), st.integers(0, 3))
def test_the_same_json_as_one_call(body: list[dict[str, Any]], slice_items: int) -> None:
    assert encode(body, slice_items) == json.dumps(body, separators=(",", ":")).encode()


def _item(n: int) -> dict[str, Any]:
    return {"00081155": {"vr": "UI", "Value": [f"1.2.{n}"]}, "00081160": {"vr": "IS", "Value": [1]}}


def test_large_sequences_at_any_depth_are_sliced_and_still_the_same_json() -> None:
    deep = {
        "30060039": {
            "vr": "SQ",
            "Value": [
                {"30060040": {"vr": "SQ", "Value": [_item(n) for n in range(3 * SLICE_ITEMS)]}}
            ],
        }
    }
    flat = {
        "00081140": {"vr": "SQ", "Value": [_item(n) for n in range(3 * SLICE_ITEMS)]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Dö^J"}]},
    }
    for options in ({}, {"ensure_ascii": False, "allow_nan": False}):
        for body in ([deep, flat], flat):
            expected = json.dumps(body, separators=(",", ":"), **options).encode()
            assert encode(body, **options) == expected
