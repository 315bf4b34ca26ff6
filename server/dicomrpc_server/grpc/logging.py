"""One structured log line per RPC: method, status, caller, bytes in and out, milliseconds.

The access log is an observer of :class:`~.interception.ObservingInterceptor`, which shows it
every message of every call and the call's end, so that the time and bytes of a stream cover
the whole stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import grpc

from dicomrpc_server.grpc.auth import current_caller
from dicomrpc_server.lifecycle.metrics import Metrics

log = logging.getLogger("dicomrpc.access")


def _size(message: Any) -> int:
    """A message's size: a chunk's encoded length, else the message's (which encodes it)."""
    if isinstance(message, (bytes, memoryview)):
        return len(message)
    return int(message.ByteSize()) if hasattr(message, "ByteSize") else 0


def status_name(context: Any, error: BaseException | None) -> str:
    """The name of the status a call ended with (``OK``, ``NOT_FOUND``, ``CANCELLED``...)."""
    code = context.code() if hasattr(context, "code") else None
    if code is not None and code != grpc.StatusCode.OK:
        return str(getattr(code, "name", code))
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    return "UNKNOWN" if error is not None else "OK"


class _Tally:
    """What one call moved and how long it took."""

    def __init__(self, method: str, metrics: Metrics | None) -> None:
        self.method = method
        self.metrics = metrics
        self.start = time.perf_counter()
        self.bytes_in = 0
        self.bytes_out = 0

    def request(self, message: Any) -> None:
        self.bytes_in += _size(message)

    def response(self, message: Any) -> None:
        self.bytes_out += _size(message)

    def end(self, context: Any, error: BaseException | None) -> None:
        caller = current_caller()
        code = status_name(context, error)
        record = {
            "rpc": self.method,
            "code": code,
            "caller": caller.identity if caller is not None else "",
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "ms": round((time.perf_counter() - self.start) * 1000, 2),
        }
        log.info(json.dumps(record, separators=(",", ":")))
        if self.metrics is not None:
            self.metrics.observe(
                "grpc",
                self.method,
                code,
                time.perf_counter() - self.start,
                self.bytes_in,
                self.bytes_out,
            )


class AccessLog:
    """Logs every call once it ends, whatever its shape and outcome; counts it in ``metrics``."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics

    def watch(self, method: str, context: Any) -> _Tally:
        """Count the call's bytes and time."""
        return _Tally(method, self.metrics)
