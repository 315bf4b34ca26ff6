"""Harness: the DIMSE port, live on loopback (PDUs, associations, DIMSE messages, data sets).

A real server (gRPC, HTTP and DIMSE on ``127.0.0.1``, an archive in a temporary folder holding
a study) runs in this process, so that the coverage of the archive's DIMSE handlers and of
pynetdicom's PDU, state machine and message code guides the mutations. Each input is what a
requester sends on one new connection, read with ``FuzzedDataProvider``, in one of two modes:

- *wire*: the input's bytes as they are, the whole stream a requester writes: A-ASSOCIATE-RQ
  (its lengths, item types, maximum PDU length, AE titles, presentation contexts), P-DATA-TF
  (PDV lengths, context IDs, fragment flags), A-RELEASE-RQ, A-ABORT, or none of these;
- *messages*: a well-formed A-ASSOCIATE-RQ proposing Verification, CT Image Storage, the
  Query/Retrieve models (implicit and explicit VR little endian), then up to four DIMSE
  messages (a context ID, the command set's bytes, the data set's bytes: truncated ones, wrong
  VRs or lengths, a C-STORE whose data set is not what its command says) framed into P-DATA-TF
  PDUs the way a requester fragments them, then an A-RELEASE-RQ: the mutations reach the
  message and data set decoders, which wire mutations mostly stop short of.

The seeds are real associations: what pynetdicom's requester writes for a C-ECHO, C-STOREs
(implicit and explicit VR), C-FINDs (Study and Patient Root), a C-GET and a C-MOVE, recorded
through a relay in front of the server.

The input is written as a requester writes: after an A-ASSOCIATE-RQ it waits for the answer,
after each message for its final response (or a request to it, a C-GET's C-STORE), up to
:data:`RESPONSE_S` each. When the input ends with a complete A-RELEASE-RQ the harness waits for
the server's A-RELEASE-RP, A-ABORT or A-ASSOCIATE-RJ (up to :data:`SETTLE_S`), then closes its
sending side: the server must then close the connection within :data:`CLOSE_S`.
Expected: any answer, any rejection or abort, the connection closed. A bug: no close within
that time (a hang), an exception the server or pynetdicom logs from a place that is not a
designed answer to bad input (a handler, the state machine, the DUL's loop, the response
encoding, an uncaught exception in a thread), or the server no longer answering a C-ECHO on a
new association afterwards (each input is followed by one).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import atheris
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from tests import dicomgen
from tests.conftest import RunningServer, start_server
from tests.fuzz.archive import SERIES, STUDY, fill
from tests.fuzz.bugs import CRASH, HANG, Bug, signature
from tests.fuzz.seeds import FdpSeed

SETTLE_S = 1.0
RESPONSE_S = 0.3
CLOSE_S = 10.0
ECHO_S = 10.0
AE_TITLE = "DICOMRPC"
CALLING = "FUZZSCU"
MAX_MESSAGES = 4
MAX_COMMAND = 4096
MAX_DATASET = 60 * 1024
# The largest PDV a *messages* input is cut into: a choice among these, from the input.
FRAGMENTS = (16384, 1024, 100, 7)
WIRE, MESSAGES = 0, 1
PDU_RQ, PDU_RJ, PDU_PDATA, PDU_RELEASE_RQ, PDU_RELEASE_RP, PDU_ABORT = 1, 3, 4, 5, 6, 7
# The ends of an association the server sends (after which it closes the connection).
_ENDS = frozenset({PDU_RJ, PDU_RELEASE_RP, PDU_ABORT})
# Where pynetdicom logs an exception as its designed answer to bad input (the PDU or message
# is refused, the association aborted): (file, function) of the logging call.
_DESIGNED = frozenset(
    {
        ("dul.py", "_read_pdu_data"),  # a PDU that cannot be decoded, or cut short: A-ABORT
        ("dimse.py", "receive_primitive"),  # a DIMSE message that cannot be decoded: A-ABORT
        ("utils.py", "decode_bytes"),  # an AE title beyond ASCII: its fallback codecs
        # The state machine failed on a PDU: the server's guard (dimse/decoding.py) aborts the
        # association. Unguarded, the DUL thread dies (an uncaught exception, a bug here) and
        # the connection stays open (a hang).
        ("fsm.py", "do_action"),
    }
)
# Where pynetdicom logs an exception and aborts or answers a failure status: a bug when the
# archive's code raised it (a handler), designed when pynetdicom's own code did (a request
# for a service its context does not offer; its debug log of a message missing elements).
_HANDLER_SITES = frozenset({("association.py", "_serve_request"), ("events.py", "trigger")})
_LOGGERS = ("pynetdicom", "dicomrpc", "dicomrpc_server")
_OURS = frozenset({"dicomrpc", "dicomrpc_server"})

DICTIONARY = (
    b"\x01\x00",  # A-ASSOCIATE-RQ
    b"\x04\x00",  # P-DATA-TF
    b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00",  # A-RELEASE-RQ
    b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00",  # A-ABORT
    b"\x10\x00",  # application context item
    b"\x20\x00",  # presentation context item
    b"\x30\x00",  # abstract syntax
    b"\x40\x00",  # transfer syntax
    b"\x50\x00",  # user information
    b"\x51\x00\x00\x04",  # maximum length
    b"\x52\x00",  # implementation class UID
    b"\x53\x00",  # asynchronous operations window
    b"\x54\x00",  # SCP/SCU role selection
    b"\x55\x00",  # implementation version name
    b"\x58\x00",  # user identity
    b"\x00\x00\x00\x01",  # (0000,0100) Command Field
    b"\x00\x00\x00\x08",  # (0000,0800) Command Data Set Type
    b"\x01\x01",  # no data set
    b"\xe0\x7f\x10\x00",  # (7FE0,0010) Pixel Data
    b"\xff\xff\xff\xff",  # undefined length
    b"\xfe\xff\x00\xe0",  # item
    b"\xfe\xff\xdd\xe0",  # sequence delimiter
    b"1.2.840.10008.1.2",
    b"1.2.840.10008.1.2.1",
    b"OB",
    b"SQ",
    b"UN",
    b"UL",
)


class _Capture(logging.Handler):
    """Keeps the exceptions logged at places that are not a designed answer (see _DESIGNED)."""

    def __init__(self, into: list[BaseException]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info is None or record.exc_info[1] is None:
            return
        site = (Path(record.pathname).name, record.funcName)
        error = record.exc_info[1]
        if site in _DESIGNED or (site in _HANDLER_SITES and not _raised_by_us(error)):
            return
        self.into.append(error)


def _raised_by_us(error: BaseException) -> bool:
    """Whether the archive's own code is on the exception's traceback."""
    frames = traceback.extract_tb(error.__traceback__)
    return any(not _OURS.isdisjoint(Path(frame.filename).parts) for frame in frames)


@dataclass
class _Live:
    server: RunningServer
    folder: Path
    errors: list[BaseException]
    loggers: dict[str, tuple[list[logging.Handler], bool, int]]
    excepthook: Callable[[threading.ExceptHookArgs], object]
    recorded: dict[str, bytes] = field(default_factory=dict)


_live: _Live | None = None


def setup() -> None:
    """Start the server, fill its archive, and record the seed associations."""
    global _live
    if _live is not None:
        return
    errors: list[BaseException] = []
    loggers = {}
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        loggers[name] = (logger.handlers, logger.propagate, logger.level)
        logger.handlers = [_Capture(errors)]
        logger.propagate = False
    previous_hook = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            errors.append(args.exc_value)

    threading.excepthook = hook
    folder = Path(tempfile.mkdtemp(prefix="fuzz-dimse-"))
    server = start_server(
        folder / "data", dimse_port=0, ae_title=AE_TITLE, lmdb_map_size=1024 * 1024 * 1024
    )
    asyncio.run_coroutine_threadsafe(fill(server.archive), server.loop).result(120)
    # DimseServer set pynetdicom's level; only the capture above listens (nothing printed).
    logging.getLogger("pynetdicom").setLevel(logging.ERROR)
    _live = _Live(server, folder, errors, loggers, previous_hook)
    _live.recorded = _record_all(server.dimse_port)
    errors.clear()


def teardown() -> None:
    global _live
    if _live is None:
        return
    _live.server.stop()
    shutil.rmtree(_live.folder, ignore_errors=True)
    for name, (handlers, propagate, level) in _live.loggers.items():
        logger = logging.getLogger(name)
        logger.handlers, logger.propagate = handlers, propagate
        logger.setLevel(level)
    threading.excepthook = _live.excepthook
    _live = None


# -- the wire ------------------------------------------------------------------------------


def pdu(kind: int, body: bytes) -> bytes:
    """A PDU: its type, a reserved byte, its length (big endian) and body (PS3.8 9.3)."""
    return struct.pack(">BBL", kind, 0, len(body)) + body


RELEASE_RQ = pdu(PDU_RELEASE_RQ, bytes(4))


def p_data(context_id: int, data: bytes, command: bool, fragment: int) -> bytes:
    """``data`` (a command or a data set) as P-DATA-TF PDUs of one PDV of at most
    ``fragment`` bytes each, the last one flagged (PS3.8 E.2)."""
    out = bytearray()
    pieces = [data[at : at + fragment] for at in range(0, len(data), fragment)] or [b""]
    for number, piece in enumerate(pieces):
        header = (1 if command else 0) | (2 if number == len(pieces) - 1 else 0)
        pdv = struct.pack(">LBB", len(piece) + 2, context_id & 0xFF, header) + piece
        out += pdu(PDU_PDATA, pdv)
    return bytes(out)


def pdus(stream: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The complete PDUs at the start of ``stream`` (type, body), and the bytes left over."""
    out, at = [], 0
    while len(stream) - at >= 6:
        kind, _, length = struct.unpack_from(">BBL", stream, at)
        if len(stream) - at - 6 < length:
            break
        out.append((kind, stream[at + 6 : at + 6 + length]))
        at += 6 + length
    return out, stream[at:]


def messages(stream: bytes) -> list[tuple[int, bytes, bytes]]:
    """The DIMSE messages of a recorded stream: (context ID, command, data set)."""
    found: list[tuple[int, bytes, bytes]] = []
    command, dataset, context = bytearray(), bytearray(), 0
    for kind, body in pdus(stream)[0]:
        if kind != PDU_PDATA:
            continue
        at = 0
        while at + 6 <= len(body):
            length, context, header = struct.unpack_from(">LBB", body, at)
            value = body[at + 6 : at + 4 + length]
            at += 4 + length
            if header & 1:
                command += value
                if header & 2 and not _has_dataset(bytes(command)):
                    found.append((context, bytes(command), b""))
                    command = bytearray()
            else:
                dataset += value
                if header & 2:
                    found.append((context, bytes(command), bytes(dataset)))
                    command, dataset = bytearray(), bytearray()
    return found


def _has_dataset(command: bytes) -> bool:
    """Whether a command set's Command Data Set Type (0000,0800) announces a data set."""
    at = command.find(b"\x00\x00\x00\x08\x02\x00\x00\x00")
    return at >= 0 and command[at + 8 : at + 10] != b"\x01\x01"


# -- inputs ----------------------------------------------------------------------------------


@dataclass
class Exchange:
    """What one input sends, and whether it ends with a complete A-RELEASE-RQ."""

    stream: bytes
    releases: bool


def build(data: bytes, association: bytes) -> Exchange:
    """The bytes an input stands for (see the module docstring); ``association`` is the
    A-ASSOCIATE-RQ a *messages* input starts with."""
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(WIRE, MESSAGES)
    if mode == WIRE:
        stream = fdp.ConsumeBytes(fdp.remaining_bytes())
        complete, rest = pdus(stream)
        return Exchange(stream, not rest and bool(complete) and complete[-1][0] == PDU_RELEASE_RQ)
    count = fdp.ConsumeIntInRange(1, MAX_MESSAGES)
    fragment = FRAGMENTS[fdp.ConsumeIntInRange(0, len(FRAGMENTS) - 1)]
    shapes = [
        (
            fdp.ConsumeIntInRange(0, 255),
            fdp.ConsumeIntInRange(0, MAX_COMMAND),
            fdp.ConsumeIntInRange(0, MAX_DATASET),
        )
        for _ in range(count)
    ]
    out = bytearray(association)
    for context_id, command_length, dataset_length in shapes:
        command = fdp.ConsumeBytes(command_length)
        dataset = fdp.ConsumeBytes(dataset_length)
        out += p_data(context_id, command, True, fragment)
        if dataset:
            out += p_data(context_id, dataset, False, fragment)
    return Exchange(bytes(out + RELEASE_RQ), True)


def message_seed(association: list[tuple[int, bytes, bytes]], fragment: int = 0) -> bytes:
    """A *messages* input sending the recorded messages again."""
    seed = FdpSeed().integer(MESSAGES, WIRE, MESSAGES).integer(len(association), 1, MAX_MESSAGES)
    seed.integer(fragment, 0, len(FRAGMENTS) - 1)
    for context_id, command, dataset in association:
        seed.integer(context_id, 0, 255).integer(len(command), 0, MAX_COMMAND)
        seed.integer(len(dataset), 0, MAX_DATASET)
    for _, command, dataset in association:
        seed.data(command).data(dataset)
    return seed.build()


def seeds() -> dict[str, bytes]:
    setup()
    assert _live is not None
    out: dict[str, bytes] = {}
    for name, stream in _live.recorded.items():
        out[f"wire-{name}"] = FdpSeed().integer(WIRE, WIRE, MESSAGES).data(stream).build()
        found = messages(stream)[:MAX_MESSAGES]
        if found and name != "echo":
            out[f"messages-{name}"] = message_seed(found, len(out) % len(FRAGMENTS))
    return out


# -- a run -----------------------------------------------------------------------------------


def TestOneInput(data: bytes) -> None:
    if _live is None:
        setup()
    assert _live is not None
    live = _live
    port = live.server.dimse_port
    exchange = build(data, live.recorded["association"])
    live.errors.clear()
    exchange_on_new_connection(exchange, port)
    _raise_logged(live, "after the input")
    answer = echo(port, live.recorded["echo"])
    if answer is not None:
        _raise_logged(live, "after a C-ECHO")
        raise Bug(
            CRASH,
            "the server no longer answers a C-ECHO after the input",
            f"the C-ECHO's association got {answer}; the input: {data[:500]!r}; "
            f"{live.server.dimse.associations if live.server.dimse else 0} associations now; "
            f"where their threads are: {_where_associations_wait()}",
        )
    _raise_logged(live, "after a C-ECHO")


def _where_associations_wait() -> dict[str, int]:
    """How many live threads of accepted associations stand where (their innermost frames)."""
    frames = sys._current_frames()
    places: dict[str, int] = {}
    for thread in threading.enumerate():
        frame = frames.get(thread.ident or 0)
        if not isinstance(thread, Association) or frame is None:
            continue
        stack = traceback.extract_stack(frame)[-4:]
        place = " < ".join(f"{Path(f.filename).name}:{f.name}" for f in reversed(stack))
        places[place] = places.get(place, 0) + 1
    return places


def _raise_logged(live: _Live, when: str) -> None:
    """Raise the first exception the server logged (give its threads a moment to log it)."""
    if live.errors:
        error = live.errors[0]
        live.errors.clear()
        raise Bug(CRASH, f"logged {signature(error)}", f"{when}: {error!r}") from error


def _connect(port: int) -> socket.socket:
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=CLOSE_S)
    except OSError as exc:
        raise Bug(CRASH, f"the server accepts no connection ({type(exc).__name__})") from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # Closed with a reset, not a TIME_WAIT: a million connections would exhaust the ports.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return sock


def exchange_on_new_connection(
    exchange: Exchange, port: int, response_s: float = RESPONSE_S, settle_s: float = SETTLE_S
) -> bytes:
    """Send the input on a new connection as a requester would; return what the server sent
    before it closed.

    A requester waits for the association's acceptance before anything else (PS3.8 9.2), and
    for each message's final response before its next request (one outstanding operation, the
    default): so does this, a piece of the input at a time (see :func:`units`), so that the
    server reads each message in the state it is meant for. A wait ends early when the server
    answers otherwise, and after ``response_s`` in any case (``settle_s`` for the answer to
    an A-RELEASE-RQ the input ends with).
    """
    sock = _connect(port)
    received = bytearray()
    try:
        # The server may close before it has read it all: what it answered is read below.
        with contextlib.suppress(OSError):
            for kind, unit in units(exchange.stream):
                sock.sendall(unit)
                if kind == "request" and not _wait(sock, received, _accepted, response_s):
                    break
                if kind == "message":
                    _wait(sock, received, _answered(_finals(bytes(received))), response_s)
        if exchange.releases and _read_until_end(sock, received, settle_s):
            return bytes(received)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        if not _read_until_end(sock, received, CLOSE_S, closed_only=True):
            raise Bug(
                HANG,
                f"the connection is neither answered nor closed {CLOSE_S:.0f} s after the "
                "requester closed its side",
                repr(exchange.stream[:2000]),
            )
        return bytes(received)
    finally:
        sock.close()


def units(stream: bytes) -> list[tuple[str, bytes]]:
    """The pieces a requester sends one after the other: ``request`` (an A-ASSOCIATE-RQ that
    starts the stream), ``message`` (the P-DATA-TF PDUs up to a message's last fragment) and
    ``other`` (any other PDU; the bytes after the last complete PDU)."""
    complete, rest = pdus(stream)
    out: list[tuple[str, bytes]] = []
    pending = bytearray()
    command = bytearray()
    for number, (kind, body) in enumerate(complete):
        raw = pdu(kind, body)
        if number == 0 and kind == PDU_RQ:
            out.append(("request", raw))
            continue
        if kind != PDU_PDATA:
            if pending:
                out.append(("message", bytes(pending)))
                pending = bytearray()
            out.append(("other", raw))
            continue
        pending += raw
        ended = False
        for is_command, last, value in _pdvs(body):
            if is_command:
                command += value
                ended = last and not _has_dataset(bytes(command))
            else:
                ended = last
            if ended:
                command = bytearray()
        if ended:
            out.append(("message", bytes(pending)))
            pending = bytearray()
    if pending:
        out.append(("message", bytes(pending)))
    if rest:
        out.append(("other", rest))
    return out


def _pdvs(body: bytes) -> list[tuple[bool, bool, bytes]]:
    """The PDVs of a P-DATA-TF body: (a command fragment, the last fragment, its bytes)."""
    out, at = [], 0
    while at + 6 <= len(body):
        length, _, header = struct.unpack_from(">LBB", body, at)
        out.append((bool(header & 1), bool(header & 2), body[at + 6 : at + 4 + length]))
        at += 4 + max(length, 2)
    return out


_STATUS = b"\x00\x00\x00\x09\x02\x00\x00\x00"


def _finals(answer: bytes) -> int:
    """How many final (not pending) responses and requests the server has sent, or a large
    number once it has ended the association."""
    count = 0
    for kind, body in pdus(answer)[0]:
        if kind in _ENDS:
            return 1 << 30
        if kind != PDU_PDATA:
            continue
        for is_command, last, value in _pdvs(body):
            if not (is_command and last):
                continue
            # A request to the requester (a C-GET's C-STORE) has no status: it waits for
            # the requester's response, as a final response waits for its next request.
            at = value.find(_STATUS)
            if at < 0 or value[at + 8 : at + 10] not in (b"\x00\xff", b"\x01\xff"):
                count += 1
    return count


def _answered(before: int) -> Callable[[bytes], bool | None]:
    """Whether a message is answered: a final response or a request came after ``before``."""
    return lambda answer: _finals(answer) > before or None


def _accepted(answer: bytes) -> bool | None:
    """True once the server accepted the association, False once it answered otherwise."""
    complete = pdus(answer)[0]
    return None if not complete else complete[0][0] == 2


def _wait(
    sock: socket.socket, received: bytearray, done: Callable[[bytes], bool | None], limit: float
) -> bool:
    """Read until ``done`` says True (True) or False, the server closes, or ``limit`` s pass."""
    deadline = time.monotonic() + limit
    while True:
        verdict = done(bytes(received))
        if verdict is not None:
            return bool(verdict)
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except OSError:
            return False
        if not chunk:
            return False
        received += chunk


def _read_until_end(
    sock: socket.socket, received: bytearray, limit: float, closed_only: bool = False
) -> bool:
    """Read until the server closes or (unless ``closed_only``) sends an association's end.

    Returns False when ``limit`` seconds pass first.
    """
    deadline = time.monotonic() + limit
    while True:
        if not closed_only and any(kind in _ENDS for kind, _ in pdus(bytes(received))[0]):
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return False
        except OSError:
            return True  # reset: closed
        if not chunk:
            return True
        received += chunk


def echo(port: int, stream: bytes) -> str | None:
    """None when a C-ECHO association (the recorded one) is accepted and answered 0x0000;
    else what the server answered (the PDUs' types, an A-ASSOCIATE-RJ's body)."""
    # Patient: a server busy with what earlier inputs stored must still answer in time.
    answer = exchange_on_new_connection(Exchange(stream, True), port, ECHO_S, ECHO_S)
    kinds = pdus(answer)[0]
    # (0000,0900) Status, implicit VR little endian, 0x0000.
    success = b"\x00\x00\x00\x09\x02\x00\x00\x00\x00\x00"
    if (
        kinds
        and kinds[0][0] == 2  # A-ASSOCIATE-AC
        and any(kind == PDU_PDATA and success in body for kind, body in kinds)
    ):
        return None
    rejected = [body.hex() for kind, body in kinds if kind == PDU_RJ]
    return f"PDUs {[kind for kind, _ in kinds]}" + (f", rejected {rejected}" if rejected else "")


# -- recording real associations ------------------------------------------------------------


class _Relay:
    """A relay in front of the server, keeping what the requester wrote."""

    def __init__(self, port: int) -> None:
        self._upstream = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.sent = bytearray()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        client, _ = self._listener.accept()
        server = socket.create_connection(("127.0.0.1", self._upstream))
        back = threading.Thread(target=self._pump, args=(server, client, None), daemon=True)
        back.start()
        self._pump(client, server, self.sent)
        back.join(10)
        client.close()
        server.close()
        self._listener.close()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, keep: bytearray | None) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                if keep is not None:
                    keep += chunk
                sink.sendall(chunk)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def recorded(self) -> bytes:
        self._thread.join(10)
        return bytes(self.sent)


# The presentation contexts every recorded association proposes, in this order: each abstract
# syntax has the same context ID in every recording (and in a *messages* input's association).
_CONTEXTS = (
    Verification,
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)


def _record(port: int, talk: Callable[[AE, int], None]) -> bytes:
    """What pynetdicom's requester writes when it runs ``talk`` on one association."""
    relay = _Relay(port)
    ae = AE(ae_title=CALLING)
    for context in _CONTEXTS:
        ae.add_requested_context(context, [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
    talk(ae, relay.port)
    return relay.recorded()


def _query(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _record_all(port: int) -> dict[str, bytes]:
    """The seed associations, recorded; ``association`` is the A-ASSOCIATE-RQ of the
    *messages* inputs (every context the harness's messages use), ``echo`` the liveness check."""
    implicit = dcmread(io.BytesIO(dicomgen.ct_instance(STUDY, SERIES, rows=2, columns=2)))
    explicit = dcmread(io.BytesIO(dicomgen.ct_instance(rows=2, columns=2, patient_id="P-2")))
    study = _query("STUDY", StudyInstanceUID="", PatientName="*", StudyDate="", PatientID="")

    def associate(ae: AE, relay_port: int, **kwargs: Any) -> Association:
        assoc = ae.associate("127.0.0.1", relay_port, ae_title=AE_TITLE, **kwargs)
        assert assoc.is_established, "the seed association was not accepted"
        return assoc

    def run_store(ae: AE, relay_port: int) -> None:
        assoc = associate(ae, relay_port)
        assoc.send_c_store(implicit)
        assoc.send_c_store(explicit)
        assoc.release()

    def run_find(ae: AE, relay_port: int) -> None:
        assoc = associate(ae, relay_port)
        for model, query in (
            (StudyRootQueryRetrieveInformationModelFind, study),
            (
                PatientRootQueryRetrieveInformationModelFind,
                _query("PATIENT", PatientID="", NumberOfPatientRelatedStudies=""),
            ),
            (
                StudyRootQueryRetrieveInformationModelFind,
                _query("SERIES", StudyInstanceUID=STUDY, Modality="CT", SeriesNumber=""),
            ),
        ):
            list(assoc.send_c_find(query, model))
        assoc.release()

    def run_get(ae: AE, relay_port: int) -> None:
        handlers = [(evt.EVT_C_STORE, _accept_store)]
        role = build_role(CTImageStorage, scp_role=True)
        assoc = associate(ae, relay_port, ext_neg=[role], evt_handlers=handlers)
        get = _query("SERIES", StudyInstanceUID=STUDY, SeriesInstanceUID=SERIES)
        list(assoc.send_c_get(get, StudyRootQueryRetrieveInformationModelGet))
        assoc.release()

    def run_move(ae: AE, relay_port: int) -> None:
        assoc = associate(ae, relay_port)
        move = _query("STUDY", StudyInstanceUID=STUDY)
        list(assoc.send_c_move(move, "NOWHERE", StudyRootQueryRetrieveInformationModelMove))
        assoc.release()

    recorded = {
        "echo": _record(port, _echo),
        "store": _record(port, run_store),
        "find": _record(port, run_find),
        "get": _record(port, run_get),
        "move": _record(port, run_move),
    }
    # The A-ASSOCIATE-RQ of a *messages* input: every context, CT Image Storage's SCP role
    # taken (for a C-GET's sub-operations).
    recorded["association"] = pdu(*pdus(recorded["get"])[0][0])
    return recorded


def _echo(ae: AE, port: int) -> None:
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established, "the seed association was not accepted"
    assoc.send_c_echo()
    assoc.release()


def association_request(port: int) -> bytes:
    """The A-ASSOCIATE-RQ pynetdicom's requester writes, proposing the harness's contexts
    (Verification is context 1), recorded from an association with the server on ``port``."""
    return pdu(*pdus(_record(port, _echo))[0][0])


def _accept_store(event: Event) -> int:
    """The C-STORE sub-operations of the recorded C-GET: taken, and dropped."""
    return 0x0000
