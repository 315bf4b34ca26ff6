"""Shrink a finding's input while it shows the same bug.

``python -m tests.fuzz.minimize HARNESS INPUT OUTPUT [--seconds S]``

Runs the harness in this process (uninstrumented) and removes ever smaller runs of bytes
from the input, keeping each removal after which the input still raises a bug of the same
signature. What is left is what a regression input under ``tests/fuzz/findings/`` should be.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.fuzz.bugs import signature
from tests.fuzz.harness import HARNESSES, load


def outcome(target: Callable[[bytes], None], data: bytes) -> str | None:
    """The signature of the bug ``data`` shows, or None."""
    try:
        target(data)
    except Exception as exc:
        return signature(exc)
    return None


def shrink(same: Callable[[bytes], bool], data: bytes, deadline: float) -> bytes:
    """The shortest input found by removing runs of bytes from ``data`` while ``same`` holds."""
    size = max(1, len(data) // 2)
    while time.monotonic() < deadline:
        at, removed = 0, False
        while at < len(data) and time.monotonic() < deadline:
            candidate = data[:at] + data[at + size :]
            if same(candidate):
                data, removed = candidate, True
            else:
                at += size
        if not removed:
            if size == 1:
                break
            size //= 2
    return data


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.minimize", description=__doc__)
    parser.add_argument("harness", choices=sorted(HARNESSES))
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--seconds", type=float, default=120.0, help="time to spend (120)")
    args = parser.parse_args(argv)
    module = load(HARNESSES[args.harness])
    if hasattr(module, "setup"):
        module.setup()
    try:
        data = args.input.read_bytes()
        target = outcome(module.TestOneInput, data)
        if target is None:
            sys.exit(f"{args.input} shows no bug")
        print(f"{len(data)} bytes: {target}")
        small = shrink(
            lambda candidate: outcome(module.TestOneInput, candidate) == target,
            data,
            time.monotonic() + args.seconds,
        )
        args.output.write_bytes(small)
        print(f"{len(small)} bytes: {args.output}")
        print(repr(small) if len(small) <= 400 else "")
    finally:
        if hasattr(module, "teardown"):
            module.teardown()


if __name__ == "__main__":
    main(sys.argv[1:])
