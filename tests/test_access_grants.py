"""Retrieve grants: what a token reads, for how long, and the key every process shares."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import pytest

from dicomrpc_server.access.caller import ANONYMOUS, Caller
from dicomrpc_server.access.grants import (
    KEY_FILE,
    RetrieveGrants,
    checked_host,
    folder_key,
    grant_caller,
)
from dicomrpc_server.access.scopes import READ, WRITE
from dicomrpc_server.errors import Code, ServiceError

KEY = bytes(range(32))
READER = Caller("reader", "token", frozenset({READ}), "127.0.0.1:1")


def _token(url: str) -> str:
    return urllib.parse.unquote(url.partition("?grant=")[2])


def test_a_grant_reads_its_study_or_series_for_its_lifetime() -> None:
    now = [1000.0]
    grants = RetrieveGrants(KEY, clock=lambda: now[0])
    grants.offer("http", 8042)
    grant = grants.issue(READER, "1.2.3", "", "pacs.example")
    assert grant.url.startswith("http://pacs.example:8042/dicomweb/studies/1.2.3?grant=")
    assert grant.expires == 1120
    claims = grants.verify(_token(grant.url), "1.2.3", "")
    assert (claims.identity, claims.kind) == ("reader", "token")
    assert grant_caller(claims, "a:1").scopes == frozenset({READ})
    for study, series in (("1.2.4", ""), ("1.2.3", "4.5")):
        with pytest.raises(ServiceError) as refused:
            grants.verify(_token(grant.url), study, series)
        assert refused.value.code == Code.PERMISSION_DENIED
    now[0] = 1120.0
    with pytest.raises(ServiceError) as expired:
        grants.verify(_token(grant.url), "1.2.3", "")
    assert expired.value.code == Code.UNAUTHENTICATED


def test_another_key_or_a_changed_token_is_refused() -> None:
    grants = RetrieveGrants(KEY)
    token, _ = grants.token(READER, "1.2.3", "")
    other, _ = RetrieveGrants(bytes(32)).token(READER, "1.2.3", "")
    payload, _, signature = token.partition(".")
    for bad in (other, f"{payload}x.{signature}", f"{payload}.", "", "....", token + "A"):
        with pytest.raises(ServiceError) as refused:
            grants.verify(bad, "1.2.3", "")
        assert refused.value.code == Code.UNAUTHENTICATED, bad


def test_grants_need_the_read_scope_and_a_gateway() -> None:
    grants = RetrieveGrants(KEY, public_url="https://pacs.example/dicomweb/")
    with pytest.raises(ServiceError) as off:
        grants.issue(READER, "1.2.3", "", "")
    assert off.value.code == Code.FAILED_PRECONDITION
    grants.offer("http", 8042)
    writer = Caller("writer", "token", frozenset({WRITE}), "")
    with pytest.raises(ServiceError) as denied:
        grants.issue(writer, "1.2.3", "", "")
    assert denied.value.code == Code.PERMISSION_DENIED
    url = grants.issue(READER, "1.2.3", "4.5", "ignored").url
    assert url.startswith("https://pacs.example/dicomweb/studies/1.2.3/series/4.5?grant=")
    grants.withdraw()
    assert not grants.offered


def test_an_anonymous_grant_reads_as_anonymous() -> None:
    grants = RetrieveGrants(KEY)
    anonymous = Caller(ANONYMOUS, ANONYMOUS, frozenset({READ}), "")
    claims = grants.verify(grants.token(anonymous, "1.2", "")[0], "1.2", "")
    assert grant_caller(claims, "").kind == ANONYMOUS


def test_the_folder_key_is_made_once_and_kept(tmp_path: Path) -> None:
    key = folder_key(tmp_path)
    assert len(key) == 32 and folder_key(tmp_path) == key
    assert (tmp_path / KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE]


def test_a_host_adds_nothing_to_the_url() -> None:
    for host in ("pacs.example", "10.0.0.5", "[::1]", ""):
        assert checked_host(host) == host
    for host in ("pacs.example:80", "a/b", "a?b", "a@b", "::1"):
        with pytest.raises(ServiceError):
            checked_host(host)
