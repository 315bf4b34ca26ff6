"""Coverage-guided fuzzing of every parser that reads bytes from outside (atheris, libFuzzer).

One module per target, each exposing:

- ``TestOneInput(data: bytes) -> None``: run the target on one input. It returns for every
  input the target handles as designed, a rejection included (each harness names the exception
  types that are the target's documented answer to bad input, ``ServiceError`` mostly), and
  raises for a bug: any other exception, or a :class:`~tests.fuzz.bugs.Bug` when an answer
  breaks a property the harness checks (an HTTP 5xx, parts that depend on how a body was
  chunked, offsets outside the file).
- ``seeds() -> dict[str, bytes]``: the seed corpus, named, built from real data (pydicom's test
  files, ``tests/dicomgen.py``, ``tests/upsgen.py``, real bodies and query strings).
- optionally ``DICTIONARY`` (libFuzzer dictionary entries), ``setup()`` and ``teardown()``
  (a harness that needs an archive or a live server opens it there).

Hangs (an input running past the harness's timeout) and unbounded memory (libFuzzer's RSS
limit) are caught by libFuzzer around the harness. ``python -m tests.fuzz HARNESS`` runs one
harness (see :mod:`tests.fuzz.__main__`); :mod:`tests.fuzz.campaign` runs it for a budget of
inputs and collects what it found, for ``bench/fuzz.py`` and ``tests/test_fuzz.py``.
"""
