"""Requests protobuf cannot parse are answered INVALID_ARGUMENT, not the runtime's UNKNOWN.

gRPC parses a request before any servicer sees it, and answers a parse failure with UNKNOWN
("Unexpected DecodeError"). The parse fails for malformed bytes and for messages nested past
protobuf's recursion limit: a data set deeper than ``dicomrpc.datasets.MAX_SEQUENCE_DEPTH``
sequence levels in a workitem request, for one. This interceptor lets each method's parser
hand the failure on as a value, and ends the call with the error of a bad request (through the
one mapping in :mod:`.errors`) wherever the servicer would have received it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from google.protobuf.message import DecodeError

from dicomrpc.datasets import MAX_SEQUENCE_DEPTH
from dicomrpc_server.errors import ServiceError, invalid_argument
from dicomrpc_server.grpc.errors import abort
from dicomrpc_server.grpc.interception import WrappingInterceptor, rewrap


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


class _Checked:
    """A request stream that raises the error of each message that could not be parsed.

    An iterator, not a generator, so that it can be read on after it raised: the servicer that
    ends the call reads the rest of the stream first (:func:`.errors.abort`).
    """

    def __init__(self, requests: AsyncIterator[Any]) -> None:
        self._requests = aiter(requests)

    def __aiter__(self) -> _Checked:
        return self

    async def __anext__(self) -> Any:
        request = await anext(self._requests)
        if isinstance(request, _Undecodable):
            raise undecodable(request)  # the servicer ends the call with it
        return request


def _unary_response(inner: Any, streaming_request: bool) -> Any:
    async def behaviour(request: Any, context: Any) -> Any:
        if streaming_request:
            return await inner(_Checked(request), context)
        if isinstance(request, _Undecodable):
            await abort(context, undecodable(request))
        return await inner(request, context)

    return behaviour


def _stream_response(inner: Any, streaming_request: bool) -> Any:
    async def behaviour(request: Any, context: Any) -> AsyncIterator[Any]:
        if streaming_request:
            request = _Checked(request)
        elif isinstance(request, _Undecodable):
            await abort(context, undecodable(request))
        result = inner(request, context)
        if hasattr(result, "__aiter__"):
            async for response in result:
                yield response
        else:  # a coroutine handler
            await result

    return behaviour


class DecodingInterceptor(WrappingInterceptor):
    """Turns a request parse failure into INVALID_ARGUMENT, for every method shape."""

    def wrap(self, handler: Any, method: str) -> Any:
        """Wrap the method's handler: its request parser, and its behaviour."""
        return rewrap(
            handler, _unary_response, _stream_response, _parser(handler.request_deserializer)
        )
