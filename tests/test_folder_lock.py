"""One owner per data folder: a second archive on it fails, naming the first."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from dicomrpc_server.archive import Archive
from dicomrpc_server.config import Settings
from dicomrpc_server.errors import StartupError
from dicomrpc_server.storage.folder_lock import DataFolderLock


def test_a_second_archive_on_the_folder_fails_naming_the_holder(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    first = Archive(settings)
    try:
        with pytest.raises(StartupError) as caught:
            Archive(settings)
        assert caught.value.reason == "DATA_FOLDER_IN_USE"
        message = str(caught.value)
        assert message.startswith(f"data folder {settings.data_dir} is in use by dicomrpc serve")
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
        assert message.endswith("stop it or choose another --data")
    finally:
        first.close()
    # Released on close: the folder opens again.
    Archive(settings).close()


def test_the_lock_names_what_holds_it(tmp_path: Path) -> None:
    lock = DataFolderLock(tmp_path, "dicomrpc rebuild-index")
    try:
        with pytest.raises(StartupError, match="in use by dicomrpc rebuild-index pid"):
            DataFolderLock(tmp_path, "dicomrpc serve")
    finally:
        lock.release()
    lock.release()  # idempotent
    DataFolderLock(tmp_path, "dicomrpc serve").release()
