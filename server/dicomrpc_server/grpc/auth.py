"""Access control of every RPC: credentials from the call, a refusal as a status.

The interceptor wraps every method, whatever its shape, so no RPC can be left out: it reads
the ``authorization`` metadata, the client certificate (mutual TLS) and the peer, asks the
:class:`~dicomrpc_server.access.authenticator.Authenticator` with the method's entry in
:data:`~dicomrpc_server.access.scopes.RPC_SCOPES`, and aborts with the mapped status and its
ErrorInfo before the handler runs, or runs it with the caller set.
"""

from __future__ import annotations

import contextvars
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

from dicomrpc_server.access.authenticator import Authenticator, Credentials
from dicomrpc_server.access.caller import Caller
from dicomrpc_server.access.certificates import subject_of
from dicomrpc_server.access.scopes import rpc_scope
from dicomrpc_server.grpc.errors import abort
from dicomrpc_server.grpc.interception import WrappingInterceptor, rewrap

_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "dicomrpc_caller", default=None
)


def current_caller() -> Caller | None:
    """The caller of the gRPC call being served, or ``None`` outside one.

    Set before the handler runs (refused calls included), in the call's own task context, so
    the handler, what it awaits and every interceptor of the call read the same caller, and
    no other call sees it.
    """
    return _CALLER.get()


def peer_address(peer: str) -> str:
    """``host:port`` of a gRPC peer string (``ipv4:127.0.0.1:5000``, ``ipv6:%5B::1%5D:5000``)."""
    kind, _, address = urllib.parse.unquote(peer).partition(":")
    return address if kind in ("ipv4", "ipv6") else peer


def credentials_of(context: Any, client_certificates: bool) -> Credentials:
    """What a call presents: its ``authorization`` metadata, certificate subject and peer."""
    authorization = None
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            authorization = value if isinstance(value, str) else None
            break
    subject = ""
    if client_certificates:
        pem = context.auth_context().get("x509_pem_cert")
        if pem:
            subject = subject_of(pem[0])
    return Credentials(authorization, subject, peer_address(context.peer()))


class AccessInterceptor(WrappingInterceptor):
    """Admits or refuses every call before its handler runs.

    Parameters
    ----------
    authenticator
        The archive's authenticator.
    client_certificates
        Whether connections carry client certificates (mutual TLS) whose subject to read.
    """

    def __init__(self, authenticator: Authenticator, client_certificates: bool) -> None:
        super().__init__()
        self._authenticator = authenticator
        self._client_certificates = client_certificates

    async def _admit(self, context: Any, method: str, requests: Any) -> None:
        """Set the call's caller; abort the call when it is refused.

        ``requests`` is the call's request stream, or None for a unary request: a refused
        stream is read on before the refusal, so that the client hears it (see ``abort``).
        """
        credentials = credentials_of(context, self._client_certificates)
        admission = await self._authenticator.admit(credentials, rpc_scope(method), method)
        _CALLER.set(admission.caller)
        if admission.error is not None:
            await abort(context, admission.error, requests)

    def wrap(self, handler: Any, method: str) -> Any:
        """A handler of the same shape that admits the call, then does what ``handler`` does."""
        admit = self._admit

        def unary_response(inner: Any, streaming_request: bool) -> Any:
            async def behaviour(request: Any, context: Any) -> Any:
                await admit(context, method, request if streaming_request else None)
                return await inner(request, context)

            return behaviour

        def stream_response(inner: Any, streaming_request: bool) -> Any:
            async def behaviour(request: Any, context: Any) -> AsyncIterator[Any]:
                await admit(context, method, request if streaming_request else None)
                result = inner(request, context)
                if hasattr(result, "__aiter__"):
                    async for response in result:
                        yield response
                else:  # a coroutine handler that writes with context.write
                    await result

            return behaviour

        return rewrap(handler, unary_response, stream_response, handler.request_deserializer)
