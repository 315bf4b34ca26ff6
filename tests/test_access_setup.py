"""Start-up checks of the access settings, the Host rule and the security options' parsing."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from dicomrpc_server.access.hosts import HostPolicy, host_name
from dicomrpc_server.access.setup import AccessSetupError, check, is_loopback
from dicomrpc_server.config import Settings, add_serve_arguments, parse_role
from dicomrpc_server.main import settings_from_args
from tests.authgen import make_pki


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("app.localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("pacs.example", False),
        ("localhost.example", False),
    ],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_plaintext_beyond_loopback_is_refused_unless_insecure(tmp_path: Path) -> None:
    with pytest.raises(AccessSetupError, match=r"refusing to serve on 0.0.0.0, .* without TLS"):
        check(Settings(data_dir=tmp_path, host="0.0.0.0"))
    with pytest.raises(AccessSetupError, match="--tls-cert and --tls-key, or --insecure"):
        check(Settings(data_dir=tmp_path, host="192.0.2.10"))
    assert check(Settings(data_dir=tmp_path, host="0.0.0.0", insecure=True)) is None
    assert check(Settings(data_dir=tmp_path)) is None
    pki = make_pki(tmp_path / "pki")
    tls = check(
        Settings(
            data_dir=tmp_path, host="0.0.0.0", tls_cert=pki.server_cert, tls_key=pki.server_key
        )
    )
    assert tls is not None and not tls.mutual and tls.certificate_chain.startswith(b"-----BEGIN")


def test_tls_options_are_checked_by_name(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    with pytest.raises(AccessSetupError, match="--tls-cert needs --tls-key"):
        check(Settings(data_dir=tmp_path, tls_cert=pki.server_cert))
    with pytest.raises(AccessSetupError, match="--tls-client-ca needs --tls-cert and --tls-key"):
        check(Settings(data_dir=tmp_path, tls_client_ca=pki.ca_pem))
    with pytest.raises(AccessSetupError, match=r"cannot read the TLS key .*nope.pem"):
        check(Settings(data_dir=tmp_path, tls_cert=pki.server_cert, tls_key=tmp_path / "nope.pem"))
    with pytest.raises(AccessSetupError, match="do not load together"):
        check(Settings(data_dir=tmp_path, tls_cert=pki.server_cert, tls_key=pki.client_key))
    empty = tmp_path / "empty.pem"
    empty.write_text("no certificate here\n")
    with pytest.raises(AccessSetupError, match=r"client CA file .* holds no PEM certificate"):
        check(
            Settings(
                data_dir=tmp_path,
                tls_cert=pki.server_cert,
                tls_key=pki.server_key,
                tls_client_ca=empty,
            )
        )
    mutual = check(
        Settings(
            data_dir=tmp_path,
            tls_cert=pki.server_cert,
            tls_key=pki.server_key,
            tls_client_ca=pki.ca_pem,
        )
    )
    assert mutual is not None and mutual.mutual


def test_auth_options_need_each_other(tmp_path: Path) -> None:
    with pytest.raises(
        AccessSetupError, match="--auth-jwks also need --auth-issuer and --auth-audience"
    ):
        check(Settings(data_dir=tmp_path, auth_jwks="jwks.json"))
    with pytest.raises(AccessSetupError, match=r"--auth-role .* needs --auth-jwks"):
        check(Settings(data_dir=tmp_path, auth_roles=(("Reader", ("dicom.read",)),)))
    with pytest.raises(AccessSetupError, match="is not an absolute http"):
        check(Settings(data_dir=tmp_path, public_url="pacs.example/dicomweb"))
    with pytest.raises(AccessSetupError, match="has a query or fragment"):
        check(Settings(data_dir=tmp_path, public_url="https://pacs.example/dicomweb?x=1"))


def test_role_mappings_are_parsed_and_checked() -> None:
    assert parse_role("Radiologist=dicom.read, workitems.read") == (
        "Radiologist",
        ("dicom.read", "workitems.read"),
    )
    with pytest.raises(ValueError, match="is not ROLE=SCOPE"):
        parse_role("Radiologist")
    with pytest.raises(ValueError, match=r"unknown scopes dicom.all"):
        parse_role("Admin=dicom.all")


def test_every_option_has_a_flag_and_a_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOMRPC_AUTH_ROLES", "Reader=dicom.read;Writer=dicom.write,dicom.read")
    monkeypatch.setenv("DICOMRPC_INSECURE", "true")
    monkeypatch.setenv("DICOMRPC_AUTH_API_KEYS", str(tmp_path / "keys"))
    monkeypatch.setenv("DICOMRPC_PUBLIC_URL", "https://pacs.example/dicomweb")
    monkeypatch.setenv("DICOMRPC_AUTH_CLOCK_SKEW_S", "5")
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    from_env = settings_from_args(parser.parse_args([]))
    assert from_env.auth_roles == (
        ("Reader", ("dicom.read",)),
        ("Writer", ("dicom.write", "dicom.read")),
    )
    assert from_env.insecure and from_env.auth_clock_skew_s == 5.0
    assert from_env.auth_api_keys == tmp_path / "keys"
    assert from_env.public_url == "https://pacs.example/dicomweb"
    flags = settings_from_args(
        parser.parse_args(
            [
                "--auth-role",
                "Admin=admin",
                "--auth-jwks",
                "https://idp.example/jwks",
                "--auth-issuer",
                "https://idp.example",
                "--auth-audience",
                "api://pacs",
                "--tls-cert",
                "c.pem",
                "--tls-key",
                "k.pem",
                "--tls-client-ca",
                "ca.pem",
                "--public-url",
                "https://other.example/dicomweb",
            ]
        )
    )
    assert flags.auth_roles == (("Admin", ("admin",)),)
    assert (flags.auth_jwks, flags.auth_issuer, flags.auth_audience) == (
        "https://idp.example/jwks",
        "https://idp.example",
        "api://pacs",
    )
    assert (flags.tls_cert, flags.tls_key, flags.tls_client_ca) == (
        Path("c.pem"),
        Path("k.pem"),
        Path("ca.pem"),
    )
    assert flags.public_url == "https://other.example/dicomweb"
    with pytest.raises(SystemExit):
        parser.parse_args(["--auth-role", "Admin=everything"])


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("127.0.0.1:8042", "127.0.0.1"),
        ("LocalHost", "localhost"),
        ("[::1]:8042", "::1"),
        ("::1", "::1"),
        ("pacs.example:443", "pacs.example"),
    ],
)
def test_host_names(value: str, name: str) -> None:
    assert host_name(value) == name


def test_the_host_rule(tmp_path: Path) -> None:
    loopback = HostPolicy(Settings(data_dir=tmp_path))
    assert loopback.allows("127.0.0.1:8042") and loopback.allows("localhost")
    assert loopback.allows("[::1]:8042") and loopback.allows(None)
    assert not loopback.allows("evil.example:8042")  # DNS rebinding
    assert not loopback.allows("10.0.0.5")
    everywhere = HostPolicy(Settings(data_dir=tmp_path, host="0.0.0.0", insecure=True))
    assert everywhere.allows("10.0.0.5:8042") and everywhere.allows("localhost")
    assert not everywhere.allows("pacs.example")
    assert "give --public-url" in everywhere.refusal("pacs.example").message
    public = HostPolicy(
        Settings(data_dir=tmp_path, host="0.0.0.0", public_url="https://PACS.example/dicomweb")
    )
    assert public.allows("pacs.example") and public.allows("pacs.example:443")
    assert public.allows("127.0.0.1:8042")
    assert not public.allows("10.0.0.5") and not public.allows("evil.example")
    one = HostPolicy(Settings(data_dir=tmp_path, host="192.0.2.7", insecure=True))
    assert one.allows("192.0.2.7:8042") and not one.allows("192.0.2.8")
