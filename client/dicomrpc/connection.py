"""The options every client command shares: which server, and the credentials it needs.

Each has an environment variable, so a secured set-up is configured once per shell:
``DICOMRPC_SERVER``, ``DICOMRPC_TOKEN``, ``DICOMRPC_TLS``, ``DICOMRPC_TLS_CA``,
``DICOMRPC_TLS_CERT`` and ``DICOMRPC_TLS_KEY``.
"""

from __future__ import annotations

import argparse
import os

from dicomrpc.client import Client, ClientConfig, TlsConfig

DEFAULT_SERVER = "localhost:50051"


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--server``, ``--token`` and the TLS options to a client command."""
    parser.add_argument(
        "--server",
        default=os.environ.get("DICOMRPC_SERVER", DEFAULT_SERVER),
        help=f"gRPC address HOST:PORT, grpc:// or grpcs:// (TLS) (env DICOMRPC_SERVER, "
        f"{DEFAULT_SERVER})",
    )
    parser.add_argument(
        "--token", help="bearer token: an access token or an API key (env DICOMRPC_TOKEN)"
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="connect with TLS, the server verified by the system's CAs (env DICOMRPC_TLS=1)",
    )
    parser.add_argument(
        "--tls-ca",
        help="PEM CA certificates that verify the server; implies --tls (env DICOMRPC_TLS_CA)",
    )
    parser.add_argument(
        "--tls-cert", help="PEM client certificate, for mutual TLS (env DICOMRPC_TLS_CERT)"
    )
    parser.add_argument("--tls-key", help="PEM key of --tls-cert (env DICOMRPC_TLS_KEY)")


def client_config(args: argparse.Namespace) -> ClientConfig:
    """The client settings of the environment, with the command line's in their place.

    TLS options on the command line replace all those of the environment.
    """
    tls = None
    if args.tls or args.tls_ca or args.tls_cert or args.tls_key:
        tls = TlsConfig.from_files(args.tls_ca, args.tls_cert, args.tls_key)
    return ClientConfig.from_env(token=args.token, tls=tls)


def connect(args: argparse.Namespace) -> Client:
    """A client of ``--server`` with the command's credentials.

    Raises
    ------
    SystemExit
        When a TLS file cannot be read, or a certificate comes without its key.
    """
    try:
        target, tls = server_target(args.server)
        if tls:
            args.tls = True
        config = client_config(args)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"dicomrpc {args.command}: {exc}") from None
    return Client(target, config)


def server_target(server: str) -> tuple[str, bool]:
    """The gRPC target of ``--server`` and whether its form asks for TLS.

    ``HOST:PORT`` as gRPC writes it, or ``grpc://HOST:PORT`` (``grpcs://`` for TLS). An
    ``http(s)://`` URL is refused with an explanation: it is most often the DICOMweb address,
    which is served on another port.

    Raises
    ------
    ValueError
        For an address of another form.
    """
    scheme, sep, rest = server.partition("://")
    if not sep:
        return server, False
    scheme = scheme.lower()
    if scheme in ("grpc", "grpcs") and rest and "/" not in rest.rstrip("/"):
        return rest.rstrip("/"), scheme == "grpcs"
    if scheme in ("http", "https"):
        raise ValueError(
            f"--server {server!r} is a web address; --server takes the gRPC address HOST:PORT "
            f"(default {DEFAULT_SERVER}), not the DICOMweb URL, which the archive serves on "
            "its HTTP port"
        )
    raise ValueError(f"--server {server!r} is not HOST:PORT, grpc://HOST:PORT or grpcs://HOST:PORT")
