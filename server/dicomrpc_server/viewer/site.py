"""The viewer's web site: OHIF's ``dist/`` at the root of the gateway's HTTP port.

OHIF's pages name their files by absolute paths (``/app.bundle.….js``) and route on the client
(``/viewer?StudyInstanceUIDs=…``), so the site is the root of the origin: a file of ``dist/`` is
served as it is, ``/app-config.js`` is written for the gateway the page came from, and every
other path is answered with ``index.html`` for OHIF's router to read, as OHIF's single-page
hosting expects (its ``_redirects``: ``/* /index.html 200``). The DICOMweb routes come first
(the application routes ``/dicomweb`` before this site), and this site never answers under
``/dicomweb``.

Files are read only, from inside the folder: a path with a ``.`` or ``..`` segment, a
backslash, a NUL or an encoded slash is answered 404 before any file is looked at, and a file
whose real path (symbolic links followed) leaves the folder is never served. Only GET and HEAD
are served.

Without a built viewer in the folder every page is a short how-to (503: the viewer is not
available, the archive is) naming the command that fetches it. The folder is looked at on each
request, so a viewer fetched while the server runs is served without a restart.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Mapping
from pathlib import Path

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from dicomrpc_server.dicomweb.context import PREFIX, service_root
from dicomrpc_server.viewer.app_config import app_config
from dicomrpc_server.viewer.package import FETCH_COMMAND, OHIF_VERSION, is_complete

CONFIG_PATH = "/app-config.js"
# The types of the files OHIF's build holds, fixed here rather than read from the system's
# mime.types, which differ between hosts (browsers refuse scripts and WebAssembly served as
# anything else).
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".jsonc": "application/json",
    ".map": "application/json",
    ".webapp": "application/x-web-app-manifest+json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".gif": "image/gif",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".ttf": "font/ttf",
    ".xml": "application/xml",
    ".txt": "text/plain; charset=utf-8",
    ".onnx": "application/octet-stream",
}
DEFAULT_MEDIA_TYPE = "application/octet-stream"
# A name holding a content hash (``1180.bundle.762993518ea30ae3.js``, ``0ddf166f7a343eda.wasm``)
# never changes content: browsers may keep it for a year without asking again. Everything else
# (index.html, the configuration, unhashed chunks) is revalidated on each use (ETag).
_HASHED = re.compile(r"(?:^|[.-])[0-9a-f]{16,}\.[a-z0-9]+$")
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
# Encoded "/" and "\": a client spelling a separator this way is up to no good.
_ENCODED_SEPARATORS = (b"%2f", b"%5c")
_COMMON_HEADERS = {"X-Content-Type-Options": "nosniff"}


def media_type(path: Path) -> str:
    """The ``Content-Type`` of a file of the build, by its extension."""
    return MEDIA_TYPES.get(path.suffix.lower(), DEFAULT_MEDIA_TYPE)


def cache_control(name: str) -> str:
    """The ``Cache-Control`` of a file named ``name``."""
    return IMMUTABLE if _HASHED.search(name) else REVALIDATE


def safe_segments(scope: Scope) -> list[str] | None:
    """The path's segments, or ``None`` for a path that could step out of the folder.

    The ASGI ``path`` is percent-decoded, so ``%2e%2e`` arrives as ``..`` and is refused with
    it; an encoded separator is visible only in ``raw_path``.
    """
    raw = scope.get("raw_path") or b""
    if any(separator in raw.lower() for separator in _ENCODED_SEPARATORS):
        return None
    segments = [s for s in scope["path"].split("/") if s]
    for segment in segments:
        if segment in (".", "..") or "\\" in segment or "\x00" in segment:
            return None
    return segments


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` field names ``etag`` (or is ``*``).

    RFC 9110 §13.1.2: the comparison is weak (a ``W/`` prefix does not matter).
    """
    if not if_none_match:
        return False
    candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in candidates or etag.removeprefix("W/") in candidates


def file_response(
    path: Path, scope: Scope, media_type: str, headers: Mapping[str, str]
) -> Response:
    """``path`` with ``headers``, or 304 Not Modified when the request already holds it.

    A file revalidated on each use (``no-cache``: ``index.html``, OHIF's unhashed files, the
    console's pages) is asked for with the ETag the browser has; answering 304 (RFC 9110
    §15.4.5, with the same ETag and Cache-Control) saves sending it again on every page load.
    Starlette's FileResponse sends the ETag but never compares it.
    """
    response = FileResponse(
        path, media_type=media_type, headers=dict(headers), stat_result=os.stat(path)
    )
    etag = response.headers["etag"]
    if etag_matches(Headers(scope=scope).get("if-none-match"), etag):
        return Response(status_code=304, headers={**headers, "ETag": etag})
    return response


class ViewerSite:
    """The ASGI application of the viewer's files, over the folder ``dist``.

    Parameters
    ----------
    dist
        OHIF's built ``dist/`` folder (it may not exist yet).
    explicit
        Whether ``dist`` was named (``--viewer-dir``) rather than the cache's: the how-to
        page then says to put a build there.
    """

    def __init__(self, dist: Path, *, explicit: bool = False) -> None:
        self.dist = dist
        self.explicit = explicit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a request for a page or file of the viewer."""
        if scope["type"] != "http":
            return
        response = self._respond(scope)
        for name, value in _COMMON_HEADERS.items():
            response.headers.setdefault(name, value)
        await response(scope, receive, send)

    def _respond(self, scope: Scope) -> Response:
        path: str = scope["path"]
        if path.startswith(PREFIX):
            return _not_found()
        segments = safe_segments(scope)
        if segments is None:
            return _not_found()
        if scope["method"] not in ("GET", "HEAD"):
            return PlainTextResponse(
                "405 Method Not Allowed\n", status_code=405, headers={"Allow": "GET, HEAD"}
            )
        if not is_complete(self.dist):
            return self._how_to()
        if path == CONFIG_PATH:
            root = service_root(Request(scope))
            return Response(
                app_config(root),
                media_type=MEDIA_TYPES[".js"],
                headers={"Cache-Control": "no-store"},
            )
        found = self._file(segments)
        if found is None:
            return _not_found()
        return file_response(
            found, scope, media_type(found), {"Cache-Control": cache_control(found.name)}
        )

    def _file(self, segments: list[str]) -> Path | None:
        """The file ``segments`` name inside the folder, or ``index.html``.

        ``index.html`` answers a path naming no file (OHIF's own routes); ``None``, a path
        whose real path (links followed) is outside the folder.
        """
        root = os.path.realpath(self.dist)
        candidate = os.path.realpath(os.path.join(root, *segments))
        if os.path.commonpath([root, candidate]) != root:
            return None
        if os.path.isfile(candidate):
            return Path(candidate)
        index = os.path.realpath(os.path.join(root, "index.html"))
        if os.path.commonpath([root, index]) != root:
            return None
        return Path(index)

    def _how_to(self) -> Response:
        """The page served instead of the viewer while it is not installed (503)."""
        if self.explicit:
            remedy = (
                f"<p>The folder <code>{html.escape(str(self.dist))}</code> (<code>--viewer-dir"
                "</code>) holds no <code>index.html</code>: put the <code>dist/</code> folder "
                "of a built OHIF viewer (npm <code>@ohif/app</code>) there, or leave "
                "<code>--viewer-dir</code> out and run:</p>"
            )
        else:
            remedy = (
                f"<p>Fetch OHIF {OHIF_VERSION} (npm <code>@ohif/app</code>, once, into "
                f"<code>{html.escape(str(self.dist.parent.parent))}</code>) with npm and "
                "network access:</p>"
            )
        page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dicomrpc: viewer not installed</title></head>
<body>
<h1>The OHIF viewer is not installed</h1>
<p>The archive is running: its DICOMweb service is at <a href="{PREFIX}/studies">{PREFIX}</a>.</p>
{remedy}
<pre>{FETCH_COMMAND}</pre>
<p>(<code>make serve</code> runs it before serving.) Then reload this page; the server need not
be restarted.</p>
</body></html>
"""
        return Response(
            page,
            status_code=503,
            media_type="text/html; charset=utf-8",
            headers={"Cache-Control": "no-store"},
        )


def _not_found() -> Response:
    return PlainTextResponse("404 Not Found\n", status_code=404)
