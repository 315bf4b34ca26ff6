"""One structured log line per RPC: method, status, caller, bytes in and out, milliseconds.

The interceptor wraps the behaviour of every method shape. For a streaming response it wraps
the response iterator, not the call, so that the time and bytes cover the whole stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from dicomrpc_server.grpc.auth import current_caller

log = logging.getLogger("dicomrpc.access")


class _Tally:
    """What one call moved and how long it took."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.start = time.perf_counter()
        self.bytes_in = 0
        self.bytes_out = 0

    def emit(self, context: Any, error: BaseException | None) -> None:
        code = context.code() if hasattr(context, "code") else None
        if code is not None and code != grpc.StatusCode.OK:
            name = getattr(code, "name", str(code))
        elif isinstance(error, asyncio.CancelledError):
            name = "CANCELLED"
        else:
            name = "UNKNOWN" if error is not None else "OK"
        caller = current_caller()
        record = {
            "rpc": self.method,
            "code": name,
            "caller": caller.identity if caller is not None else "",
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "ms": round((time.perf_counter() - self.start) * 1000, 2),
        }
        log.info(json.dumps(record, separators=(",", ":")))


def _size(message: Any) -> int:
    """A message's size: a chunk's encoded length, else the message's (which encodes it)."""
    if isinstance(message, (bytes, memoryview)):
        return len(message)
    return int(message.ByteSize()) if hasattr(message, "ByteSize") else 0


async def _count(requests: AsyncIterator[Any], tally: _Tally) -> AsyncIterator[Any]:
    async for request in requests:
        tally.bytes_in += _size(request)
        yield request


def _request(request: Any, tally: _Tally, streaming: bool) -> Any:
    """Count a unary request now, or a request stream as it is read."""
    if streaming:
        return _count(request, tally)
    tally.bytes_in = _size(request)
    return request


def _unary_response(inner: Any, method: str, streaming_request: bool) -> Any:
    async def behaviour(request: Any, context: Any) -> Any:
        tally = _Tally(method)
        error: BaseException | None = None
        try:
            response = await inner(_request(request, tally, streaming_request), context)
            tally.bytes_out = _size(response)
            return response
        except BaseException as exc:
            error = exc
            raise
        finally:
            tally.emit(context, error)

    return behaviour


def _stream_response(inner: Any, method: str, streaming_request: bool) -> Any:
    async def behaviour(request: Any, context: Any) -> AsyncIterator[Any]:
        tally = _Tally(method)
        error: BaseException | None = None
        try:
            result = inner(_request(request, tally, streaming_request), context)
            if hasattr(result, "__aiter__"):
                async for response in result:
                    tally.bytes_out += _size(response)
                    yield response
            else:  # a coroutine handler (one that only aborts, say)
                await result
        except BaseException as exc:
            error = exc
            raise
        finally:
            tally.emit(context, error)

    return behaviour


class AccessLogInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Logs every call once it ends, whatever its shape and outcome.

    A method's wrapped handler is made once and kept: the registered handlers do not change
    while the server runs, and building one per call is a cost every call would pay.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, Any] = {}

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        """Wrap the method's handler so that its end is logged."""
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return handler
            wrapped = self._wrapped[method] = _wrap(handler, method)
        return wrapped


def _wrap(handler: Any, method: str) -> Any:
    """A method handler that does what ``handler`` does, and logs the call's end."""
    serializers = (handler.request_deserializer, handler.response_serializer)
    if handler.unary_unary:
        wrapped = _unary_response(handler.unary_unary, method, False)
        return grpc.unary_unary_rpc_method_handler(wrapped, *serializers)
    if handler.stream_unary:
        wrapped = _unary_response(handler.stream_unary, method, True)
        return grpc.stream_unary_rpc_method_handler(wrapped, *serializers)
    if handler.unary_stream:
        wrapped = _stream_response(handler.unary_stream, method, False)
        return grpc.unary_stream_rpc_method_handler(wrapped, *serializers)
    wrapped = _stream_response(handler.stream_stream, method, True)
    return grpc.stream_stream_rpc_method_handler(wrapped, *serializers)
