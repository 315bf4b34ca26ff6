from __future__ import annotations

from urllib.parse import quote, urljoin

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicomrpc_server.dicom.uids import UidCheck, check_request_uid, check_uid, uid_error
from dicomrpc_server.errors import Code, ServiceError


@pytest.mark.parametrize(
    ("uid", "verdict"),
    [
        ("1.2.840.10008.1.2.1", UidCheck.VALID),
        ("0", UidCheck.VALID),
        ("1.2.0.3", UidCheck.VALID),
        ("1" * 64, UidCheck.VALID),
        ("1.2.03", UidCheck.NONCONFORMANT),
        ("1.2.3a", UidCheck.NONCONFORMANT),
        ("1.2.3-a_B", UidCheck.NONCONFORMANT),
        ("1.2.", UidCheck.NONCONFORMANT),
        (".1", UidCheck.NONCONFORMANT),
        ("", UidCheck.INVALID),
        ("1" * 65, UidCheck.INVALID),
        ("1.2/3", UidCheck.INVALID),
        ("1.2\\3", UidCheck.INVALID),
        ("1.2 3", UidCheck.INVALID),
        ("1.2\x00", UidCheck.INVALID),
        ("1.2\x003", UidCheck.INVALID),
        ("..", UidCheck.INVALID),
        (".", UidCheck.INVALID),
        ("1..2", UidCheck.INVALID),
        ("1.2%2F3", UidCheck.INVALID),
        ("1.2?x=1", UidCheck.INVALID),
        ("1.2#x", UidCheck.INVALID),
        ("1.2,1.3", UidCheck.INVALID),
        ("1.2*", UidCheck.INVALID),
        ("1.2~", UidCheck.INVALID),
        ("1.2+3", UidCheck.INVALID),
        ("1.2\n", UidCheck.INVALID),
        ("é", UidCheck.INVALID),
        ("\ufffd", UidCheck.INVALID),
        ("1.2.٣", UidCheck.INVALID),  # a digit, but not an ASCII one
    ],
)
def test_check_uid(uid: str, verdict: UidCheck) -> None:
    assert check_uid(uid)[0] is verdict


@given(st.text(max_size=80))
def test_no_accepted_uid_can_escape_a_key_or_a_path(uid: str) -> None:
    verdict, why = check_uid(uid)
    if verdict is UidCheck.INVALID:
        assert why
        return
    assert 1 <= len(uid) <= 64
    assert uid.isascii() and uid.isprintable()
    assert not set(uid) & set("\x00/\\?#%, *")
    assert ".." not in uid and uid != "."
    # As a path segment it is left as it is by encoding, and names exactly one segment.
    assert quote(uid, safe="") == uid
    assert urljoin("http://h/dicomweb/studies/", uid).endswith(f"/studies/{uid}")


@given(st.text(alphabet="0123456789.", min_size=1, max_size=64))
def test_digits_and_dots_are_never_refused_unless_a_component_is_empty(uid: str) -> None:
    verdict, _ = check_uid(uid)
    assert (verdict is UidCheck.INVALID) == (".." in uid or uid == ".")


def test_a_request_uid_error_names_the_field_and_the_character() -> None:
    error = uid_error("study", "1.2\x003")
    assert isinstance(error, ServiceError)
    assert error.code is Code.INVALID_ARGUMENT
    assert error.violations[0].field == "study"
    assert "U+0000" in error.message
    assert uid_error("study", "") is None  # whether a UID may be absent is not this rule's
    assert check_request_uid("study", "1.2.3") == "1.2.3"
    with pytest.raises(ServiceError, match=r"workitem_uid: '\.\.' contains an empty component"):
        check_request_uid("workitem_uid", "..")


def test_a_long_value_is_quoted_short() -> None:
    error = uid_error("study", "%" * 10_000)
    assert error is not None and len(error.message) < 300
