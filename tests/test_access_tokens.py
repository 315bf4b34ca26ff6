"""Access tokens verified against key sets made here: what is accepted, and why others are not."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicomrpc_server.access.tokens import KeySet, TokenVerifier
from dicomrpc_server.errors import Code, ServiceError
from tests.authgen import AUDIENCE, ISSUER, Issuer, claims, hmac_token, unsigned_token, write_jwks


@pytest.fixture(scope="module")
def rsa() -> Issuer:
    return Issuer("rsa-1")


@pytest.fixture(scope="module")
def ec() -> Issuer:
    return Issuer("ec-1", algorithm="ES256")


def verifier(
    jwks: Path | str, roles: dict[str, frozenset[str]] | None = None, **keyset: Any
) -> TokenVerifier:
    return TokenVerifier(KeySet(str(jwks), **keyset), ISSUER, AUDIENCE, 30.0, roles or {})


def problem(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(ServiceError) as refused:
        asyncio.run(verifier.verify(token))
    assert refused.value.code is Code.UNAUTHENTICATED
    assert refused.value.reason == "UNAUTHENTICATED"
    return refused.value.metadata["token_problem"]


@pytest.mark.parametrize("name", ["rsa", "ec"])
def test_rs256_and_es256_tokens_verify(name: str, rsa: Issuer, ec: Issuer, tmp_path: Path) -> None:
    issuer = {"rsa": rsa, "ec": ec}[name]
    checker = verifier(write_jwks(tmp_path / "jwks.json", rsa, ec))
    verified = asyncio.run(checker.verify(issuer.token("dicom.read openid dicom.write")))
    assert verified.subject == "user-1"
    assert verified.scopes == {"dicom.read", "dicom.write"}  # other APIs' scopes left out


def test_scp_claims_and_roles_grant_scopes(rsa: Issuer, tmp_path: Path) -> None:
    checker = verifier(
        write_jwks(tmp_path / "jwks.json", rsa),
        roles={"Radiologist": frozenset({"dicom.read", "workitems.read"})},
    )
    as_list = rsa.token(scp=["dicom.delete", "admin"])
    assert asyncio.run(checker.verify(as_list)).scopes == {"dicom.delete", "admin"}
    as_text = rsa.token(scp="workitems.write")
    assert asyncio.run(checker.verify(as_text)).scopes == {"workitems.write"}
    with_roles = rsa.token(roles=["Radiologist", "Unknown"], subject="", client_id="svc-7")
    granted = asyncio.run(checker.verify(with_roles))
    assert granted.scopes == {"dicom.read", "workitems.read"}
    assert granted.subject == "svc-7"


def test_claims_are_checked(rsa: Issuer, tmp_path: Path) -> None:
    checker = verifier(write_jwks(tmp_path / "jwks.json", rsa))
    assert problem(checker, rsa.token(lifetime=-60)) == "expired"
    # Within the allowed clock skew (30 s) an expired token still passes.
    assert asyncio.run(checker.verify(rsa.token(lifetime=-10))).subject == "user-1"
    assert problem(checker, rsa.token(nbf=int(time.time()) + 600)) == "not_yet_valid"
    assert problem(checker, rsa.token(iss="https://other.example")) == "wrong_issuer"
    assert problem(checker, rsa.token(aud="api://someone-else")) == "wrong_audience"
    assert problem(checker, rsa.token(exp=None)) == "missing_claim"
    assert problem(checker, rsa.token(sub=None)) == "missing_claim"
    assert problem(checker, "not-a-jwt.at.all") == "malformed"


def test_messages_name_the_values_at_fault(rsa: Issuer, tmp_path: Path) -> None:
    checker = verifier(write_jwks(tmp_path / "jwks.json", rsa))
    with pytest.raises(ServiceError, match=r"issuer 'https://other.example' is not"):
        asyncio.run(checker.verify(rsa.token(iss="https://other.example")))
    with pytest.raises(ServiceError, match="expired at 20"):
        asyncio.run(checker.verify(rsa.token(lifetime=-3600)))


def test_a_token_signed_by_another_key_is_refused(rsa: Issuer, tmp_path: Path) -> None:
    checker = verifier(write_jwks(tmp_path / "jwks.json", rsa))
    impostor = Issuer("rsa-1")  # the same key id, another key
    assert problem(checker, impostor.token("dicom.read")) == "bad_signature"
    assert problem(checker, Issuer("rsa-9").token("dicom.read")) == "unknown_key"


def test_alg_none_and_hmac_with_the_public_key_are_refused(rsa: Issuer, tmp_path: Path) -> None:
    checker = verifier(write_jwks(tmp_path / "jwks.json", rsa))
    assert problem(checker, unsigned_token(claims(rsa), kid="rsa-1")) == "algorithm"
    assert problem(checker, unsigned_token(claims(rsa), alg="None", kid="rsa-1")) == "algorithm"
    forged = hmac_token(claims(rsa), rsa.public_pem(), kid="rsa-1")
    assert problem(checker, forged) == "algorithm"
    # An ES256 header naming an RSA key does not verify either.
    ec_on_rsa = unsigned_token(claims(rsa), alg="ES256", kid="rsa-1") + "c2lnbmF0dXJl"
    assert problem(checker, ec_on_rsa) == "algorithm"


def test_an_hmac_key_in_the_set_verifies_nothing(rsa: Issuer, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    secret = b"shared-secret-0123456789abcdef"
    oct_key = {"kty": "oct", "kid": "hmac-1", "k": "c2hhcmVkLXNlY3JldC0wMTIzNDU2Nzg5YWJjZGVm"}
    path.write_text(json.dumps({"keys": [rsa.jwk(), oct_key]}))
    checker = verifier(path)
    assert problem(checker, hmac_token(claims(rsa), secret, kid="hmac-1")) == "algorithm"
    only_hmac = tmp_path / "hmac.json"
    only_hmac.write_text(json.dumps({"keys": [oct_key]}))
    with pytest.raises(ValueError, match="holds no RS256 or ES256 signing key"):
        KeySet(str(only_hmac))


def test_a_revoked_key_stops_its_verified_tokens(rsa: Issuer, ec: Issuer, tmp_path: Path) -> None:
    path = write_jwks(tmp_path / "jwks.json", rsa, ec)
    checker = verifier(path, refetch_interval_s=0.0, max_age_s=0.0)
    token = rsa.token("dicom.read")
    assert asyncio.run(checker.verify(token)).subject == "user-1"
    assert asyncio.run(checker.verify(token)).subject == "user-1"  # from the cache
    write_jwks(path, ec)  # rsa-1 revoked
    assert problem(checker, token) == "unknown_key"


def test_bad_key_set_files_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the key set"):
        KeySet(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        KeySet(str(bad))
    bad.write_text('{"kid": "x"}')
    with pytest.raises(ValueError, match="has no 'keys' list"):
        KeySet(str(bad))
    with pytest.raises(ValueError, match="is plain http: use https"):
        KeySet("http://idp.example/jwks")


class _JwksServer:
    """An HTTP server on loopback publishing a key set, counting its requests."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.requests = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                body = json.dumps(owner.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def jwks_server() -> Iterator[_JwksServer]:
    server = _JwksServer()
    yield server
    server.close()


@pytest.mark.slow
def test_a_url_key_set_is_fetched_again_for_a_new_key_at_a_bounded_rate(
    rsa: Issuer, ec: Issuer, jwks_server: _JwksServer
) -> None:
    jwks_server.document = {"keys": [rsa.jwk()]}
    checker = verifier(jwks_server.url, refetch_interval_s=1.0)
    rotated = Issuer("rsa-2")

    async def scenario() -> None:
        assert jwks_server.requests == 0  # fetched on first use, not at construction
        assert (await checker.verify(rsa.token("dicom.read"))).scopes == {"dicom.read"}
        assert jwks_server.requests == 1
        jwks_server.document = {"keys": [rsa.jwk(), rotated.jwk()]}
        # Right after a fetch, unknown key ids do not make the server fetch again, however many.
        made_up = [rsa.token("dicom.read", headers={"kid": f"made-up-{i}"}) for i in range(20)]
        for token in made_up:
            with pytest.raises(ServiceError, match="not in the issuer's key set"):
                await checker.verify(token)
        assert jwks_server.requests == 1
        await asyncio.sleep(1.2)
        # Once the interval has passed, a token naming the new key brings one fetch, for all.
        tokens = [rotated.token("dicom.read", subject=f"s{i}") for i in range(10)]
        results = await asyncio.gather(*(checker.verify(t) for t in tokens))
        assert {r.subject for r in results} == {f"s{i}" for i in range(10)}
        assert jwks_server.requests == 2

    asyncio.run(scenario())


def test_an_unreachable_key_set_refuses_tokens_and_is_not_hammered(
    rsa: Issuer, jwks_server: _JwksServer
) -> None:
    url = jwks_server.url
    jwks_server.close()
    checker = verifier(url, refetch_interval_s=60.0)
    assert problem(checker, rsa.token("dicom.read")) == "keys_unavailable"
    assert problem(checker, rsa.token("dicom.read")) == "keys_unavailable"
