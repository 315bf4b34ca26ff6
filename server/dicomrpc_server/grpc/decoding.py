"""Requests protobuf cannot parse are answered INVALID_ARGUMENT, not the runtime's UNKNOWN.

gRPC parses a request before any servicer sees it, and answers a parse failure with UNKNOWN
("Unexpected DecodeError"). The parse fails for malformed bytes and for messages nested past
protobuf's recursion limit: a data set deeper than ``dicomrpc.datasets.MAX_SEQUENCE_DEPTH``
sequence levels in a workitem request, for one. This interceptor lets each method's parser
hand the failure on as a value, and ends the call with the error of a bad request (through the
one mapping in :mod:`.errors`) wherever the servicer would have received it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from dicomrpc.datasets import MAX_SEQUENCE_DEPTH
from dicomrpc_server.errors import ServiceError, invalid_argument
from dicomrpc_server.grpc.errors import abort


class _Undecodable:
    """What a request parser returns instead of raising."""

    def __init__(self, error: DecodeError) -> None:
        self.error = error


def undecodable(request: _Undecodable) -> ServiceError:
    """The error of a request protobuf could not parse."""
    return invalid_argument(
        "request",
        f"cannot be parsed ({request.error}); a data set in a request may nest at most "
        f"{MAX_SEQUENCE_DEPTH} sequence levels",
    )


def _parser(inner: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if inner is None:
        return None
    parse = inner

    def parse_or_keep_the_error(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return _Undecodable(exc)

    return parse_or_keep_the_error


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Undecodable):
            raise undecodable(request)  # the servicer ends the call with it
        yield request


def _unary_response(inner: Any, streaming_request: bool) -> Any:
    async def behaviour(request: Any, context: Any) -> Any:
        if streaming_request:
            return await inner(_checked(request), context)
        if isinstance(request, _Undecodable):
            await abort(context, undecodable(request))
        return await inner(request, context)

    return behaviour


def _stream_response(inner: Any, streaming_request: bool) -> Any:
    async def behaviour(request: Any, context: Any) -> AsyncIterator[Any]:
        if streaming_request:
            request = _checked(request)
        elif isinstance(request, _Undecodable):
            await abort(context, undecodable(request))
        result = inner(request, context)
        if hasattr(result, "__aiter__"):
            async for response in result:
                yield response
        else:  # a coroutine handler
            await result

    return behaviour


class DecodingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Turns a request parse failure into INVALID_ARGUMENT, for every method shape.

    A method's wrapped handler is made once and kept, as the access log's is.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, Any] = {}

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        """Wrap the method's handler: its request parser, and its behaviour."""
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return handler
            wrapped = self._wrapped[method] = _wrap(handler)
        return wrapped


def _wrap(handler: Any) -> Any:
    parsers = (_parser(handler.request_deserializer), handler.response_serializer)
    if handler.unary_unary:
        behaviour = _unary_response(handler.unary_unary, False)
        return grpc.unary_unary_rpc_method_handler(behaviour, *parsers)
    if handler.stream_unary:
        behaviour = _unary_response(handler.stream_unary, True)
        return grpc.stream_unary_rpc_method_handler(behaviour, *parsers)
    if handler.unary_stream:
        behaviour = _stream_response(handler.unary_stream, False)
        return grpc.unary_stream_rpc_method_handler(behaviour, *parsers)
    behaviour = _stream_response(handler.stream_stream, True)
    return grpc.stream_stream_rpc_method_handler(behaviour, *parsers)
