"""The caller of one request, as every adapter and the audit trail see it."""

from __future__ import annotations

from dataclasses import dataclass

TOKEN = "token"
API_KEY = "api-key"
CERTIFICATE = "certificate"
ANONYMOUS = "anonymous"
GRANT = "grant"


@dataclass(frozen=True)
class Caller:
    """Who made a request, how they proved it, and what they may do.

    Both adapters put one on every request they serve (see ``grpc.auth.current_caller`` and
    ``dicomweb.auth.caller_of``), refused ones included, as far as the caller is known: a
    request refused for its credentials carries an ``anonymous`` caller without scopes.

    Attributes
    ----------
    identity
        The token's subject (``sub``), the API key's name, the client certificate's subject
        (RFC 4514), or ``anonymous``.
    kind
        ``"token"``, ``"api-key"``, ``"certificate"`` or ``"anonymous"``; ``"grant"`` for an
        HTTP read made with a retrieve grant (see ``access.grants``), whose identity is that
        of the caller it was granted to.
    scopes
        The scopes granted (see :mod:`dicomrpc_server.access.scopes`).
    address
        The peer's address, ``host:port`` (an IPv6 host in brackets).
    """

    identity: str
    kind: str
    scopes: frozenset[str]
    address: str
