"""What several processes on one data folder share: named locks, commit wake-ups, and the
settling of uploads a process left when it exited. Each test runs the other side in a real
child process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from dicomrpc_server.archive import Archive, GroupMember
from dicomrpc_server.config import Settings
from dicomrpc_server.storage.folder_lock import DataFolderLock
from dicomrpc_server.storage.key_locks import KeyLocks
from dicomrpc_server.storage.recovery import uploads_lock
from dicomrpc_server.storage.wakeups import Wakeups
from tests.dicomgen import ct_instance
from tests.test_recovery import _store

_CHILDREN: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _reap() -> Iterator[None]:
    """Every child ends with its test, its pipes closed."""
    yield
    while _CHILDREN:
        child = _CHILDREN.pop()
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=30)


def _child(code: str, *args: str) -> subprocess.Popen[str]:
    """A Python child running ``code``; it prints "ready" once set up, then waits on stdin."""
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    _CHILDREN.append(child)
    return child


def _line(child: subprocess.Popen[str]) -> str:
    assert child.stdout is not None
    return child.stdout.readline().strip()


def _ready(child: subprocess.Popen[str]) -> None:
    assert _line(child) == "ready"


HOLD = """
    import sys
    from pathlib import Path
    from dicomrpc_server.storage.key_locks import KeyLocks
    locks = KeyLocks(Path(sys.argv[1]))
    assert all(locks.acquire(name) for name in sys.argv[2:])
    print("ready", flush=True)
    sys.stdin.read()
"""


def test_a_name_another_process_holds_is_refused_until_it_exits(tmp_path: Path) -> None:
    path = tmp_path / "locks"
    holder = _child(HOLD, str(path), "store 1.2.3", "reindex op")
    _ready(holder)
    locks = KeyLocks(path)
    try:
        assert not locks.acquire("store 1.2.3")
        assert not locks.acquire("reindex op")
        assert locks.acquire("store 1.2.4")  # another name, another byte
        holder.kill()  # however it ends, the kernel drops its locks
        holder.wait(10)
        assert locks.acquire("store 1.2.3")
    finally:
        locks.close()


def test_a_name_is_held_until_its_last_release_in_this_process(tmp_path: Path) -> None:
    path = tmp_path / "locks"
    locks = KeyLocks(path)
    try:
        assert locks.acquire("a") and locks.acquire("a")
        locks.release("a")
        probe = _child(
            """
            import sys
            from pathlib import Path
            from dicomrpc_server.storage.key_locks import KeyLocks
            print("ready", flush=True)
            print(KeyLocks(Path(sys.argv[1])).acquire("a"), flush=True)
            """,
            str(path),
        )
        _ready(probe)
        assert _line(probe) == "False"
        locks.release("a")
        probe = _child(
            """
            import sys
            from pathlib import Path
            from dicomrpc_server.storage.key_locks import KeyLocks
            print("ready", flush=True)
            print(KeyLocks(Path(sys.argv[1])).acquire("a"), flush=True)
            """,
            str(path),
        )
        _ready(probe)
        assert _line(probe) == "True"
    finally:
        locks.close()


LISTEN = """
    import sys, threading
    from pathlib import Path
    from dicomrpc_server.storage import wakeups
    wakeups.SAFETY_S = 3600.0  # only real wake-ups are counted
    heard = threading.Event()
    w = wakeups.Wakeups(Path(sys.argv[1]), heard.set)
    print("ready", flush=True)
    print("heard" if heard.wait(10) else "nothing", flush=True)
    w.close()
"""


def test_a_commit_wakes_the_other_processes(tmp_path: Path) -> None:
    folder = tmp_path / "wakeups"
    listener = _child(LISTEN, str(folder))
    _ready(listener)
    own = Wakeups(folder, lambda: None)
    try:
        own.notify()
        assert _line(listener) == "heard"
        listener.wait(30)
        # Its pipe went with it; the next commit forgets it.
        own.notify()
        assert [p.name for p in folder.iterdir()] == [own.name]
    finally:
        own.close()
    assert list(folder.iterdir()) == []


def test_a_pipe_nobody_reads_is_removed(tmp_path: Path) -> None:
    """A pipe left by a process that was killed: opening it for writing proves nobody reads."""
    folder = tmp_path / "wakeups"
    folder.mkdir()
    os.mkfifo(folder / "999999.wake")
    own = Wakeups(folder, lambda: None)
    try:
        own.notify()
        assert not (folder / "999999.wake").exists()
    finally:
        own.close()


@pytest.mark.slow
def test_many_commits_wake_a_slow_process_without_blocking(tmp_path: Path) -> None:
    folder = tmp_path / "wakeups"
    stalled = _child(
        """
        import sys, os
        from pathlib import Path
        folder = Path(sys.argv[1]); folder.mkdir(parents=True, exist_ok=True)
        os.mkfifo(folder / ".x")
        fd = os.open(folder / ".x", os.O_RDONLY | os.O_NONBLOCK)  # never read
        os.rename(folder / ".x", folder / f"{os.getpid()}.wake")
        print("ready", flush=True)
        sys.stdin.read()
        """,
        str(folder),
    )
    _ready(stalled)
    own = Wakeups(folder, lambda: None)
    try:
        started = time.monotonic()
        for _ in range(200_000):  # far more than a pipe holds
            own.notify()
        assert time.monotonic() - started < 60
    finally:
        own.close()
        stalled.kill()
        stalled.wait(10)


def _member(settings: Settings, lock: DataFolderLock) -> Archive:
    return Archive(settings, member=GroupMember(os.dup(lock.fileno())))


def test_a_process_settles_the_uploads_of_one_that_exited(tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = Settings(data_dir=data)
    Archive(settings).close()  # the index exists, as the supervisor leaves it
    lock = DataFolderLock(data, "test")
    try:
        first = _member(settings, lock)
        study = generate_uid()
        (stored,) = _store(first, [ct_instance(study=study)])
        # Three stores cut short in the first process: a partial upload, one persisted and
        # linked but not committed, and one committed whose upload name was not yet removed.
        partial = first.blobs.new_upload()
        partial.write(b"partial")
        partial.close()
        twin = first.blobs.new_upload()
        twin.write(ct_instance())
        first.blobs.persist(twin)
        first.blobs.sync()
        record = first.index.get_instance(stored.study_uid, stored.series_uid, stored.sop_uid)
        assert record is not None
        committed = first.blobs.upload_path(record.blob_id)
        os.link(first.blobs.path(record.blob_id), committed)
        own_folder = first.blobs.uploads_dir
        # A living process's folder: its lock is held elsewhere.
        living = data / "uploads" / "1-living"
        living.mkdir()
        (living / "feedfeedfeedfeedfeedfeedfeedfeed.part").write_bytes(b"in flight")
        holder = _child(HOLD, str(data / "run" / "locks"), uploads_lock(living))
        _ready(holder)
        # The first process exits without closing (its locks go with it).
        first.locks.close()
        first.index.close()

        second = _member(settings, lock)
        try:
            assert second.recovery.partial_uploads == 1
            assert second.recovery.unfinished_commits == 1
            assert not own_folder.exists()
            assert not first.blobs.path(twin.blob_id).exists()
            assert first.blobs.path(record.blob_id).exists() and not committed.exists()
            assert (living / "feedfeedfeedfeedfeedfeedfeedfeed.part").exists()
            assert second.index.counts().instances == 1
        finally:
            holder.kill()
            holder.wait(10)
            second.close()
        assert not second.blobs.uploads_dir.exists()  # a clean exit leaves no folder
    finally:
        lock.release()


def test_a_member_refuses_a_descriptor_that_is_not_the_folder_lock(tmp_path: Path) -> None:
    data = tmp_path / "data"
    Archive(Settings(data_dir=data)).close()
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        with pytest.raises(Exception, match="is not the lock"):
            Archive(Settings(data_dir=data), member=GroupMember(fd))
    finally:
        os.close(fd)
