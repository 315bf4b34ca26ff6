"""Which ``Host`` a DICOMweb request may name: the public URL's, or the bound address.

A web page can make a browser send requests to a server on the browser's own machine or
network by pointing its own name at that address (DNS rebinding); the requests then carry the
page's host name. Refusing host names the server does not go by closes that door, also for a
server on loopback without authentication.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse

from dicomrpc_server.access.setup import is_loopback
from dicomrpc_server.config import Settings
from dicomrpc_server.errors import Code, FieldViolation, ServiceError, invalid_argument

HOST_FIELD = "Host"
# A host name, IPv4 or bracketed IPv6 address, and an optional port (RFC 3986 §3.2.2): all a
# Host header may carry into the URLs built on it. Percent-encoded and sub-delimiter host names
# are left out; no resolver takes them.
_AUTHORITY = re.compile(r"(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
MISDIRECTED = "misdirected"
"""The ``host_problem`` of a request for a host this server does not go by (HTTP 421)."""


def malformed_host(host: str) -> ServiceError | None:
    """The error of a ``Host`` value that is not a host and port (400), or ``None``."""
    if _AUTHORITY.fullmatch(host):
        return None
    return invalid_argument(HOST_FIELD, f"{host!r} is not a host name or address and a port")


def host_name(host: str) -> str:
    """The name or address of a ``Host`` value, without port or IPv6 brackets, lowercase."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostPolicy:
    """The host names a server goes by.

    With ``public_url``, its host and loopback names; without it, the bound address (any
    address literal when bound to all addresses, loopback names when bound to loopback).
    Ports are not compared: some clients leave the port out, and proxies change it.
    """

    def __init__(self, settings: Settings) -> None:
        self.public_host = (
            (urllib.parse.urlsplit(settings.public_url).hostname or "").lower()
            if settings.public_url
            else ""
        )
        self.bound = host_name(settings.host)

    def allows(self, host: str | None) -> bool:
        """Whether a request with this ``Host`` value (``None``: none sent) is served."""
        if not host:
            # HTTP/1.0 clients may send none; a browser always does.
            return True
        name = host_name(host)
        if self.public_host:
            return name == self.public_host or is_loopback(name)
        if is_loopback(self.bound):
            return is_loopback(name)
        if self.bound in ("0.0.0.0", "::", ""):
            return _is_address(name) or is_loopback(name)
        return name == self.bound

    def check(self, host: str | None) -> ServiceError | None:
        """The error of a request with this ``Host`` (``None``: none sent), or ``None``.

        A value that is not a host and port is a bad request (400); a host this server does not
        go by is misdirected (421).
        """
        if host is not None and (malformed := malformed_host(host)) is not None:
            return malformed
        return None if self.allows(host) else self.refusal(host or "")

    def refusal(self, host: str) -> ServiceError:
        """The error of a request whose ``Host`` this server does not go by (HTTP 421)."""
        if self.public_host:
            expected = f"{self.public_host} (--public-url) or a loopback name"
        elif self.bound in ("0.0.0.0", "::", ""):
            expected = "an IP address (it listens on all); give --public-url to serve a name"
        else:
            expected = f"the address it listens on, {self.bound}; give --public-url to serve a name"
        description = f"this server does not answer to the host {host!r}: it goes by {expected}"
        return ServiceError(
            Code.INVALID_ARGUMENT,
            "INVALID_REQUEST",
            f"{HOST_FIELD}: {description}",
            metadata={"field": HOST_FIELD, "host_problem": MISDIRECTED},
            violations=(FieldViolation(HOST_FIELD, description),),
        )
