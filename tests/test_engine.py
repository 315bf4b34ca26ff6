"""Match values as the search core reads them: DICOM's number and date syntax, wildcards.

Searched on a real archive (the fuzzing harnesses' one: instances with extended query tags of
each VR, workitems), where each of these values once gave a 500, a wrong match or a hang.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicomrpc_server.errors import Code, ServiceError
from dicomrpc_server.query import terms
from dicomrpc_server.query.engine import SearchRequest
from dicomrpc_server.ups.index import match_terms
from dicomrpc_server.ups.service import WorkitemQuery
from tests.fuzz.archive import TempArchive

# Enough stars that a regular expression with one ``.*`` each backtracks for hours on a stored
# name that starts with the letter before them (40 took 10 s on "doe^john").
MANY_STARS = "*" * 80 + "x"


@pytest.fixture(scope="module")
def archive() -> Iterator[TempArchive]:
    filled = TempArchive()
    try:
        filled.fill()
        yield filled
    finally:
        filled.close()


def _refused(archive: TempArchive, match: dict[str, str]) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        archive.archive.search.search(SearchRequest("instance", match=match))
    assert caught.value.code is Code.INVALID_ARGUMENT
    return caught.value


@pytest.mark.slow
def test_an_integer_outside_64_bits_is_refused_not_wrapped(archive: TempArchive) -> None:
    # 2**64 + 1 encoded modulo 2**64 is the term of 1: it found InstanceNumber 1.
    error = _refused(archive, {"InstanceNumber": str(2**64 + 1)})
    assert error.violations[0].field == "InstanceNumber"
    assert "64-bit" in error.message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("InstanceNumber", "1_0"),  # int() reads 10
        ("InstanceNumber", "\u0661"),  # Arabic-Indic one: int() reads 1
        ("ExaminedBodyThickness", "\uff11\uff12.5"),  # fullwidth digits: float() reads 12.5
        ("PatientWeight", "7_1.5"),
        ("StudyDate", "\u0662\u0660\u0662\u0660\u0660\u0662\u0662\u0669"),  # \d took them
        ("StudyTime", "\u0660\u0669\u0663\u0660"),
    ],
)
def test_numbers_dates_and_times_are_ascii(archive: TempArchive, name: str, value: str) -> None:
    assert _refused(archive, {name: value}).violations[0].field == name


def test_an_fl_value_beyond_single_precision_is_refused(archive: TempArchive) -> None:
    # struct.pack("<f", 1e39) raised OverflowError: a 500.
    error = _refused(archive, {"ExaminedBodyThickness": "1e39"})
    assert error.violations[0].field == "ExaminedBodyThickness"
    assert "range of FL" in error.message


def test_a_value_holding_nul_is_refused_everywhere(archive: TempArchive) -> None:
    # Index keys end a term with NUL: "INCOMPLETE\0" found the INCOMPLETE workitem by its
    # prefix, while an event filter with the same key (matched on whole terms) did not.
    assert _refused(archive, {"PatientID": "PAT-1\x00"}).violations[0].field == "PatientID"
    query = WorkitemQuery(match={"InputReadinessState": "INCOMPLETE\x00"})
    with pytest.raises(ServiceError) as caught:
        archive.archive.workitems.search(query)
    assert caught.value.violations[0].field == "InputReadinessState"
    with pytest.raises(ServiceError) as caught:
        match_terms({"ScheduledStationNameCodeSequence.CodeValue": "ST1\x00"})  # a filter
    assert caught.value.violations[0].field == "ScheduledStationNameCodeSequence.CodeValue"


@pytest.mark.parametrize(
    ("name", "value", "count"),
    [
        ("InstanceNumber", " +1 ", 2),
        ("ExaminedBodyThickness", "1.25e1", 2),
        ("ExaminedBodyThickness", "-0", 1),
        ("XAAcquisitionFrameRate", "25.000", 2),
        ("TagAngleSecondAxis", "-3", 2),
    ],
)
def test_dicom_numbers_still_match(archive: TempArchive, name: str, value: str, count: int) -> None:
    page = archive.archive.search.search(SearchRequest("instance", match={name: value}))
    assert len(page.results) == count


@pytest.mark.timeout(60)
def test_many_wildcards_answer_at_once(archive: TempArchive) -> None:
    page = archive.archive.search.search(
        SearchRequest("study", match={"PatientName": "M" + MANY_STARS})
    )
    assert page.results == []
    found = archive.archive.search.search(
        SearchRequest("study", match={"PatientName": "M" + "*?" * 8 + "*" * 30 + "Maria"})
    )
    assert len(found.results) == 1


@pytest.mark.timeout(60)
def test_many_wildcards_answer_at_once_in_a_workitem_search(archive: TempArchive) -> None:
    assert (
        archive.archive.workitems.search(WorkitemQuery(match={"PatientName": "D" + MANY_STARS}))
        == []
    )


def _regex(pattern: str) -> re.Pattern[str]:
    """The wildcard rules as a regular expression (fine for short patterns)."""
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body, re.DOTALL)


@given(st.text("ab*?.\n", max_size=8), st.text("ab.\n", max_size=10))
def test_wildcards_match_as_the_rules_say(pattern: str, value: str) -> None:
    from dicomrpc_server.query.engine import wildcard_matcher

    expected = _regex(pattern).fullmatch(value) is not None
    assert wildcard_matcher(pattern)(value) is expected


def test_terms_refuse_what_they_cannot_encode() -> None:
    with pytest.raises(ValueError, match="64-bit"):
        terms.integer_term(1 << 63)
    assert terms.integer_term(-(1 << 63)) < terms.integer_term(0)
    assert terms.integer_term(0) < terms.integer_term((1 << 63) - 1)
    with pytest.raises(ValueError, match="range of FL"):
        terms.decimal_term("FL", "-3.5e38")
    assert terms.decimal_term("FD", "1e39") == b"=1e+39"
    assert terms.decimal_term("DS", "-0") == terms.decimal_term("DS", "0.00")
    for text in ("1e", ".", "0x10", "1 2", "\u00bd", "1_0"):
        with pytest.raises(ValueError):
            terms.decimal_term("DS", text)
