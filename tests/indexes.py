"""The instance indexes the contract tests run on: LMDB, and PostgreSQL on a fresh database.

Entries are made as the store makes them: a DICOM file is written, ``prepare()`` turns it into
the ``NewInstance`` the store would index, and ``add_instance`` indexes it, on either index.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import pytest

from dicomrpc_server.storage.lmdb_index import LmdbIndex
from dicomrpc_server.storage.postgres import PostgresBackend
from dicomrpc_server.storage.postgres.index import PostgresIndex
from dicomrpc_server.storage.protocols import NewInstance
from dicomrpc_server.store.prepare import prepare

KINDS = ["lmdb", "postgresql"]


class AnyIndex(Protocol):
    """What the tests call, which both indexes have."""

    async def add_instance(self, new: NewInstance) -> int: ...

    def close(self) -> None: ...


def open_index(kind: str, request: pytest.FixtureRequest, path: Path) -> LmdbIndex | PostgresIndex:
    """A new, empty index of ``kind`` (the caller closes it)."""
    if kind == "lmdb":
        return LmdbIndex(
            path / "index",
            map_size=1 << 26,
            max_readers=64,
            max_batch=64,
            before_commit=lambda: None,
        )
    backend = PostgresBackend(request.getfixturevalue("postgres_dsn"), pool_size=4)
    return PostgresIndex(backend)


def new_instance(data: bytes, folder: Path, blob_id: str = "") -> NewInstance:
    """The entry the store would index for the DICOM file ``data`` (a new blob id if none)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.dcm"
    path.write_bytes(data)
    new = prepare(path).new
    new.record.blob_id = blob_id or uuid.uuid4().hex
    path.unlink()
    return new


def add_all(index: AnyIndex, entries: Iterable[NewInstance], window: int = 32) -> list[int]:
    """Index every entry, ``window`` at a time in flight; their versions, in order."""

    async def run() -> list[int]:
        pending = list(entries)
        versions: list[int] = []
        for start in range(0, len(pending), window):
            chunk = pending[start : start + window]
            versions += await asyncio.gather(*(index.add_instance(n) for n in chunk))
        return versions

    return asyncio.run(run())
