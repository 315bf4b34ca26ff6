"""The options of ``dicomrpc backup`` and ``dicomrpc restore``.

Apart from the commands themselves, so that the command line builds its parser with the
standard library alone: ``pip install dicomrpc`` (the SDK, without the server's packages) still
lists these commands, and running one says which install it needs.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_backup_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``backup`` options."""
    parser.add_argument(
        "--data",
        type=Path,
        help="the archive's data folder (env DICOMRPC_DATA, the config file's, ./data)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the config file of `serve`, for its data folder (env DICOMRPC_CONFIG)",
    )
    parser.add_argument(
        "--to",
        type=Path,
        required=True,
        metavar="DEST",
        help="the backup folder to create (written as DEST.partial, renamed when complete)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--log-level", default="WARNING", help="logging level (WARNING)")


def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``restore`` options."""
    parser.add_argument(
        "--from",
        dest="source",
        type=Path,
        required=True,
        metavar="BACKUP",
        help="the folder of a complete `dicomrpc backup`",
    )
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="the data folder to create (must not exist, or be empty)",
    )
    parser.add_argument("--log-level", default="WARNING", help="logging level (WARNING)")
