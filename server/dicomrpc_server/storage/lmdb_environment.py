"""The LMDB environment of the embedded index: its sub-databases, reads, map growth, commits.

Why this module exists: every part of the index (:mod:`.lmdb_records`, :mod:`.lmdb_terms`,
:mod:`.lmdb_changes`, :mod:`.lmdb_query_tags`, :mod:`.lmdb_peers`) works in one environment;
opening it, the read transactions, enlarging its map and hearing its commits are here once.

Sub-databases (keys in :mod:`.keys`):

=============  ======================  =========================================================
name           key                     value
=============  ======================  =========================================================
``meta``       setting name            counters (``version``, ``change``) and the schema version
``studies``    study                   ``StudyRecord``
``series``     study/series            ``SeriesRecord``
``instances``  study/series/sop        ``InstanceRecord``
``sops``       sop                     study/series/sop: the UID map
``blobs``      blob id                 study/series/sop: which files the index references
``removals``   blob id                 study/series/sop: files of deleted instances still to be
                                       removed (recorded by the delete, cleared once removed)
``metadata``   study/series/sop        ``dicomrpc.v1.Dataset``: pre-computed metadata
``frames``     study/series/sop        ``FrameTable``: the byte ranges of every frame
``terms``      level/tag/term/pk       empty: secondary indexes, scanned with ``set_range``
``changes``    sequence                ``ChangeRecord``: the change feed
``query_tags`` 8 hex digits            ``QueryTagRecord``: the extended query tags
``operations`` operation id            ``ReindexOperation``: background re-indexing progress
``workitems``  workitem UID            ``dicomrpc.v1.Dataset``: a UPS (:mod:`..ups.store`)
``wi_events``  sequence                a workitem event (:mod:`..ups.store`)
``peers``      peer name               ``DimsePeerRecord``: a DIMSE peer added at run time
``ups_subscribers``  AE title          ``UpsSubscriberRecord``: DIMSE UPS event delivery
``ups_subscriptions``  AE/workitem     ``UpsSubscriptionRecord``: a DIMSE UPS subscription
=============  ======================  =========================================================

Reads run on the caller's thread in short read transactions; writes go through the
:class:`~.writer.IndexWriter`.

Several processes may open one environment (``dicomrpc serve --processes N``): LMDB serializes
their write transactions, the counters and sequences are read and advanced inside them, and a
map enlarged by one process is adopted by the others when their next transaction finds it
resized (``MDB_MAP_RESIZED``). Commit listeners hear the other processes' commits through
:mod:`.wakeups`.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import lmdb

from dicomrpc_server.dicom.attributes import Level
from dicomrpc_server.storage.wakeups import Wakeups
from dicomrpc_server.storage.writer import IndexWriter

SCHEMA_VERSION = 1
_DB_NAMES = (
    "meta",
    "studies",
    "series",
    "instances",
    "sops",
    "blobs",
    "removals",
    "metadata",
    "frames",
    "terms",
    "changes",
    "query_tags",
    "operations",
    "workitems",
    "wi_events",
    "peers",
    "ups_subscribers",
    "ups_subscriptions",
)
# The sub-database of each level's records.
LEVEL_DB = {Level.STUDY: "studies", Level.SERIES: "series", Level.INSTANCE: "instances"}


def get_value(txn: lmdb.Transaction, key: bytes, db: lmdb._Database) -> bytes | None:
    """A value as ``bytes`` (the environment is opened without buffers), or ``None``."""
    value = txn.get(key, db=db)
    return None if value is None else bytes(value)


class _ReadGate:
    """Lets the writer enlarge the map only while no read transaction is open."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._resizing = False

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._resizing = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


class LmdbEnvironment:
    """The environment every part of the LMDB index works in.

    Parameters
    ----------
    path
        The environment's directory.
    map_size
        The map size reserved up front (address space, not disk); doubled whenever full.
    max_readers
        Reader slots, sized for peak concurrent streams.
    max_batch
        The most writes grouped into one commit.
    before_commit
        Called inside every write transaction before it commits (the blob store's sync).
    wakeups
        The folder of the wake-up pipes when other processes share the environment (see
        :mod:`.wakeups`); ``None`` when this process is its only user.
    """

    def __init__(
        self,
        path: Path,
        *,
        map_size: int,
        max_readers: int,
        max_batch: int,
        before_commit: Callable[[], None],
        wakeups: Path | None = None,
    ) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=len(_DB_NAMES) + 4,
            max_readers=max_readers,
            sync=True,
            metasync=True,
            readahead=False,
        )
        self.env.reader_check()
        self._db = {name: self.env.open_db(name.encode()) for name in _DB_NAMES}
        self._gate = _ReadGate()
        with self.env.begin(write=True) as txn:
            stored = get_value(txn, b"schema", self._db["meta"])
            if stored is None:
                txn.put(b"schema", struct.pack(">I", SCHEMA_VERSION), db=self._db["meta"])
            elif struct.unpack(">I", stored)[0] != SCHEMA_VERSION:
                raise RuntimeError(
                    f"the index at {path} has schema {struct.unpack('>I', stored)[0]}, "
                    f"this server reads {SCHEMA_VERSION}"
                )
        self.writer = IndexWriter(
            self.env,
            before_commit=before_commit,
            grow=self._grow,
            adopt=self._adopt,
            hold=self._gate.reading,
            max_batch=max_batch,
        )
        self._listeners: list[Callable[[], None]] = []
        self.wakeups = None if wakeups is None else Wakeups(wakeups, self._committed_elsewhere)
        if self.wakeups is not None:
            self.writer.add_listener(self.wakeups.notify)

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every commit, this process's or another's.

        It runs on the index writer's thread or the wake-up thread, possibly both at once: it
        must not block, and it reads what changed from the index, never from the call.
        """
        self._listeners.append(listener)
        self.writer.add_listener(listener)

    def _committed_elsewhere(self) -> None:
        for listener in self._listeners:
            listener()

    def database(self, name: str) -> lmdb._Database:
        """The handle of a named sub-database, for the cores that keep records of their own."""
        return self._db[name]

    def get_meta(self, name: bytes) -> bytes | None:
        """A value of the ``meta`` sub-database (settings and state of the index itself)."""
        with self.read() as txn:
            return get_value(txn, name, self._db["meta"])

    @contextmanager
    def read(self) -> Iterator[lmdb.Transaction]:
        """A short read transaction; copy what you need out of it before yielding to a client."""
        while True:
            with self._gate.reading():
                try:
                    txn = self.env.begin(buffers=False)
                except lmdb.MapResizedError:  # another process enlarged the map
                    pass
                else:
                    with txn:
                        yield txn
                    return
            self._adopt()

    def next_counter(self, txn: lmdb.Transaction, counter: bytes) -> int:
        """Advance a ``meta`` counter (``version``, ``change``) in an open write; its new value."""
        raw = get_value(txn, counter, self._db["meta"])
        value = (struct.unpack(">Q", raw)[0] if raw else 0) + 1
        txn.put(counter, struct.pack(">Q", value), db=self._db["meta"])
        return value

    def _grow(self) -> None:
        with self._gate.exclusive():
            new_size = self.env.info()["map_size"] * 2
            self.env.set_mapsize(new_size)

    def _adopt(self) -> None:
        """Take the map size another process set (LMDB's ``mdb_env_set_mapsize(env, 0)``)."""
        with self._gate.exclusive():
            self.env.set_mapsize(0)

    def close(self) -> None:
        """Commit queued writes, stop the wake-ups, then close the environment."""
        self.writer.close()
        if self.wakeups is not None:
            self.wakeups.close()
        self.env.close()
