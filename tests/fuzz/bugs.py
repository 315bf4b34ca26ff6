"""What a harness reports as a bug, how a bug is named, and how a fuzzing run records them.

A bug is named by a *signature*: the exception type and where it was raised (the innermost
frame in the archive's own code, and the innermost frame of all when that is elsewhere), or
the signature a :class:`Bug` carries (an HTTP 5xx names the route). Inputs with the same
signature count as one finding; the first input of each is kept, with its traceback.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import struct
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

CRASH, HTTP_5XX, HANG, OOM = "crash", "5xx", "hang", "oom"
_OUR_PACKAGES = frozenset({"dicomrpc", "dicomrpc_server"})


class Bug(Exception):
    """An answer that breaks what the harness checks, with no exception of its own.

    Parameters
    ----------
    kind
        ``crash`` (a wrong answer, a dropped connection), ``5xx`` or ``hang``.
    signature
        The name the finding is counted under (no input-specific values in it).
    detail
        What was sent and answered, for the finding's report.
    """

    def __init__(self, kind: str, signature: str, detail: str = "") -> None:
        super().__init__(f"{signature}\n{detail}" if detail else signature)
        self.kind = kind
        self.signature = signature
        self.detail = detail


def _place(frame: traceback.FrameSummary) -> str:
    path = Path(frame.filename)
    return f"{path.parent.name}/{path.name}:{frame.name}"


def _ours(filename: str) -> bool:
    return not _OUR_PACKAGES.isdisjoint(Path(filename).parts)


def signature(exc: BaseException) -> str:
    """The name of the bug ``exc`` shows (see the module docstring)."""
    if isinstance(exc, Bug):
        return exc.signature
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [frame for frame in frames if _ours(frame.filename)]
    where = _place(ours[-1]) if ours else "?"
    innermost = _place(frames[-1]) if frames else "?"
    text = f"{type(exc).__name__} at {where}"
    return text if innermost == where else f"{text} in {innermost}"


_FRAME = re.compile(r'^\s+File "([^"]+)", line \d+ in (\S+)', re.MULTILINE)


def hang_signature(log: str) -> str:
    """The signature of a hang, from the Python stack libFuzzer's timeout report prints.

    The stack is printed most recent call first; the first frame in the archive's own code
    names the hang (the innermost frame of all when none is ours).
    """
    at = log.rfind("Current thread")
    frames = _FRAME.findall(log[at:] if at >= 0 else log)
    if not frames:
        return "hang (no Python stack printed)"
    ours = [f for f in frames if _ours(f[0])]
    filename, function = (ours or frames)[0]
    path = Path(filename)
    return f"hang at {path.parent.name}/{path.name}:{function}"


@dataclass
class Finding:
    """One signature found: how many inputs showed it, and the first of them."""

    kind: str
    signature: str
    count: int
    example: str
    detail: str


def _digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:16]


class Recorder:
    """Counts the inputs of one fuzzing process and records the bugs they show.

    Parameters
    ----------
    folder
        Where the first input of each finding is written (with a ``.txt`` report beside it).
    stats
        The JSON summary (inputs, wall and CPU seconds, findings), rewritten on each new finding
        and every few seconds.
    counter
        An 8-byte file holding the number of inputs run so far, updated on every input, so
        that the count survives the process being killed on a hang.
    """

    def __init__(self, folder: Path, stats: Path, counter: Path) -> None:
        self.folder = folder
        self.stats = stats
        folder.mkdir(parents=True, exist_ok=True)
        self.inputs = 0
        self.findings: dict[str, Finding] = {}
        self.started = time.monotonic()
        self.started_cpu = time.process_time()
        self._flushed = self.started
        counter.write_bytes(bytes(8))
        with open(counter, "r+b") as fp:
            self._counter = mmap.mmap(fp.fileno(), 8)

    def count(self) -> None:
        """Count one more input (called before it runs)."""
        if self.inputs == 0:
            self.started = time.monotonic()
            self.started_cpu = time.process_time()
        self.inputs += 1
        struct.pack_into("<Q", self._counter, 0, self.inputs)

    def record(self, data: bytes, exc: BaseException) -> None:
        """Record the bug ``exc`` that the input ``data`` showed."""
        name = signature(exc)
        found = self.findings.get(name)
        if found is not None:
            found.count += 1
            return
        kind = exc.kind if isinstance(exc, Bug) else CRASH
        example = f"{kind}-{_digest(data)}"
        detail = "".join(traceback.format_exception(exc))
        if len(detail) > 8000:  # a RecursionError's thousand frames: keep both ends
            detail = detail[:3000] + "\n[...]\n" + detail[-3000:]
        (self.folder / example).write_bytes(data)
        (self.folder / f"{example}.txt").write_text(f"{name}\n\n{detail}", encoding="utf-8")
        self.findings[name] = Finding(kind, name, 1, example, detail)
        self.flush()

    def tick(self) -> None:
        """Rewrite the summary when the last one is a few seconds old."""
        if time.monotonic() - self._flushed > 2.0:
            self.flush()

    def flush(self) -> None:
        """Write the summary (atomically: a reader never sees half of it)."""
        self._flushed = time.monotonic()
        running = bool(self.inputs)
        summary = {
            "inputs": self.inputs,
            "seconds": self._flushed - self.started if running else 0.0,
            # CPU time of every thread of the process (the HTTP harness's server included):
            # what the inputs cost, however busy the machine is with other work.
            "cpu_seconds": time.process_time() - self.started_cpu if running else 0.0,
            "findings": [asdict(f) for f in self.findings.values()],
        }
        partial = self.stats.with_suffix(".partial")
        partial.write_text(json.dumps(summary, indent=1), encoding="utf-8")
        os.replace(partial, self.stats)


def read_counter(counter: Path) -> int:
    """The number of inputs a (possibly killed) fuzzing process had started."""
    try:
        return int(struct.unpack("<Q", counter.read_bytes()[:8])[0])
    except (OSError, struct.error):
        return 0
