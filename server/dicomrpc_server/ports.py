"""The servers' ports: one server per port, and an error that says why a port cannot be used.

Both listeners bind without ``SO_REUSEPORT``, so that a port already in use fails at start-up
instead of being shared with another server (the kernel would spread connections between two
archives). ``SO_REUSEADDR`` stays on: a restarted server rebinds at once although connections
of the previous one linger in TIME_WAIT. The processes of one group (``--processes N``) share
their ports: the supervisor reserves each (:func:`reserve_port`) and they bind it with
``SO_REUSEPORT``.
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


def reserve_port(service: str, host: str, port: int, flag: str) -> socket.socket:
    """Hold a port for a group's processes: bound with ``SO_REUSEPORT``, never listening.

    It takes no connection, while the processes, bound the same way, take them all.

    The port is first bound as a single server binds it: one another program uses is refused
    rather than shared. A port of 0 is chosen here, once, for every process of the group.

    Raises
    ------
    StartupError
        ``PORT_IN_USE`` or ``PORT_UNAVAILABLE``, naming the port and ``flag``.
    """
    if port != 0:
        error = _bind_error(host, port)
        if error is not None:
            raise port_unavailable(service, host, port, flag, error)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise port_unavailable(service, host, port, flag, exc) from None
    return sock
