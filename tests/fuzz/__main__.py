"""Run one harness under atheris.

``python -m tests.fuzz HARNESS --work DIR [--inputs N] [--seconds S] [-- libFuzzer flags]``

The work folder holds the seed corpus (rewritten from the harness's ``seeds()``), the corpus
libFuzzer grows (kept between runs), the dictionary, ``crashes/`` (the first input of each
finding, and libFuzzer's hang and out-of-memory artifacts) and the run's summary
(``stats-RUN.json``, see :class:`~tests.fuzz.bugs.Recorder`). A bug does not stop the run:
it is recorded and fuzzing goes on, so one run counts every finding of its budget. A hang or
out-of-memory ends the process (libFuzzer's ``-timeout`` and ``-rss_limit_mb``);
:mod:`tests.fuzz.campaign` starts it again for the rest of the budget.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from tests.fuzz.bugs import Recorder
from tests.fuzz.harness import HARNESSES, load


def _dictionary_line(entry: bytes) -> str:
    escaped = "".join(
        chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\x{b:02X}" for b in entry
    )
    return f'"{escaped}"'


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("harness", choices=sorted(HARNESSES))
    parser.add_argument("--work", type=Path, required=True, help="the harness's work folder")
    parser.add_argument("--inputs", type=int, default=1_000_000, help="stop after N inputs")
    parser.add_argument("--seconds", type=float, default=0, help="stop after S seconds (0: no)")
    parser.add_argument("--run", type=int, default=0, help="run number, names the summary")
    args, libfuzzer_flags = parser.parse_known_args(argv)
    libfuzzer_flags = [flag for flag in libfuzzer_flags if flag != "--"]
    spec = HARNESSES[args.harness]

    import atheris

    module = load(spec, instrument=True)
    work: Path = args.work
    seeds, corpus, crashes = work / "seeds", work / "corpus", work / "crashes"
    for folder in (seeds, corpus, crashes):
        folder.mkdir(parents=True, exist_ok=True)
    for name, data in module.seeds().items():
        (seeds / name).write_bytes(data)
    flags = [
        f"-max_len={spec.max_len}",
        f"-timeout={spec.timeout_s}",
        f"-artifact_prefix={crashes}/",
        "-rss_limit_mb=3072",
        f"-runs={args.inputs + 1}",  # the budget below stops the run first
    ]
    entries = getattr(module, "DICTIONARY", ())
    if entries:
        dictionary = work / "dictionary.txt"
        dictionary.write_text("".join(_dictionary_line(e) + "\n" for e in entries))
        flags.append(f"-dict={dictionary}")
    if hasattr(module, "setup"):
        module.setup()
    recorder = Recorder(crashes, work / f"stats-{args.run}.json", work / f"count-{args.run}")
    target = module.TestOneInput
    deadline = time.monotonic() + args.seconds if args.seconds else None

    def finish() -> None:
        recorder.flush()
        if hasattr(module, "teardown"):
            module.teardown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # libFuzzer's loop never returns; this ends the run at its budget

    def one_input(data: bytes) -> None:
        recorder.count()
        try:
            target(data)
        except Exception as exc:  # every expected rejection returns: anything raised is a bug
            recorder.record(data, exc)
        recorder.tick()
        if recorder.inputs >= args.inputs or (deadline and time.monotonic() >= deadline):
            finish()

    atheris.Setup([sys.argv[0], *flags, *libfuzzer_flags, str(corpus), str(seeds)], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv[1:])
