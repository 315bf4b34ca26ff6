"""One interceptor that lets observers watch every call: its messages, and how it ended.

The access log and the audit trail both need to see each call whole, whatever its shape. This
module wraps the behaviour of every method shape once, and hands each call's messages and end to
the observers: for a streaming request it wraps the request iterator, and for a streaming
response the response iterator, not the call, so that what is observed covers the whole stream.

The continuation is called for every call, so that interceptors placed after this one (and so
inside it: an authentication check, say) run for every call and may refuse any of them. The
wrapped handler is kept while the continuation answers with the same handler, as it does for
every call it lets through: building one per call is a cost every call would pay.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

import grpc

log = logging.getLogger(__name__)


class CallWatch(Protocol):
    """What an observer follows of one call."""

    def request(self, message: Any) -> None:
        """A request message was received (each message of a stream, as it is read)."""

    def response(self, message: Any) -> None:
        """A response message is being sent (each message of a stream)."""

    def end(self, context: Any, error: BaseException | None) -> None:
        """The call ended: ``context`` holds its status, ``error`` what the handler raised."""


class CallObserver(Protocol):
    """Decides, at the start of a call, whether and how to watch it."""

    def watch(self, method: str, context: Any) -> CallWatch | None:
        """A watch for a call of ``method``, or None to leave the call alone."""


def _begin(observers: Sequence[CallObserver], method: str, context: Any) -> list[CallWatch]:
    watches = []
    for observer in observers:
        watch = observer.watch(method, context)
        if watch is not None:
            watches.append(watch)
    return watches


def _end(watches: list[CallWatch], context: Any, error: BaseException | None) -> None:
    """Tell every watch the call ended; an observer that fails never fails the call."""
    for watch in watches:
        try:
            watch.end(context, error)
        except Exception:
            log.exception("a call observer failed at the end of a call")


async def _observed(requests: AsyncIterator[Any], watches: list[CallWatch]) -> AsyncIterator[Any]:
    async for request in requests:
        for watch in watches:
            watch.request(request)
        yield request


def _request(request: Any, watches: list[CallWatch], streaming: bool) -> Any:
    """Show a unary request now, or each message of a request stream as it is read."""
    if streaming:
        return _observed(request, watches)
    for watch in watches:
        watch.request(request)
    return request


def _unary_response(
    inner: Any, method: str, streaming_request: bool, observers: Sequence[CallObserver]
) -> Any:
    async def behaviour(request: Any, context: Any) -> Any:
        watches = _begin(observers, method, context)
        error: BaseException | None = None
        try:
            response = await inner(_request(request, watches, streaming_request), context)
            for watch in watches:
                watch.response(response)
            return response
        except BaseException as exc:
            error = exc
            raise
        finally:
            _end(watches, context, error)

    return behaviour


def _stream_response(
    inner: Any, method: str, streaming_request: bool, observers: Sequence[CallObserver]
) -> Any:
    async def behaviour(request: Any, context: Any) -> AsyncIterator[Any]:
        watches = _begin(observers, method, context)
        error: BaseException | None = None
        try:
            result = inner(_request(request, watches, streaming_request), context)
            if hasattr(result, "__aiter__"):
                async for response in result:
                    for watch in watches:
                        watch.response(response)
                    yield response
            else:  # a coroutine handler (one that only aborts, say)
                await result
        except BaseException as exc:
            error = exc
            raise
        finally:
            _end(watches, context, error)

    return behaviour


Behaviour = Callable[[Any, bool], Any]


def rewrap(handler: Any, unary: Behaviour, stream: Behaviour, deserializer: Any) -> Any:
    """A method handler of ``handler``'s shape whose behaviour wraps ``handler``'s.

    ``unary(inner, streaming_request)`` makes the behaviour of a method with a unary response,
    ``stream(inner, streaming_request)`` that of one with a streamed response; ``deserializer``
    parses its requests (``handler.request_deserializer`` to keep it).
    """
    serializers = (deserializer, handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary, False), *serializers)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary, True), *serializers)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            stream(handler.unary_stream, False), *serializers
        )
    return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream, True), *serializers)


class WrappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """An interceptor that wraps the handler the rest of the chain chose for each call.

    The continuation is called for every call, so that interceptors placed after this one (and
    so inside it: an authentication check, say) run for every call and may refuse any of them.
    The wrapped handler is kept while the continuation answers with the same handler, as it
    does for every call it lets through: building one per call is a cost every call would pay.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        """Wrap the handler the rest of the chain chose for this call."""
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        kept = self._wrapped.get(method)
        if kept is not None and kept[0] is handler:
            return kept[1]
        wrapped = self.wrap(handler, method)
        if kept is None:
            self._wrapped[method] = (handler, wrapped)
        return wrapped

    def wrap(self, handler: Any, method: str) -> Any:
        """A handler of ``handler``'s shape for calls of ``method``."""
        raise NotImplementedError


class ObservingInterceptor(WrappingInterceptor):
    """Shows every call to the observers, whatever its shape and outcome.

    Parameters
    ----------
    observers
        Who watches the calls, in order.
    """

    def __init__(self, observers: Sequence[CallObserver]) -> None:
        super().__init__()
        self._observers = tuple(observers)

    def wrap(self, handler: Any, method: str) -> Any:
        """A method handler that does what ``handler`` does, shown to the observers."""
        observers = self._observers
        return rewrap(
            handler,
            lambda inner, streaming: _unary_response(inner, method, streaming, observers),
            lambda inner, streaming: _stream_response(inner, method, streaming, observers),
            handler.request_deserializer,
        )
