"""Server settings: one frozen value built at start-up and passed to what needs it."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


@dataclass(frozen=True)
class Settings:
    """Everything configurable about one server process.

    Attributes
    ----------
    data_dir
        Where instance files and the LMDB index live.
    host
        The address the servers bind to.
    grpc_port
        The gRPC port; 0 picks a free one.
    http_port
        The DICOMweb (HTTP) port; 0 picks a free one, -1 serves no HTTP.
    cors_origins
        The browser origins (``https://viewer.example``, or ``*``) allowed to call the DICOMweb
        gateway from scripts, as a viewer such as OHIF does; empty allows none.
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
        How long a graceful shutdown lets in-flight calls finish.
    subscriber_queue
        The most workitem events a subscriber may have waiting; one that falls further behind
        is ended (it resumes with ``since``), so a stalled subscriber never holds up the server.
    workers
        Processes that parse received instances and decode or encode pixel data (transcoding,
        rendering). One keeps the other core of a small machine for receiving, sending and
        committing; more pay off with more cores.
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
    """

    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    grpc_port: int = 50051
    http_port: int = 8042
    cors_origins: tuple[str, ...] = ()
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
    http_max_connections: int = 1000
    http_header_timeout_s: float = 10.0
    http_body_timeout_s: float = 30.0
    http_keep_alive_s: int = 5
    http_max_header_bytes: int = 64 * KIB
    http_max_url_bytes: int = 16 * KIB
    http_max_stow_parts: int = 10_000

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Build settings from ``DICOMRPC_*`` environment variables, then ``overrides``."""
        env: dict[str, object] = {}
        mapping: dict[str, tuple[str, Callable[[str], object]]] = {
            "DICOMRPC_DATA": ("data_dir", Path),
            "DICOMRPC_HOST": ("host", str),
            "DICOMRPC_GRPC_PORT": ("grpc_port", int),
            "DICOMRPC_HTTP_PORT": ("http_port", int),
            "DICOMRPC_CORS_ORIGINS": ("cors_origins", split_origins),
            "DICOMRPC_MAX_INSTANCE_BYTES": ("max_instance_bytes", int),
            "DICOMRPC_MAX_CHUNK_BYTES": ("max_chunk_bytes", int),
            "DICOMRPC_LMDB_MAP_SIZE": ("lmdb_map_size", int),
            "DICOMRPC_MAX_FRAMES_PER_REQUEST": ("max_frames_per_request", int),
            "DICOMRPC_WORKERS": ("workers", int),
            "DICOMRPC_HTTP_MAX_CONNECTIONS": ("http_max_connections", positive_int),
            "DICOMRPC_HTTP_HEADER_TIMEOUT": ("http_header_timeout_s", positive_float),
            "DICOMRPC_HTTP_BODY_TIMEOUT": ("http_body_timeout_s", positive_float),
            "DICOMRPC_HTTP_KEEP_ALIVE": ("http_keep_alive_s", positive_int),
            "DICOMRPC_HTTP_MAX_HEADER_BYTES": ("http_max_header_bytes", positive_int),
            "DICOMRPC_HTTP_MAX_URL_BYTES": ("http_max_url_bytes", positive_int),
            "DICOMRPC_HTTP_MAX_STOW_PARTS": ("http_max_stow_parts", positive_int),
        }
        for var, (name, kind) in mapping.items():
            if var in os.environ:
                try:
                    env[name] = kind(os.environ[var])
                except ValueError as exc:
                    raise ValueError(f"{var}: {exc}") from None
        env.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**env)  # type: ignore[arg-type]


def split_origins(text: str) -> tuple[str, ...]:
    """The origins of a comma-separated list (``DICOMRPC_CORS_ORIGINS``, ``--cors-origins``)."""
    return tuple(origin.strip() for origin in text.split(",") if origin.strip())


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
        "--max-instance-bytes",
        type=int,
        help="largest instance accepted (env DICOMRPC_MAX_INSTANCE_BYTES, 4 GiB)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="processes that parse, transcode and render (env DICOMRPC_WORKERS, 1)",
    )
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
    parser.add_argument("--log-level", default="INFO", help="logging level (INFO)")
