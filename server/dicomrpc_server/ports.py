"""The servers' ports: one server per port, and an error that says why a port cannot be used.

Both listeners bind without ``SO_REUSEPORT``, so that a port already in use fails at start-up
instead of being shared with another server (the kernel would spread connections between two
archives). ``SO_REUSEADDR`` stays on: a restarted server rebinds at once although connections
of the previous one linger in TIME_WAIT.
"""

from __future__ import annotations

import errno
import socket

from dicomrpc_server.errors import StartupError


def port_unavailable(
    service: str, host: str, port: int, flag: str, error: OSError | None = None
) -> StartupError:
    """The start-up error of a port that cannot be bound, naming the port and the flag.

    gRPC says only that binding failed; without ``error`` a plain socket bound the same way
    finds the reason (in use, not an address of this machine, a privileged port).
    """
    if error is None:
        error = _bind_error(host, port)
    if error is not None and error.errno == errno.EADDRINUSE:
        return StartupError(
            "PORT_IN_USE",
            f"cannot serve {service} on {host}:{port}: the port is in use by another process; "
            f"stop it or choose another {flag}",
        )
    why = error.strerror if error is not None and error.strerror else "it cannot be bound"
    return StartupError(
        "PORT_UNAVAILABLE",
        f"cannot serve {service} on {host}:{port}: {why}; choose another {flag} (or --host)",
    )


def _bind_error(host: str, port: int) -> OSError | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        return exc
    return None
