"""Harness: the DICOMweb gateway, live on loopback (every route and method of ``dicomweb/app.py``).

A real server (gRPC and HTTP on ``127.0.0.1``, an archive in a temporary folder holding a
study, workitems and extended query tags) runs in this process, so the coverage of the
gateway's code guides the mutations. Each input is one request, read with
``FuzzedDataProvider``: a route of the application and a method, each path parameter (a stored
UID, a hostile value such as ``..``, ``%00``, ``%C3%A9`` or ``%FF``, or bytes from the input,
raw or percent-encoded), the Accept and Content-Type headers (usual values, or bytes), one
more header (Host, If-None-Match, Origin, ..., its value repeated up to 1 MiB), the query
string and the body. It is sent on a new connection, written byte for byte (no client library
normalizes it), with ``Connection: close`` and the body's true length.

Expected: any answer below 500. A bug: a 5xx answer (named with the server's exception), a
connection closed without an answer or in the middle of one, no answer within
:data:`ANSWER_TIMEOUT_S`, or the server no longer accepting connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import shutil
import socket
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import atheris
from starlette.routing import Route

from dicomrpc_server.dicomweb.app import RESOURCE_ROUTES
from dicomrpc_server.dicomweb.context import PREFIX
from dicomrpc_server.dicomweb.multipart import closing, part_header
from tests import dicomgen, upsgen
from tests.conftest import RunningServer, start_server
from tests.fuzz import qido, workitems
from tests.fuzz.archive import SERIES, SOP, STUDY, WORKITEM, fill, instances, store
from tests.fuzz.bugs import CRASH, HANG, HTTP_5XX, Bug, signature
from tests.fuzz.seeds import FdpSeed

ANSWER_TIMEOUT_S = 20.0
MAX_TEXT = 255
MAX_QUERY = 2048
MAX_REPEAT_EXPONENT = 16  # a header value repeated up to 2**16 times (1 MiB at most)
MAX_HEADER_VALUE = 1024 * 1024
# Storing the seed instances again costs a few fsyncs: done once per this many inputs.
RESTORE_EVERY = 100

ROUTES: list[tuple[str, str]] = [
    (method, route.path)
    for resource in RESOURCE_ROUTES
    for route in resource
    if isinstance(route, Route)
    for method in sorted(route.methods or ())
    if method != "HEAD"
] + [("GET", ""), ("GET", "/"), ("OPTIONS", "/studies"), ("GET", "/../health")]
METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "FUZZ")
KNOWN = {
    "study": STUDY,
    "series": SERIES,
    "instance": SOP,
    "workitem": WORKITEM,
    "frames": "1",
    "frame": "1",
    "path": "7FE00010",
}
SPECIALS = (
    "",
    ".",
    "..",
    "%2E%2E",
    "%00",
    f"{STUDY}%00.1",
    "%2F",
    f"{STUDY}%2F..",
    "%C3%A9",
    "%FF",
    "%",
    "%zz",
    "%3F",
    "%23",
    "*",
    "%20",
    "1.2.3",
    "0",
    "-1",
    "1,2",
    "1-2",
    "%C2%B2",
    "99999999999999999999",
    "9" * 300,
    "00081140.0.00081150",
)
ACCEPTS = (
    None,
    "application/dicom+json",
    "application/json",
    "*/*",
    'multipart/related; type="application/dicom"; transfer-syntax=*',
    'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50',
    'multipart/related; type="application/dicom"',
    'multipart/related; type="application/octet-stream"',
    'multipart/related; type="image/jpeg"',
    "application/dicom",
    "application/octet-stream",
    "image/jpeg",
    "image/png",
    "image/jls",
    "image/jp2",
    "text/html",
    "application/dicom+json;q=0",
    "*/*;q=abc",
)
CONTENT_TYPES = (
    None,
    'multipart/related; type="application/dicom"; boundary=b',
    "application/dicom+json",
    "application/json",
    "multipart/related; boundary=b",
    "application/dicom",
    "text/plain",
)
HEADERS = (
    "If-None-Match",
    "Origin",
    "Host",
    "Authorization",
    "Access-Control-Request-Method",
    "Expect",
    "Range",
    "Accept-Encoding",
    "Cookie",
    "X-Fuzz",
)
_PLACEHOLDERS = ("study", "series", "instance", "frames", "frame", "path", "workitem")


_LOGGERS = ("uvicorn.error", "dicomrpc_server", "dicomrpc")


@dataclass
class _Live:
    server: RunningServer
    folder: Path
    errors: list[BaseException]
    loggers: dict[str, tuple[list[logging.Handler], bool]]  # as they were before setup
    deleted: bool = False  # a request deleted stored instances: store them again soon
    since_restore: int = 0


class _Capture(logging.Handler):
    """Keeps the exceptions the server logs (uvicorn logs each one behind a 500)."""

    def __init__(self, into: list[BaseException]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.into.append(record.exc_info[1])


_live: _Live | None = None


def setup() -> None:
    global _live
    errors: list[BaseException] = []
    loggers = {}
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        loggers[name] = (logger.handlers, logger.propagate)
        logger.handlers = [_Capture(errors)]
        logger.propagate = False
    folder = Path(tempfile.mkdtemp(prefix="fuzz-http-"))
    server = start_server(folder / "data", cors_origins=("*",), lmdb_map_size=1024 * 1024 * 1024)
    asyncio.run_coroutine_threadsafe(fill(server.archive), server.loop).result(120)
    _live = _Live(server, folder, errors, loggers)


def teardown() -> None:
    global _live
    if _live is not None:
        _live.server.stop()
        shutil.rmtree(_live.folder, ignore_errors=True)
        for name, (handlers, propagate) in _live.loggers.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = handlers, propagate
        _live = None


def _choice(fdp: atheris.FuzzedDataProvider, options: tuple[str | None, ...]) -> int:
    """An index into ``options``, or ``len(options)`` for text from the input."""
    return int(fdp.ConsumeIntInRange(0, len(options)))


@dataclass
class _Request:
    method: str
    template: str
    raw: bytes


def build(data: bytes, port: int) -> _Request:
    """The request an input stands for (see the module docstring for the layout)."""
    fdp = atheris.FuzzedDataProvider(data)
    method, template = ROUTES[fdp.ConsumeIntInRange(0, len(ROUTES) - 1)]
    method_choice = fdp.ConsumeIntInRange(0, len(METHODS))
    modes = [fdp.ConsumeIntInRange(0, 3) for _ in _PLACEHOLDERS]
    specials = [fdp.ConsumeIntInRange(0, len(SPECIALS) - 1) for _ in _PLACEHOLDERS]
    accept = _choice(fdp, ACCEPTS)
    content_type = _choice(fdp, CONTENT_TYPES)
    header = fdp.ConsumeIntInRange(0, len(HEADERS))
    repeat = fdp.ConsumeIntInRange(0, MAX_REPEAT_EXPONENT)
    lengths = [fdp.ConsumeIntInRange(0, MAX_TEXT) for _ in range(len(_PLACEHOLDERS) + 3)]
    query_length = fdp.ConsumeIntInRange(0, MAX_QUERY)
    texts = [fdp.ConsumeBytes(n) for n in lengths]
    query = fdp.ConsumeBytes(query_length)
    body = fdp.ConsumeBytes(fdp.remaining_bytes())

    if method_choice < len(METHODS):
        method = METHODS[method_choice] if method_choice else method
    path = template.encode()
    for number, name in enumerate(_PLACEHOLDERS):
        value = _segment(modes[number], specials[number], name, texts[number])
        path = path.replace(b"{" + name.encode() + b"}", value)
    target = PREFIX.encode() + path + (b"?" + query if query else b"")
    headers: list[tuple[bytes, bytes]] = [(b"Host", f"127.0.0.1:{port}".encode())]
    accept_value = ACCEPTS[accept] if accept < len(ACCEPTS) else texts[-3]
    if accept_value is not None:
        headers.append((b"Accept", _header_value(accept_value)))
    type_value = CONTENT_TYPES[content_type] if content_type < len(CONTENT_TYPES) else texts[-2]
    if type_value is not None:
        headers.append((b"Content-Type", _header_value(type_value)))
    if header < len(HEADERS):
        value = (_header_value(texts[-1]) * (1 << repeat))[:MAX_HEADER_VALUE]
        extra = HEADERS[header].encode()
        if extra == b"Host":
            headers[0] = (extra, value)
        else:
            headers.append((extra, value))
    headers += [(b"Content-Length", str(len(body)).encode()), (b"Connection", b"close")]
    head = method.encode() + b" " + target + b" HTTP/1.1\r\n"
    head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return _Request(method, template, head + b"\r\n" + body)


def _segment(mode: int, special: int, name: str, text: bytes) -> bytes:
    if mode == 0:
        return KNOWN[name].encode()
    if mode == 1:
        return SPECIALS[special].encode()
    if mode == 2:
        return text  # raw: anything the request line can carry, or break it with
    return quote(text, safe="").encode()


def _header_value(value: str | bytes) -> bytes:
    """A header value as sent: a line break would end the header (and could announce a body
    that never comes), so it is sent as a space."""
    raw = value.encode("latin-1") if isinstance(value, str) else value
    return raw.replace(b"\r", b" ").replace(b"\n", b" ")


def TestOneInput(data: bytes) -> None:
    if _live is None:
        setup()
    assert _live is not None
    _live.since_restore += 1
    if _live.deleted and _live.since_restore >= RESTORE_EVERY:
        _restore(_live.server)
        _live.deleted, _live.since_restore = False, 0
    request = build(data, _live.server.http.port)
    _live.errors.clear()
    try:
        status = send(request, _live.server.http.port)
    except Bug as bug:
        if bug.kind != CRASH or _live is None:
            raise
        # Why the server closed the connection, as it logged it.
        raise Bug(CRASH, f"{bug.signature}: {_server_error(_live)}", bug.detail) from bug
    if status >= 500:
        raise Bug(
            HTTP_5XX,
            f"HTTP {status} on {request.method} {request.template}: {_server_error(_live)}",
            _excerpt(request.raw),
        )
    if request.method == "DELETE" and status < 300:
        _live.deleted = True


def _server_error(live: _Live) -> str:
    """The signature of the exception behind a 5xx or a dropped answer (logged after it)."""
    deadline = time.monotonic() + 2.0
    while not live.errors and time.monotonic() < deadline:
        time.sleep(0.005)
    return signature(live.errors[-1]) if live.errors else "no exception logged"


def send(request: _Request, port: int) -> int:
    """Send the request on a new connection; return the answer's status once it is read whole."""
    where = f"{request.method} {request.template}"
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT_S)
    except OSError as exc:
        teardown()  # the next input starts a new server
        raise Bug(CRASH, f"the server accepts no connection ({type(exc).__name__})") from exc
    # Closed with a reset, not a TIME_WAIT: a million requests would exhaust the ports.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    try:
        # The server may answer before it has read the whole request: read that answer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request.raw)
        answer = http.client.HTTPResponse(sock, method=request.method)
        answer.begin()
        answer.read()
        return int(answer.status)
    except TimeoutError as exc:
        raise Bug(HANG, f"no answer within {ANSWER_TIMEOUT_S:.0f} s: {where}") from exc
    except http.client.IncompleteRead as exc:
        raise Bug(CRASH, f"answer cut off: {where}", _excerpt(request.raw)) from exc
    except (http.client.HTTPException, ConnectionError) as exc:
        raise Bug(
            CRASH,
            f"connection closed without an answer ({type(exc).__name__}): {where}",
            _excerpt(request.raw),
        ) from exc
    finally:
        sock.close()


def _excerpt(raw: bytes) -> str:
    return repr(raw[:2000]) + (f" ... ({len(raw)} bytes)" if len(raw) > 2000 else "")


def _restore(server: RunningServer) -> None:
    """Store the seed instances again after requests deleted some of them."""
    asyncio.run_coroutine_threadsafe(store(server.archive, instances()), server.loop).result(60)


# -- seeds ---------------------------------------------------------------------------------


def _seed(
    route: tuple[str, str],
    *,
    accept: str | None = None,
    content_type: str | None = None,
    query: str = "",
    body: bytes = b"",
    modes: dict[str, int] | None = None,
    specials: dict[str, int] | None = None,
) -> bytes:
    seed = FdpSeed().integer(ROUTES.index(route), 0, len(ROUTES) - 1).integer(0, 0, len(METHODS))
    for name in _PLACEHOLDERS:
        seed.integer((modes or {}).get(name, 0), 0, 3)
    for name in _PLACEHOLDERS:
        seed.integer((specials or {}).get(name, 0), 0, len(SPECIALS) - 1)
    seed.integer(ACCEPTS.index(accept), 0, len(ACCEPTS))
    seed.integer(CONTENT_TYPES.index(content_type), 0, len(CONTENT_TYPES))
    seed.integer(len(HEADERS), 0, len(HEADERS)).integer(0, 0, MAX_REPEAT_EXPONENT)
    for _ in range(len(_PLACEHOLDERS) + 3):
        seed.integer(0, 0, MAX_TEXT)
    seed.integer(len(query), 0, MAX_QUERY)
    return seed.data(query.encode()).data(body).build()


def _stow_body(*datas: bytes) -> bytes:
    parts = [part_header("b", {"Content-Type": "application/dicom"}) + d for d in datas]
    return b"\r\n".join(parts) + closing("b")


def seeds() -> dict[str, bytes]:
    stow = 'multipart/related; type="application/dicom"; boundary=b'
    dicom_json = "application/dicom+json"
    new = dicomgen.ct_instance(rows=2, columns=2)
    same_study = dicomgen.ct_instance(STUDY, rows=1, columns=1)
    out: dict[str, bytes] = {
        "stow": _seed(("POST", "/studies"), content_type=stow, body=_stow_body(new)),
        "stow-study": _seed(
            ("POST", "/studies/{study}"),
            accept=dicom_json,
            content_type=stow,
            body=_stow_body(same_study, new),
        ),
        "stow-json-type": _seed(("POST", "/studies"), content_type=dicom_json, body=b"{}"),
    }
    for name, query in list(qido.QUERIES.items())[:12]:
        out[f"qido-{name}"] = _seed(("GET", "/studies"), query=query)
    for path in ("/series", "/instances", "/studies/{study}/series", "/studies/{study}/instances"):
        out[f"qido{path.replace('/', '-')}"] = _seed(("GET", path), accept=dicom_json)
    wado = "/studies/{study}/series/{series}/instances/{instance}"
    for number, accept in enumerate(ACCEPTS[:10]):
        out[f"wado-{number}"] = _seed(("GET", wado), accept=accept)
    out["wado-study"] = _seed(("GET", "/studies/{study}"), accept=ACCEPTS[4])
    out["metadata"] = _seed(("GET", "/studies/{study}/metadata"), accept=dicom_json)
    out["metadata-instance"] = _seed(("GET", wado + "/metadata"))
    out["frames"] = _seed(("GET", wado + "/frames/{frames}"), accept=ACCEPTS[7])
    out["frames-jpeg"] = _seed(("GET", wado + "/frames/{frames}"), accept=ACCEPTS[8])
    out["rendered"] = _seed(
        ("GET", wado + "/rendered"), accept="image/png", query="window=100,200&viewport=8,8"
    )
    out["rendered-frame"] = _seed(("GET", wado + "/frames/{frame}/rendered"), query="quality=50")
    out["bulkdata"] = _seed(("GET", wado + "/bulkdata/{path}"), accept=ACCEPTS[10])
    out["delete-instance"] = _seed(("DELETE", wado))
    out["delete-bad-uid"] = _seed(
        ("DELETE", "/studies/{study}"), modes={"study": 1}, specials={"study": 5}
    )
    out["path-dots"] = _seed(("GET", wado), modes={"series": 1}, specials={"series": 2})
    out["path-accent"] = _seed(
        ("GET", "/studies/{study}"), modes={"study": 1}, specials={"study": 8}
    )
    workitem = json.dumps(upsgen.workitem()).encode()
    out["workitem-create"] = _seed(
        ("POST", "/workitems"), content_type=dicom_json, query="1.2.3.4.5", body=workitem
    )
    out["workitem-create-array"] = _seed(
        ("POST", "/workitems"), content_type="application/json", body=b"[" + workitem + b"]"
    )
    for name, query in list(workitems.QUERIES.items())[:8]:
        out[f"workitem-search-{name}"] = _seed(("GET", "/workitems"), query=query)
    out["workitem-get"] = _seed(("GET", "/workitems/{workitem}"), accept=dicom_json)
    out["workitem-update"] = _seed(
        ("POST", "/workitems/{workitem}"),
        content_type=dicom_json,
        query="transaction=1.2.3.9",
        body=json.dumps(upsgen.dataset(ProcedureStepLabel="relabel")).encode(),
    )
    out["workitem-claim"] = _seed(
        ("PUT", "/workitems/{workitem}/state"),
        content_type=dicom_json,
        body=b'{"00741000":{"vr":"CS","Value":["IN PROGRESS"]},'
        b'"00081195":{"vr":"UI","Value":["1.2.3.6"]}}',
    )
    out["workitem-cancel"] = _seed(
        ("POST", "/workitems/{workitem}/cancelrequest"),
        content_type=dicom_json,
        body=json.dumps(upsgen.dataset(ReasonForCancellation="no longer needed")).encode(),
    )
    return out
