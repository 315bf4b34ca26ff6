"""Fuzzing campaign: each harness of ``tests/fuzz`` for a budget of inputs, findings counted.

Usage (from the repository root)::

    .venv/bin/python bench/fuzz.py                          # 10^6 inputs per harness (hours)
    .venv/bin/python bench/fuzz.py --seconds 120            # a 2-minute throughput run each
    .venv/bin/python bench/fuzz.py --harness qido --harness http --inputs 200000 --jobs 2
    .venv/bin/python bench/fuzz.py --report     # the section again from the last run (after triage)

Each harness runs under atheris (libFuzzer) in child processes (``python -m tests.fuzz``), with
the packages it exercises instrumented so that their coverage guides the mutations, a per-input
timeout (a longer input is a hang) and an RSS limit (3 GiB). A bug does not stop a run: it is
counted under its signature and fuzzing goes on; a hang or an out-of-memory ends the child and
the next one goes on with the rest of the budget, on the corpus grown so far. The work folder
(``bench/.work/fuzz/HARNESS``) keeps the corpus between runs and, in ``crashes/``, the first input
of each finding with its traceback (these are not committed; a finding worth keeping becomes a
regression input under ``tests/fuzz/findings/``).

Writes the Fuzzing section of ``bench/RESULTS.md``: per harness the inputs run, exec/s,
crashes, hangs, 5xx answers and out-of-memory inputs (goal: 0 of each), the coverage reached,
the time 10^6 inputs take at the measured rate, and every distinct finding with the class of
fix it belongs to (``tests/fuzz/known.py``), or "new".
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from importlib.metadata import version
from typing import Any

from harness import ROOT, WORK, machine, write_section

sys.path.insert(0, str(ROOT))
from tests.fuzz.bugs import CRASH, HANG, HTTP_5XX, OOM, Finding
from tests.fuzz.campaign import Outcome, run
from tests.fuzz.harness import HARNESSES
from tests.fuzz.known import known

SECTION = "## Fuzzing"
FUZZ_WORK = WORK / "fuzz"
LAST_RUN = FUZZ_WORK / "last-run.json"
GOAL_INPUTS = 1_000_000


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _row(outcome: Outcome) -> str:
    spec = HARNESSES[outcome.harness]
    new = len(outcome.new())
    distinct = f"{len(outcome.findings)} ({len(outcome.findings) - new} listed, {new} unlisted)"
    per_cpu = outcome.exec_per_cpu_s
    rates = (outcome.exec_per_s, per_cpu)
    projected = " / ".join(_duration(GOAL_INPUTS / r) if r else "—" for r in rates)
    return (
        f"| {outcome.harness} | {spec.target} | {outcome.inputs:,} | {outcome.exec_per_s:,.0f} "
        f"| {per_cpu:,.0f} | {outcome.count(CRASH)} | {outcome.count(HANG)} "
        f"| {outcome.count(HTTP_5XX)} | {outcome.count(OOM)} | {distinct} "
        f"| {outcome.coverage:,} | {projected} |"
    )


def _findings(outcomes: list[Outcome]) -> list[str]:
    lines = [
        "| harness | kind | inputs | signature | class (tests/fuzz/known.py) | first input |",
        "|---|---|--:|---|---|---|",
    ]
    for outcome in outcomes:
        for finding in sorted(outcome.findings.values(), key=lambda f: (f.kind, f.signature)):
            entry = known(outcome.harness, finding.signature)
            owner = entry.owner if entry else "**unlisted** (not triaged yet)"
            signature = finding.signature.replace("|", "\\|")
            lines.append(
                f"| {outcome.harness} | {finding.kind} | {finding.count:,} | `{signature}` "
                f"| {owner} | {finding.example or '—'} |"
            )
    return lines


def section(outcomes: list[Outcome], run: dict[str, Any]) -> str:
    budget = f"{run['inputs']:,} inputs per harness"
    if run["seconds"]:
        budget += f", at most {run['seconds']:.0f} s each (a throughput measure, not the campaign)"
    total = sum(o.count(k) for o in outcomes for k in (CRASH, HANG, HTTP_5XX, OOM))
    lines = [
        SECTION,
        "",
        f"Written by `.venv/bin/python {run['command']}`; rerun it to refresh this section "
        "(`--report` rewrites it from the last run, with the current `tests/fuzz/known.py`).",
        "",
        f"- Date: {run['date']}",
        f"- Machine: {run['machine']}",
        f"- Software: {run['software']}",
        f"- Budget: {budget}; {run['jobs']} harness(es) at a time. Each harness runs under atheris "
        "(libFuzzer) with the packages it exercises instrumented (coverage-guided), a per-input "
        "timeout (hang) and a 3 GiB RSS limit (OOM); a bug is counted and fuzzing goes on.",
        "- exec/s: inputs per second of wall time, as measured (the machine is shared: other "
        "work slows it); per CPU s: inputs per second of the harness process's CPU time, the "
        "rate on a core of its own. 10^6 inputs take: at the measured rate / at the per-CPU "
        "rate (the HTTP harness also waits on fsyncs and worker processes, so its wall rate is "
        "the nearer one).",
        "- Crashes, hangs, 5xx, OOM: inputs that showed one (the same bug is found by many "
        "inputs); distinct: findings by signature, listed in `tests/fuzz/known.py` (with the "
        "class of fix each belongs to, or new when nobody is fixing it yet) or unlisted. "
        "Edges: the coverage libFuzzer last reported.",
        "",
        "| harness | target | inputs | exec/s | per CPU s | crashes | hangs | 5xx | OOM "
        "| distinct | edges | 10^6 inputs take |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|",
        *(_row(o) for o in outcomes),
        "",
        f"Goal: 0 crashes, hangs and 5xx answers per harness — "
        f"{'met' if total == 0 else f'NOT met ({total} inputs showed a bug)'}.",
        "",
        *_findings(outcomes),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=GOAL_INPUTS, help="inputs per harness")
    parser.add_argument("--seconds", type=float, default=0, help="at most S seconds per harness")
    parser.add_argument(
        "--harness", action="append", choices=sorted(HARNESSES), help="this harness (repeat)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="harnesses run at a time (1)")
    parser.add_argument("--fresh", action="store_true", help="start from the seeds, no corpus")
    parser.add_argument("--no-write", action="store_true", help="print, leave RESULTS.md as is")
    parser.add_argument(
        "--report", action="store_true", help="rewrite the section from the last run, no fuzzing"
    )
    return parser.parse_args(argv)


def _load_last_run() -> tuple[dict[str, Any], list[Outcome]]:
    saved = json.loads(LAST_RUN.read_text())
    outcomes = []
    for item in saved.pop("outcomes"):
        findings = {k: Finding(**v) for k, v in item.pop("findings").items()}
        outcomes.append(Outcome(**item, findings=findings))
    return saved, outcomes


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report:
        run_info, outcomes = _load_last_run()
        _write(section(outcomes, run_info), args)
        return
    names = args.harness or list(HARNESSES)
    if args.fresh:
        for name in names:
            shutil.rmtree(FUZZ_WORK / name, ignore_errors=True)

    def one(name: str) -> Outcome:
        outcome = run(name, FUZZ_WORK / name, args.inputs, args.seconds)
        print(
            f"{name}: {outcome.inputs:,} inputs, {outcome.exec_per_s:,.0f}/s, "
            f"{len(outcome.findings)} findings ({len(outcome.new())} new)",
            flush=True,
        )
        return outcome

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        outcomes = list(pool.map(one, names))
    run_info = {
        "command": " ".join(["bench/fuzz.py", *(argv if argv is not None else sys.argv[1:])]),
        "inputs": args.inputs,
        "seconds": args.seconds,
        "jobs": args.jobs,
        "date": f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "machine": f"{machine()}; {platform.platform()}",
        "software": f"Python {platform.python_version()}, atheris {version('atheris')}, "
        f"pydicom {version('pydicom')}, starlette {version('starlette')}",
    }
    LAST_RUN.write_text(json.dumps({**run_info, "outcomes": [asdict(o) for o in outcomes]}))
    _write(section(outcomes, run_info), args)


def _write(text: str, args: argparse.Namespace) -> None:
    print(text)
    if not args.no_write:
        write_section(text.rstrip("\n"), SECTION)


if __name__ == "__main__":
    main()
