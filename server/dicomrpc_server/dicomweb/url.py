"""The request URL, checked once for every route before the route reads it.

:func:`checked` wraps each route of the gateway (:mod:`.app` applies it to all of them), so no
route can forget what it checks:

* every path parameter that names a study, series, instance or workitem
  (:data:`UID_PATH_PARAMETERS`) must be a UID a request may name
  (:mod:`dicomrpc_server.dicom.uids`); a bad one is refused (400) under the parameter's name;
* the path holds no percent-encoded '/': the server decodes the path before routing, so
  ``1.2%2Fmetadata`` would otherwise be routed as two segments;
* each query parameter's name and value are UTF-8 once percent-decoded (RFC 3986 §2.5), since
  the server would otherwise read a broken byte as U+FFFD and search for that.

UID values inside the query (QIDO match keys, the UPS-RS ``?{uid}`` forms) are checked where
they are read, under their keys, by the search core and :mod:`.workitems`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine, Mapping
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dicomrpc_server.dicom.uids import check_request_uid
from dicomrpc_server.errors import invalid_argument

UID_PATH_PARAMETERS = frozenset({"study", "series", "instance", "workitem"})
_ENCODED_SLASH = re.compile(rb"%2f", re.IGNORECASE)

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


def check_path_uids(path_params: Mapping[str, Any]) -> None:
    """Refuse a UID path parameter that no request may name, under the parameter's name."""
    for name in UID_PATH_PARAMETERS.intersection(path_params):
        check_request_uid(name, str(path_params[name]))


def check_query(query_string: bytes) -> None:
    """Refuse a query parameter whose name or value is not UTF-8 once percent-decoded."""
    for item in query_string.split(b"&"):
        name, _, value = item.partition(b"=")
        for part in (name, value):
            try:
                unquote_to_bytes(part.replace(b"+", b" ")).decode("utf-8")
            except UnicodeDecodeError:
                shown = unquote(name.decode("ascii", "replace"), errors="replace")
                raise invalid_argument(
                    shown or "query", "is not UTF-8 text once percent-decoded"
                ) from None


def check_request_url(request: Request) -> None:
    """Everything :func:`checked` checks of a request the router matched."""
    raw_path = request.scope.get("raw_path")
    if isinstance(raw_path, bytes) and _ENCODED_SLASH.search(raw_path):
        raise invalid_argument(
            "path", "holds an encoded '/' (%2F): no study, series, instance or workitem has one"
        )
    check_query(request.scope.get("query_string", b""))
    check_path_uids(request.path_params)


def checked(route: BaseRoute) -> Route:
    """``route`` with its request URL checked (:func:`check_request_url`) before its endpoint.

    A refusal is a ``ServiceError``, answered by the application's handler like any other.
    """
    if not isinstance(route, Route) or route.methods is None:
        raise TypeError(f"the gateway's routes are HTTP routes with methods, not {route!r}")
    endpoint: Endpoint = route.endpoint

    async def endpoint_checked(request: Request) -> Response:
        check_request_url(request)
        return await endpoint(request)

    return Route(
        route.path,
        endpoint_checked,
        methods=route.methods,
        name=route.name,
        include_in_schema=route.include_in_schema,
    )
