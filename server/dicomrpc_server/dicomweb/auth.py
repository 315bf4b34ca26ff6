"""Access control of every DICOMweb request: credentials from the request, refusals as HTTP.

The middleware sits inside CORS (so preflights are answered and refusals carry CORS headers)
and before routing, so no route can be left out: it finds the route a request is for, reads
its ``Authorization`` header, the client certificate's subject (mutual TLS, the ASGI TLS
extension) and the peer, asks the
:class:`~dicomrpc_server.access.authenticator.Authenticator` with the route's entry in
:data:`~dicomrpc_server.access.scopes.ROUTE_SCOPES`, and answers 401 or 403 before the
route's handler runs, or runs it with the caller in the request's state.

Paths outside ``/dicomweb`` are the web viewer's files when it is served (``--viewer``): the
same for everyone and free of patient data, they are :data:`OPEN`, so that a browser can load
the viewer before it holds a token; every DICOMweb call the viewer then makes is checked as
any other. Without the viewer they need authentication, as the gateway's unknown paths do.

The console's API (``/console/api``) is checked as the gateway is, with its own table
(:data:`~dicomrpc_server.access.scopes.CONSOLE_ROUTE_SCOPES`); the console's pages
(``/console/`` outside the API) are static files free of patient data, :data:`OPEN` whether
the viewer is served or not, so that a browser can load them and then ask for a token.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomrpc_server.access.authenticator import NO_SCOPES, Admission, Authenticator, Credentials
from dicomrpc_server.access.caller import ANONYMOUS, Caller
from dicomrpc_server.access.grants import GRANT_PARAMETER, RetrieveGrants, read_caller
from dicomrpc_server.access.scopes import (
    ADMIN,
    AUTHENTICATED,
    OPEN,
    console_route_scope,
    route_scope,
)
from dicomrpc_server.console import API_PREFIX, CONSOLE_PREFIX
from dicomrpc_server.dicomweb.context import PREFIX
from dicomrpc_server.dicomweb.errors import error_response
from dicomrpc_server.dicomweb.health import PATHS as HEALTH_PATHS
from dicomrpc_server.dicomweb.metrics import PATH as METRICS_PATH
from dicomrpc_server.errors import ServiceError

CALLER_KEY = "caller"


def caller_of(request: HTTPConnection | Scope) -> Caller | None:
    """The caller of a DICOMweb request (a Starlette request or an ASGI scope).

    Set by the access middleware on every request it admits or refuses; ``None`` for a
    request it did not see.
    """
    scope: Mapping[str, Any] = request.scope if isinstance(request, HTTPConnection) else request
    caller: Caller | None = scope.get("state", {}).get(CALLER_KEY)
    return caller


def address_of(scope: Scope) -> str:
    """``host:port`` of the peer (an IPv6 host in brackets)."""
    client = scope.get("client")
    if not client:
        return ""
    host, port = client[0], client[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def credentials_of(scope: Scope) -> Credentials:
    """What a request presents: its ``Authorization`` header, certificate subject and peer."""
    authorization = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1")
            break
    tls = scope.get("extensions", {}).get("tls") or {}
    subject = tls.get("client_cert_name") or ""
    return Credentials(authorization, subject, address_of(scope))


def _is_console_page(path: str) -> bool:
    """Whether ``path`` names a page of the console (static, the same for everyone)."""
    return path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")


def grant_of(scope: Scope) -> str | None:
    """The retrieve grant a request presents (its ``grant`` query parameter), or ``None``.

    A request that repeats the parameter presents an empty grant, which is refused.
    """
    query = scope.get("query_string", b"").decode("latin-1")
    if GRANT_PARAMETER not in query:
        return None
    values = [v for k, v in parse_qsl(query, keep_blank_values=True) if k == GRANT_PARAMETER]
    if not values:
        return None
    return values[0] if len(values) == 1 else ""


class AccessMiddleware:
    """Admits or refuses every request before it is routed.

    Parameters
    ----------
    app
        The application (the router) it guards.
    authenticator
        The archive's authenticator.
    routes
        The gateway's routes (relative to ``/dicomweb``), to find the template of a path.
    public_outside_prefix
        Whether paths outside ``/dicomweb`` (the viewer's files) are open to everyone.
    console_routes
        The console API's routes (relative to ``/console/api``).
    grants
        The archive's retrieve grants: a request with a ``grant`` query parameter is admitted
        by it alone, for the GET (or HEAD) of the study or series it names and nothing else,
        and refused anywhere else, whatever its other credentials.
    """

    def __init__(
        self,
        app: ASGIApp,
        authenticator: Authenticator,
        routes: Iterable[BaseRoute],
        public_outside_prefix: bool = False,
        console_routes: Iterable[BaseRoute] = (),
        grants: RetrieveGrants | None = None,
    ) -> None:
        self.app = app
        self._grants = grants
        self._authenticator = authenticator
        self._public_outside_prefix = public_outside_prefix
        self._routes: list[tuple[re.Pattern[str], frozenset[str], str]] = [
            (route.path_regex, frozenset(route.methods or ()), route.path)
            for route in routes
            if isinstance(route, Route)
        ]
        self._console_routes: list[tuple[re.Pattern[str], frozenset[str], str]] = [
            (route.path_regex, frozenset(route.methods or ()), route.path)
            for route in console_routes
            if isinstance(route, Route)
        ]

    def _operation(self, method: str, path: str) -> tuple[str | None, str, str, dict[str, str]]:
        """The scope a request needs, its name (``GET /studies/{study}``), route and parameters.

        A path that matches no route (or none with this method) needs only authentication:
        the router answers it 404 or 405, which tells nothing about the archive's content.
        """
        if path.startswith(PREFIX):
            relative = path[len(PREFIX) :]
            for regex, methods, template in self._routes:
                if method in methods and (match := regex.match(relative)):
                    operation = f"{method} {PREFIX}{template}"
                    return route_scope(method, template), operation, template, match.groupdict()
        elif path.startswith(API_PREFIX + "/"):
            relative = path[len(API_PREFIX) :]
            for regex, methods, template in self._console_routes:
                if method in methods and regex.match(relative):
                    operation = f"{method} {API_PREFIX}{template}"
                    return console_route_scope(method, template), operation, "", {}
        elif path == METRICS_PATH:
            return ADMIN, f"{method} {path}", "", {}
        elif self._public_outside_prefix or _is_console_page(path) or path in HEALTH_PATHS:
            return OPEN, f"{method} {path}", "", {}
        return AUTHENTICATED, f"{method} {path}", "", {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 401 or 403 for a refused request; serve an admitted one with its caller."""
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            # A CORS preflight never carries credentials (the CORS middleware, outside this
            # one, answers it); other OPTIONS requests reach the router, which serves none.
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        needed, operation, template, params = self._operation(method, scope["path"])
        token = grant_of(scope)
        if token is not None:
            address = address_of(scope)
            try:
                caller = read_caller(self._grants, token, method, template, params, address)
                admission = Admission(caller)
            except ServiceError as error:
                admission = Admission(Caller(ANONYMOUS, ANONYMOUS, NO_SCOPES, address), error)
        else:
            admission = await self._authenticator.admit(credentials_of(scope), needed, operation)
        scope.setdefault("state", {})[CALLER_KEY] = admission.caller
        if admission.error is not None:
            await error_response(admission.error)(scope, receive, send)
            return
        await self.app(scope, receive, send)
