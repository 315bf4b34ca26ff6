from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicomrpc_server.dicom.uids import UidCheck, check_uid


@pytest.mark.parametrize(
    ("uid", "verdict"),
    [
        ("1.2.840.10008.1.2.1", UidCheck.VALID),
        ("0", UidCheck.VALID),
        ("1.2.0.3", UidCheck.VALID),
        ("1.2.03", UidCheck.NONCONFORMANT),
        ("1..2", UidCheck.NONCONFORMANT),
        ("1.2.3a", UidCheck.NONCONFORMANT),
        ("", UidCheck.INVALID),
        ("1" * 65, UidCheck.INVALID),
        ("1.2/3", UidCheck.INVALID),
        ("1.2\\3", UidCheck.INVALID),
        ("1.2 3", UidCheck.INVALID),
        ("..", UidCheck.NONCONFORMANT),
        ("1.2\x00", UidCheck.INVALID),
    ],
)
def test_check_uid(uid: str, verdict: UidCheck) -> None:
    assert check_uid(uid)[0] is verdict


@given(st.text(max_size=80))
def test_no_accepted_uid_can_escape_a_path(uid: str) -> None:
    verdict, why = check_uid(uid)
    if verdict is not UidCheck.INVALID:
        assert 1 <= len(uid) <= 64
        assert not set(uid) & {"/", "\\", " ", "\t", "\n", "\x00"}
        assert uid.isascii() and uid.isprintable()
    else:
        assert why
