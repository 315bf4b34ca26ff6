"""Server settings: one frozen value built at start-up and passed to what needs it."""

from __future__ import annotations

import argparse
import os
import sys
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dicomrpc.datasets import MAX_SEQUENCE_DEPTH
from dicomrpc_server.access.scopes import SCOPES

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
# The most server processes of one group (--processes).
MAX_PROCESSES = 64
# The URL schemes of a PostgreSQL index (libpq takes both).
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
# The variable naming the config file when --config does not.
CONFIG_VARIABLE = "DICOMRPC_CONFIG"


def config_file(flag: Path | None) -> Path | None:
    """The config file a command reads: its ``--config``, else ``DICOMRPC_CONFIG``, else none."""
    if flag is not None:
        return flag
    named = os.environ.get(CONFIG_VARIABLE)
    return Path(named) if named else None


@dataclass(frozen=True)
class Settings:
    """Everything configurable about one server process.

    Attributes
    ----------
    data_dir
        Where instance files and the LMDB index live.
    blobs
        Where instance files live instead, when not in ``data_dir``: ``s3://bucket/prefix``
        stores them as objects in S3-compatible storage, an absolute path in a folder that
        several machines mount (in both, uploads still spool, and their markers stay, in
        ``data_dir``). Empty: the folder store in ``data_dir``.
    index
        The index: empty for the embedded LMDB index in ``data_dir``, or a
        ``postgresql://`` URL: an index in a PostgreSQL database that several nodes (each
        with a data folder of its own) share, with the instance files in ``blobs``.
    index_pool_size
        The most connections one process opens to the PostgreSQL index (its LISTEN and
        NOTIFY connections, and one for re-indexing locks, come on top).
    s3_endpoint
        The S3 endpoint URL (an S3-compatible service); empty: AWS's, from the region.
    host
        The address the servers bind to.
    grpc_port
        The gRPC port; 0 picks a free one.
    http_port
        The DICOMweb (HTTP) port; 0 picks a free one, -1 serves no HTTP.
    cors_origins
        The browser origins (``https://viewer.example``, or ``*``) allowed to call the DICOMweb
        gateway from scripts, as a viewer such as OHIF does; empty allows none.
    viewer
        Serve the OHIF web viewer at the root of the HTTP port (the gateway stays under
        ``/dicomweb``): its files are public, its DICOMweb calls are checked as any other.
        Without a built viewer in ``viewer_dir`` the root answers a page saying how to fetch
        it (``dicomrpc viewer fetch``); the server never fetches it itself.
    viewer_dir
        OHIF's built ``dist/`` folder; None: the pinned release's in the cache, where
        ``dicomrpc viewer fetch`` puts it (``$XDG_CACHE_HOME/dicomrpc/ohif-VERSION/dist``).
    max_instance_bytes
        The largest instance accepted; a larger one fails while it streams in.
    max_chunk_bytes
        The largest message the server accepts (one chunk plus its envelope).
    chunk_bytes
        The chunk size the server streams bytes in.
    max_frames_per_request
        The most frames one RetrieveFrames call may ask for (ranges included).
    lmdb_map_size
        The LMDB map size reserved at start; it grows when full.
    lmdb_max_readers
        The LMDB reader slots: concurrent read transactions, sized for peak concurrent streams.
    commit_batch
        The most write operations the index writer groups into one commit.
    shutdown_grace_s
        How long a graceful shutdown lets in-flight calls finish; calls still running then are
        cancelled, and what they were storing is removed.
    subscriber_queue
        The most workitem events a subscriber may have waiting; one that falls further behind
        is ended (it resumes with ``since``), so a stalled subscriber never holds up the server.
    workers
        Processes that parse received instances. They do nothing else, so a store never waits
        behind a decode; one is enough for a small machine, more pay off with more cores.
    codec_workers
        Processes that decode and encode pixel data (transcoding, rendering, decoded frames)
        and locate bulk data: a pool of their own, so that a slow decode delays other decodes
        but never a store.
    codec_timeout_s
        The longest one codec job (one transcoding, rendering or set of decoded frames) may
        run; past it the worker process is killed and replaced, and the caller is answered
        RESOURCE_EXHAUSTED (``LIMIT_EXCEEDED``). A forged codestream can keep a codec busy
        for minutes on a few kilobytes. Transcoding a whole instance is one job: very large
        multi-frame instances may need more.
    max_frame_pixels
        The most pixels (Rows x Columns) one frame may have. A larger frame is refused at
        store (43264) and never decoded; the default (2^28, 16384 x 16384) leaves room for
        whole-slide tiles and large mammograms.
    codec_memory_bytes
        The data (heap) size limit of each codec worker process (``RLIMIT_DATA``), a backstop
        for a codec that allocates what its input declares: past it the job fails with
        RESOURCE_EXHAUSTED instead of exhausting the machine. 0 derives it from
        ``max_frame_pixels``: 16 bytes per pixel (four samples of 32 bits, what a JPEG 2000
        decoder holds) plus 1 GiB for the interpreter and the codecs; -1 sets no limit.
    max_sequence_depth
        The most levels sequences may nest in a stored instance or a workitem (a top-level
        sequence is level 1); deeper ones are refused. The default leaves room below
        ``dicomrpc.datasets.MAX_SEQUENCE_DEPTH`` (23), the most every read path can carry
        (protobuf parsers stop at 100 nested messages), for API messages that wrap data sets
        further; more than that ceiling is refused at start-up.
    quarantine_unindexed
        At start-up, move instance files the index does not name (the index is older than the
        files) to ``<data>/quarantine/`` and serve without them, instead of refusing to start.
        Off by default: ``dicomrpc rebuild-index`` indexes them instead.
    audit_log
        The file the audit trail is appended to as JSON lines, one record per access to
        patient data and per refused call; None writes none. Reopened on SIGHUP.
    audit_syslog
        ``HOST:PORT`` of a syslog receiver (an ATNA audit record repository) sent each record
        as a DICOM audit message (PS3.15 A.5) in RFC 5424 syslog; empty sends none.
    audit_syslog_protocol
        ``udp`` (one datagram per message), ``tcp`` (RFC 6587 octet counting) or ``tls``
        (the same over TLS, RFC 5425: the transport IHE ATNA requires).
    audit_syslog_ca
        With ``tls``: the CA certificates (PEM) the receiver's certificate must chain to; None
        trusts the system's CAs.
    audit_syslog_cert, audit_syslog_key
        With ``tls``: this archive's client certificate and its key (PEM), for a receiver that
        authenticates the nodes that send to it (ATNA node authentication); None sends none.
    audit_source_id
        The AuditSourceID the messages name this archive by; empty means the host name.
    audit_queue
        The most audit records waiting for each output; past it the oldest are dropped (and
        counted in a warning), so that a slow or dead output never slows a call.
    tls_cert, tls_key
        A PEM certificate (chain) and its private key: gRPC and HTTP are served over TLS.
    tls_client_ca
        PEM certificates of the CAs whose client certificates are accepted: every connection
        must present one (mutual TLS), and its subject names the caller when no token does.
    insecure
        Serve in plaintext on an address other than loopback. Without it the server refuses
        to start there without TLS: tokens and patient data would cross the network in clear.
    auth_jwks
        The JSON Web Key Set (a file, or an ``https://`` URL) whose keys sign the access tokens
        (OAuth 2.0 / OpenID Connect JWTs, RS256 or ES256). With ``auth_issuer`` and
        ``auth_audience`` it turns authentication on.
    auth_issuer
        The ``iss`` every token must carry (the issuer's URL, as its metadata names it).
    auth_audience
        The ``aud`` every token must include (this API's identifier at the issuer).
    auth_api_keys
        The API key file (``NAME SCOPES SHA256`` lines, ``dicomrpc api-key create``); it also
        turns authentication on. Re-read when it changes.
    auth_roles
        ``(role, scopes)`` pairs: a token whose ``roles`` claim holds the role gets the scopes
        (app roles, as Entra ID issues them).
    auth_clock_skew_s
        How far the server's clock may disagree with the issuer's when ``exp`` and ``nbf`` are
        checked.
    public_url
        The DICOMweb service root as clients reach it (``https://pacs.example/dicomweb``): the
        base of every RetrieveURL, BulkDataURI and Location, and the one host name (besides
        loopback) a request's ``Host`` may name. Without it the ``Host`` must name the bound
        address (or ``localhost`` on loopback), which closes DNS rebinding.
    http_max_connections
        The most HTTP connections served at once. One over it is answered 503 and closed; the
        gateway lowers it at start-up to what the descriptor limit leaves (see the README's
        Limits), so that idle sockets never starve gRPC or file opens.
    http_header_timeout_s
        How long a request's whole head (request line and headers) may take to arrive, from the
        connection (or the request's first byte on a reused one); then 408 and the connection
        closes. A client trickling its headers (slowloris) holds nothing longer than this.
    http_body_timeout_s
        The longest wait for the next bytes of a request body the server is reading; then 408
        (a STOW keeps the complete instances before it and removes the partial one).
    http_keep_alive_s
        How long an idle connection is kept open between requests (whole seconds).
    http_max_header_bytes
        The largest request head (request line and headers); a larger one is answered 431
        before it is parsed whole.
    http_max_url_bytes
        The longest request target (path and query); a longer one is answered 414.
    http_max_stow_parts
        The most parts (instances) one STOW-RS request may carry; the next one is answered 413.
    processes
        How many server processes serve the archive on the same ports and data folder
        (``dicomrpc serve --processes N``); 1 serves it from this process alone.
    reuse_port
        Set for the processes of a group, which bind the ports the group's supervisor
        reserved (``SO_REUSEPORT``); never set by users: one server alone refuses a port that
        another uses.
    dimse_port
        The DIMSE (DICOM upper layer, PS3.8) port; 0 picks a free one, -1 serves no DIMSE.
    ae_title
        The archive's AE title: the called AE title a requester must name (PS3.8 §7.1.1.4).
    dimse_allow
        ``(AE title, host)`` pairs of the requesters allowed to associate; any other is
        rejected (calling AE title not recognised). Empty allows any AE title from loopback
        only: a DIMSE requester presents no credential but its title.
    dimse_peers
        ``(name, AE title, host, port)`` of the DIMSE peers C-MOVE may send to, found by the
        move destination's AE title; a destination not named here is unknown (0xA801).
    dimse_max_associations
        The most associations served at once; one more is rejected (local limit exceeded).
    dimse_max_pdu_bytes
        The largest P-DATA PDU the archive receives (Maximum Length, PS3.8 §D.1); 0 is none.
    dimse_timeout_s
        How long an association request, a DIMSE message or a response to one may take.
    dimse_idle_timeout_s
        How long an association may stay silent before the archive aborts it (ARTIM).
    log_level
        The least severe log records written to standard error (``DEBUG``, ``INFO``,
        ``WARNING``, ``ERROR``).
    """

    data_dir: Path = Path("data")
    blobs: str = ""
    index: str = ""
    index_pool_size: int = 10
    s3_endpoint: str = ""
    host: str = "127.0.0.1"
    grpc_port: int = 50051
    http_port: int = 8042
    cors_origins: tuple[str, ...] = ()
    viewer: bool = True
    viewer_dir: Path | None = None
    max_instance_bytes: int = 4 * GIB
    max_chunk_bytes: int = 4 * MIB
    chunk_bytes: int = 1 * MIB
    max_frames_per_request: int = 10_000
    lmdb_map_size: int = 1 * GIB
    lmdb_max_readers: int = 512
    commit_batch: int = 256
    shutdown_grace_s: float = 30.0
    subscriber_queue: int = 1024
    workers: int = 1
    max_sequence_depth: int = 16
    quarantine_unindexed: bool = False
    codec_workers: int = 1
    codec_timeout_s: float = 120.0
    max_frame_pixels: int = 1 << 28
    codec_memory_bytes: int = 0
    audit_log: Path | None = None
    audit_syslog: str = ""
    audit_syslog_protocol: str = "udp"
    audit_syslog_ca: Path | None = None
    audit_syslog_cert: Path | None = None
    audit_syslog_key: Path | None = None
    audit_source_id: str = ""
    audit_queue: int = 10_000
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    insecure: bool = False
    auth_jwks: str = ""
    auth_issuer: str = ""
    auth_audience: str = ""
    auth_api_keys: Path | None = None
    auth_roles: tuple[tuple[str, tuple[str, ...]], ...] = ()
    auth_clock_skew_s: float = 30.0
    public_url: str = ""
    http_max_connections: int = 1000
    http_header_timeout_s: float = 10.0
    http_body_timeout_s: float = 30.0
    http_keep_alive_s: int = 5
    http_max_header_bytes: int = 64 * KIB
    http_max_url_bytes: int = 16 * KIB
    http_max_stow_parts: int = 10_000
    processes: int = 1
    reuse_port: bool = False
    dimse_port: int = 11112
    ae_title: str = "DICOMRPC"
    dimse_allow: tuple[tuple[str, str], ...] = ()
    dimse_peers: tuple[tuple[str, str, str, int], ...] = ()
    dimse_max_associations: int = 16
    dimse_max_pdu_bytes: int = 256 * KIB
    dimse_timeout_s: float = 30.0
    dimse_idle_timeout_s: float = 60.0
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if not 1 <= self.processes <= MAX_PROCESSES:
            raise ValueError(
                f"processes (--processes, DICOMRPC_PROCESSES) is {self.processes}; it must be "
                f"1 to {MAX_PROCESSES}"
            )
        if self.blobs and not (self.blobs.startswith("s3://") or Path(self.blobs).is_absolute()):
            raise ValueError(
                f"blobs (--blobs, DICOMRPC_BLOBS) is {self.blobs!r}; it takes s3://bucket/prefix "
                "or the absolute path of a shared folder (instance files are otherwise kept in "
                "the data folder)"
            )
        if self.index and not self.index.startswith(POSTGRES_SCHEMES):
            raise ValueError(
                f"index (--index, DICOMRPC_INDEX) is {redact_dsn(self.index)!r}; it takes a "
                "postgresql://USER@HOST:PORT/DATABASE URL (empty: the embedded index in the "
                "data folder)"
            )
        if self.index_pool_size < 1:
            raise ValueError(
                f"index_pool_size (--index-pool-size, DICOMRPC_INDEX_POOL_SIZE) is "
                f"{self.index_pool_size}; it must be 1 or more"
            )
        check_ae_title(self.ae_title)
        if self.dimse_max_pdu_bytes < 0:
            raise ValueError(f"dimse_max_pdu_bytes is {self.dimse_max_pdu_bytes}; 0 or more")
        if not 1 <= self.max_sequence_depth <= MAX_SEQUENCE_DEPTH:
            raise ValueError(
                f"max_sequence_depth (--max-sequence-depth, DICOMRPC_MAX_SEQUENCE_DEPTH) is "
                f"{self.max_sequence_depth}; it must be 1 to {MAX_SEQUENCE_DEPTH}: deeper data "
                "sets could be stored but not read back (protobuf parsers stop at 100 nested "
                "messages)"
            )

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Build settings from ``DICOMRPC_*`` environment variables, then ``overrides``."""
        return cls.load(None, **overrides)

    @classmethod
    def load(cls, config_file: Path | None, **overrides: object) -> Settings:
        """Build settings from the defaults, a config file, the environment, then ``overrides``.

        Each source overrides the one before (flags, as ``overrides``, win), so that a unit
        file's ``--grpc-port`` or a container's variable adjusts a shared config file.

        Parameters
        ----------
        config_file
            A TOML file whose keys are the settings' names (:data:`OPTIONS`); None reads none.
        overrides
            Values from the command line; None means not given.

        Raises
        ------
        ValueError
            Naming the file and key, or the variable, whose value cannot be used.
        """
        values: dict[str, object] = {}
        if config_file is not None:
            from dicomrpc_server.config_file import read_config_file

            values.update(read_config_file(config_file))
        for option in OPTIONS:
            if option.variable in os.environ:
                try:
                    values[option.name] = option.parse(os.environ[option.variable])
                except ValueError as exc:
                    raise ValueError(f"{option.variable}: {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    @property
    def codec_memory_limit(self) -> int | None:
        """The data size limit of a codec worker in bytes, or ``None`` for no limit."""
        if self.codec_memory_bytes < 0:
            return None
        if self.codec_memory_bytes == 0:
            return 16 * self.max_frame_pixels + GIB
        return self.codec_memory_bytes


def redact_dsn(dsn: str) -> str:
    """A PostgreSQL URL without its password (or query), to show and to record.

    What names the database (user, host, port, database) is kept; the password never goes
    into a message, a log line or a file of the data folder.
    """
    try:
        parts = urllib.parse.urlsplit(dsn)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<an unreadable URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = (f"{parts.username}@" if parts.username else "") + host
    if port is not None:
        netloc += f":{port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def split_origins(text: str) -> tuple[str, ...]:
    """The origins of a comma-separated list (``DICOMRPC_CORS_ORIGINS``, ``--cors-origins``)."""
    return tuple(origin.strip() for origin in text.split(",") if origin.strip())


def parse_flag(text: str) -> bool:
    """A yes/no environment variable: 1, true, yes or on (any case) is yes; 0, false, no, off."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a yes/no value (use 1 or 0)")


def parse_role(text: str) -> tuple[str, tuple[str, ...]]:
    """One ``ROLE=SCOPE,SCOPE`` mapping (``--auth-role``), its scopes checked.

    Raises
    ------
    ValueError
        Naming the text when it has no ``=`` or names a scope that does not exist.
    """
    role, sep, scopes_text = text.partition("=")
    scopes = tuple(s.strip() for s in scopes_text.split(",") if s.strip())
    if not sep or not role.strip() or not scopes:
        raise ValueError(f"role mapping {text!r} is not ROLE=SCOPE[,SCOPE...]")
    unknown = sorted(set(scopes) - SCOPES)
    if unknown:
        raise ValueError(
            f"role mapping {text!r} names unknown scopes {', '.join(unknown)} "
            f"(scopes: {', '.join(sorted(SCOPES))})"
        )
    return role.strip(), scopes


def parse_roles(text: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The role mappings of ``DICOMRPC_AUTH_ROLES``: ``ROLE=SCOPE,SCOPE;ROLE=SCOPE``."""
    return tuple(parse_role(part) for part in text.split(";") if part.strip())


def check_ae_title(text: str) -> str:
    """An AE title as PS3.5 Table 6.2-1 allows it, without its insignificant spaces.

    1 to 16 characters of printable ASCII but backslash, not only spaces.
    """
    title = text.strip()
    if not 1 <= len(title) <= 16 or not all(" " <= c <= "~" and c != "\\" for c in title):
        raise ValueError(
            f"AE title {text!r} is not 1 to 16 printable ASCII characters (no backslash)"
        )
    return title


def parse_allow(text: str) -> tuple[str, str]:
    """One ``AE@HOST`` (``--dimse-allow``): a requester's AE title and the address it calls from.

    Raises
    ------
    ValueError
        Naming the text when it is not ``AE@HOST`` or the AE title is not one.
    """
    title, sep, host = text.rpartition("@")
    if not sep or not title.strip() or not host.strip():
        raise ValueError(f"DIMSE requester {text!r} is not AE@HOST")
    return check_ae_title(title), host.strip().strip("[]")


def parse_allow_list(text: str) -> tuple[tuple[str, str], ...]:
    """The requesters of ``DICOMRPC_DIMSE_ALLOW``: ``AE@HOST`` separated by commas."""
    return tuple(parse_allow(part) for part in text.split(",") if part.strip())


def parse_peer(text: str) -> tuple[str, str, str, int]:
    """One ``NAME=AE@HOST:PORT`` (``--dimse-peer``): a C-MOVE destination and where it listens.

    Raises
    ------
    ValueError
        Naming the text when it is not ``NAME=AE@HOST:PORT``, or its AE title or port is bad.
    """
    name, sep, rest = text.partition("=")
    where, colon, port_text = rest.rpartition(":")
    title, at, host = where.rpartition("@")
    if not (sep and colon and at and name.strip() and host.strip()):
        raise ValueError(f"DIMSE peer {text!r} is not NAME=AE@HOST:PORT")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"DIMSE peer {text!r}: {port_text!r} is not a port") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"DIMSE peer {text!r}: port {port} is not 1 to 65535")
    return name.strip(), check_ae_title(title), host.strip().strip("[]"), port


def parse_peer_list(text: str) -> tuple[tuple[str, str, str, int], ...]:
    """The peers of ``DICOMRPC_DIMSE_PEERS``: ``NAME=AE@HOST:PORT`` separated by commas."""
    return tuple(parse_peer(part) for part in text.split(",") if part.strip())


def positive_int(text: str) -> int:
    """A whole number above zero (a limit or a count), from a flag or a variable."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise ValueError(f"{text!r} is not above zero")
    return value


def positive_float(text: str) -> float:
    """A number of seconds above zero, from a flag or a variable."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{text!r} is not a finite number above zero")
    return value


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def parse_log_level(text: str) -> str:
    """A logging level's name (any case), checked here so that a typo fails at start-up."""
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"{text!r} is not a log level ({', '.join(LOG_LEVELS)})")
    return level


@dataclass(frozen=True)
class Option:
    """One setting of ``serve``: its name, variable, flag and how text becomes its value.

    The one place that ties them together: :meth:`Settings.load` reads the variables and the
    config file's keys (the names) from it, and ``settings_from_args`` the flags, so that an
    option added here is settable in all three ways.

    Attributes
    ----------
    name
        The :class:`Settings` field, which is also the option's key in a config file.
    variable
        The ``DICOMRPC_*`` environment variable.
    parse
        Makes the value of the variable's text (and checks it); a config file's number or
        string goes through it too, so that both are checked alike.
    flag
        The ``serve`` flag (``--shutdown-grace``), or None for an option set by its variable
        and the config file only.
    item
        For a list: makes one element of its text, as a repeatable flag (``--dimse-peer``) or
        one string of a config file's array takes it; None for a single value.
    """

    name: str
    variable: str
    parse: Callable[[str], object]
    flag: str | None = None
    item: Callable[[str], object] | None = None

    @property
    def dest(self) -> str | None:
        """The attribute argparse keeps the flag's value in."""
        return self.flag[2:].replace("-", "_") if self.flag else None


def _origin(text: str) -> str:
    """One browser origin of a config file's ``cors_origins`` list."""
    return text.strip()


OPTIONS: tuple[Option, ...] = (
    Option("data_dir", "DICOMRPC_DATA", Path, "--data"),
    Option("blobs", "DICOMRPC_BLOBS", str, "--blobs"),
    Option("index", "DICOMRPC_INDEX", str, "--index"),
    Option("index_pool_size", "DICOMRPC_INDEX_POOL_SIZE", positive_int, "--index-pool-size"),
    Option("s3_endpoint", "DICOMRPC_S3_ENDPOINT", str, "--s3-endpoint"),
    Option("host", "DICOMRPC_HOST", str, "--host"),
    Option("grpc_port", "DICOMRPC_GRPC_PORT", int, "--grpc-port"),
    Option("http_port", "DICOMRPC_HTTP_PORT", int, "--http-port"),
    Option("cors_origins", "DICOMRPC_CORS_ORIGINS", split_origins, "--cors-origins", _origin),
    Option("viewer", "DICOMRPC_VIEWER", parse_flag, "--viewer"),
    Option("viewer_dir", "DICOMRPC_VIEWER_DIR", Path, "--viewer-dir"),
    Option("max_instance_bytes", "DICOMRPC_MAX_INSTANCE_BYTES", int, "--max-instance-bytes"),
    Option("max_chunk_bytes", "DICOMRPC_MAX_CHUNK_BYTES", int),
    Option("lmdb_map_size", "DICOMRPC_LMDB_MAP_SIZE", int),
    Option("max_frames_per_request", "DICOMRPC_MAX_FRAMES_PER_REQUEST", int),
    Option("processes", "DICOMRPC_PROCESSES", int, "--processes"),
    Option("workers", "DICOMRPC_WORKERS", int, "--workers"),
    Option("shutdown_grace_s", "DICOMRPC_SHUTDOWN_GRACE_S", float, "--shutdown-grace"),
    Option("max_sequence_depth", "DICOMRPC_MAX_SEQUENCE_DEPTH", int, "--max-sequence-depth"),
    Option(
        "quarantine_unindexed",
        "DICOMRPC_QUARANTINE_UNINDEXED",
        parse_flag,
        "--quarantine-unindexed",
    ),
    Option("codec_workers", "DICOMRPC_CODEC_WORKERS", int, "--codec-workers"),
    Option("codec_timeout_s", "DICOMRPC_CODEC_TIMEOUT_S", float, "--codec-timeout-s"),
    Option("max_frame_pixels", "DICOMRPC_MAX_FRAME_PIXELS", int, "--max-frame-pixels"),
    Option("codec_memory_bytes", "DICOMRPC_CODEC_MEMORY_BYTES", int, "--codec-memory-bytes"),
    Option("audit_log", "DICOMRPC_AUDIT_LOG", Path, "--audit-log"),
    Option("audit_syslog", "DICOMRPC_AUDIT_SYSLOG", str, "--audit-syslog"),
    Option(
        "audit_syslog_protocol",
        "DICOMRPC_AUDIT_SYSLOG_PROTOCOL",
        str,
        "--audit-syslog-protocol",
    ),
    Option("audit_syslog_ca", "DICOMRPC_AUDIT_SYSLOG_CA", Path, "--audit-syslog-ca"),
    Option("audit_syslog_cert", "DICOMRPC_AUDIT_SYSLOG_CERT", Path, "--audit-syslog-cert"),
    Option("audit_syslog_key", "DICOMRPC_AUDIT_SYSLOG_KEY", Path, "--audit-syslog-key"),
    Option("audit_source_id", "DICOMRPC_AUDIT_SOURCE_ID", str, "--audit-source-id"),
    Option("audit_queue", "DICOMRPC_AUDIT_QUEUE", int, "--audit-queue"),
    Option("tls_cert", "DICOMRPC_TLS_CERT", Path, "--tls-cert"),
    Option("tls_key", "DICOMRPC_TLS_KEY", Path, "--tls-key"),
    Option("tls_client_ca", "DICOMRPC_TLS_CLIENT_CA", Path, "--tls-client-ca"),
    Option("insecure", "DICOMRPC_INSECURE", parse_flag, "--insecure"),
    Option("auth_jwks", "DICOMRPC_AUTH_JWKS", str, "--auth-jwks"),
    Option("auth_issuer", "DICOMRPC_AUTH_ISSUER", str, "--auth-issuer"),
    Option("auth_audience", "DICOMRPC_AUTH_AUDIENCE", str, "--auth-audience"),
    Option("auth_api_keys", "DICOMRPC_AUTH_API_KEYS", Path, "--auth-api-keys"),
    Option("auth_roles", "DICOMRPC_AUTH_ROLES", parse_roles, "--auth-role", parse_role),
    Option("auth_clock_skew_s", "DICOMRPC_AUTH_CLOCK_SKEW_S", float, "--auth-clock-skew"),
    Option("public_url", "DICOMRPC_PUBLIC_URL", str, "--public-url"),
    Option(
        "http_max_connections",
        "DICOMRPC_HTTP_MAX_CONNECTIONS",
        positive_int,
        "--http-max-connections",
    ),
    Option(
        "http_header_timeout_s",
        "DICOMRPC_HTTP_HEADER_TIMEOUT",
        positive_float,
        "--http-header-timeout",
    ),
    Option(
        "http_body_timeout_s", "DICOMRPC_HTTP_BODY_TIMEOUT", positive_float, "--http-body-timeout"
    ),
    Option("http_keep_alive_s", "DICOMRPC_HTTP_KEEP_ALIVE", positive_int, "--http-keep-alive"),
    Option(
        "http_max_header_bytes",
        "DICOMRPC_HTTP_MAX_HEADER_BYTES",
        positive_int,
        "--http-max-header-bytes",
    ),
    Option(
        "http_max_url_bytes", "DICOMRPC_HTTP_MAX_URL_BYTES", positive_int, "--http-max-url-bytes"
    ),
    Option(
        "http_max_stow_parts",
        "DICOMRPC_HTTP_MAX_STOW_PARTS",
        positive_int,
        "--http-max-stow-parts",
    ),
    Option("dimse_port", "DICOMRPC_DIMSE_PORT", int, "--dimse-port"),
    Option("ae_title", "DICOMRPC_AE_TITLE", check_ae_title, "--ae-title"),
    Option("dimse_allow", "DICOMRPC_DIMSE_ALLOW", parse_allow_list, "--dimse-allow", parse_allow),
    Option("dimse_peers", "DICOMRPC_DIMSE_PEERS", parse_peer_list, "--dimse-peer", parse_peer),
    Option(
        "dimse_max_associations",
        "DICOMRPC_DIMSE_MAX_ASSOCIATIONS",
        positive_int,
        "--dimse-max-associations",
    ),
    Option("dimse_max_pdu_bytes", "DICOMRPC_DIMSE_MAX_PDU_BYTES", int, "--dimse-max-pdu-bytes"),
    Option("dimse_timeout_s", "DICOMRPC_DIMSE_TIMEOUT", positive_float, "--dimse-timeout"),
    Option(
        "dimse_idle_timeout_s",
        "DICOMRPC_DIMSE_IDLE_TIMEOUT",
        positive_float,
        "--dimse-idle-timeout",
    ),
    Option("log_level", "DICOMRPC_LOG_LEVEL", parse_log_level, "--log-level"),
)
"""Every option of ``serve``; a config file's keys are their names."""


def _flag_type(parse: Callable[[str], object]) -> Callable[[str], object]:
    """``parse`` for argparse: a ValueError becomes a usage error that quotes its message."""

    def checked(text: str) -> object:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    checked.__name__ = parse.__name__
    return checked


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` options (each also settable by a ``DICOMRPC_*`` variable)."""
    parser.add_argument("--data", type=Path, help="data directory (env DICOMRPC_DATA, ./data)")
    parser.add_argument(
        "--blobs",
        metavar="s3://BUCKET/PREFIX|/SHARED/FOLDER",
        help="keep instance files as objects in S3-compatible storage (credentials and region "
        "from the AWS_* variables) or in a folder several machines mount, given by its "
        "absolute path (env DICOMRPC_BLOBS, the data directory)",
    )
    parser.add_argument(
        "--s3-endpoint",
        metavar="URL",
        help="endpoint of the S3-compatible service (env DICOMRPC_S3_ENDPOINT, AWS's)",
    )
    parser.add_argument(
        "--index",
        metavar="postgresql://USER@HOST:PORT/DATABASE",
        help="keep the index in a PostgreSQL database several nodes share (with --blobs; "
        "password from the URL or PGPASSWORD / ~/.pgpass) (env DICOMRPC_INDEX, the embedded "
        "index in the data directory)",
    )
    parser.add_argument(
        "--index-pool-size",
        type=positive_int,
        help="most connections to the PostgreSQL index per process (env "
        "DICOMRPC_INDEX_POOL_SIZE, 10)",
    )
    parser.add_argument("--host", help="address to bind (env DICOMRPC_HOST, 127.0.0.1)")
    parser.add_argument(
        "--grpc-port", type=int, help="gRPC port, 0 for any (env DICOMRPC_GRPC_PORT, 50051)"
    )
    parser.add_argument(
        "--http-port",
        type=int,
        help="DICOMweb (HTTP) port, 0 for any, -1 for none (env DICOMRPC_HTTP_PORT, 8042)",
    )
    parser.add_argument(
        "--cors-origins",
        type=split_origins,
        help="comma-separated browser origins allowed to call DICOMweb, or '*' "
        "(env DICOMRPC_CORS_ORIGINS, none)",
    )
    parser.add_argument(
        "--viewer",
        type=_flag_type(parse_flag),
        metavar="on|off",
        help="serve the OHIF viewer at the root of the HTTP port (env DICOMRPC_VIEWER, on)",
    )
    parser.add_argument(
        "--viewer-dir",
        type=Path,
        metavar="DIR",
        help="OHIF's built dist/ folder (env DICOMRPC_VIEWER_DIR, the cache of "
        "'dicomrpc viewer fetch')",
    )
    parser.add_argument(
        "--max-instance-bytes",
        type=int,
        help="largest instance accepted (env DICOMRPC_MAX_INSTANCE_BYTES, 4 GiB)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        help="server processes sharing the ports and the data folder (env DICOMRPC_PROCESSES, 1)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="processes that parse received instances, per server process "
        "(env DICOMRPC_WORKERS, 1)",
    )
    parser.add_argument(
        "--codec-workers",
        type=int,
        help="processes that decode, transcode and render (env DICOMRPC_CODEC_WORKERS, 1)",
    )
    parser.add_argument(
        "--codec-timeout-s",
        type=float,
        help="longest one decode, transcode or render may run, in seconds "
        "(env DICOMRPC_CODEC_TIMEOUT_S, 120)",
    )
    parser.add_argument(
        "--max-frame-pixels",
        type=int,
        help="most pixels (Rows x Columns) of one frame (env DICOMRPC_MAX_FRAME_PIXELS, 2^28)",
    )
    parser.add_argument(
        "--codec-memory-bytes",
        type=int,
        help="data size limit of each codec worker; 0 derives it from --max-frame-pixels, "
        "-1 sets none (env DICOMRPC_CODEC_MEMORY_BYTES, 0)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        help="seconds a shutdown lets in-flight calls finish before cancelling them "
        "(env DICOMRPC_SHUTDOWN_GRACE_S, 30)",
    )
    parser.add_argument(
        "--max-sequence-depth",
        type=int,
        help=f"most levels sequences may nest in a stored instance or workitem, 1 to "
        f"{MAX_SEQUENCE_DEPTH} (env DICOMRPC_MAX_SEQUENCE_DEPTH, 16)",
    )
    parser.add_argument(
        "--quarantine-unindexed",
        action="store_true",
        default=None,
        help="move instance files the index does not name to <data>/quarantine/ and start, "
        "instead of refusing to (env DICOMRPC_QUARANTINE_UNINDEXED=1)",
    )
    parser.add_argument(
        "--audit-log",
        type=Path,
        help="append the audit trail to FILE as JSON lines (env DICOMRPC_AUDIT_LOG, none)",
    )
    parser.add_argument(
        "--audit-syslog",
        metavar="HOST:PORT",
        help="send the audit trail as DICOM audit messages (PS3.15 A.5) over syslog "
        "(env DICOMRPC_AUDIT_SYSLOG, none)",
    )
    parser.add_argument(
        "--audit-syslog-protocol",
        choices=["udp", "tcp", "tls"],
        help="the audit syslog transport; tls is RFC 5425, as IHE ATNA requires "
        "(env DICOMRPC_AUDIT_SYSLOG_PROTOCOL, udp)",
    )
    parser.add_argument(
        "--audit-syslog-ca",
        type=Path,
        metavar="FILE",
        help="with tls: CA certificates (PEM) the receiver's certificate must chain to "
        "(env DICOMRPC_AUDIT_SYSLOG_CA, the system's CAs)",
    )
    parser.add_argument(
        "--audit-syslog-cert",
        type=Path,
        metavar="FILE",
        help="with tls: this archive's client certificate (PEM) for the receiver "
        "(env DICOMRPC_AUDIT_SYSLOG_CERT, none)",
    )
    parser.add_argument(
        "--audit-syslog-key",
        type=Path,
        metavar="FILE",
        help="the key of --audit-syslog-cert (PEM, unencrypted) (env DICOMRPC_AUDIT_SYSLOG_KEY)",
    )
    parser.add_argument(
        "--audit-source-id",
        help="the AuditSourceID of the audit messages (env DICOMRPC_AUDIT_SOURCE_ID, host name)",
    )
    parser.add_argument(
        "--audit-queue",
        type=int,
        help="audit records kept per output while it is slow or down "
        "(env DICOMRPC_AUDIT_QUEUE, 10000)",
    )
    _add_access_arguments(parser)
    limits = parser.add_argument_group("HTTP limits (see the README's Limits)")
    limits.add_argument(
        "--http-max-connections",
        type=_flag_type(positive_int),
        help="HTTP connections served at once, more are answered 503 "
        "(env DICOMRPC_HTTP_MAX_CONNECTIONS, 1000, lowered to fit the descriptor limit)",
    )
    limits.add_argument(
        "--http-header-timeout",
        type=_flag_type(positive_float),
        help="seconds for a request's whole head to arrive, then 408 "
        "(env DICOMRPC_HTTP_HEADER_TIMEOUT, 10)",
    )
    limits.add_argument(
        "--http-body-timeout",
        type=_flag_type(positive_float),
        help="seconds to wait for the next bytes of a request body, then 408 "
        "(env DICOMRPC_HTTP_BODY_TIMEOUT, 30)",
    )
    limits.add_argument(
        "--http-keep-alive",
        type=_flag_type(positive_int),
        help="seconds an idle connection stays open between requests "
        "(env DICOMRPC_HTTP_KEEP_ALIVE, 5)",
    )
    limits.add_argument(
        "--http-max-header-bytes",
        type=_flag_type(positive_int),
        help="largest request head, then 431 (env DICOMRPC_HTTP_MAX_HEADER_BYTES, 65536)",
    )
    limits.add_argument(
        "--http-max-url-bytes",
        type=_flag_type(positive_int),
        help="longest request target, then 414 (env DICOMRPC_HTTP_MAX_URL_BYTES, 16384)",
    )
    limits.add_argument(
        "--http-max-stow-parts",
        type=_flag_type(positive_int),
        help="most instances in one STOW-RS request, then 413 "
        "(env DICOMRPC_HTTP_MAX_STOW_PARTS, 10000)",
    )
    _add_dimse_arguments(parser)
    parser.add_argument(
        "--log-level",
        type=_flag_type(parse_log_level),
        help="least severe log records written (env DICOMRPC_LOG_LEVEL, INFO)",
    )
    add_config_argument(parser)


def command_settings(command: str, args: argparse.Namespace) -> Settings | None:
    """The settings of a command working on a data folder (``backup``, ``rebuild-index``...).

    Read as ``serve`` reads them: the config file (``--config``, else ``DICOMRPC_CONFIG``),
    the variables, then ``--data``. None after saying on stderr what cannot be used (the file
    and key, or the variable, named).
    """
    try:
        return Settings.load(config_file(args.config), data_dir=args.data)
    except ValueError as exc:
        print(f"dicomrpc {command}: {exc}", file=sys.stderr)
        return None


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--config``: the settings file a server command reads (see :meth:`Settings.load`)."""
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML file of settings, keys named as in docs/dicomrpc.example.toml; flags and "
        "variables override it (env DICOMRPC_CONFIG, none)",
    )


def _add_dimse_arguments(parser: argparse.ArgumentParser) -> None:
    """The DIMSE options of ``serve`` (see the README's DIMSE section)."""
    group = parser.add_argument_group("DIMSE (C-ECHO, C-STORE, C-FIND, C-GET, C-MOVE)")
    group.add_argument(
        "--dimse-port",
        type=int,
        help="DIMSE port, 0 for any, -1 for none (env DICOMRPC_DIMSE_PORT, 11112)",
    )
    group.add_argument(
        "--ae-title",
        type=_flag_type(check_ae_title),
        help="the archive's AE title (env DICOMRPC_AE_TITLE, DICOMRPC)",
    )
    group.add_argument(
        "--dimse-allow",
        type=_flag_type(parse_allow),
        action="append",
        metavar="AE@HOST",
        help="a requester allowed to associate, repeatable; none allows any AE title from "
        "loopback only (env DICOMRPC_DIMSE_ALLOW, 'AE@HOST,...')",
    )
    group.add_argument(
        "--dimse-peer",
        type=_flag_type(parse_peer),
        action="append",
        metavar="NAME=AE@HOST:PORT",
        help="a C-MOVE destination, repeatable (env DICOMRPC_DIMSE_PEERS, "
        "'NAME=AE@HOST:PORT,...'; none)",
    )
    group.add_argument(
        "--dimse-max-associations",
        type=_flag_type(positive_int),
        help="associations served at once (env DICOMRPC_DIMSE_MAX_ASSOCIATIONS, 16)",
    )
    group.add_argument(
        "--dimse-max-pdu-bytes",
        type=int,
        help="largest PDU received, 0 for no limit (env DICOMRPC_DIMSE_MAX_PDU_BYTES, 262144)",
    )
    group.add_argument(
        "--dimse-timeout",
        type=_flag_type(positive_float),
        help="seconds for an association request or a DIMSE message "
        "(env DICOMRPC_DIMSE_TIMEOUT, 30)",
    )
    group.add_argument(
        "--dimse-idle-timeout",
        type=_flag_type(positive_float),
        help="seconds an association may stay silent (env DICOMRPC_DIMSE_IDLE_TIMEOUT, 60)",
    )


def _role(text: str) -> tuple[str, tuple[str, ...]]:
    try:
        return parse_role(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_access_arguments(parser: argparse.ArgumentParser) -> None:
    """The TLS, authentication and public URL options of ``serve``."""
    group = parser.add_argument_group("security")
    group.add_argument(
        "--tls-cert", type=Path, help="PEM certificate chain: serve TLS (env DICOMRPC_TLS_CERT)"
    )
    group.add_argument(
        "--tls-key", type=Path, help="PEM private key of --tls-cert (env DICOMRPC_TLS_KEY)"
    )
    group.add_argument(
        "--tls-client-ca",
        type=Path,
        help="PEM CA certificates: require client certificates signed by them, mutual TLS "
        "(env DICOMRPC_TLS_CLIENT_CA)",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow plaintext on an address other than loopback (env DICOMRPC_INSECURE)",
    )
    group.add_argument(
        "--auth-jwks",
        metavar="FILE_OR_URL",
        help="JSON Web Key Set of the token issuer: require bearer tokens (env DICOMRPC_AUTH_JWKS)",
    )
    group.add_argument("--auth-issuer", help="the tokens' iss (env DICOMRPC_AUTH_ISSUER)")
    group.add_argument("--auth-audience", help="the tokens' aud (env DICOMRPC_AUTH_AUDIENCE)")
    group.add_argument(
        "--auth-api-keys",
        type=Path,
        metavar="FILE",
        help="API key file of 'dicomrpc api-key create' (env DICOMRPC_AUTH_API_KEYS)",
    )
    group.add_argument(
        "--auth-role",
        type=_role,
        action="append",
        metavar="ROLE=SCOPE,...",
        help="grant scopes to a token role, repeatable (env DICOMRPC_AUTH_ROLES, "
        "'ROLE=SCOPE,...;ROLE=...')",
    )
    group.add_argument(
        "--auth-clock-skew",
        type=float,
        metavar="SECONDS",
        help="clock skew allowed on exp and nbf (env DICOMRPC_AUTH_CLOCK_SKEW_S, 30)",
    )
    group.add_argument(
        "--public-url",
        help="the DICOMweb root as clients reach it, e.g. https://pacs.example/dicomweb: base "
        "of returned URLs, the only Host accepted (env DICOMRPC_PUBLIC_URL)",
    )


def add_rebuild_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``rebuild-index`` options."""
    parser.add_argument(
        "--data", type=Path, help="data directory (env DICOMRPC_DATA, the config file, ./data)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="processes that parse the files (one per core)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--log-level", default="WARNING", help="logging level (WARNING)")
    add_config_argument(parser)


def add_migrate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``migrate`` options."""
    parser.add_argument(
        "--data",
        type=Path,
        help="the embedded archive's data folder (env DICOMRPC_DATA, the config file, ./data)",
    )
    parser.add_argument(
        "--to-index",
        required=True,
        metavar="URL",
        help="the PostgreSQL database to copy the index to: postgresql://USER@HOST:PORT/DATABASE "
        "(empty, or holding what an interrupted migrate of this archive wrote)",
    )
    parser.add_argument(
        "--to-blobs",
        required=True,
        metavar="STORE",
        help="where to copy the instance files: a shared folder (absolute path) or "
        "s3://BUCKET/PREFIX",
    )
    parser.add_argument("--s3-endpoint", help="the S3 endpoint URL (AWS when not given)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="instances copied at once (8)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--log-level", default="WARNING", help="logging level (WARNING)")
    add_config_argument(parser)
