"""What a test's server holds open: its descriptors on files of a folder."""

from __future__ import annotations

import os
from pathlib import Path


def open_files_under(folder: Path, pid: int | str = "self") -> list[str]:
    """The paths a process (this one by default) has a descriptor open on, below ``folder``."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found
