"""The start-up lines: where the archive serves, and who may call it.

Scripts and tests that start a server on port 0 read the ports from these lines (gRPC first,
then DICOMweb, then DIMSE), so one process alone and the supervisor of a group print them the
same way, once everything serves.
"""

from __future__ import annotations

import logging
import sys

from dicomrpc_server import __version__
from dicomrpc_server.access.setup import describe, is_loopback
from dicomrpc_server.config import Settings
from dicomrpc_server.dicomweb.context import PREFIX

log = logging.getLogger("dicomrpc.server")


def announce(settings: Settings, grpc_port: int, http_port: int, dimse_port: int) -> None:
    """Print the serving lines (a port below 0 is not served), then log the access settings.

    The access line is a warning when the archive listens beyond loopback without
    authentication.
    """
    print(f"dicomrpc {__version__} serving gRPC on {settings.host}:{grpc_port}")
    if http_port >= 0:
        scheme = "https" if settings.tls_cert is not None else "http"
        print(
            f"dicomrpc {__version__} serving DICOMweb on "
            f"{scheme}://{settings.host}:{http_port}{PREFIX}"
        )
    if dimse_port >= 0:
        print(
            f"dicomrpc {__version__} serving DIMSE on {settings.host}:{dimse_port} "
            f"as {settings.ae_title}"
        )
    sys.stdout.flush()
    access = describe(settings)
    if is_loopback(settings.host) or settings.auth_jwks or settings.auth_api_keys:
        log.info("access: %s", access)
    else:
        log.warning("access: %s", access)
