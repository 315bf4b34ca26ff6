"""The install locks agree with pyproject.toml: every declared dependency is pinned, within its
declared range, with hashes (the installs of ``make serve`` and ``make test`` use only the locks).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)")


def _pins(lock: Path) -> dict[str, tuple[Version, int]]:
    """Each pinned package of a lock, with its version and how many hashes it lists."""
    pins: dict[str, tuple[Version, int]] = {}
    name = ""
    for line in lock.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            name = canonicalize_name(match.group(1))
            pins[name] = (Version(match.group(2)), 0)
        elif line.strip().startswith("--hash=sha256:") and name:
            version, hashes = pins[name]
            pins[name] = (version, hashes + 1)
    return pins


def _declared(extras: tuple[str, ...]) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(text) for text in project["dependencies"]]
    for extra in extras:
        declared += [Requirement(text) for text in project["optional-dependencies"][extra]]
    declared += [Requirement(text) for text in _build_requires()]
    return declared


def _build_requires() -> list[str]:
    return list(tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"])


@pytest.mark.parametrize(
    ("lock", "extras"), [("server.lock", ("server",)), ("test.lock", ("server", "test"))]
)
def test_every_declared_dependency_is_pinned_in_range_with_hashes(
    lock: str, extras: tuple[str, ...]
) -> None:
    pins = _pins(ROOT / "requirements" / lock)
    for requirement in _declared(extras):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in requirements/{lock}: run `make lock`"
        version, hashes = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements/{lock} pins {name}=={version}, outside {requirement}: run `make lock`"
        )
        assert hashes > 0, f"{name} has no hash in requirements/{lock}"


def test_every_pin_has_hashes() -> None:
    for lock in ("server.lock", "test.lock"):
        for name, (_, hashes) in _pins(ROOT / "requirements" / lock).items():
            assert hashes > 0, f"{name} has no hash in requirements/{lock}"


def test_the_server_lock_holds_no_test_tools() -> None:
    pins = _pins(ROOT / "requirements" / "server.lock")
    for tool in ("pytest", "mypy", "ruff", "hypothesis"):
        assert tool not in pins
