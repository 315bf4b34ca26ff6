"""Fixtures shared by the integration modules that need one plain server each.

A module that asks for ``running`` or ``http`` gets a server of its own with default settings,
started once for the module (``client``, from the top-level conftest, is a server per test); a
module that needs other settings defines its own ``running`` and ``http`` follows it.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import RunningServer, start_server


@pytest.fixture(scope="module")
def running(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    name = request.module.__name__.rsplit(".", 1)[-1]
    server = start_server(tmp_path_factory.mktemp(name) / "data")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http(running: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running.dicomweb_url, timeout=60) as c:
        yield c
