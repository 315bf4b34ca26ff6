"""How the server's commands log: one line per record on standard error, with its time.

Standard output is kept for what a command answers (the serving lines a supervisor or a test
reads, a summary), so that logs never interleave with it.
"""

from __future__ import annotations

import logging
import sys


def log_to_stderr(level: str | int, *, process: bool = False) -> None:
    """Send the log records at ``level`` (a name or a number) and above to standard error.

    ``process`` adds the process id, for the processes of a group that write to one terminal.
    """
    pid = " [%(process)d]" if process else ""
    logging.basicConfig(
        level=level.upper() if isinstance(level, str) else level,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s %(name)s{pid} %(message)s",
    )
