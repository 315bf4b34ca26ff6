"""The console's pages: the files of ``static/`` under ``/console/``, read only.

``/console`` and ``/console/`` are the dashboard (``index.html``); any other path names a file
of the folder (``/console/studies.html``) or is 404. Paths are checked as the viewer's are
(:func:`~dicomrpc_server.viewer.site.safe_segments`: no ``.``/``..`` segment, backslash, NUL
or encoded separator), and only files directly in the folder are served. The files change
only with the server's version, and are revalidated on each use (ETag; 304 when unchanged).
"""

from __future__ import annotations

from pathlib import Path

from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import Receive, Scope, Send

from dicomrpc_server.console import CONSOLE_PREFIX
from dicomrpc_server.viewer.site import file_response, media_type, safe_segments

STATIC = Path(__file__).parent / "static"
_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    # The pages load their own scripts and styles only, and call this origin only; images are
    # the gateway's rendered frames, fetched with the token and shown from blob: URLs.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
}


class ConsoleSite:
    """The ASGI application of the console's files (mounted at ``/console``)."""

    def __init__(self, folder: Path = STATIC) -> None:
        self.folder = folder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a request for a page or file of the console."""
        if scope["type"] != "http":
            return
        response = self._respond(scope)
        await response(scope, receive, send)

    def _respond(self, scope: Scope) -> Response:
        if scope["method"] not in ("GET", "HEAD"):
            return PlainTextResponse(
                "405 Method Not Allowed\n", status_code=405, headers={"Allow": "GET, HEAD"}
            )
        path: str = scope["path"]
        if path == CONSOLE_PREFIX:
            return RedirectResponse(CONSOLE_PREFIX + "/", status_code=308)
        if path.startswith(CONSOLE_PREFIX + "/"):
            # The mount keeps the whole path (and names its prefix in root_path).
            scope = {**scope, "path": path[len(CONSOLE_PREFIX) :]}
        segments = safe_segments(scope)
        if segments is None or len(segments) > 1:
            return _not_found()
        name = segments[0] if segments else "index.html"
        found = self.folder / name
        if not found.is_file():
            return _not_found()
        return file_response(found, scope, media_type(found), _HEADERS)


def _not_found() -> Response:
    return PlainTextResponse("404 Not Found\n", status_code=404)
