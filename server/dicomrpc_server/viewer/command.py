"""``dicomrpc viewer fetch``: put the OHIF viewer in the cache the server serves it from."""

from __future__ import annotations

import argparse
import sys

from dicomrpc_server.viewer.package import (
    NPM_TIMEOUT_S,
    OHIF_VERSION,
    FetchError,
    cached_dist,
    fetch,
    is_complete,
)


def add_viewer_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``viewer`` actions and their options."""
    actions = parser.add_subparsers(dest="action", required=True)
    fetched = actions.add_parser(
        "fetch",
        help=f"fetch OHIF {OHIF_VERSION} (npm @ohif/app) once into the cache 'serve' reads",
        description=f"Fetch the OHIF viewer (npm @ohif/app@{OHIF_VERSION}) with 'npm pack', "
        "check it against its pinned digest and keep its dist/ folder in the cache "
        f"({cached_dist()}), where 'dicomrpc serve' finds it. Nothing is done when it is "
        "there already. Needs npm and access to the npm registry.",
    )
    fetched.add_argument(
        "--timeout",
        type=float,
        default=NPM_TIMEOUT_S,
        metavar="SECONDS",
        help=f"longest wait for npm ({NPM_TIMEOUT_S})",
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of ``dicomrpc viewer``: print the viewer's folder, or why it is not there."""
    already = is_complete(cached_dist())
    try:
        dist = fetch(timeout_s=args.timeout)
    except (FetchError, OSError) as error:
        print(
            f"dicomrpc viewer fetch: {error}; the archive serves without the viewer",
            file=sys.stderr,
        )
        return 1
    state = "already in the cache" if already else "fetched and verified"
    print(f"OHIF {OHIF_VERSION} {state}: {dist}")
    return 0
