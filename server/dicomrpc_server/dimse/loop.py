"""Work a DIMSE handler hands to the archive's event loop, from its association's thread.

pynetdicom runs each association on a thread of its own; storing, reading and the workitem
core live on the archive's event loop. A handler submits a coroutine there and waits for its
result. When the archive is stopping, its loop may already be closed: the submission fails
before the loop takes the coroutine, which is then closed here rather than left never awaited.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def on_loop(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on ``loop`` and wait for its result (RuntimeError: the loop is closed)."""
    try:
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
    except RuntimeError:
        coroutine.close()
        raise
    return future.result()
