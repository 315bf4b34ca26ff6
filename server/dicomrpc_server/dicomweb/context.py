"""What every route needs from its request: the archive, and the service's own URL."""

from __future__ import annotations

from starlette.requests import Request

from dicomrpc_server.access.hosts import malformed_host
from dicomrpc_server.archive import Archive

PREFIX = "/dicomweb"


def archive_of(request: Request) -> Archive:
    """The archive the application serves (set once, in :func:`~.app.create_app`)."""
    archive: Archive = request.app.state.archive
    return archive


def service_root(request: Request) -> str:
    """The absolute URL of the DICOMweb service root: ``--public-url``, or as addressed.

    Retrieve URLs, bulk data URIs and Locations are built on it, so that they resolve for the
    client whatever host name or port it used (behind a proxy, the public URL). Some clients
    (``requests`` as dicomweb-client drives it) send a Host header without the port they
    connected to; the port the request came in on is added then, unless it is the scheme's
    default. A Host header that is not a host and port is refused (400): it would become part
    of every URL the response holds.
    """
    host = request.headers.get("host")
    if host is not None and (error := malformed_host(host)) is not None:
        raise error
    public = archive_of(request).settings.public_url
    if public:
        return public.rstrip("/")
    url = request.url
    netloc = url.netloc
    server = request.scope.get("server")
    if url.port is None and server is not None:
        port = int(server[1])
        if port != {"http": 80, "https": 443}.get(url.scheme):
            netloc = f"{netloc}:{port}"
    return f"{url.scheme}://{netloc}{PREFIX}"
