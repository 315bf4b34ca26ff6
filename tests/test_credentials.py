"""The SDK's token source: when a provider is called, and what reaches the channel."""

from __future__ import annotations

import asyncio
import time

import pytest

from dicomrpc import ClientConfig, TlsConfig
from dicomrpc.credentials import REFRESH_MARGIN_S, TokenSource, token_expiry
from tests.authgen import Issuer


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer("k")


def test_token_expiry_reads_exp_without_verifying(issuer: Issuer) -> None:
    token = issuer.token(lifetime=120)
    expiry = token_expiry(token)
    assert expiry is not None and abs(expiry - (time.time() + 120)) < 5
    assert token_expiry("dicomrpc_apikey") is None
    assert token_expiry("a.b.c") is None


def test_a_provider_is_called_once_per_token_lifetime(issuer: Issuer) -> None:
    calls: list[str] = []

    def provider() -> str:
        calls.append("call")
        return issuer.token(lifetime=3600, jti=str(len(calls)))

    source = TokenSource(provider=provider)
    first = source.get()
    assert source.get() == first and source.get() == first
    assert len(calls) == 1


def test_a_token_about_to_expire_is_replaced_before_it_is_sent(issuer: Issuer) -> None:
    lifetimes = [REFRESH_MARGIN_S / 2, 3600.0]
    tokens: list[str] = []

    def provider() -> str:
        tokens.append(issuer.token(lifetime=lifetimes[len(tokens)], jti=str(len(tokens))))
        return tokens[-1]

    source = TokenSource(provider=provider)
    assert source.get() == tokens[0]  # a fresh draw is used even when short-lived
    assert source.get() == tokens[1]  # then replaced, since it expires within the margin
    assert source.get() == tokens[1]


def test_a_refused_token_is_replaced_only_with_a_provider(issuer: Issuer) -> None:
    fixed = TokenSource(token="static")
    fixed.invalidate("static")
    assert fixed.get() == "static" and not fixed.refreshable
    keys = iter(["key-1", "key-2"])
    provided = TokenSource(provider=lambda: next(keys))
    assert provided.get() == "key-1"
    provided.invalidate("some-older-token")  # a refusal of an older token changes nothing
    assert provided.get() == "key-1"
    provided.invalidate("key-1")
    assert provided.get() == "key-2"


def test_async_providers_are_awaited(issuer: Issuer) -> None:
    async def provider() -> str:
        await asyncio.sleep(0)
        return "from-async"

    source = TokenSource(provider=provider)
    assert asyncio.run(source.aget()) == "from-async"
    with pytest.raises(TypeError, match="needs AsyncClient"):
        TokenSource(provider=provider).get()
    with pytest.raises(TypeError, match="returned NoneType, not a token"):
        TokenSource(provider=lambda: None).get()  # type: ignore[arg-type,return-value]


def test_the_environment_configures_a_client(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pytest.TempPathFactory
) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    (folder / "ca.pem").write_bytes(b"CA")
    monkeypatch.setenv("DICOMRPC_TOKEN", "tok")
    monkeypatch.setenv("DICOMRPC_TLS_CA", str(folder / "ca.pem"))
    config = ClientConfig.from_env()
    assert config.token == "tok"
    assert config.tls == TlsConfig(root_certificates=b"CA")
    assert ClientConfig.from_env(token="other").token == "other"
    monkeypatch.delenv("DICOMRPC_TLS_CA")
    assert ClientConfig.from_env().tls is None
    monkeypatch.setenv("DICOMRPC_TLS", "1")
    assert ClientConfig.from_env().tls == TlsConfig()
    with pytest.raises(ValueError, match="needs its key"):
        TlsConfig.from_files(cert=folder / "ca.pem")
