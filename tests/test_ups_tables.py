"""The UPS tables hold together: VRs as the data dictionary has them, every state pair covered,
and the index terms of one workitem scan as the LMDB index scans them."""

from __future__ import annotations

import itertools

import pytest
from pydicom.datadict import dictionary_VR

from dicomrpc.datasets import from_json
from dicomrpc_server.dicom.attributes import Level
from dicomrpc_server.query.engine import TermMatcher
from dicomrpc_server.ups import states
from dicomrpc_server.ups.index import TermSet, match_terms, workitem_terms
from dicomrpc_server.ups.requirements import (
    TABLE,
    Operation,
    Row,
    Rule,
    check,
    final_state_missing,
    uid_violations,
)
from tests.upsgen import code, dataset, tag, workitem


def _rows(rows: tuple[Row, ...]) -> list[Row]:
    return [r for row in rows for r in [row, *_rows(row.items)]]


@pytest.mark.parametrize("row", _rows(TABLE), ids=lambda r: r.keyword)
def test_row_vr_is_the_dictionary_vr(row: Row) -> None:
    assert row.vr == dictionary_VR(row.tag)
    assert bool(row.items) <= (row.vr == "SQ")


def test_every_state_pair_has_one_step() -> None:
    every = set(itertools.product(states.State, states.State))
    assert set(states.TRANSITIONS) == every
    assert set(states.UPDATES) == set(states.State) == set(states.CANCEL_REQUESTS)
    for step in [*states.TRANSITIONS.values(), *states.UPDATES.values()]:
        assert (step.status is None) == (step.kind not in (states.Kind.REFUSE, states.Kind.ALREADY))


def test_create_needs_type_1_and_2_attributes() -> None:
    required = {r.keyword for r in TABLE if r.create in (Rule.VALUE, Rule.PRESENT)}
    for keyword in required:
        violations = check(from_json(workitem(**{keyword: "<absent>"})), Operation.CREATE)
        assert [v.field for v in violations] == [keyword]
    assert check(from_json(workitem()), Operation.CREATE) == []


def test_final_states_name_what_is_missing() -> None:
    bare = from_json(workitem(ProcedureStepState="IN PROGRESS"))
    completed = final_state_missing(bare, "COMPLETED")
    canceled = final_state_missing(bare, "CANCELED")
    # The server fills the SOP Class/Instance UIDs and the modification date-time itself.
    assert set(completed) == {
        "SOPClassUID",
        "SOPInstanceUID",
        "ScheduledProcedureStepModificationDateTime",
        "UnifiedProcedureStepPerformedProcedureSequence",
    }
    assert set(canceled) == (
        set(completed) - {"UnifiedProcedureStepPerformedProcedureSequence"}
    ) | {"ProcedureStepProgressInformationSequence"}


def test_one_workitem_matches_as_the_index_would() -> None:
    ds = from_json(
        workitem(
            PatientName="Müller^Anna",
            ScheduledStationNameCodeSequence=[code("ST7", "Seven")],
            ProcedureStepState="SCHEDULED",
        )
    )
    terms = TermSet(b"1.2.3", workitem_terms(ds))
    assert terms.matches(match_terms({"PatientName": "mull"}), fuzzy=True)
    assert not terms.matches(match_terms({"PatientName": "mull"}), fuzzy=False)
    assert terms.matches(match_terms({"PatientName": "MÜLLER^ANNA"}), fuzzy=False)
    assert terms.matches(match_terms({"ScheduledStationNameCodeSequence.CodeValue": "ST7"}), False)
    assert not terms.matches(
        match_terms({"ScheduledStationNameCodeSequence.CodeValue": "ST"}), False
    )
    assert terms.matches(match_terms({"ScheduledProcedureStepStartDateTime": "2024-"}), False)
    assert not terms.matches(match_terms({"ScheduledProcedureStepStartDateTime": "-2023"}), False)
    assert terms.matches(match_terms({"ProcedureStepState": "SCHED*"}), False)
    matcher = TermMatcher(terms.scan)
    (state,) = match_terms({"ProcedureStepState": "SCHEDULED"})
    assert matcher.match(state, False) == {b"1.2.3"}
    assert state.attribute.level is Level.WORKITEM
    assert match_terms({"PatientID": ""}) == []  # universal matching


def test_every_uid_of_a_workitem_must_be_a_safe_key_at_any_depth() -> None:
    assert uid_violations(from_json(workitem(StudyInstanceUID="1.2.03"))) == []  # lenient
    ds = from_json(
        workitem(
            SOPInstanceUID="1.2/3",
            InputInformationSequence=[dataset(ReferencedSOPInstanceUID=["1.2", "..", ""])],
        )
    )
    ds.attributes["not a tag"].vr = "UI"  # a message built by hand keys with anything
    ds.attributes["not a tag"].strings.values.append("1.2#3")
    fields = [v.field for v in uid_violations(ds)]
    assert fields == [
        "SOPInstanceUID",
        "InputInformationSequence[0].ReferencedSOPInstanceUID",
        "not a tag",
    ]


def test_a_workitem_holds_only_dicom_attributes() -> None:
    ds = from_json(workitem(InputInformationSequence=[dataset(ReferencedSOPInstanceUID="1.2")]))
    ds.attributes["zz"].vr = "LO"
    item = ds.attributes[tag("InputInformationSequence")].sequence.items[0]
    item.attributes["00100010"].vr = "XX"
    fields = {v.field: v.description for v in uid_violations(ds)}
    assert set(fields) == {"InputInformationSequence[0].PatientName", "zz"}
    assert "8 hexadecimal digits" in fields["zz"]
    assert "'XX'" in fields["InputInformationSequence[0].PatientName"]
