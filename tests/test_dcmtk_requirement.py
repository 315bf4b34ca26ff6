"""Without dcmtk the DIMSE tests skip, unless CI requires them (``DICOMRPC_REQUIRE_DCMTK=1``)."""

from __future__ import annotations

import pytest

from tests import dcmtk


def test_missing_tools_skip_or_fail_as_ci_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("DICOMRPC_REQUIRE_DCMTK", raising=False)
    with pytest.raises(pytest.skip.Exception, match="echoscu"):
        dcmtk.require_dcmtk()
    monkeypatch.setenv("DICOMRPC_REQUIRE_DCMTK", "1")
    with pytest.raises(pytest.fail.Exception, match="apt-get install dcmtk"):
        dcmtk.require_dcmtk()
