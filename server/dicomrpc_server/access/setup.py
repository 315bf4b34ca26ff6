"""The access settings checked at start-up: the listen address, TLS files, auth options, URL.

A server that would expose patient data by mistake does not start: plaintext on an address
other than loopback needs ``--insecure``, and every option that needs another says which.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from dicomrpc_server.config import Settings
from dicomrpc_server.errors import StartupError

log = logging.getLogger(__name__)


class AccessSetupError(StartupError):
    """An access setting the server cannot start with; the message says what to change.

    Reasons: ``PLAINTEXT_REFUSED`` (no TLS on an address other than loopback, without
    ``--insecure``) and ``ACCESS_SETTINGS_INVALID`` (a TLS or auth option missing its partner,
    a file that cannot be read or used).
    """

    def __init__(self, message: str, reason: str = "ACCESS_SETTINGS_INVALID") -> None:
        super().__init__(reason, message)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is loopback."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerTls:
    """The PEM files of TLS, read: the server's chain and key, the client CAs (mutual TLS)."""

    certificate_chain: bytes
    private_key: bytes
    client_ca: bytes | None
    cert_path: Path
    key_path: Path
    client_ca_path: Path | None

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate (mutual TLS)."""
        return self.client_ca is not None


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise AccessSetupError(f"cannot read {what} {path}: {exc.strerror}") from None


def server_tls(settings: Settings) -> ServerTls | None:
    """The TLS material of ``settings``, checked, or ``None`` when TLS is off.

    Raises
    ------
    AccessSetupError
        When a file is missing or unreadable, the key does not go with the certificate, or
        an option lacks the one it needs.
    """
    if settings.tls_cert is None and settings.tls_key is None:
        if settings.tls_client_ca is not None:
            raise AccessSetupError("--tls-client-ca needs --tls-cert and --tls-key (TLS)")
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        given, missing = (
            ("--tls-key", "--tls-cert")
            if settings.tls_cert is None
            else ("--tls-cert", "--tls-key")
        )
        raise AccessSetupError(f"{given} needs {missing}")
    chain = _read(settings.tls_cert, "the TLS certificate")
    key = _read(settings.tls_key, "the TLS key")
    client_ca = (
        _read(settings.tls_client_ca, "the client CA certificates")
        if settings.tls_client_ca is not None
        else None
    )
    # The same checks the HTTP server's SSL context makes, here, with a message that names the
    # files, rather than an OpenSSL error from the first handshake.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except ssl.SSLError as exc:
        raise AccessSetupError(
            f"the TLS certificate {settings.tls_cert} and key {settings.tls_key} do not load "
            f"together ({exc.reason or exc}); both must be PEM, the key unencrypted and the "
            "certificate's own"
        ) from None
    if settings.tls_client_ca is not None:
        try:
            context.load_verify_locations(cafile=settings.tls_client_ca)
        except ssl.SSLError as exc:
            raise AccessSetupError(
                f"the client CA file {settings.tls_client_ca} holds no PEM certificate "
                f"({exc.reason or exc})"
            ) from None
    return ServerTls(
        chain, key, client_ca, settings.tls_cert, settings.tls_key, settings.tls_client_ca
    )


def check_public_url(url: str) -> str:
    """The service root of ``--public-url``, without a trailing slash.

    Raises
    ------
    AccessSetupError
        When it is not an absolute http(s) URL with a host, or has a query or fragment.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AccessSetupError(
            f"--public-url {url!r} is not an absolute http(s) URL such as "
            "https://pacs.example.org/dicomweb"
        )
    if parts.query or parts.fragment:
        raise AccessSetupError(
            f"--public-url {url!r} has a query or fragment; give the service root"
        )
    return url.rstrip("/")


def check(settings: Settings) -> ServerTls | None:
    """Check every access setting before the server opens anything; return the TLS material.

    Raises
    ------
    AccessSetupError
        A sentence naming the options at fault and what to give instead.
    """
    tls = server_tls(settings)
    if tls is None and not is_loopback(settings.host) and not settings.insecure:
        raise AccessSetupError(
            f"refusing to serve on {settings.host}, which is not a loopback address, without "
            "TLS: anyone on the network could read the traffic, tokens and patient data "
            "included. Give --tls-cert and --tls-key, or --insecure to serve plaintext anyway "
            "(behind a TLS-terminating proxy, say)",
            "PLAINTEXT_REFUSED",
        )
    jwt_options = {
        "--auth-jwks": settings.auth_jwks,
        "--auth-issuer": settings.auth_issuer,
        "--auth-audience": settings.auth_audience,
    }
    given = [name for name, value in jwt_options.items() if value]
    if given and len(given) != len(jwt_options):
        missing = [name for name in jwt_options if name not in given]
        raise AccessSetupError(f"{' and '.join(given)} also need {' and '.join(missing)}")
    if settings.auth_roles and not settings.auth_jwks:
        raise AccessSetupError("--auth-role maps token roles: it needs --auth-jwks (tokens)")
    if settings.auth_clock_skew_s < 0:
        raise AccessSetupError(f"--auth-clock-skew {settings.auth_clock_skew_s:g} is negative")
    if settings.public_url:
        check_public_url(settings.public_url)
    return tls


def describe(settings: Settings) -> str:
    """One line saying how the server is protected, for its start-up log."""
    parts = []
    if settings.tls_cert is not None:
        parts.append("TLS with client certificates" if settings.tls_client_ca else "TLS")
    else:
        parts.append("plaintext")
    if settings.auth_jwks:
        parts.append(f"bearer tokens of {settings.auth_issuer} for {settings.auth_audience}")
    if settings.auth_api_keys is not None:
        parts.append(f"API keys of {settings.auth_api_keys}")
    if not settings.auth_jwks and settings.auth_api_keys is None:
        parts.append(
            "every client certificate holder may do everything"
            if settings.tls_client_ca
            else "no authentication: every caller may read, change and delete"
        )
    if settings.public_url:
        parts.append(f"public URL {settings.public_url}")
    return "; ".join(parts)
