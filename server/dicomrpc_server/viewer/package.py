"""The OHIF viewer's release: where its cached copy is, and how it is fetched and checked.

The archive serves OHIF's built ``dist/`` (npm ``@ohif/app``, a pinned version, unchanged) but
never ships it: ``dicomrpc viewer fetch`` (``make serve`` runs it) asks the npm registry for the
package once, with ``npm pack`` (the registry's ordinary client; no install scripts run), checks
the tarball against its pinned integrity digest, and keeps the ``dist/`` folder in a cache
outside the data folder (``$XDG_CACHE_HOME/dicomrpc`` or ``~/.cache/dicomrpc``) for the server
to serve and the browser tests to reuse. The server itself never fetches: it starts the same
with or without network, and says how to get the viewer when it is not there.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

OHIF_VERSION = "3.13.2"
# The npm registry's "integrity" of @ohif/app@3.13.2: the tarball must be this one, byte for byte.
OHIF_INTEGRITY = (
    "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZ"
    "B9E8EA=="
)
NPM_TIMEOUT_S = 600
NPM_RETRIES = (
    "--fetch-retries=1",
    "--fetch-retry-mintimeout=2000",
    "--fetch-retry-maxtimeout=5000",
)
FETCH_COMMAND = "dicomrpc viewer fetch"
"""The command that puts the viewer in the cache (what the server's how-to page names)."""


class FetchError(Exception):
    """The viewer could not be fetched.

    No npm, no registry, or a tarball that is not the one pinned: the message says which.
    """


def cache_root() -> Path:
    """The folder that keeps downloads between runs (XDG Base Directory: ``XDG_CACHE_HOME``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dicomrpc"


def cached_dist(version: str = OHIF_VERSION) -> Path:
    """Where ``dist/`` of ``@ohif/app@version`` is once fetched (it may not be there yet)."""
    return cache_root() / f"ohif-{version}" / "dist"


def is_complete(dist: Path) -> bool:
    """Whether ``dist`` holds a built viewer (its entry page, which names everything else)."""
    return (dist / "index.html").is_file()


def fetch(
    version: str = OHIF_VERSION, integrity: str = OHIF_INTEGRITY, timeout_s: float = NPM_TIMEOUT_S
) -> Path:
    """The ``dist/`` folder of ``@ohif/app@version``, fetched into the cache unless there.

    The tarball must match ``integrity`` (the registry's Subresource Integrity string,
    ``sha512-<base64>``). The folder appears in the cache only once complete (renamed into
    place), so an interrupted fetch leaves nothing half written that the server would serve.

    Raises
    ------
    FetchError
        Without npm, when ``npm pack`` fails (no network, no registry) or times out, or when
        the tarball's digest is not ``integrity``.
    """
    dist = cached_dist(version)
    if is_complete(dist):
        return dist
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError("npm is not installed (it fetches @ohif/app from the npm registry)")
    target = dist.parent
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".ohif-{version}-") as scratch:
        work = Path(scratch)
        try:
            packed = subprocess.run(
                [
                    npm,
                    "pack",
                    f"@ohif/app@{version}",
                    "--pack-destination",
                    str(work),
                    "--json",
                    # One retry, soon: without a network `make serve` would otherwise wait
                    # for npm's retries (a minute and more) before serving.
                    *NPM_RETRIES,
                ],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise FetchError(f"npm pack @ohif/app@{version} took over {timeout_s:.0f} s") from None
        if packed.returncode != 0:
            reason = npm_reason(packed.stderr) or f"exit status {packed.returncode}"
            raise FetchError(f"npm pack @ohif/app@{version} failed: {reason}")
        try:
            (entry,) = json.loads(packed.stdout)
            tarball = work / entry["filename"]
        except (ValueError, KeyError, TypeError):
            raise FetchError(f"npm pack printed no package: {packed.stdout[-500:]!r}") from None
        check_integrity(tarball, integrity)
        with tarfile.open(tarball) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith("package/dist/")]
            # The "data" filter refuses absolute names, links out of the folder and devices.
            archive.extractall(work / "unpacked", members=members, filter="data")
        unpacked = work / "unpacked" / "package" / "dist"
        if not is_complete(unpacked):
            raise FetchError(f"@ohif/app@{version} holds no dist/index.html")
        staged = work / "staged"
        staged.mkdir()
        unpacked.rename(staged / "dist")
        try:
            staged.rename(target)
        except OSError:
            # Another fetch put it in place first; its copy is as good.
            if not is_complete(dist):
                raise
    return dist


def npm_reason(stderr: str) -> str:
    """What npm said went wrong, on one line.

    Its first error lines (code, then cause), up to the advice that follows them after an empty
    ``npm error`` line.
    """
    lines: list[str] = []
    for line in stderr.splitlines():
        text = line.strip()
        if not text:
            continue
        if text in ("npm error", "npm ERR!") and lines:
            break
        lines.append(text)
    return " / ".join(lines[:4])


def check_integrity(tarball: Path, integrity: str) -> None:
    """Raise :class:`FetchError` unless ``tarball``'s digest is ``integrity``."""
    algorithm, _, expected = integrity.partition("-")
    digest = hashlib.new(algorithm, tarball.read_bytes()).digest()
    if base64.b64encode(digest).decode() != expected:
        raise FetchError(f"{tarball.name} is not the pinned @ohif/app (its {algorithm} differs)")
