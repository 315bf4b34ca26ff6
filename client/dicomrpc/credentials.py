"""What the SDK presents to a secured server: a bearer token, kept fresh, on every call.

A token is given once (``token=``) or drawn from a provider (``token_provider=``, a callable
returning a token: an OAuth 2.0 client-credentials request, a managed identity, a file). A
provider is called for the first call, again shortly before the token's ``exp`` (read from
the JWT, unverified: the client only schedules with it), and again when the server answers
UNAUTHENTICATED, after which a call that can be repeated is made once more with the new token:
a unary call, or a response stream refused before its first message. A request stream
(``store``) cannot be replayed; the next call draws a new token.

The channel (:class:`TokenChannel`, or interceptors for asyncio) attaches the token to every call,
whatever its shape, so no call of the SDK goes without it.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc

TokenProvider = Callable[[], "str | Awaitable[str]"]
"""A callable returning a bearer token (an async one for :class:`~dicomrpc.AsyncClient`)."""

REFRESH_MARGIN_S = 30.0
"""How long before its ``exp`` a provided token is replaced."""


def token_expiry(token: str) -> float | None:
    """The ``exp`` of a JWT (seconds since the epoch), unverified; ``None`` if it has none."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    expiry = payload.get("exp") if isinstance(payload, dict) else None
    return float(expiry) if isinstance(expiry, int | float) else None


class TokenSource:
    """The token to send now: a fixed one, or a provider's, replaced before it expires.

    Parameters
    ----------
    token
        A fixed token.
    provider
        A callable returning a token; called when there is none yet, when the one held expires
        within :data:`REFRESH_MARGIN_S`, and after the server refused it.
    """

    def __init__(self, token: str | None = None, provider: TokenProvider | None = None) -> None:
        self._provider = provider
        self._token = token
        self._expiry = token_expiry(token) if token else None
        self._lock = threading.Lock()

    @property
    def refreshable(self) -> bool:
        """Whether a refused token can be replaced (there is a provider)."""
        return self._provider is not None

    def _stale(self) -> bool:
        if self._provider is None:
            return False
        if self._token is None:
            return True
        return self._expiry is not None and time.time() > self._expiry - REFRESH_MARGIN_S

    def _keep(self, token: object) -> str:
        if not isinstance(token, str) or not token:
            raise TypeError(f"the token provider returned {type(token).__name__}, not a token")
        self._token, self._expiry = token, token_expiry(token)
        return token

    def get(self) -> str | None:
        """The token for a call (calling the provider if it is due)."""
        if not self._stale():
            return self._token
        with self._lock:
            if not self._stale():
                return self._token
            assert self._provider is not None
            token = self._provider()
            if inspect.isawaitable(token):
                if inspect.iscoroutine(token):
                    token.close()  # never awaited: said so here, not in a warning later
                raise TypeError("an async token provider needs AsyncClient")
            return self._keep(token)

    async def aget(self) -> str | None:
        """The token for a call of an asyncio channel (awaiting an async provider)."""
        if not self._stale():
            return self._token
        assert self._provider is not None
        token = self._provider()
        if inspect.isawaitable(token):
            token = await token
        return self._keep(token)

    def invalidate(self, token: str | None) -> None:
        """The server refused ``token``: draw a new one for the next call (with a provider)."""
        with self._lock:
            if self._provider is not None and token == self._token:
                self._token = None


def _with_token(metadata: Any, token: str | None) -> list[tuple[str, str]]:
    pairs = [(str(k), v) for k, v in (metadata or ()) if k != "authorization"]
    if token:
        pairs.append(("authorization", f"Bearer {token}"))
    return pairs


def _unauthenticated(error: grpc.RpcError) -> bool:
    code = getattr(error, "code", None)
    return callable(code) and code() == grpc.StatusCode.UNAUTHENTICATED


class _Authorized:
    """The metadata of a call: the caller's, with the token of the moment.

    The SDK's calls carry no metadata of their own, so the usual answer is one tuple per token,
    built once: a call pays for a lookup, not for building a list.
    """

    def __init__(self, source: TokenSource) -> None:
        self.source = source
        self._token: str | None = None
        self._metadata: tuple[tuple[str, str], ...] = ()

    def __call__(self, metadata: Any) -> tuple[str | None, Any]:
        token = self.source.get()
        if metadata:
            return token, _with_token(metadata, token)
        if token != self._token:
            self._token, self._metadata = token, tuple(_with_token((), token))
        return token, self._metadata


class _UnaryUnary:
    def __init__(self, inner: Any, authorized: _Authorized) -> None:
        self._inner = inner
        self._authorized = authorized

    def _call(self, how: Callable[..., Any], request: Any, metadata: Any, **kwargs: Any) -> Any:
        token, sent = self._authorized(metadata)
        try:
            return how(request, metadata=sent, **kwargs)
        except grpc.RpcError as error:
            source = self._authorized.source
            if not _unauthenticated(error):
                raise
            source.invalidate(token)
            if not source.refreshable:
                raise
        return how(request, metadata=self._authorized(metadata)[1], **kwargs)

    def __call__(
        self, request: Any, timeout: Any = None, metadata: Any = None, **kwargs: Any
    ) -> Any:
        """Send the token; once refused, draw a new one and call again."""
        return self._call(self._inner, request, metadata, timeout=timeout, **kwargs)

    def with_call(
        self, request: Any, timeout: Any = None, metadata: Any = None, **kwargs: Any
    ) -> Any:
        """As :meth:`__call__`, returning the call too."""
        return self._call(self._inner.with_call, request, metadata, timeout=timeout, **kwargs)

    def future(self, request: Any, timeout: Any = None, metadata: Any = None, **kwargs: Any) -> Any:
        """Send the token (a future is not made again)."""
        return self._inner.future(
            request, timeout=timeout, metadata=self._authorized(metadata)[1], **kwargs
        )


class _UnaryStream:
    def __init__(self, inner: Any, authorized: _Authorized) -> None:
        self._inner = inner
        self._authorized = authorized

    def __call__(
        self, request: Any, timeout: Any = None, metadata: Any = None, **kwargs: Any
    ) -> Any:
        """Send the token; refused before the first message, call again with a new one."""

        def start() -> tuple[Any, str | None]:
            token, sent = self._authorized(metadata)
            return self._inner(request, timeout=timeout, metadata=sent, **kwargs), token

        return _RetriedStream(start, self._authorized.source)


class _StreamUnary:
    def __init__(self, inner: Any, authorized: _Authorized) -> None:
        self._inner = inner
        self._authorized = authorized

    def _call(self, how: Callable[..., Any], requests: Any, metadata: Any, **kwargs: Any) -> Any:
        token, sent = self._authorized(metadata)
        try:
            return how(requests, metadata=sent, **kwargs)
        except grpc.RpcError as error:
            if _unauthenticated(error):
                self._authorized.source.invalidate(token)
            raise

    def __call__(
        self, requests: Any, timeout: Any = None, metadata: Any = None, **kwargs: Any
    ) -> Any:
        """Send the token (a request stream cannot be sent again; a refused token is dropped)."""
        return self._call(self._inner, requests, metadata, timeout=timeout, **kwargs)

    def with_call(
        self, requests: Any, timeout: Any = None, metadata: Any = None, **kwargs: Any
    ) -> Any:
        """As :meth:`__call__`, returning the call too."""
        return self._call(self._inner.with_call, requests, metadata, timeout=timeout, **kwargs)

    def future(
        self, requests: Any, timeout: Any = None, metadata: Any = None, **kwargs: Any
    ) -> Any:
        """Send the token."""
        return self._inner.future(
            requests, timeout=timeout, metadata=self._authorized(metadata)[1], **kwargs
        )


class _StreamStream:
    def __init__(self, inner: Any, authorized: _Authorized) -> None:
        self._inner = inner
        self._authorized = authorized

    def __call__(
        self, requests: Any, timeout: Any = None, metadata: Any = None, **kwargs: Any
    ) -> Any:
        """Send the token."""
        return self._inner(
            requests, timeout=timeout, metadata=self._authorized(metadata)[1], **kwargs
        )


class _RetriedStream:
    """A response stream made again with a new token if refused before its first message."""

    def __init__(self, start: Callable[[], tuple[Any, str | None]], source: TokenSource) -> None:
        self._start = start
        self._source = source
        self._call, self._token = start()
        self._received = False
        self._retried = False

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            message = next(self._call)
        except grpc.RpcError as error:
            if not _unauthenticated(error):
                raise
            self._source.invalidate(self._token)
            if self._received or self._retried or not self._source.refreshable:
                raise
            self._retried = True
            self._call, self._token = self._start()
            return next(self)
        self._received = True
        return message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class TokenChannel(grpc.Channel):  # type: ignore[misc]
    """A channel whose calls, of every shape, carry ``authorization: Bearer <token>``.

    It wraps the multi-callables of the channel it is given rather than intercepting each call
    (``grpc.intercept_channel`` builds a multi-callable per call: tens of microseconds, a few
    per cent of a small call).
    """

    def __init__(self, channel: grpc.Channel, source: TokenSource) -> None:
        self._channel = channel
        self._authorized = _Authorized(source)

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A unary call that sends the token, and draws a new one once refused."""
        return _UnaryUnary(self._channel.unary_unary(method, *args, **kwargs), self._authorized)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A response stream that sends the token, and draws a new one once refused."""
        return _UnaryStream(self._channel.unary_stream(method, *args, **kwargs), self._authorized)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A request stream that sends the token."""
        return _StreamUnary(self._channel.stream_unary(method, *args, **kwargs), self._authorized)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A bidirectional stream that sends the token."""
        return _StreamStream(self._channel.stream_stream(method, *args, **kwargs), self._authorized)

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        """Watch the connectivity of the wrapped channel."""
        self._channel.subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback: Any) -> None:
        """Stop watching the connectivity."""
        self._channel.unsubscribe(callback)

    def close(self) -> None:
        """Close the wrapped channel."""
        self._channel.close()

    def __enter__(self) -> TokenChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _aio_details(details: Any, token: str | None) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        grpc.aio.Metadata(*_with_token(details.metadata, token)),
        details.credentials,
        details.wait_for_ready,
    )


async def _refused(call: Any) -> bool:
    """Wait for a call with one response to end; whether its token was refused."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return bool(error.code() == grpc.StatusCode.UNAUTHENTICATED)
    except Exception:  # the caller sees it when it awaits the call
        return False
    return False


class _AioUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, source: TokenSource) -> None:
        self.source = source

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        token = await self.source.aget()
        call = await continuation(_aio_details(details, token), request)
        if await _refused(call):
            self.source.invalidate(token)
            if self.source.refreshable:
                token = await self.source.aget()
                call = await continuation(_aio_details(details, token), request)
        return call


class _AioStreamUnary(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, source: TokenSource) -> None:
        self.source = source

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        token = await self.source.aget()
        call = await continuation(_aio_details(details, token), requests)
        if await _refused(call):
            self.source.invalidate(token)
        return call


class _AioUnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, source: TokenSource) -> None:
        self.source = source

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_aio_details(details, await self.source.aget()), request)


class _AioStreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, source: TokenSource) -> None:
        self.source = source

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_aio_details(details, await self.source.aget()), requests)


def aio_interceptors(source: TokenSource) -> list[Any]:
    """The asyncio interceptors that add the token to calls of every shape.

    grpc.aio files an interceptor under the first shape it implements, so each shape has its
    own.
    """
    return [
        _AioUnaryUnary(source),
        _AioUnaryStream(source),
        _AioStreamUnary(source),
        _AioStreamStream(source),
    ]
