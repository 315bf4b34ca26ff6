"""What the SDK presents to a secured server: a bearer token, kept fresh, on every call.

A token is given once (``token=``) or drawn from a provider (``token_provider=``, a callable
returning a token: an OAuth 2.0 client-credentials request, a managed identity, a file). A
provider is called for the first call, again shortly before the token's ``exp`` (read from
the JWT, unverified: the client only schedules with it), and again when the server answers
UNAUTHENTICATED, after which a call that can be repeated is made once more with the new token:
a unary call, or a response stream refused before its first message. A request stream
(``store``) cannot be replayed; the next call draws a new token.

Interceptors attach the token to every call of a channel, whatever its shape, so no call of the
SDK goes without it.
"""

from __future__ import annotations

import base64
import binascii
import collections
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


class _Details(
    collections.namedtuple(
        "_Details",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]
):
    """A call's details with other metadata (``grpc.ClientCallDetails`` is abstract)."""


def _details(details: Any, token: str | None) -> _Details:
    return _Details(
        details.method,
        details.timeout,
        _with_token(details.metadata, token),
        details.credentials,
        getattr(details, "wait_for_ready", None),
        getattr(details, "compression", None),
    )


def _unauthenticated(outcome: Any) -> bool:
    try:
        return bool(outcome.code() == grpc.StatusCode.UNAUTHENTICATED)
    except Exception:  # an outcome that failed before it reached the server
        return False


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


class TokenInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds ``authorization: Bearer <token>`` to every call of a (synchronous) channel."""

    def __init__(self, source: TokenSource) -> None:
        self.source = source

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        """Send the token; once refused, draw a new one and call again."""
        token = self.source.get()
        outcome = continuation(_details(details, token), request)
        if _unauthenticated(outcome):
            self.source.invalidate(token)
            if self.source.refreshable:
                outcome = continuation(_details(details, self.source.get()), request)
        return outcome

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        """Send the token; refused before the first message, call again with a new one."""

        def start() -> tuple[Any, str | None]:
            token = self.source.get()
            return continuation(_details(details, token), request), token

        return _RetriedStream(start, self.source)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        """Send the token (a request stream cannot be sent again; a refused token is dropped)."""
        token = self.source.get()
        outcome = continuation(_details(details, token), requests)
        if _unauthenticated(outcome):
            self.source.invalidate(token)
        return outcome

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        """Send the token."""
        return continuation(_details(details, self.source.get()), requests)


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
