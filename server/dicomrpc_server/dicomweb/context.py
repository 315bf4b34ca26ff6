"""What every route needs from its request: the archive, and the service's own URL."""

from __future__ import annotations

import re

from starlette.requests import Request

from dicomrpc_server.archive import Archive
from dicomrpc_server.errors import invalid_argument

PREFIX = "/dicomweb"
# A host name, IPv4 or bracketed IPv6 address, and an optional port (RFC 3986 §3.2.2): all a
# Host header may carry into the URLs built on it. Percent-encoded and sub-delimiter host names
# are left out; no resolver takes them.
_AUTHORITY = re.compile(r"(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def archive_of(request: Request) -> Archive:
    """The archive the application serves (set once, in :func:`~.app.create_app`)."""
    archive: Archive = request.app.state.archive
    return archive


def service_root(request: Request) -> str:
    """The absolute URL of the DICOMweb service root, as the client addressed it.

    Retrieve URLs and bulk data URIs are built on it, so that they resolve for the client
    whatever host name or port it used. Some clients (``requests`` as dicomweb-client drives
    it) send a Host header without the port they connected to; the port the request came in on
    is added then, unless it is the scheme's default. A Host header that is not a host and port
    is refused (400): it would become part of every URL the response holds.
    """
    host = request.headers.get("host")
    if host is not None and not _AUTHORITY.fullmatch(host):
        raise invalid_argument("Host", f"{host!r} is not a host name or address and a port")
    url = request.url
    netloc = url.netloc
    server = request.scope.get("server")
    if url.port is None and server is not None:
        port = int(server[1])
        if port != {"http": 80, "https": 443}.get(url.scheme):
            netloc = f"{netloc}:{port}"
    return f"{url.scheme}://{netloc}{PREFIX}"
