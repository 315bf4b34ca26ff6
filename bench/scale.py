"""Scale benchmark: the archive on 1 and 2 processes or nodes, per backend, beside Orthanc.

Usage (from the repository root)::

    .venv/bin/python bench/scale.py            # all measurements, writes RESULTS.md
    .venv/bin/python bench/scale.py --quick    # a smaller corpus, fewer rounds, 10^4 search

Configurations (each ``dicomrpc serve`` node on 127.0.0.1, DIMSE off):

- LMDB: ``--processes 1`` and ``--processes 2`` on one data folder (the embedded index);
- PostgreSQL + shared folder: ``--index postgresql://... --blobs /abs/folder``, 1 node and
  2 nodes (two ``serve`` processes with their own data folders and ports, one database and one
  blob folder);
- PostgreSQL + S3: the same with ``--blobs s3://bucket/archive --s3-endpoint`` of a
  ``moto_server`` emulator;
- Orthanc (its default SQLite index), for scale.

PostgreSQL is a cluster of this run (``tests/postgres.py``, initdb on a free port) with
durability on (fsync, synchronous commit, full page writes: as LMDB's commits, unlike the
tests' cluster); every run gets a new database, and each S3 run a new emulator.

What is measured:

- ingest instances/s: the ingest corpus (CT slices of 0.5 MB) stored by 4 concurrent clients,
  10 instances per request (``Client.store``, a channel each; STOW-RS for Orthanc), into a fresh
  store each round; the clients are spread over the nodes (2 per node with 2 nodes). Every
  instance is checked afterwards: LMDB by the counts a restarted server logs, PostgreSQL by the
  index's counter row;
- study retrieve MB/s: a 500-instance study pulled whole by 1 and by 4 concurrent clients,
  through the SDK (``Client.iter_instances``) and through the DICOMweb gateway (WADO-RS, the
  body counted as it streams), against Orthanc's WADO-RS; with 2 nodes, client *i* asks node
  *i* mod 2;
- the CPU time per instance stored and per MiB sent, of every process of the configuration:
  the server processes of every node with their parse and codec workers, plus (PostgreSQL)
  the postmaster and all its children (the backends serving the nodes, the WAL writer,
  checkpointer ...). The S3 emulator's CPU is shown apart and not in the total: it stands for a
  service that would run elsewhere, and an emulator's cost says nothing of it;
- search p50 / p95 on PostgreSQL at 10^6 instances (``--quick``: 10^4) for the queries of
  bench/search.py, through ``dicomrpc serve`` on the index and the SDK, as bench/search.py
  times LMDB; the index is built by :mod:`pgsearch` (the server's rows, checked against its
  own write path) and kept under bench/.work; LMDB is timed beside it in the same rounds when
  its index of the same size is cheap to build or cached by bench/search.py.

Rounds alternate the configurations, so that a drift of the shared machine touches all alike;
each figure is the median of the rounds. The number of processes ``dicomrpc serve`` starts by
default is chosen from these figures (README, "Several processes").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import boto3
import grpc
import pgsearch
import psutil
from corpus import Corpus, Study, big_study, corpus, warm_cache
from harness import (
    MB,
    ROOT,
    WORK,
    ResourceSampler,
    ServerError,
    connect_grpc,
    connect_http,
    dicomrpc_index_counts,
    dicomrpc_server,
    ensure_orthanc,
    free_port,
    load_dicomrpc,
    load_orthanc,
    orthanc_server,
    run_workers,
    write_section,
)
from ingest import RunResult, batch_storer, batches, median_run, run_orthanc
from retrieve import (
    ACCEPT_DICOM,
    READ_BUFFER,
    Throughput,
    grpc_study_bytes,
    http_get,
    throughput_run,
)
from search import (
    QUERY_NAMES,
    SEED,
    Ask,
    Query,
    Timing,
    ask_dicomrpc,
    check_against_prepare,
    measure,
    plan,
    queries,
)
from search import build as build_lmdb

from dicomrpc import Client, ClientConfig

sys.path.insert(0, str(ROOT))
from tests.postgres import PostgresCluster, postgres_bin, start_cluster
from tests.s3emulator import S3_ENV, moto_server

SECTION = "## Scale"
STREAMS = 4
BATCH = 10
GOAL_SEARCH_P95_MS = 30.0
# The measuring cluster: durable commits, as LMDB's; room for the 10^6 index's hot pages.
PG_SETTINGS = """
fsync = on
synchronous_commit = on
full_page_writes = on
shared_buffers = 512MB
"""
PG_SEARCH_FOLDER = WORK / "scale-pg"  # the kept cluster of the search indexes
# LMDB search indexes up to this size are built for the comparison (bigger: only if cached).
LMDB_BUILD_MOST = 100_000


@dataclass(frozen=True)
class Setup:
    """One configuration of dicomrpc: its index and blob store, and how many servers."""

    name: str
    store: str  # "lmdb", "folder" (PostgreSQL + shared folder) or "s3" (PostgreSQL + S3)
    nodes: int = 1
    processes: int = 1


SETUPS = (
    Setup("LMDB, 1 process", "lmdb"),
    Setup("LMDB, 2 processes", "lmdb", processes=2),
    Setup("PostgreSQL + folder, 1 node", "folder"),
    Setup("PostgreSQL + folder, 2 nodes", "folder", nodes=2),
    Setup("PostgreSQL + S3 (moto), 1 node", "s3"),
    Setup("PostgreSQL + S3 (moto), 2 nodes", "s3", nodes=2),
)


@dataclass
class ScaleRun(RunResult):
    """An ingest run with its CPU split: ``server_cpu_s`` holds the nodes and the database."""

    database_cpu_s: float = 0.0
    emulator_cpu_s: float = 0.0


@dataclass
class Store:
    """A configuration's index and blob store: made once, nodes start and stop on it."""

    kind: str
    folder: Path
    serve_args: tuple[str, ...] = ()
    dsn: str = ""
    database_pid: int = 0
    emulator_pid: int = 0

    def instances(self) -> int | None:
        """How many instances the index holds (after its nodes stopped)."""
        if self.kind == "lmdb":
            counts = dicomrpc_index_counts(self.folder / "data", WORK / "scale-reopen.log")
            return None if counts is None else counts[2]

        async def count() -> int:
            connection = await asyncpg.connect(self.dsn)
            try:
                value: int = await connection.fetchval("SELECT instances FROM index_counter")
                return value
            finally:
                await connection.close()

        return asyncio.run(count())


@contextlib.contextmanager
def new_store(kind: str, cluster: PostgresCluster | None) -> Iterator[Store]:
    """A fresh store of a kind: a data folder; or a new database with a folder or a bucket."""
    folder = Path(tempfile.mkdtemp(prefix=f"scale-{kind}-", dir=WORK))
    try:
        if kind == "lmdb":
            yield Store(kind, folder)
            return
        assert cluster is not None
        dsn = cluster.create_database()
        try:
            if kind == "folder":
                (folder / "blobs").mkdir()
                yield Store(
                    kind,
                    folder,
                    ("--index", dsn, "--blobs", str(folder / "blobs")),
                    dsn,
                    cluster.postmaster_pid(),
                )
                return
            with moto_server() as (endpoint, emulator):
                bucket = "scale"
                boto3.session.Session().client("s3", endpoint_url=endpoint).create_bucket(
                    Bucket=bucket
                )
                yield Store(
                    kind,
                    folder,
                    (
                        "--index",
                        dsn,
                        "--blobs",
                        f"s3://{bucket}/archive",
                        "--s3-endpoint",
                        endpoint,
                    ),
                    dsn,
                    cluster.postmaster_pid(),
                    emulator.pid,
                )
        finally:
            cluster.drop_database(dsn)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Nodes:
    """The running servers of a configuration."""

    targets: list[str]
    http_ports: list[int]
    pids: list[int]

    def picker(self) -> Callable[[], int]:
        """Node numbers for the clients as they connect: 0, 1, 0, 1 ..."""
        counter = itertools.count()
        return lambda: next(counter) % len(self.targets)


@contextlib.contextmanager
def nodes(setup: Setup, store: Store, http: bool = False) -> Iterator[Nodes]:
    """Start the configuration's servers on the store; stop them when the block ends."""
    out = Nodes([], [], [])
    slug = setup.name.split(",")[0].split()[0].lower()
    with contextlib.ExitStack() as stack:
        for number in range(setup.nodes):
            http_port = free_port() if http else -1
            data = store.folder / ("data" if store.kind == "lmdb" else f"node{number}")
            target, pid = stack.enter_context(
                dicomrpc_server(
                    data,
                    WORK / f"scale-{slug}-{store.kind}-{number}.log",
                    http_port=http_port,
                    serve_args=(*store.serve_args, "--processes", str(setup.processes)),
                )
            )
            out.targets.append(target)
            out.http_ports.append(http_port)
            out.pids.append(pid)
        yield out


@dataclass
class Samplers:
    """CPU of the nodes, the database server and the emulator, over one measurement."""

    nodes: ResourceSampler
    database: ResourceSampler | None
    emulator: ResourceSampler | None

    @property
    def database_s(self) -> float:
        return self.database.cpu_seconds if self.database else 0.0

    @property
    def emulator_s(self) -> float:
        return self.emulator.cpu_seconds if self.emulator else 0.0

    @property
    def total_s(self) -> float:
        """The configuration's CPU: the nodes and the database (not the emulator)."""
        return self.nodes.cpu_seconds + self.database_s


@contextlib.contextmanager
def sampling(running: Nodes, store: Store) -> Iterator[Samplers]:
    with contextlib.ExitStack() as stack:
        yield Samplers(
            stack.enter_context(ResourceSampler(*running.pids)),
            stack.enter_context(ResourceSampler(store.database_pid))
            if store.database_pid
            else None,
            stack.enter_context(ResourceSampler(store.emulator_pid))
            if store.emulator_pid
            else None,
        )


# --------------------------------------------------------------------------------------------
# Ingest
# --------------------------------------------------------------------------------------------


def ingest_run(setup: Setup, data: Corpus, cluster: PostgresCluster | None) -> ScaleRun:
    """Ingest the corpus into a fresh store of the configuration; check what was stored."""
    result = ScaleRun(setup.name, STREAMS, len(data.files), data.megabytes)
    work = batches(data.files, BATCH)
    store = batch_storer(work, result)
    # One channel (one HTTP/2 connection) per client, like one HTTP connection per STOW client.
    config = ClientConfig(options=(("grpc.use_local_subchannel_pool", 1),))
    try:
        warm_cache(data.files)
        with new_store(setup.store, cluster) as where:
            with nodes(setup, where) as running:
                pick = running.picker()

                def connect() -> Client:
                    client = Client(running.targets[pick()], config)
                    grpc.channel_ready_future(client.channel).result(timeout=30)
                    return client

                with sampling(running, where) as cpu:
                    result.wall_s, result.client_cpu_s = run_workers(
                        STREAMS,
                        connect,
                        store,
                        lambda c: c.close(),  # type: ignore[attr-defined]
                    )
            result.peak_rss_mb = cpu.nodes.peak_rss / MB
            result.server_cpu_s = cpu.total_s
            result.database_cpu_s = cpu.database_s
            result.emulator_cpu_s = cpu.emulator_s
            result.verified = where.instances()
            if result.verified is None:
                result.problems.append("the restarted server did not log its index counts")
    except Exception as error:  # a crashed server or client: reported, not fatal
        result.problems.append(f"{type(error).__name__}: {error}")
    return result


def ingest(
    rounds: int, count: int, orthanc: bool, cluster: PostgresCluster | None
) -> dict[str, RunResult]:
    """Median ingest run of each configuration."""
    data = corpus(count)
    setups = [s for s in SETUPS if cluster is not None or s.store == "lmdb"]
    runs: dict[str, list[RunResult]] = {}
    for round_ in range(rounds):
        order: list[tuple[str, Callable[[], RunResult]]] = [
            (s.name, lambda s=s: ingest_run(s, data, cluster))  # type: ignore[misc]
            for s in setups
        ]
        if orthanc:
            order.append(("Orthanc", lambda: run_orthanc(data, STREAMS, BATCH)))
        shift = round_ % len(order)
        for name, run in order[shift:] + order[:shift]:
            result = run()
            print(
                f"ingest round {round_ + 1}: {name}: {result.per_second:.0f} inst/s "
                f"{'(' + '; '.join(result.problems[:2]) + ')' if result.problems else ''}",
                flush=True,
            )
            runs.setdefault(name, []).append(result)
    return {name: median_run(runs[name]) for name in [n for n, _ in order] if name in runs}


# --------------------------------------------------------------------------------------------
# Study retrieve
# --------------------------------------------------------------------------------------------


@dataclass
class RetrieveFigures:
    """Study retrieve MB/s by clients; CPU ms per MiB sent (nodes + database; emulator)."""

    rates: dict[int, Throughput] = field(default_factory=dict)
    cpu_per_mib_ms: list[float] = field(default_factory=list)
    database_per_mib_ms: list[float] = field(default_factory=list)
    emulator_per_mib_ms: list[float] = field(default_factory=list)

    def median(self, clients: int) -> float:
        return self.rates[clients].median if clients in self.rates else 0.0


Fetch = Callable[[object, str], int]


def _retrieve_rounds(
    connect: Callable[[Callable[[], int]], object],
    fetch: Fetch,
    study: Study,
    measured: Callable[[], contextlib.AbstractContextManager[Samplers]],
    figures: RetrieveFigures,
    repeats: int,
) -> None:
    """1 then 4 clients retrieve the study ``repeats`` times each; ``connect`` gets a picker."""
    for clients in (1, 4):
        result = figures.rates.setdefault(clients, Throughput())
        pick = itertools.count()
        with measured() as cpu:
            throughput_run(
                clients,
                repeats,
                lambda pick=pick: connect(lambda: next(pick)),
                lambda c: fetch(c, study.uid),
                lambda c: c.close(),  # type: ignore[attr-defined]
                result,
            )
        sent = clients * repeats * study.total_bytes / MB
        figures.cpu_per_mib_ms.append(1000 * cpu.total_s / sent)
        figures.database_per_mib_ms.append(1000 * cpu.database_s / sent)
        figures.emulator_per_mib_ms.append(1000 * cpu.emulator_s / sent)


def _gateway_fetch(prefix: str) -> Fetch:
    return lambda c, uid: http_get(
        c,  # type: ignore[arg-type]
        f"{prefix}/studies/{uid}",
        ACCEPT_DICOM,
        bytearray(READ_BUFFER),
    )


def _print_retrieve(round_: int, key: str, fig: RetrieveFigures) -> None:
    print(
        f"retrieve round {round_ + 1}: {key}: {fig.rates[1].rates[-1]:.0f} / "
        f"{fig.rates[4].rates[-1]:.0f} MB/s (1 / 4 clients)",
        flush=True,
    )


def retrieve(
    rounds: int,
    repeats: int,
    orthanc: bool,
    cluster: PostgresCluster | None,
    only: list[str] | None = None,
) -> dict[str, RetrieveFigures]:
    """Study retrieve figures of each configuration and path (each store loaded once)."""
    study = big_study()
    setups = [s for s in SETUPS if cluster is not None or s.store == "lmdb"]
    setups = [s for s in setups if not only or s.name in only]
    figures: dict[str, RetrieveFigures] = {}
    with contextlib.ExitStack() as stack:
        stores: dict[str, Store] = {}
        for kind in dict.fromkeys(s.store for s in setups):
            stores[kind] = stack.enter_context(new_store(kind, cluster))
            with nodes(Setup("load", kind), stores[kind]) as running:
                load_dicomrpc(running.targets[0], study.files)
        orthanc_port = orthanc_pid = 0
        if orthanc:
            orthanc_dir = Path(tempfile.mkdtemp(prefix="scale-orthanc-", dir=WORK))
            stack.callback(shutil.rmtree, orthanc_dir, True)
            orthanc_port, orthanc_pid = stack.enter_context(
                orthanc_server(orthanc_dir, WORK / "scale-orthanc.log")
            )
            load_orthanc(orthanc_port, study.files)
        for round_ in range(rounds):
            shift = round_ % len(setups)
            for setup in setups[shift:] + setups[:shift]:
                where = stores[setup.store]
                with nodes(setup, where, http=True) as running:
                    n = len(running.targets)
                    paths: list[tuple[str, Callable[[Callable[[], int]], object], Fetch]] = [
                        (
                            "SDK (gRPC)",
                            lambda pick, r=running, n=n: connect_grpc(  # type: ignore[misc]
                                r.targets[pick() % n]
                            ),
                            lambda c, uid: grpc_study_bytes(c, uid),  # type: ignore[arg-type]
                        ),
                        (
                            "SDK (HTTP pull)",
                            lambda pick, r=running, n=n: connect_grpc(  # type: ignore[misc]
                                r.targets[pick() % n], http_retrieve=True
                            ),
                            lambda c, uid: grpc_study_bytes(c, uid),  # type: ignore[arg-type]
                        ),
                        (
                            "gateway (WADO-RS)",
                            lambda pick, r=running, n=n: connect_http(  # type: ignore[misc]
                                r.http_ports[pick() % n]
                            ),
                            _gateway_fetch("/dicomweb"),
                        ),
                    ]
                    for path, connect, fetch in paths:
                        key = f"{setup.name}, {path}"
                        fig = figures.setdefault(key, RetrieveFigures())
                        _retrieve_rounds(
                            connect,
                            fetch,
                            study,
                            lambda r=running, w=where: sampling(r, w),  # type: ignore[misc]
                            fig,
                            repeats,
                        )
                        _print_retrieve(round_, key, fig)
            if orthanc:
                key = "Orthanc, WADO-RS"
                fig = figures.setdefault(key, RetrieveFigures())

                @contextlib.contextmanager
                def orthanc_cpu() -> Iterator[Samplers]:
                    with ResourceSampler(orthanc_pid) as sampler:
                        yield Samplers(sampler, None, None)

                _retrieve_rounds(
                    lambda _pick: connect_http(orthanc_port),
                    _gateway_fetch("/dicom-web"),
                    study,
                    orthanc_cpu,
                    fig,
                    repeats,
                )
                _print_retrieve(round_, key, fig)
    return figures


# --------------------------------------------------------------------------------------------
# Search on PostgreSQL
# --------------------------------------------------------------------------------------------


@dataclass
class SearchFigures:
    """Search timings at one size: PostgreSQL's, and LMDB's when measured beside."""

    size: int
    timings: dict[str, dict[str, Timing]]
    build_s: float
    built_now: bool
    checked_rows: int
    lmdb_note: str


def pg_search_database(
    size: int, cluster: PostgresCluster, frames: object
) -> tuple[str, float, bool, int]:
    """The database of ``size`` instances (kept between runs); (dsn, build s, built now, rows
    compared with the server's own write path, 0 when cached)."""
    info = pgsearch.cached(PG_SEARCH_FOLDER, size)
    if info is not None:
        return cluster.dsn(str(info["database"])), float(str(info["build_s"])), False, 0
    sample_plan = plan(1500)
    reference, copied = cluster.create_database(), cluster.create_database()
    try:
        compared = pgsearch.check_rows(reference, copied, sample_plan, frames)  # type: ignore[arg-type]
    finally:
        cluster.drop_database(reference)
        cluster.drop_database(copied)
    print(f"copied rows equal add_instance's ({compared} rows of 1500 instances)", flush=True)
    database = f"search_{size}"
    cluster.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    cluster.execute(f'CREATE DATABASE "{database}"')
    dsn = cluster.dsn(database)
    pgsearch.migrate(dsn)
    print(f"building the PostgreSQL index of {size} instances ...", flush=True)
    started = time.perf_counter()
    totals = asyncio.run(pgsearch.copy_rows(dsn, plan(size), frames, progress=True))  # type: ignore[arg-type]
    build_s = time.perf_counter() - started
    if totals.last != size:
        raise AssertionError(f"built {totals.last} instances, not {size}")
    pgsearch.remember(PG_SEARCH_FOLDER, size, database, build_s, totals)
    print(f"  {size / build_s:.0f} instances/s, {build_s:.0f} s", flush=True)
    return dsn, build_s, True, compared


@contextlib.contextmanager
def _search_server(data_dir: Path, log: Path, serve_args: tuple[str, ...] = ()) -> Iterator[Ask]:
    with dicomrpc_server(data_dir, log, serve_args=serve_args) as (target, _):
        client = connect_grpc(target)
        try:

            def ask(q: Query) -> tuple[int, float]:
                started = time.perf_counter()
                got = ask_dicomrpc(client, q)
                return got, time.perf_counter() - started

            yield ask
        finally:
            client.close()


def search(size: int, args: argparse.Namespace) -> SearchFigures:
    """Time bench/search.py's queries on the PostgreSQL index (and LMDB's beside, if cheap)."""
    studies = plan(size)
    frames = check_against_prepare(studies)
    PG_SEARCH_FOLDER.mkdir(parents=True, exist_ok=True)
    cluster = start_cluster(PG_SEARCH_FOLDER, PG_SETTINGS)
    try:
        dsn, build_s, built_now, checked = pg_search_database(size, cluster, frames)
        sample = queries(studies, args.queries + args.warmup, SEED + size)
        lmdb_cache = WORK / f"search-index-{size}" / "complete.json"
        with contextlib.ExitStack() as stack:
            node = Path(tempfile.mkdtemp(prefix="scale-search-", dir=WORK))
            stack.callback(shutil.rmtree, node, True)
            (node / "blobs").mkdir()
            sides: dict[str, tuple[Ask, dict[str, list[Query]]]] = {
                "PostgreSQL": (
                    stack.enter_context(
                        _search_server(
                            node / "data",
                            WORK / "scale-search-pg.log",
                            ("--index", dsn, "--blobs", str(node / "blobs")),
                        )
                    ),
                    sample,
                )
            }
            if size <= LMDB_BUILD_MOST or lmdb_cache.exists():
                built = build_lmdb(size, studies, frames)
                sides["LMDB"] = (
                    stack.enter_context(
                        _search_server(built.data_dir, WORK / "scale-search-lmdb.log")
                    ),
                    sample,
                )
                lmdb_note = "LMDB timed beside it in the same rounds"
            else:
                lmdb_note = (
                    "LMDB not timed here (its 10^6 index takes ~13 min to build; "
                    "see the Search section for its figures at this size)"
                )
            print(f"timing {', '.join(sides)} at {size} instances ...", flush=True)
            timings = measure(sides, args.warmup, args.search_rounds)
    finally:
        cluster.stop(remove=False)
    for name, kinds in timings.items():
        for kind, t in kinds.items():
            wrong = f" ({t.wrong} wrong: {t.first_wrong})" if t.wrong else ""
            print(f"  {name} {QUERY_NAMES[kind]}: {t.p50:.1f} / {t.p95:.1f} ms{wrong}", flush=True)
    return SearchFigures(size, timings, build_s, built_now, checked, lmdb_note)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs else "n/a"


def _size(n: int) -> str:
    exponent = len(str(n)) - 1
    return f"10^{exponent}" if n == 10**exponent else f"{n:,}"


def report(
    ingested: dict[str, RunResult],
    retrieved: dict[str, RetrieveFigures],
    searched: SearchFigures | None,
    args: argparse.Namespace,
    elapsed_s: float,
) -> str:
    orthanc_ingest = ingested.get("Orthanc")
    lines = [
        SECTION,
        "",
        f"Measured {dt.date.today().isoformat()} on {platform.machine()}, "
        f"{psutil.cpu_count()} cores shared with other work, by "
        f"`bench/scale.py{' --quick' if args.quick else ''}` ({args.rounds} "
        f"round{'s' * (args.rounds > 1)}, medians; "
        f"configurations alternate within each round; the whole run took "
        f"{elapsed_s / 60:.0f} min). Every node, the clients, PostgreSQL and the S3 emulator "
        "share the same cores. PostgreSQL 15 with durable commits (fsync, synchronous commit).",
        "",
        f"**Ingest**: {ingested[next(iter(ingested))].sent} CT instances of 0.5 MB, "
        f"{STREAMS} clients ({STREAMS // 2} per node with 2 nodes), {BATCH} instances per "
        "request, a fresh store (data folder; database, folder or bucket) each round. CPU per "
        "instance: every process of every node (with their parse and codec workers) plus "
        "PostgreSQL's postmaster and all its children, of which the PostgreSQL column is the "
        "part; the S3 emulator's CPU apart, not in the total.",
        "",
        "| configuration | inst/s | ratio to Orthanc | CPU per instance | of which PostgreSQL "
        "| S3 emulator CPU per instance | peak RSS of the nodes | rounds |",
        "|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for name, run in ingested.items():
        stored = run.stored or 1
        cpu = 1000 * run.server_cpu_s / stored
        database = getattr(run, "database_cpu_s", 0.0)
        emulator = getattr(run, "emulator_cpu_s", 0.0)
        rounds = ", ".join(f"{r:.0f}" for r in run.rates)
        ratio = _ratio(run.per_second, orthanc_ingest.per_second) if orthanc_ingest else "n/a"
        flag = "" if run.complete else " (incomplete: " + "; ".join(run.problems[:2]) + ")"
        lines.append(
            f"| {name}{flag} | {run.per_second:.0f} | {ratio} | {cpu:.1f} ms | "
            f"{f'{1000 * database / stored:.1f} ms' if 'PostgreSQL' in name else '—'} | "
            f"{f'{1000 * emulator / stored:.1f} ms' if emulator else '—'} | "
            f"{run.peak_rss_mb:.0f} MB | {rounds} |"
        )
    orthanc = retrieved.get("Orthanc, WADO-RS")
    lines += [
        "",
        "**Study retrieve**: a 500-instance CT study (250 MB) pulled whole, each client "
        f"{args.repeats} time{'s' * (args.repeats > 1)} per round; with 2 nodes the clients "
        "alternate between them. "
        "CPU per MiB counted as for ingest, over the 1- and 4-client runs.",
        "",
        "| configuration, path | 1 client MB/s | ratio | 4 clients MB/s | ratio | CPU per MiB "
        "| of which PostgreSQL | S3 emulator per MiB |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, fig in retrieved.items():
        one, four = fig.median(1), fig.median(4)
        emulator = statistics.median(fig.emulator_per_mib_ms)
        database = statistics.median(fig.database_per_mib_ms)
        lines.append(
            f"| {name} | {one:.0f} | {_ratio(one, orthanc.median(1)) if orthanc else 'n/a'} | "
            f"{four:.0f} | {_ratio(four, orthanc.median(4)) if orthanc else 'n/a'} | "
            f"{statistics.median(fig.cpu_per_mib_ms):.2f} ms | "
            f"{f'{database:.2f} ms' if 'PostgreSQL' in name else '—'} | "
            f"{f'{emulator:.2f} ms' if emulator else '—'} |"
        )
    if searched is not None:
        lines += search_lines(searched, args)
    return "\n".join(lines) + "\n"


def retrieve_lines(retrieved: dict[str, RetrieveFigures], elapsed: float) -> str:
    """The study retrieve figures alone (``--retrieve-only``), with every round."""
    theirs = retrieved.get("Orthanc, WADO-RS")
    lines = [
        f"study retrieve, {elapsed / 60:.0f} min; MB/s, medians of the rounds (rounds)",
        "| configuration, path | 1 client MB/s | ratio | 4 clients MB/s | ratio | CPU per MiB |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for key, fig in retrieved.items():
        cells = [key]
        for clients in (1, 4):
            rounds = ", ".join(f"{r:.0f}" for r in fig.rates[clients].rates)
            cells.append(f"{fig.median(clients):.0f} ({rounds})")
            cells.append(_ratio(fig.median(clients), theirs.median(clients)) if theirs else "—")
        cpu = statistics.median(fig.cpu_per_mib_ms) if fig.cpu_per_mib_ms else 0.0
        cells.append(f"{cpu:.2f} ms")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def search_lines(s: SearchFigures, args: argparse.Namespace) -> list[str]:
    sides = list(s.timings)
    build = f"built in {s.build_s:.0f} s ({s.size / s.build_s:.0f} instances/s" + (
        f", this run; the copied rows of the corpus' first 1500 instances were checked "
        f"equal, {s.checked_rows} rows, to those `PostgresIndex.add_instance` writes)"
        if s.built_now
        else ", an earlier run; kept under bench/.work)"
    )
    lines = [
        "",
        f"**Search on PostgreSQL at {_size(s.size)} instances**: bench/search.py's corpus and "
        f"queries; the index written by COPY of the rows the server writes (bench/pgsearch.py), "
        f"{build}. `dicomrpc serve --index ... --blobs ...` and the SDK on one channel, "
        f"sequential; {args.warmup} warm-up queries, then {args.queries} timed queries of each "
        f"kind in {args.search_rounds} rounds, every side in each round, each with another "
        f"value; limit 100; every answer's count checked against the generator's. {s.lmdb_note}.",
        "",
        "| query | " + " | ".join(f"{side} p50 / p95 ms" for side in sides) + " | goal p95 < "
        f"{GOAL_SEARCH_P95_MS:.0f} ms (PostgreSQL) |",
        "|---|" + "--:|" * len(sides) + "---|",
    ]
    for kind, name in QUERY_NAMES.items():
        cells = []
        for side in sides:
            t = s.timings[side][kind]
            wrong = f" ({t.wrong} wrong)" if t.wrong else ""
            cells.append(f"{t.p50:.1f} / {t.p95:.1f}{wrong}")
        p95 = s.timings["PostgreSQL"][kind].p95
        verdict = "met" if p95 < GOAL_SEARCH_P95_MS else "NOT met"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {verdict} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller corpus, fewer rounds")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--no-search", action="store_true", help="skip the PostgreSQL search")
    parser.add_argument("--search-only", action="store_true", help="only the PostgreSQL search")
    parser.add_argument("--search-size", type=int, help="instances (10^6; quick 10^4)")
    parser.add_argument("--count", type=int, help="ingest instances (1000; quick 200)")
    parser.add_argument("--rounds", type=int, help="ingest and retrieve rounds (3; quick 1)")
    parser.add_argument(
        "--retrieve-only", action="store_true", help="only the study retrieve, printed"
    )
    parser.add_argument(
        "--only",
        action="append",
        help="only this configuration (repeatable), e.g. 'LMDB, 1 process'",
    )
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.repeats = 1 if args.quick else 2
    args.count = args.count or (200 if args.quick else 1000)
    args.search_size = args.search_size or (10_000 if args.quick else 1_000_000)
    args.queries = 40 if args.quick else 300
    args.warmup = 10 if args.quick else 20
    args.search_rounds = 2 if args.quick else 5
    started = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    os.environ.update(S3_ENV)  # the emulator's credentials, for the nodes and boto3 here
    cluster: PostgresCluster | None = None
    if postgres_bin() is None:
        print("PostgreSQL is not installed: measuring LMDB alone", flush=True)
    orthanc = ensure_orthanc() is None
    if not orthanc:
        print("Orthanc is not installed: measuring dicomrpc alone", flush=True)
    searched = None
    ingested: dict[str, RunResult] = {}
    retrieved: dict[str, RetrieveFigures] = {}
    try:
        needs_postgres = not args.only or any(not n.startswith("LMDB") for n in args.only)
        if postgres_bin() is not None and needs_postgres:
            cluster = start_cluster(settings=PG_SETTINGS)
        if args.retrieve_only:
            retrieved = retrieve(args.rounds, args.repeats, orthanc, cluster, args.only)
        elif not args.search_only:
            ingested = ingest(args.rounds, args.count, orthanc, cluster)
            retrieved = retrieve(args.rounds, args.repeats, orthanc, cluster)
    except ServerError as error:
        print(f"a server failed: {error}", flush=True)
        raise
    finally:
        if cluster is not None:
            cluster.stop()
    if args.retrieve_only:
        print(retrieve_lines(retrieved, time.perf_counter() - started))
        return 0
    if postgres_bin() is not None and not args.no_search:
        searched = search(args.search_size, args)
    elapsed = time.perf_counter() - started
    if args.search_only:
        if searched is not None:
            print("\n".join(search_lines(searched, args)))
        return 0
    section = report(ingested, retrieved, searched, args, elapsed)
    print(section)
    if not args.no_write:
        write_section(section, SECTION)
        print("wrote bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
