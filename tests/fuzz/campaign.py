"""Run a harness for a budget of inputs, in child processes, and collect what it found.

Each child is ``python -m tests.fuzz`` (see :mod:`tests.fuzz.__main__`). A child ends early on a
hang or an out-of-memory (libFuzzer writes the input as ``timeout-*`` / ``oom-*`` in
``crashes/``); the campaign records it and starts the next child for the rest of the budget,
on the corpus the earlier children grew.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.fuzz.bugs import CRASH, HANG, OOM, Finding, hang_signature, read_counter
from tests.fuzz.known import Known, known

REPO = Path(__file__).resolve().parents[2]
# A child that stops this many times without running an input is not started again.
MAX_FAILED_STARTS = 2


@dataclass
class Outcome:
    """What running one harness found.

    Attributes
    ----------
    harness
        The harness's name.
    inputs
        Inputs run, over every child.
    seconds
        Time spent running inputs (start-up not counted).
    cpu_seconds
        CPU time the inputs took (every thread of the harness process).
    wall_s
        Time from the first child's start to the last one's end.
    children
        How many child processes ran (one more per hang or out-of-memory).
    coverage
        The edges libFuzzer last reported covered.
    findings
        Every distinct finding, by signature.
    """

    harness: str
    inputs: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    wall_s: float = 0.0
    children: int = 0
    coverage: int = 0
    findings: dict[str, Finding] = field(default_factory=dict)

    def count(self, kind: str) -> int:
        """Inputs that showed a finding of ``kind``."""
        return sum(f.count for f in self.findings.values() if f.kind == kind)

    @property
    def exec_per_s(self) -> float:
        """Inputs per second while fuzzing."""
        return self.inputs / self.seconds if self.seconds else 0.0

    @property
    def exec_per_cpu_s(self) -> float:
        """Inputs per second of CPU time: the rate on a core of its own."""
        return self.inputs / self.cpu_seconds if self.cpu_seconds else 0.0

    def known(self) -> list[tuple[Finding, Known]]:
        """The findings the open-findings table lists."""
        out = []
        for finding in self.findings.values():
            entry = known(self.harness, finding.signature)
            if entry is not None:
                out.append((finding, entry))
        return out

    def new(self) -> list[Finding]:
        """The findings the open-findings table does not list: bugs nobody is fixing yet."""
        return [f for f in self.findings.values() if known(self.harness, f.signature) is None]

    def add(self, finding: Finding) -> None:
        """Count a finding (another child may have found it already)."""
        seen = self.findings.get(finding.signature)
        if seen is None:
            self.findings[finding.signature] = finding
        else:
            seen.count += finding.count


_COVERAGE = re.compile(rb"cov: (\d+)")
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


def _ended_by(log: str) -> Finding:
    """The finding of a child that libFuzzer (or a signal) ended."""
    artifact = _ARTIFACT.search(log)
    example = Path(artifact.group(1)).name if artifact else ""
    tail = log[-6000:]
    if "ERROR: libFuzzer: timeout" in log:
        return Finding(HANG, hang_signature(log), 1, example, tail)
    if "ERROR: libFuzzer: out-of-memory" in log:
        return Finding(OOM, "out of memory (over the RSS limit)", 1, example, tail)
    signal = re.search(r"ERROR: libFuzzer: (deadly signal|[a-z -]+)", log)
    what = signal.group(1) if signal else "the harness process ended"
    return Finding(CRASH, f"process died: {what}", 1, example, tail)


def run(
    harness: str,
    work: Path,
    inputs: int,
    seconds: float = 0.0,
    max_children: int = 50,
    python: str = sys.executable,
) -> Outcome:
    """Run ``harness`` for ``inputs`` inputs (or ``seconds``, if given, whichever ends first).

    ``work`` keeps the corpus between calls; each child writes ``log-N.txt`` there, and the
    first input of each finding goes to ``work/crashes``.
    """
    work.mkdir(parents=True, exist_ok=True)
    outcome = Outcome(harness)
    started = time.monotonic()
    failed_starts = 0
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    first = len(list(work.glob("log-*.txt")))  # a later call on the same folder goes on
    for number in range(first, first + max_children):
        left = inputs - outcome.inputs
        left_s = seconds - (time.monotonic() - started) if seconds else 0.0
        if left <= 0 or (seconds and left_s <= 0):
            break
        command = [python, "-m", "tests.fuzz", harness, "--work", str(work)]
        command += ["--inputs", str(left), "--run", str(number)]
        if seconds:
            command += ["--seconds", f"{left_s:.1f}"]
        log_path = work / f"log-{number}.txt"
        with open(log_path, "wb") as log:
            child = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        outcome.children += 1
        raw = log_path.read_bytes()
        covered = _COVERAGE.findall(raw)
        if covered:
            outcome.coverage = int(covered[-1])
        stats = work / f"stats-{number}.json"
        summary = json.loads(stats.read_text()) if stats.exists() else {}
        ran = max(int(summary.get("inputs", 0)), read_counter(work / f"count-{number}"))
        outcome.inputs += ran
        outcome.seconds += float(summary.get("seconds", 0.0))
        outcome.cpu_seconds += float(summary.get("cpu_seconds", 0.0))
        for item in summary.get("findings", []):
            outcome.add(Finding(**item))
        if child.returncode != 0:
            outcome.add(_ended_by(raw.decode("utf-8", "replace")))
            failed_starts = failed_starts + 1 if ran == 0 else 0
            if failed_starts >= MAX_FAILED_STARTS:
                break
    outcome.wall_s = time.monotonic() - started
    return outcome
