"""The API key file: its lines, keys drawn and revoked, and a running server's view of it."""

from __future__ import annotations

import hashlib
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dicomrpc_server.access import api_keys
from dicomrpc_server.access.api_keys import ApiKeyFile, create, parse, revoke


def test_created_keys_are_found_and_only_their_digest_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    ingest = create(path, "ingest-bot", ["dicom.write", "dicom.read"])
    viewer = create(path, "viewer", ["dicom.read"])
    assert ingest.startswith("dicomrpc_") and len(ingest) > 40 and ingest != viewer
    text = path.read_text()
    assert ingest not in text and viewer not in text
    assert hashlib.sha256(ingest.encode()).hexdigest() in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keys = ApiKeyFile(path)
    found = keys.find(ingest)
    assert found is not None
    assert (found.name, found.scopes) == ("ingest-bot", {"dicom.write", "dicom.read"})
    assert keys.find(viewer) is not None and keys.find(viewer).name == "viewer"  # type: ignore[union-attr]
    assert keys.find(ingest + "x") is None
    assert keys.find("") is None


def test_a_name_is_used_once_and_scopes_must_exist(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    create(path, "svc", ["admin"])
    with pytest.raises(ValueError, match="has a key named 'svc' already"):
        create(path, "svc", ["dicom.read"])
    with pytest.raises(ValueError, match=r"unknown scopes dicom.everything"):
        create(path, "other", ["dicom.everything"])
    with pytest.raises(ValueError, match="has characters other than"):
        create(path, "two words", ["dicom.read"])
    assert [k.name for k in ApiKeyFile(path).keys] == ["svc"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("svc dicom.read", "expected NAME SCOPES SHA256, found 2 fields"),
        ("svc dicom.read abc", "'abc' is not a hex SHA-256"),
        ("svc dicom.reed " + "0" * 64, "unknown scopes dicom.reed"),
        ("svc , " + "0" * 64, "unknown scopes (none given)"),
    ],
)
def test_bad_lines_are_named(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"keys line 3: {message}")):
        parse(f"# comment\n\n{line}\n", "keys")


def test_revoked_keys_and_new_keys_reach_a_running_reader(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    first = create(path, "first", ["dicom.read"])
    reader = ApiKeyFile(path, check_interval_s=0.0)
    assert reader.find(first) is not None
    second = create(path, "second", ["dicom.read"])
    assert reader.find(second) is not None
    assert revoke(path, "first")
    assert not revoke(path, "first")
    assert reader.find(first) is None
    assert reader.find(second) is not None


def test_a_broken_file_keeps_the_keys_read_before(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    key = create(path, "svc", ["dicom.read"])
    reader = ApiKeyFile(path, check_interval_s=0.0)
    path.write_text("svc dicom.read not-a-digest\n")
    assert reader.find(key) is not None


def test_the_file_is_looked_at_no_more_than_once_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    create(path, "first", ["dicom.read"])
    reader = ApiKeyFile(path, check_interval_s=3600.0)
    later = create(path, "later", ["dicom.read"])
    assert reader.find(later) is None


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot read the API key file .*missing"):
        ApiKeyFile(tmp_path / "missing")


@pytest.mark.slow
def test_the_cli_prints_the_key_once_and_lists_and_revokes(tmp_path: Path) -> None:
    path = tmp_path / "keys"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dicomrpc.cli", "api-key", *args, "--file", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    made = cli("create", "pacs-sync", "--scopes", "dicom.read,dicom.write")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith(api_keys.KEY_PREFIX)
    assert "shown this once" in made.stderr
    assert ApiKeyFile(path).find(key) is not None
    assert cli("list").stdout.splitlines() == ["pacs-sync dicom.read,dicom.write"]
    refused = cli("create", "x", "--scopes", "dicom.all")
    assert refused.returncode == 2 and "unknown scopes dicom.all" in refused.stderr
    assert cli("revoke", "pacs-sync").returncode == 0
    assert cli("revoke", "pacs-sync").returncode == 1
    assert ApiKeyFile(path).find(key) is None
