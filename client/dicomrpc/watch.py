"""One handle for every server stream that runs until the watcher stops it.

The change feed (``client.watch_changes``) and workitem events (``client.workitems.watch``)
are both endless streams of typed events; both return a :class:`Watch` (``AsyncWatch`` from
the asyncio client), so a watcher is written once: iterate it, and close it (or leave its
``with`` block) to stop. Closing from another thread or task ends a blocked iteration
cleanly instead of raising.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Generic, TypeVar

import grpc

from dicomrpc.errors import DicomRpcError

E = TypeVar("E")


class Watch(Generic[E]):
    """An iterator of events (:class:`~dicomrpc.Change` or :class:`~dicomrpc.WorkitemEvent`).

    A context manager: leaving the block closes it. :meth:`close` may be called from any
    thread; a reader blocked in ``next`` then ends its iteration.
    """

    def __init__(self, call: Any, decode: Callable[[Any], E]) -> None:
        self._call = call
        self._decode = decode
        self._closed = False

    def __iter__(self) -> Iterator[E]:
        return self

    def __next__(self) -> E:
        try:
            return self._decode(next(self._call))
        except grpc.RpcError as error:
            if self._closed and error.code() == grpc.StatusCode.CANCELLED:
                raise StopIteration from None
            raise DicomRpcError.from_rpc_error(error) from None

    def close(self) -> None:
        """Stop watching; the server's stream is cancelled."""
        self._closed = True
        self._call.cancel()

    def __enter__(self) -> Watch[E]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncWatch(Generic[E]):
    """The asyncio :class:`Watch`: ``async for`` its events, ``async with`` to close it.

    :meth:`close` is a plain method (cancelling a call does not wait), callable from any
    task; a task awaiting the next event then ends its iteration.
    """

    def __init__(self, call: Any, decode: Callable[[Any], E]) -> None:
        self._call = call
        self._decode = decode
        self._closed = False

    def __aiter__(self) -> AsyncIterator[E]:
        return self

    async def __anext__(self) -> E:
        if self._closed:
            raise StopAsyncIteration
        try:
            message = await self._call.read()
        except grpc.RpcError as error:
            if self._closed and error.code() == grpc.StatusCode.CANCELLED:
                raise StopAsyncIteration from None
            raise DicomRpcError.from_rpc_error(error) from None
        except asyncio.CancelledError:
            if self._closed:  # grpc.aio raises a cancelled call's end as a cancellation
                raise StopAsyncIteration from None
            raise
        except grpc.aio.UsageError:  # read after the call was cancelled
            raise StopAsyncIteration from None
        if message is grpc.aio.EOF:
            raise StopAsyncIteration
        return self._decode(message)

    def close(self) -> None:
        """Stop watching; the server's stream is cancelled."""
        self._closed = True
        self._call.cancel()

    async def __aenter__(self) -> AsyncWatch[E]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
