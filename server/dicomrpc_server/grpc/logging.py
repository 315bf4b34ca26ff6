"""One structured log line per RPC: method, status, bytes in and out, milliseconds.

The interceptor wraps the behaviour of every method shape. For a streaming response it wraps
the response iterator, not the call, so that the time and bytes cover the whole stream.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

log = logging.getLogger("dicomrpc.access")


class _Tally:
    def __init__(self, method: str) -> None:
        self.method = method
        self.start = time.perf_counter()
        self.bytes_in = 0
        self.bytes_out = 0

    def emit(self, context: Any, error: BaseException | None) -> None:
        code = "OK"
        try:
            set_code = context.code()
        except Exception:
            set_code = None
        if set_code is not None and set_code != grpc.StatusCode.OK:
            code = getattr(set_code, "name", str(set_code))
        elif error is not None:
            code = (
                "CANCELLED"
                if isinstance(error, BaseException) and type(error).__name__ == "CancelledError"
                else "UNKNOWN"
            )
        log.info(
            json.dumps(
                {
                    "rpc": self.method,
                    "code": code,
                    "bytes_in": self.bytes_in,
                    "bytes_out": self.bytes_out,
                    "ms": round((time.perf_counter() - self.start) * 1000, 2),
                },
                separators=(",", ":"),
            )
        )


def _size(message: Any) -> int:
    return int(message.ByteSize()) if hasattr(message, "ByteSize") else 0


class AccessLogInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Logs every call once it ends, whatever its shape and outcome."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Wrap the method's handler so that its end is logged."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method

        async def count_requests(requests: AsyncIterator[Any], tally: _Tally) -> AsyncIterator[Any]:
            async for request in requests:
                tally.bytes_in += _size(request)
                yield request

        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: Any) -> Any:
                tally = _Tally(method)
                tally.bytes_in = _size(request)
                error: BaseException | None = None
                try:
                    response = await inner_uu(request, context)
                    tally.bytes_out = _size(response)
                    return response
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    tally.emit(context, error)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary:
            inner_su = handler.stream_unary

            async def stream_unary(requests: Any, context: Any) -> Any:
                tally = _Tally(method)
                error: BaseException | None = None
                try:
                    response = await inner_su(count_requests(requests, tally), context)
                    tally.bytes_out = _size(response)
                    return response
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    tally.emit(context, error)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                tally = _Tally(method)
                tally.bytes_in = _size(request)
                error: BaseException | None = None
                try:
                    async for response in _responses(inner_us(request, context)):
                        tally.bytes_out += _size(response)
                        yield response
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    tally.emit(context, error)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        inner_ss = handler.stream_stream

        async def stream_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
            tally = _Tally(method)
            error: BaseException | None = None
            try:
                async for response in _responses(
                    inner_ss(count_requests(requests, tally), context)
                ):
                    tally.bytes_out += _size(response)
                    yield response
            except BaseException as exc:
                error = exc
                raise
            finally:
                tally.emit(context, error)

        return grpc.stream_stream_rpc_method_handler(
            stream_stream, handler.request_deserializer, handler.response_serializer
        )


async def _responses(result: Any) -> AsyncIterator[Any]:
    """Iterate a streaming handler's result: an async generator, or a coroutine (that aborts)."""
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    else:
        await result
