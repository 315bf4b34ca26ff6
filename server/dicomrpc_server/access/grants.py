"""Retrieve grants: signed URLs that read one study or series over the HTTP gateway.

A client that may retrieve a study (the scope :data:`~.scopes.READ`) asks the gRPC API for a
grant (``RetrieveService.GetRetrieveUrl``) and reads the study's bytes from the DICOMweb
gateway (WADO-RS, PS3.18 10.4), whose multipart stream is faster than gRPC's for large reads.
The grant is the gateway URL with a ``grant`` query parameter: a token signed with the
archive's key (HMAC-SHA256) over

- the study, and the series when the grant is for one series,
- the expiry (:data:`GRANT_LIFETIME_S` after the grant: a read that started before goes on),
- the identity of the caller it was granted to (and how they proved it), which the gateway
  takes as the caller of the read, so that the audit trail names who read.

The gateway accepts a token for a GET (or HEAD) of exactly the path it names and nothing
else: not another study or series, not an instance, frames or metadata, never a write or a
delete. A token presented anywhere else, expired, or altered is refused, whatever the other
credentials of the request, and whether or not the server needs credentials at all.

The key is the archive's, random, and shared by every process that serves it: a file of the
data folder for the embedded index (:func:`folder_key`), a row of the database for a
PostgreSQL index (see :mod:`dicomrpc_server.storage.postgres.signing_keys`), so that any node
accepts the grants of any other. Replacing it (deleting the file or the row, then restarting)
revokes every grant outstanding.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from dicomrpc_server.access.caller import ANONYMOUS, GRANT, Caller
from dicomrpc_server.access.scopes import READ
from dicomrpc_server.access.tokens import unauthenticated
from dicomrpc_server.errors import Code, ServiceError, invalid_argument
from dicomrpc_server.paths import series_path, study_path

GRANT_LIFETIME_S = 120
"""How long a grant is accepted: long enough to start a read, short enough to leak little."""

KEY_BYTES = 32
KEY_FILE = "retrieve-grant.key"
"""The signing key's file in the data folder (embedded index)."""

GRANT_PARAMETER = "grant"
"""The query parameter of the gateway URL that carries the token."""

GRANTED_ROUTES = frozenset(
    {("GET", "/studies/{study}"), ("GET", "/studies/{study}/series/{series}")}
)
"""What a grant reads: the WADO-RS retrieve of a study or series (PS3.18 10.4.1); HEAD is GET's."""

_CONTEXT = b"dicomrpc retrieve grant v1\n"
_HOST = re.compile(r"[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\]")


@dataclass(frozen=True)
class Grant:
    """A signed URL and when its token stops being accepted (Unix seconds)."""

    url: str
    expires: int


@dataclass(frozen=True)
class GrantClaims:
    """What a verified token says: what it reads, until when, for whom."""

    study: str
    series: str
    expires: int
    identity: str
    kind: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def no_http() -> ServiceError:
    """The error of a grant asked of a server without an HTTP gateway."""
    return ServiceError(
        Code.FAILED_PRECONDITION,
        "HTTP_RETRIEVE_UNAVAILABLE",
        "this server serves no HTTP gateway (--http-port -1): stream with RetrieveStudy",
    )


class RetrieveGrants:
    """Issues and verifies retrieve grants with one key.

    Parameters
    ----------
    key
        The archive's signing key.
    public_url
        The gateway's public service root (``--public-url``), or ``""`` to build URLs on the
        host the client names and the port the gateway listens on.
    lifetime_s
        How long a grant is accepted.
    clock
        The time in Unix seconds (tests pass their own).
    """

    def __init__(
        self,
        key: bytes,
        public_url: str = "",
        lifetime_s: int = GRANT_LIFETIME_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(key) < 16:
            raise ValueError("a signing key needs at least 16 bytes")
        self._key = key
        self._public_url = public_url.rstrip("/")
        self._lifetime_s = lifetime_s
        self._clock = clock
        self._origin: tuple[str, int] | None = None

    # -- where the gateway listens ----------------------------------------------------------

    def offer(self, scheme: str, port: int) -> None:
        """The gateway listens: grants name ``scheme`` and ``port`` (without a public URL)."""
        self._origin = (scheme, port)

    def withdraw(self) -> None:
        """The gateway stopped: grants are refused (FAILED_PRECONDITION)."""
        self._origin = None

    @property
    def offered(self) -> bool:
        """Whether the gateway listens."""
        return self._origin is not None

    # -- issuing ------------------------------------------------------------------------------

    def _signature(self, payload: str) -> bytes:
        return hmac.new(self._key, _CONTEXT + payload.encode("ascii"), hashlib.sha256).digest()

    def token(
        self, caller: Caller, study: str, series: str, lifetime_s: int | None = None
    ) -> tuple[str, int]:
        """A signed token for ``caller`` to read the study (or series), and its expiry."""
        lifetime = self._lifetime_s if lifetime_s is None else lifetime_s
        expires = int(self._clock()) + lifetime
        claims = {"st": study, "se": series, "exp": expires, "sub": caller.identity}
        claims["knd"] = caller.kind
        payload = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
        return f"{payload}.{_b64(self._signature(payload))}", expires

    def issue(self, caller: Caller | None, study: str, series: str, host: str) -> Grant:
        """A grant for ``caller`` (who holds :data:`READ`: the RPC's access check) to read.

        ``host`` is the host the client reached the gRPC API by (``pacs.example``,
        ``[::1]``): the URL is built on it unless the gateway has a public URL.

        Raises
        ------
        ServiceError
            FAILED_PRECONDITION when the gateway does not listen; PERMISSION_DENIED for a
            caller without :data:`READ` (never the case behind the access check).
        """
        if caller is None or READ not in caller.scopes:
            raise ServiceError(
                Code.PERMISSION_DENIED, "PERMISSION_DENIED", f"a retrieve grant needs {READ}"
            )
        origin = self._origin
        if origin is None:
            raise no_http()
        path = series_path(study, series) if series else study_path(study)
        if self._public_url:
            root = self._public_url
        else:
            scheme, port = origin
            root = f"{scheme}://{host or '127.0.0.1'}:{port}/dicomweb"
        token, expires = self.token(caller, study, series)
        return Grant(f"{root}/{path}?{GRANT_PARAMETER}={quote(token, safe='')}", expires)

    # -- verifying ----------------------------------------------------------------------------

    def verify(self, token: str, study: str, series: str) -> GrantClaims:
        """The claims of a token presented to read ``study`` (and ``series``, or ``""``).

        Raises
        ------
        ServiceError
            UNAUTHENTICATED for a token that is malformed, wrongly signed or expired;
            PERMISSION_DENIED for a valid token that names another study or series.
        """
        payload, _, signature = token.partition(".")
        try:
            given = _unb64(signature)
        except (binascii.Error, ValueError):
            given = b""
        if not payload or not hmac.compare_digest(given, self._signature(payload)):
            raise unauthenticated("bad_signature", "the retrieve grant is not one of this archive")
        try:
            claims = json.loads(_unb64(payload))
            granted = GrantClaims(
                str(claims["st"]),
                str(claims["se"]),
                int(claims["exp"]),
                str(claims["sub"]),
                str(claims["knd"]),
            )
        except (binascii.Error, ValueError, KeyError, TypeError):
            raise unauthenticated("malformed", "the retrieve grant cannot be read") from None
        if self._clock() >= granted.expires:
            raise unauthenticated("expired", "the retrieve grant has expired: ask for another")
        if (granted.study, granted.series) != (study, series):
            raise ServiceError(
                Code.PERMISSION_DENIED,
                "PERMISSION_DENIED",
                "the retrieve grant reads another study or series",
                metadata={"scope": READ},
            )
        return granted


def read_caller(
    grants: RetrieveGrants | None,
    token: str,
    method: str,
    template: str,
    params: dict[str, str],
    address: str,
) -> Caller:
    """The caller of an HTTP request that presents a grant, for exactly what it grants.

    ``template`` is the route's (``/studies/{study}``, relative to the gateway's root, ``""``
    for a path no route serves), ``params`` its path parameters, ``address`` the peer's.

    Raises
    ------
    ServiceError
        UNAUTHENTICATED for a token that is not valid (or a server with no grants);
        PERMISSION_DENIED for a valid token presented for anything but the read it names.
    """
    if grants is None:
        raise unauthenticated("malformed", "this server grants no retrieve URLs")
    claims = grants.verify(token, params.get("study", ""), params.get("series", ""))
    caller = grant_caller(claims, address)
    if ("GET" if method == "HEAD" else method, template) not in GRANTED_ROUTES:
        raise ServiceError(
            Code.PERMISSION_DENIED,
            "PERMISSION_DENIED",
            f"a retrieve grant reads its study or series (GET), not {method} {template or '?'}",
            metadata={"scope": READ, "identity": caller.identity},
        )
    return caller


def checked_host(host: str) -> str:
    """``host`` if it is a host name or address without port (``[::1]`` bracketed), or ``""``.

    It becomes part of the URL the client is given: anything else is refused, so that it can
    add no port, path or query to it.

    Raises
    ------
    ServiceError
        INVALID_ARGUMENT for anything else.
    """
    if host and not _HOST.fullmatch(host):
        raise invalid_argument("host", f"{host!r} is not a host name or address without port")
    return host


def grant_caller(claims: GrantClaims, address: str) -> Caller:
    """The caller of a read made with a grant: who it was granted to, allowed to read only.

    A grant given without credentials (a server that needs none) reads as ``anonymous``, as
    every other request of that server does.
    """
    kind = ANONYMOUS if claims.kind == ANONYMOUS else GRANT
    return Caller(claims.identity, kind, frozenset({READ}), address)


def folder_key(data_dir: Path) -> bytes:
    """The signing key kept in the data folder, created on first use.

    The processes of a group share the folder: the first one to link its key in place wins
    (a hard link never replaces a file), the others read it. The file is written and synced
    before it is linked, so no process ever reads a partial key, even after a crash.
    """
    path = data_dir / KEY_FILE
    if not path.exists():
        spare = data_dir / f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        descriptor = os.open(spare, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(descriptor, secrets.token_bytes(KEY_BYTES))
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        try:
            os.link(spare, path)
            folder = os.open(data_dir, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except FileExistsError:
            pass
        finally:
            spare.unlink()
    key = path.read_bytes()
    if len(key) < 16:
        raise ValueError(f"{path} holds no signing key: delete it to make another")
    return key
