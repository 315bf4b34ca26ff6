"""A throwaway PostgreSQL cluster for the tests (the ``postgres`` fixture of conftest.py).

The session runs its own server: ``initdb`` in a temporary folder, then ``pg_ctl start`` on a
free loopback port with its unix socket in that folder, so it never meets a system service
(Debian's package starts one on 5432) or another session's cluster. Durability is switched off
(fsync, synchronous commit): the tests check behaviour, never crashes of the machine. Each test
gets a database of its own (:meth:`PostgresCluster.create_database`).

PostgreSQL refuses to run as root, and CI runs as root: then the cluster is created and run as
the ``postgres`` user (which Debian's package creates) or else ``nobody``, owning the folder.

The tests skip when PostgreSQL is not installed, unless ``DICOMRPC_REQUIRE_POSTGRES=1`` (set by
``.ci/run``), which makes its absence a failure: CI must never pass by skipping them.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

REQUIRE_ENV = "DICOMRPC_REQUIRE_POSTGRES"
SUPERUSER = "postgres"
SETTINGS = """
listen_addresses = '127.0.0.1'
unix_socket_directories = '{socket_dir}'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
shared_buffers = 32MB
deadlock_timeout = 100ms
"""


def postgres_bin() -> Path | None:
    """The folder of initdb and pg_ctl: on PATH, else the newest /usr/lib/postgresql/*/bin."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent:
        return Path(initdb).parent

    def version(folder: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", folder.parent.name))

    folders = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for folder in folders:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def require_postgres() -> Path:
    """The folder of PostgreSQL's programs; skip the calling test without them (CI: fail)."""
    found = postgres_bin()
    if found is not None:
        return found
    message = "PostgreSQL's initdb and pg_ctl not found (apt-get install postgresql)"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(message)
    pytest.skip(message)


def _unprivileged_user() -> pwd.struct_passwd:
    """The account a root session runs PostgreSQL as: ``postgres`` if there is one."""
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.fail("running as root, with neither a 'postgres' nor a 'nobody' user to run PostgreSQL")


@dataclass
class PostgresCluster:
    """A running PostgreSQL server of the test session."""

    bin: Path
    folder: Path
    port: int
    user: pwd.struct_passwd | None

    def dsn(self, database: str = "postgres") -> str:
        """The connection URI of a database of the cluster (as its superuser, over TCP)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """Create an empty database of a new name; return its DSN."""
        name = f"test_{uuid.uuid4().hex[:16]}"
        self.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def drop_database(self, dsn: str) -> None:
        """Drop a database :meth:`create_database` made, closing its remaining connections."""
        name = dsn.rsplit("/", 1)[1]
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def execute(self, sql: str, database: str = "postgres") -> None:
        """Run one statement as the superuser."""

        async def run() -> None:
            connection = await asyncpg.connect(self.dsn(database))
            try:
                await connection.execute(sql)
            finally:
                await connection.close()

        asyncio.run(run())

    def postmaster_pid(self) -> int:
        """The server's main process (its backends are its children): for CPU accounting."""
        return int((self.folder / "data" / "postmaster.pid").read_text().split()[0])

    def stop(self, remove: bool = True) -> None:
        """Stop the server; remove its folder unless ``remove`` is false (a kept cluster)."""
        try:
            _run(self, "pg_ctl", "stop", "-D", self.folder / "data", "-m", "fast", "-w")
        finally:
            if remove:
                shutil.rmtree(self.folder, ignore_errors=True)


def _run(cluster: PostgresCluster, program: str, *args: str | Path) -> None:
    options: dict[str, Any] = {}
    if cluster.user is not None:
        options = {"user": cluster.user.pw_uid, "group": cluster.user.pw_gid, "extra_groups": []}
    result = subprocess.run(
        [str(cluster.bin / program), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
        cwd=cluster.folder,
        check=False,
        **options,
    )
    if result.returncode != 0:
        log = cluster.folder / "server.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"{program} failed ({result.returncode}): {result.stdout}\n{tail}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_cluster(folder: Path | None = None, settings: str = "") -> PostgresCluster:
    """initdb a cluster and start it on a free loopback port.

    By default the cluster lives in a new temporary folder. The benchmarks pass ``folder`` to
    keep one between runs (a cluster already there is started as it is, not created again) and
    ``settings`` to override :data:`SETTINGS` (they measure with durability on).
    """
    bin_folder = require_postgres()
    user = _unprivileged_user() if os.geteuid() == 0 else None
    # Under /tmp itself, not pytest's folders: those are private to the session's user, and the
    # socket path must stay short (unix socket paths are limited to about 100 bytes).
    kept = folder is not None
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="dicomrpc-pg-"))
    folder.mkdir(parents=True, exist_ok=True)
    if user is not None:
        os.chown(folder, user.pw_uid, user.pw_gid)
    cluster = PostgresCluster(bin_folder, folder, 0, user)
    try:
        if not (folder / "data" / "PG_VERSION").exists():
            _run(
                cluster,
                "initdb",
                *("-D", folder / "data", "-U", SUPERUSER, "-A", "trust"),
                *("-E", "UTF8", "--locale=C", "--no-sync"),
            )
            with (folder / "data" / "postgresql.conf").open("a") as conf:
                conf.write(SETTINGS.format(socket_dir=folder) + settings)
        for attempt in range(5):  # a port found free may be taken before the server binds it
            cluster.port = _free_port()
            try:
                _run(
                    cluster,
                    "pg_ctl",
                    "start",
                    "-D",
                    folder / "data",
                    "-l",
                    folder / "server.log",
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    f"-p {cluster.port}",
                )
                return cluster
            except RuntimeError:
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")
    except BaseException:
        if not kept:
            shutil.rmtree(folder, ignore_errors=True)
        raise
