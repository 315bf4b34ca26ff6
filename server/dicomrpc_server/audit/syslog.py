"""The audit trail as syslog messages to an audit record repository (``--audit-syslog``).

Each record's DICOM audit messages (:mod:`.atna`) travel as RFC 5424 syslog messages, as IHE
ATNA's Record Audit Event transaction sends them: ``<PRI>1 TIMESTAMP HOST APP PROCID MSGID -``
then a UTF-8 byte order mark and the XML. PRI uses facility 10 (security/authorization) with
severity 5 (notice) for a success and 4 (warning) for a failure; MSGID is ``IHE+RFC-3881``.
Over UDP each message is one datagram (RFC 5426); over TCP each is preceded by its length in
octets and a space (RFC 6587 octet counting); over TLS (RFC 5425, the transport ATNA requires)
the same frames travel in a TLS connection that checks the receiver's certificate and may
present this archive's own.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import ssl
from datetime import UTC, datetime
from pathlib import Path

from dicomrpc_server.audit import atna
from dicomrpc_server.audit.records import AuditRecord

log = logging.getLogger("dicomrpc.audit")

FACILITY_AUTHPRIV = 10
SEVERITY_WARNING = 4
SEVERITY_NOTICE = 5
APP_NAME = "dicomrpc"
MSG_ID = "IHE+RFC-3881"
BOM = b"\xef\xbb\xbf"
PROTOCOLS = ("udp", "tcp", "tls")


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for an IPv6 address) as a host and a port.

    Raises ``ValueError`` naming what is wrong.
    """
    host, colon, port = text.strip().rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--audit-syslog {text!r} is not HOST:PORT (a port from 1 to 65535)")
    return host.strip("[]"), int(port)


def tls_context(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """The client side of a TLS syslog connection (RFC 5425).

    The receiver's certificate must chain to ``ca`` (the system's CAs when None) and name the
    host it is reached by; ``cert`` and ``key`` are this archive's certificate, for a receiver
    that authenticates its senders. Raises ``ValueError`` naming the flag of a file that cannot
    be used.
    """
    if (cert is None) != (key is None):
        raise ValueError("--audit-syslog-cert and --audit-syslog-key go together")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # the certificate and host name checked
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if ca is None:
            context.load_default_certs()
        else:
            context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"--audit-syslog-ca {ca}: cannot be used ({exc})") from None
    if cert is not None:
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"--audit-syslog-cert {cert} / --audit-syslog-key {key}: cannot be used ({exc})"
            ) from None
    return context


def _field(text: str, limit: int) -> str:
    """A header field of RFC 5424 §6.2: printable US-ASCII without spaces, or ``-``."""
    cleaned = "".join(c if "!" <= c <= "~" else "-" for c in text)[:limit]
    return cleaned or "-"


def frame(message: bytes, time: datetime, severity: int, host: str, pid: int) -> bytes:
    """One RFC 5424 syslog message carrying ``message`` (UTF-8) as its MSG."""
    stamp = time.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    header = (
        f"<{FACILITY_AUTHPRIV * 8 + severity}>1 {stamp} {_field(host, 255)} {APP_NAME} "
        f"{_field(str(pid), 128)} {MSG_ID} - "
    )
    return header.encode("ascii") + BOM + message


class SyslogOutput:
    """Sends each record's audit messages to one syslog receiver.

    A send that fails (the receiver is gone, refuses, or stops reading for ``timeout`` seconds)
    raises ``OSError`` after closing the connection; the next send connects again. The caller
    (:class:`~.sink.AuditSink`) owns retrying and backing off.

    Parameters
    ----------
    host, port
        The receiver.
    protocol
        ``udp``, ``tcp`` or ``tls``.
    source
        This archive, as the messages name it.
    timeout
        How long a TCP connect, TLS handshake or send may wait for the receiver.
    tls
        With ``tls``: the client context (:func:`tls_context`; the system's CAs when None).
    """

    def __init__(
        self,
        host: str,
        port: int,
        protocol: str,
        source: atna.AuditSource,
        timeout: float = 5.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"--audit-syslog-protocol {protocol!r} is not udp, tcp or tls")
        if protocol == "tls" and tls is None:
            tls = tls_context(None, None, None)
        self._tls = tls if protocol == "tls" else None
        self.host, self.port, self.protocol = host, port, protocol
        self.name = f"audit syslog {protocol}://{host}:{port}"
        self._source = source
        self._timeout = timeout
        self._socket: socket.socket | None = None

    def write(self, record: AuditRecord) -> None:
        """Send the record's messages; raises ``OSError`` when the receiver cannot take them."""
        severity = SEVERITY_NOTICE if record.outcome.success else SEVERITY_WARNING
        for message in atna.messages(record, self._source):
            self._send(frame(message, record.time, severity, self._source.host, self._source.pid))

    def flush(self) -> None:
        """Nothing is held back: every message is sent as it is written."""

    def _connect(self) -> socket.socket:
        if self.protocol != "udp":
            sock = socket.create_connection((self.host, self.port), timeout=self._timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                try:
                    sock = self._tls.wrap_socket(sock, server_hostname=self.host)
                except OSError:
                    sock.close()
                    raise
        else:
            family, kind, proto, _, address = socket.getaddrinfo(
                self.host, self.port, type=socket.SOCK_DGRAM
            )[0]
            sock = socket.socket(family, kind, proto)
            # Connected, so that a receiver that is gone is reported (ECONNREFUSED).
            sock.connect(address)
        sock.settimeout(self._timeout)
        return sock

    def _closed_by_peer(self, sock: socket.socket) -> bool:
        """True when a TCP receiver has closed the connection (its FIN has arrived).

        Checked before each send: a message written after the receiver closed would be
        accepted by the kernel and lost, where this reconnects (or reports the outage) first.
        """
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        if not isinstance(sock, ssl.SSLSocket):
            return sock.recv(1, socket.MSG_PEEK) == b""
        # TLS cannot peek. A receiver sends no data: what is readable is its close, or a record
        # that carries none (a TLS 1.3 session ticket), which reading consumes.
        sock.setblocking(False)
        try:
            return sock.recv(1) == b""
        except ssl.SSLWantReadError:
            return False
        finally:
            sock.settimeout(self._timeout)

    def _send(self, data: bytes) -> None:
        if self._socket is not None and self.protocol != "udp":
            try:
                if self._closed_by_peer(self._socket):
                    self.close()
            except OSError:
                self.close()
        if self._socket is None:
            self._socket = self._connect()
        try:
            if self.protocol != "udp":
                self._socket.sendall(f"{len(data)} ".encode() + data)
            else:
                self._socket.send(data)
        except OSError as exc:
            if self.protocol == "udp" and exc.errno == errno.EMSGSIZE:
                log.warning(
                    "%s: an audit message of %d bytes is too large for a datagram; "
                    "it is not sent (use --audit-syslog-protocol tcp)",
                    self.name,
                    len(data),
                )
                return
            self.close()
            raise

    def close(self) -> None:
        """Close the connection (the next send opens a new one)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
