"""The checked-in generated code is exactly what the .proto files generate."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_generated_code_matches_protos(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("generate", ROOT / "proto" / "generate.py")
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    written = generate.generate(tmp_path)
    assert written
    for fresh in written:
        checked_in = ROOT / fresh.relative_to(tmp_path)
        assert checked_in.exists(), f"{checked_in} is missing: run `make proto`"
        assert checked_in.read_bytes() == fresh.read_bytes(), (
            f"{checked_in} is stale: run `make proto`"
        )
