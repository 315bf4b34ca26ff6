"""API keys for services: a file of ``NAME SCOPES SHA256`` lines, never the keys themselves.

A service presents its key as a bearer token (``authorization: Bearer dicomrpc_...``). The file
holds each key's name, its comma-separated scopes and the hex SHA-256 of the key, so that a
copy of the file grants nothing; ``dicomrpc api-key create`` draws a key, prints it once and
appends its line. A running server re-reads the file when it changes, so keys are added and
revoked (their line removed) without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dicomrpc_server.access.scopes import SCOPES

log = logging.getLogger(__name__)

KEY_PREFIX = "dicomrpc_"
"""What every key starts with, so that a leaked one is recognisable (secret scanners)."""

HEADER = (
    "# dicomrpc API keys: NAME SCOPES SHA256 (scopes comma-separated, hex SHA-256 of the key)\n"
)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]*")
_DIGEST = re.compile(r"[0-9a-f]{64}")

# How often a server looks at the file's modification time (a stat per request would be
# cheap, but not free).
CHECK_INTERVAL_S = 1.0


@dataclass(frozen=True)
class ApiKey:
    """One line of the file: the key's name, its scopes and the SHA-256 of the key."""

    name: str
    scopes: frozenset[str]
    digest: bytes


def digest(key: str) -> bytes:
    """The SHA-256 of a key, as the file stores it (in hex)."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def check_name(name: str) -> None:
    """Refuse a key name that is not one word of A-Z a-z 0-9 ``._@:-`` (``ValueError``)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"the name {name!r} has characters other than A-Z a-z 0-9 ._@:-")


def check_scopes(scopes: frozenset[str]) -> None:
    """Refuse an empty scope list or unknown scopes (``ValueError``)."""
    unknown = sorted(scopes - SCOPES)
    if unknown or not scopes:
        raise ValueError(
            f"unknown scopes {', '.join(unknown) or '(none given)'} "
            f"(scopes: {', '.join(sorted(SCOPES))})"
        )


def parse(text: str, source: str) -> list[ApiKey]:
    """The keys of a key file's text.

    Raises
    ------
    ValueError
        Naming ``source``, the line and what is wrong with it.
    """
    keys: list[ApiKey] = []
    names: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{source} line {number}"
        if len(fields) != 3:
            raise ValueError(f"{where}: expected NAME SCOPES SHA256, found {len(fields)} fields")
        name, scopes_text, hex_digest = fields
        scopes = frozenset(s for s in scopes_text.split(",") if s)
        try:
            check_name(name)
            check_scopes(scopes)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if name in names:
            raise ValueError(f"{where}: the name {name!r} is used by an earlier line")
        if not _DIGEST.fullmatch(hex_digest):
            raise ValueError(f"{where}: {hex_digest!r} is not a hex SHA-256 (64 lowercase digits)")
        names.add(name)
        keys.append(ApiKey(name, scopes, bytes.fromhex(hex_digest)))
    return keys


class ApiKeyFile:
    """The keys of a key file, kept in step with the file.

    Parameters
    ----------
    path
        The key file; read now (a missing or invalid file raises ``ValueError``).
    check_interval_s
        The least time between two looks at the file's modification time.
    """

    def __init__(self, path: Path, check_interval_s: float = CHECK_INTERVAL_S) -> None:
        self.path = path
        self.check_interval_s = check_interval_s
        self._stamp = self._stat()
        self._keys = self._read()
        self._checked = time.monotonic()

    def _stat(self) -> tuple[int, int, int]:
        try:
            info = os.stat(self.path)
        except OSError as exc:
            raise ValueError(f"cannot read the API key file {self.path}: {exc.strerror}") from None
        return info.st_ino, info.st_mtime_ns, info.st_size

    def _read(self) -> list[ApiKey]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read the API key file {self.path}: {exc.strerror}") from None
        return parse(text, str(self.path))

    def _refresh(self) -> None:
        """Re-read the file if it changed; keep the keys it had if it cannot be read now."""
        now = time.monotonic()
        if now - self._checked < self.check_interval_s:
            return
        self._checked = now
        try:
            stamp = self._stat()
            if stamp != self._stamp:
                self._keys, self._stamp = self._read(), stamp
                log.info("API key file %s re-read: %d keys", self.path, len(self._keys))
        except ValueError as exc:
            log.error("%s; the keys read before stay in force", exc)

    @property
    def keys(self) -> list[ApiKey]:
        """The keys in force."""
        self._refresh()
        return self._keys

    def find(self, key: str) -> ApiKey | None:
        """The entry of ``key``, or ``None``.

        Every entry is compared, in constant time, so that the time taken tells nothing about
        which digests the file holds.
        """
        presented = digest(key)
        found: ApiKey | None = None
        for entry in self.keys:
            if hmac.compare_digest(entry.digest, presented):
                found = entry
        return found


def new_key() -> str:
    """A new random key: the prefix and 256 bits from the operating system's CSPRNG."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create(path: Path, name: str, scopes: Iterable[str]) -> str:
    """Draw a key named ``name`` with ``scopes``, append its line to ``path``, return the key.

    The file is created (readable by its owner only) if it does not exist. The key itself is
    returned once and stored nowhere.

    Raises
    ------
    ValueError
        When the name or a scope is invalid, the name is already in the file, or the file is
        invalid.
    """
    check_name(name)
    check_scopes(frozenset(scopes))
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    if name in {key.name for key in parse(existing, str(path))}:
        raise ValueError(f"{path} has a key named {name!r} already (revoke it first)")
    key = new_key()
    line = f"{name} {','.join(sorted(set(scopes)))} {digest(key).hex()}\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        if not existing:
            out.write(HEADER)
        elif not existing.endswith("\n"):
            out.write("\n")
        out.write(line)
    return key


def revoke(path: Path, name: str) -> bool:
    """Remove the key named ``name`` from ``path``; whether it was there.

    The file is replaced whole (written beside it, then renamed), so a server reading it never
    sees half of it.
    """
    text = path.read_text(encoding="utf-8")
    kept = [
        line
        for line in text.splitlines(keepends=True)
        if line.split("#", 1)[0].split()[:1] != [name]
    ]
    if len(kept) == len(text.splitlines()):
        return False
    temporary = path.with_name(path.name + ".new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.writelines(kept)
    os.replace(temporary, path)
    return True
