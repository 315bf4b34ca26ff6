"""Paging benchmark: the first and the 100th page of searches that match 10^5 studies.

Usage (from the repository root)::

    .venv/bin/python bench/paging.py             # 10^6 instances in 250,000 studies; RESULTS.md
    .venv/bin/python bench/paging.py --quick     # 20,000 instances, a smoke run

The corpus is an archive of small radiography studies (two series of two instances each), the
case where a common term matches a large part of the archive: "CHEST PA" is the description of
44% of the studies, CR the modality of 40%. The index is built directly, as bench/search.py
builds its own (``NewInstance`` records from the same templates, ``LmdbIndex.add_instance``
with many calls in flight), and cached under ``bench/.work/``.

Each query is a study search with ``page_size=100``. Its 100th page is reached by following
the page tokens once; then the first page and the 100th are timed, repeatedly and in rounds
(every query on every side in each round), three ways: through the real gRPC server with the
SDK (``dicomrpc serve`` on the built folder), on the search engine in-process, and on the
engine with streamed paging turned off (every match collected and sorted for every page, as
the engine answered before), so that the change can be read off one run. In-process, each
page's CPU time and major page faults are taken beside its wall time: on a shared machine the
difference is time spent waiting for a CPU or for the disk, not the engine's work.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from harness import WORK, dicomrpc_server, machine, write_section
from search import (
    BUILD_BATCH,
    BUILD_WINDOW,
    SeriesPlan,
    StudyPlan,
    _feed,
    _open_index,
    check_against_prepare,
    new_instances,
)

from dicomrpc import Client
from dicomrpc_server.query.engine import SearchCore, SearchRequest
from dicomrpc_server.query.term_search import TermSearch

SEED = 20261203
INDEX_VERSION = 1
UID_ROOT = "1.2.826.0.1.3680043.8.498.4712"
PAGE = 100
DEEP = 100  # the page timed beside the first (--quick: 3)
DESCRIPTIONS = [("CHEST PA", 44), ("KNEE", 20), ("HAND", 18), ("PELVIS", 18)]
MODALITIES = [("CR", 40), ("DX", 60)]
QUERIES = {
    "StudyDescription exact": {"StudyDescription": "CHEST PA"},
    "ModalitiesInStudy": {"ModalitiesInStudy": "CR"},
    "StudyDescription + ModalitiesInStudy": {
        "StudyDescription": "CHEST PA",
        "ModalitiesInStudy": "CR",
    },
    "StudyDate, one year (a range)": {"StudyDate": "20200101-20201231"},
}


def plan(count: int) -> list[StudyPlan]:
    """Studies of two series of two instances, ``count`` instances in all."""
    rng = random.Random(SEED)
    first = dt.date(2015, 1, 1)
    studies: list[StudyPlan] = []
    for index in range(count // 4):
        description = rng.choices([d for d, _ in DESCRIPTIONS], [w for _, w in DESCRIPTIONS])[0]
        modality = rng.choices([m for m, _ in MODALITIES], [w for _, w in MODALITIES])[0]
        day = first + dt.timedelta(days=rng.randrange(3652))
        series = tuple(
            SeriesPlan(
                uid=f"{UID_ROOT}.2.{index}.{number}",
                number=number,
                modality=modality,
                description=f"{description} {number}",
                time=f"{8 + number:02d}0000",
                count=2,
            )
            for number in (1, 2)
        )
        studies.append(
            StudyPlan(
                index=index,
                uid=f"{UID_ROOT}.1.{index}",
                patient_id=f"PG{index:08d}",
                patient_name=f"PAGING^PATIENT{index % 997}",
                birth_date="19600101",
                sex="MF"[index % 2],
                date=day.strftime("%Y%m%d"),
                time="101500",
                accession=f"PG{index:09d}",
                description=description,
                body_part=description.split()[0],
                series=series,
            )
        )
    return studies


def build(count: int) -> Path:
    """The data folder of the corpus' index, from the cache or built now."""
    directory = WORK / f"paging-index-{count}"
    marker = directory / "complete.json"
    expected = {"version": INDEX_VERSION, "size": count, "seed": SEED}
    if marker.exists() and json.loads(marker.read_text()) == expected:
        return directory / "data"
    if directory.exists():
        shutil.rmtree(directory)
    studies = plan(count)
    frames = check_against_prepare(studies)
    print(f"building the index of {count} instances in {directory} ...", flush=True)
    index = _open_index(directory / "data" / "index", BUILD_BATCH)
    started = time.perf_counter()
    try:
        asyncio.run(_feed(index, new_instances(studies, frames), BUILD_WINDOW))
    finally:
        index.close()
    print(f"  {count / (time.perf_counter() - started):.0f} instances/s", flush=True)
    marker.write_text(json.dumps(expected))
    return directory / "data"


Ask = Callable[[dict[str, str], str], tuple[int, str]]


def core_ask(core: SearchCore) -> Ask:
    def ask(match: dict[str, str], token: str) -> tuple[int, str]:
        page = core.search(SearchRequest("study", match=match, page_size=PAGE, page_token=token))
        return len(page.results), page.next_page_token

    return ask


def client_ask(client: Client) -> Ask:
    def ask(match: dict[str, str], token: str) -> tuple[int, str]:
        result = client.search_studies(match, page_size=PAGE, page_token=token)
        return len(result.datasets), result.next_page_token

    return ask


def deep_token(ask: Ask, match: dict[str, str], deep: int) -> str:
    """The token of page ``deep``, by following the tokens from the first page."""
    token = ""
    for _ in range(deep - 1):
        _, token = ask(match, token)
        if not token:
            raise AssertionError(f"{match} has fewer than {deep} pages")
    return token


@contextlib.contextmanager
def collecting() -> Iterator[None]:
    """The engine as it answered before streamed paging: every match collected per page."""
    original = TermSearch._stream

    def never(self: TermSearch, plan: object, scope: bytes, wanted: int) -> None:
        return None

    TermSearch._stream = never  # type: ignore[assignment,method-assign]
    try:
        yield
    finally:
        TermSearch._stream = original  # type: ignore[method-assign]


@dataclass
class Row:
    query: str
    side: str
    first: list[float]
    deep: list[float]
    # In-process sides: the thread's CPU time of each page (wall time less waiting for a CPU).
    first_cpu: list[float]
    deep_cpu: list[float]
    # Every timed page (both pages): wall ms, CPU ms and major page faults (index pages read
    # from disk), to tell what the slowest pages waited for.
    pages: list[tuple[float, float, int]]


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(
    data_dir: Path, repeats: int, rounds: int, deep: int
) -> tuple[list[Row], dict[str, int]]:
    index = _open_index(data_dir / "index")
    core = SearchCore(index, TermSearch(index))
    rows: dict[tuple[str, str], Row] = {}
    matches: dict[str, int] = {}
    log = WORK / "paging-dicomrpc.log"
    try:
        with dicomrpc_server(data_dir, log) as (target, _pid), Client(target) as client:
            sides: dict[str, tuple[Ask, Callable[[], contextlib.AbstractContextManager[None]]]] = {
                "gRPC + SDK": (client_ask(client), contextlib.nullcontext),
                "engine in-process": (core_ask(core), contextlib.nullcontext),
                "engine, every match collected (before)": (core_ask(core), collecting),
            }
            tokens = {
                name: deep_token(core_ask(core), match, deep) for name, match in QUERIES.items()
            }
            for name, match in QUERIES.items():
                matches[name] = _count(core, match)
            for round_number in range(rounds):
                names = list(sides)
                names = names[round_number % len(names) :] + names[: round_number % len(names)]
                for side in names:
                    ask, mode = sides[side]
                    with mode():
                        for name, match in QUERIES.items():
                            row = rows.setdefault((name, side), Row(name, side, [], [], [], [], []))
                            ask(match, "")  # warm
                            for _ in range(repeats):
                                for token, wall, cpu in (
                                    ("", row.first, row.first_cpu),
                                    (tokens[name], row.deep, row.deep_cpu),
                                ):
                                    faults = _major_faults()
                                    started, cpu_started = time.perf_counter(), time.thread_time()
                                    got, _ = ask(match, token)
                                    cpu.append((time.thread_time() - cpu_started) * 1000)
                                    wall.append((time.perf_counter() - started) * 1000)
                                    faults = _major_faults() - faults
                                    row.pages.append((wall[-1], cpu[-1], faults))
                                    assert got == PAGE
    finally:
        index.close()
    return list(rows.values()), matches


def _major_faults() -> int:
    """The major page faults of this thread so far (pages read from disk, LMDB's included)."""
    return resource.getrusage(resource.RUSAGE_THREAD).ru_majflt


def _slowest(row: Row) -> str:
    """What the slowest 5% of a row's pages spent, beside the others (in-process sides)."""
    pages = sorted(row.pages)
    cut = max(1, len(pages) // 20)
    slow, rest = pages[-cut:], pages[:-cut]

    def mean(values: list[tuple[float, float, int]], i: int) -> float:
        return statistics.mean(v[i] for v in values) if values else 0.0

    return (
        f"slowest 5% of pages: wall {mean(slow, 0):.1f} ms, CPU {mean(slow, 1):.1f} ms, "
        f"{mean(slow, 2):.1f} major page faults (the others: wall {mean(rest, 0):.1f}, "
        f"CPU {mean(rest, 1):.1f}, {mean(rest, 2):.1f})"
    )


def _count(core: SearchCore, match: dict[str, str]) -> int:
    """How many studies a query matches (pages of 1,000 followed to the end)."""
    total, token = 0, ""
    while True:
        page = core.search(SearchRequest("study", match=match, page_size=1000, page_token=token))
        total += len(page.results)
        token = page.next_page_token
        if not token:
            return total


def report(rows: list[Row], matches: dict[str, int], args: argparse.Namespace) -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    lines = [
        "## Search paging",
        "",
        "Written by `.venv/bin/python bench/paging.py`; rerun it to refresh this section.",
        "",
        f"- Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, commit {commit}",
        f"- Machine: {machine()}; Python {platform.python_version()}",
        f"- Corpus: {args.instances:,} instances in {args.instances // 4:,} studies of two "
        "series of two instances (CR 40%, DX 60%; StudyDescription CHEST PA 44%, dates over "
        "2015-2024), the index built directly as bench/search.py builds its own.",
        f"- Each query: a study search, page_size {PAGE}; page {args.deep} is reached once by "
        f"following the tokens, then page 1 and page {args.deep} are timed {args.repeats} "
        f"times per round, {args.rounds} rounds, every side in each round (the first side "
        "rotating). "
        "gRPC + SDK: `dicomrpc serve` on the built folder, `Client.search_studies` on one "
        "channel. Engine: `SearchCore.search` in-process. Engine, every match collected: the "
        "same engine with streamed paging turned off, as every page was answered before "
        "(all matches collected, sorted, then sliced). CPU: the searching thread's CPU time "
        "per page (in-process sides): the wall time less the time spent waiting, for a CPU "
        "or for index pages read from disk (major page faults, counted per page). "
        "Other work was running on the machine: load average "
        f"{args.load_before:.1f} before the timings, {args.load_after:.1f} after "
        f"({os.cpu_count()} CPUs).",
        "",
        "| query | matching studies | side | page 1 p50 / p95 ms | "
        f"page {args.deep} p50 / p95 ms | CPU page 1 p50 / p95 ms | "
        f"CPU page {args.deep} p50 / p95 ms |",
        "|---|--:|---|--:|--:|--:|--:|",
    ]
    lines.extend(
        f"| {row.query} | {matches[row.query]:,} | {row.side} | "
        f"{statistics.median(row.first):.1f} / {p(row.first, 0.95):.1f} | "
        f"{statistics.median(row.deep):.1f} / {p(row.deep, 0.95):.1f} | "
        + (
            f"{statistics.median(row.first_cpu):.1f} / {p(row.first_cpu, 0.95):.1f} | "
            f"{statistics.median(row.deep_cpu):.1f} / {p(row.deep_cpu, 0.95):.1f} |"
            if row.side != "gRPC + SDK"
            else "— | — |"
        )
        for row in rows
    )
    lines += [
        "",
        "Goal (issue: the bulk path): at 10^6 instances, pages of a term matching 10^5 studies "
        f"answer with p95 < 20 ms for the first and the {DEEP}th page.",
        "",
    ]
    for row in rows:
        if row.side.startswith("engine, every match"):
            continue
        worst = max(p(row.first, 0.95), p(row.deep, 0.95))
        verdict = "met" if worst < 20 else f"NOT met (by {worst - 20:.1f} ms)"
        if row.side == "gRPC + SDK":
            engine = next(r for r in rows if (r.query, r.side) == (row.query, "engine in-process"))
            median = statistics.median(row.first + row.deep)
            inside = statistics.median(engine.first + engine.deep)
            cpu = f"; p50 {median:.1f} ms, of which the engine's p50 {inside:.1f} ms"
        else:
            cpu = (
                f"; CPU p95 {max(p(row.first_cpu, 0.95), p(row.deep_cpu, 0.95)):.1f} ms; "
                + _slowest(row)
            )
        lines.append(
            f"- {row.query}, {row.side}: worst p95 {worst:.1f} ms{cpu}: p95 < 20 ms {verdict}."
        )
    lines += [
        "",
        "Streamed (`query/term_search.py`): a search whose terms are all matched by index terms "
        "known before the scan (exact strings, UID lists, numbers, single dates, "
        "ModalitiesInStudy, and date and time ranges of at most 4,096 dates or times holding "
        "on average 16 entries or more each) reads every term's entries in key order from "
        "the page token, a range through one read positioned on each of its terms and a "
        "merge of them; the terms are intersected by seeking each to the highest key of the "
        "others. A page reads about what lies between the cursor and its last result. Not "
        "streamed (every match collected for every page): wildcards, fuzzy names, ranges "
        "over many sparsely used terms (times to the second), and searches scoped to a "
        "study or series that have match terms.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="20,000 instances, a smoke run")
    parser.add_argument("--repeats", type=int, default=10, help="timings per round (10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (3)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    args.deep = DEEP
    if args.quick:
        args.instances, args.repeats, args.rounds, args.deep = 20_000, 3, 1, 3
    WORK.mkdir(exist_ok=True)
    data_dir = build(args.instances)
    args.load_before = os.getloadavg()[0]
    rows, matches = measure(data_dir, args.repeats, args.rounds, args.deep)
    args.load_after = os.getloadavg()[0]
    text = report(rows, matches, args)
    print(text)
    if not args.no_write and not args.quick:
        write_section(text.rstrip("\n"), "## Search paging")
    return 0


if __name__ == "__main__":
    sys.exit(main())
