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
        help=f"server address (env DICOMRPC_SERVER, {DEFAULT_SERVER})",
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
        config = client_config(args)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"dicomrpc {args.command}: {exc}") from None
    return Client(args.server, config)
