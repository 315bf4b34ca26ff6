"""The fuzzing harnesses in CI: each runs for a short budget, and every committed finding replays.

A budget run fails on any finding that ``tests/fuzz/known.py`` does not list; the listed
(open) ones make it an expected failure that names them. Each committed input under
``tests/fuzz/findings/HARNESS/`` is replayed: one listed as a reproducer of an open finding
must still fail (strict xfail: once it passes, its entry is removed), every other one must pass.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import atheris
import pytest

from tests.fuzz.bugs import signature
from tests.fuzz.campaign import Outcome, run
from tests.fuzz.harness import HARNESSES
from tests.fuzz.known import KNOWN_OPEN
from tests.fuzz.seeds import FdpSeed

FINDINGS = Path(__file__).parent / "fuzz" / "findings"
# Per harness: whichever comes first. Two harnesses run at a time (the machine's two cores).
BUDGET_INPUTS = 5000
BUDGET_S = 6.0


def test_seed_encoder_gives_the_provider_its_values() -> None:
    seed = FdpSeed().integer(3, 0, 5).integer(1000, 0, 65535).integer(-5, -10, 10)
    data = seed.data(b"ab").build()
    fdp = atheris.FuzzedDataProvider(FdpSeed().integer(7, 0, 1 << 40).data(b"xyz").build())
    assert fdp.ConsumeIntInRange(0, 1 << 40) == 7
    assert fdp.ConsumeBytes(fdp.remaining_bytes()) == b"xyz"
    fdp = atheris.FuzzedDataProvider(data)
    assert fdp.ConsumeIntInRange(0, 5) == 3
    assert fdp.ConsumeIntInRange(0, 65535) == 1000
    assert fdp.ConsumeIntInRange(-10, 10) == -5
    assert fdp.ConsumeBytes(2) == b"ab"
    assert fdp.remaining_bytes() == 0


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    work = tmp_path_factory.mktemp("fuzz")

    def one(name: str) -> Outcome:
        return run(name, work / name, BUDGET_INPUTS, BUDGET_S)

    with ThreadPoolExecutor(2) as pool:
        return dict(zip(HARNESSES, pool.map(one, HARNESSES), strict=True))


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("harness", list(HARNESSES))
def test_short_fuzzing_run_finds_no_new_bug(outcomes: dict[str, Outcome], harness: str) -> None:
    outcome = outcomes[harness]
    assert outcome.inputs > 0, f"{harness} ran no input: {outcome.findings}"
    new = outcome.new()
    assert not new, "new findings (fix them, or list them in tests/fuzz/known.py):\n" + "\n".join(
        f"- {f.kind} x{f.count}: {f.signature}\n{f.detail[-1500:]}" for f in new
    )
    known = outcome.known()
    if known:
        pytest.xfail(
            "known open findings: "
            + "; ".join(f"{f.signature} ({entry.owner})" for f, entry in known)
        )


def _regression_inputs() -> list[object]:
    reproducing = {
        (entry.harness, name): entry for entry in KNOWN_OPEN for name in entry.reproducers
    }
    params: list[object] = []
    for path in sorted(FINDINGS.glob("*/*")):
        if path.suffix in (".txt", ".md"):
            continue
        harness = path.parent.name
        entry = reproducing.pop((harness, path.name), None)
        marks = [pytest.mark.xfail(strict=True, reason=entry.reason)] if entry else []
        params.append(pytest.param(harness, path, marks=marks, id=f"{harness}/{path.name}"))
    assert not reproducing, f"reproducers listed but not committed: {sorted(reproducing)}"
    return params


@pytest.fixture(scope="module")
def harnesses() -> Iterator[dict[str, ModuleType]]:
    """Each harness module, set up once (an archive, a live server) and torn down at the end."""
    loaded: dict[str, ModuleType] = {}
    yield loaded
    for module in loaded.values():
        teardown = getattr(module, "teardown", None)
        if teardown is not None:
            teardown()


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("harness", "path"), _regression_inputs())
def test_committed_finding_does_not_reproduce(
    harnesses: dict[str, ModuleType], harness: str, path: Path
) -> None:
    if harness not in harnesses:
        module = importlib.import_module(HARNESSES[harness].module)
        if hasattr(module, "setup"):
            module.setup()
        harnesses[harness] = module
    module = harnesses[harness]
    try:
        module.TestOneInput(path.read_bytes())
    except Exception as exc:
        pytest.fail(f"{signature(exc)}: {exc}"[:3000])
