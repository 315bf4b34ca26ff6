"""What a test's in-process server holds open: its descriptors on files of a folder."""

from __future__ import annotations

import os
from pathlib import Path


def open_files_under(folder: Path) -> list[str]:
    """The paths this process has a descriptor open on, below ``folder``."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found
