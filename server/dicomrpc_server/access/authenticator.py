"""Credentials → a :class:`~.caller.Caller`, admitted or refused for the scope a call needs.

The adapters hand over what they extracted (the ``authorization`` value, a client
certificate's subject, the peer's address) and the scope from :mod:`.scopes`; the rules live
here, once:

- With neither tokens (``--auth-jwks``) nor API keys (``--auth-api-keys``) configured, every
  caller holds every scope, as a server on loopback always has; with mutual TLS the
  certificate's subject names it (kind ``certificate``).
- Otherwise a call needs ``authorization: Bearer <token>``: a JWT (three dot-separated parts)
  is verified as an access token, anything else is looked up as an API key. No, a malformed,
  an expired or a wrongly signed credential is UNAUTHENTICATED; a valid one without the scope
  is PERMISSION_DENIED naming the scope. Both are decided before the call looks anything up,
  so a refused caller learns nothing about what the archive holds.
- What needs :data:`~.scopes.OPEN` (health) is admitted without looking at credentials; what
  has no entry in the table is refused whoever calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dicomrpc_server.access.api_keys import ApiKeyFile
from dicomrpc_server.access.caller import ANONYMOUS, API_KEY, CERTIFICATE, TOKEN, Caller
from dicomrpc_server.access.scopes import AUTHENTICATED, OPEN, SCOPES
from dicomrpc_server.access.setup import AccessSetupError
from dicomrpc_server.access.tokens import KeySet, TokenVerifier, unauthenticated
from dicomrpc_server.config import Settings
from dicomrpc_server.errors import Code, ServiceError

NO_SCOPES: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Credentials:
    """What an adapter extracted from a request.

    Attributes
    ----------
    authorization
        The ``authorization`` header (HTTP) or metadata (gRPC) value, or ``None``.
    certificate_subject
        The verified client certificate's RFC 4514 subject (mutual TLS), or ``""``.
    address
        The peer, ``host:port``.
    """

    authorization: str | None
    certificate_subject: str
    address: str


@dataclass(frozen=True)
class Admission:
    """The caller of a request and, when it is refused, why."""

    caller: Caller
    error: ServiceError | None = None


def permission_denied(caller: Caller, scope: str, operation: str) -> ServiceError:
    """The error of a caller that lacks the scope ``operation`` needs; it names the scope."""
    held = ", ".join(sorted(caller.scopes)) or "no scopes"
    return ServiceError(
        Code.PERMISSION_DENIED,
        "PERMISSION_DENIED",
        f"{operation} needs the scope {scope}; {caller.identity} ({caller.kind}) has {held}",
        metadata={"scope": scope, "operation": operation, "identity": caller.identity},
    )


class Authenticator:
    """Decides who calls and whether they may.

    Parameters
    ----------
    settings
        The server's settings; the key set file and the API key file are read now.

    Raises
    ------
    AccessSetupError
        When a file named by the settings cannot be read or is invalid.
    """

    def __init__(self, settings: Settings) -> None:
        roles: Mapping[str, frozenset[str]] = {
            role: frozenset(scopes) for role, scopes in settings.auth_roles
        }
        try:
            keys = KeySet(settings.auth_jwks) if settings.auth_jwks else None
            self.api_keys = ApiKeyFile(settings.auth_api_keys) if settings.auth_api_keys else None
        except ValueError as exc:
            raise AccessSetupError(str(exc)) from None
        self.tokens = (
            TokenVerifier(
                keys,
                settings.auth_issuer,
                settings.auth_audience,
                settings.auth_clock_skew_s,
                roles,
            )
            if keys is not None
            else None
        )
        self.enabled = self.tokens is not None or self.api_keys is not None
        """Whether calls need credentials."""

    async def admit(self, credentials: Credentials, scope: str | None, operation: str) -> Admission:
        """Admit or refuse a call to ``operation``, which needs ``scope``.

        ``scope`` is the table's entry (``None`` when the operation has none: refused).
        """
        if scope == OPEN:
            return Admission(self._unverified(credentials))
        try:
            caller = await self.authenticate(credentials)
        except ServiceError as error:
            return Admission(Caller(ANONYMOUS, ANONYMOUS, NO_SCOPES, credentials.address), error)
        if scope is None:
            return Admission(
                caller,
                ServiceError(
                    Code.PERMISSION_DENIED,
                    "PERMISSION_DENIED",
                    f"{operation} has no entry in the access table; it is refused to everyone",
                    metadata={"operation": operation},
                ),
            )
        if scope != AUTHENTICATED and scope not in caller.scopes:
            return Admission(caller, permission_denied(caller, scope, operation))
        return Admission(caller)

    def _unverified(self, credentials: Credentials) -> Caller:
        """The caller of an open operation, whose credentials are not checked."""
        if credentials.certificate_subject:
            return Caller(
                credentials.certificate_subject, CERTIFICATE, NO_SCOPES, credentials.address
            )
        return Caller(ANONYMOUS, ANONYMOUS, NO_SCOPES, credentials.address)

    async def authenticate(self, credentials: Credentials) -> Caller:
        """The caller the credentials prove.

        Raises
        ------
        ServiceError
            UNAUTHENTICATED, its ``token_problem`` metadata saying what is wrong.
        """
        if not self.enabled:
            if credentials.certificate_subject:
                return Caller(
                    credentials.certificate_subject, CERTIFICATE, SCOPES, credentials.address
                )
            return Caller(ANONYMOUS, ANONYMOUS, SCOPES, credentials.address)
        token = bearer_token(credentials.authorization)
        if token.count(".") == 2 and self.tokens is not None:
            verified = await self.tokens.verify(token)
            return Caller(verified.subject, TOKEN, verified.scopes, credentials.address)
        if self.api_keys is not None:
            key = self.api_keys.find(token)
            if key is None:
                raise unauthenticated(
                    "unknown_api_key", "the API key is not one of this server's keys"
                )
            return Caller(key.name, API_KEY, key.scopes, credentials.address)
        raise unauthenticated(
            "malformed", "the bearer token is not a JWT (header.payload.signature)"
        )


def bearer_token(authorization: str | None) -> str:
    """The token of an ``authorization`` value ``Bearer <token>`` (RFC 6750 §2.1).

    Raises
    ------
    ServiceError
        UNAUTHENTICATED when there is none, or the value is of another scheme.
    """
    if not authorization:
        raise unauthenticated(
            "missing",
            "this server needs credentials: send 'authorization: Bearer <token>' with an "
            "access token from the issuer, or an API key",
        )
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise unauthenticated(
            "malformed",
            f"the authorization is of the scheme {scheme!r}; send 'Bearer <token>'",
        )
    return token
