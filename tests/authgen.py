"""Keys, key sets, tokens and certificates made in the test, as an identity provider would.

Token issuers sign with RSA (RS256) or EC P-256 (ES256) keys made here; their public halves are
published as a JSON Web Key Set file the server reads. TLS certificates come from a CA made by
``trustme``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://login.example.test/tenant"
AUDIENCE = "api://dicomrpc-test"


@dataclass
class Issuer:
    """A token issuer: a signing key, its key id, and the claims it puts in every token."""

    kid: str
    algorithm: str = "RS256"
    issuer: str = ISSUER
    audience: str = AUDIENCE
    key: Any = field(default=None)

    def __post_init__(self) -> None:
        if self.key is None:
            self.key = (
                rsa.generate_private_key(public_exponent=65537, key_size=2048)
                if self.algorithm == "RS256"
                else ec.generate_private_key(ec.SECP256R1())
            )

    def jwk(self) -> dict[str, Any]:
        exporter = RSAAlgorithm if self.algorithm == "RS256" else ECAlgorithm
        entry: dict[str, Any] = exporter.to_jwk(self.key.public_key(), as_dict=True)
        entry.update(kid=self.kid, use="sig", alg=self.algorithm)
        return entry

    def public_pem(self) -> bytes:
        return bytes(
            self.key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def token(
        self,
        scope: str = "",
        *,
        subject: str = "user-1",
        lifetime: float = 3600,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "iat": now,
            "exp": int(now + lifetime),
        }
        if scope:
            payload["scope"] = scope
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(
            payload,
            self.key,
            algorithm=self.algorithm,
            headers={"kid": self.kid, **(headers or {})},
        )


def write_jwks(path: Path, *issuers: Issuer) -> Path:
    path.write_text(json.dumps({"keys": [i.jwk() for i in issuers]}))
    return path


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(claims: dict[str, Any], alg: str = "none", kid: str | None = None) -> str:
    """A token with ``alg: none`` and no signature (RFC 7519 §6)."""
    header = {"alg": alg, "typ": "JWT", **({"kid": kid} if kid else {})}
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."


def hmac_token(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    """A token signed HS256 with ``secret`` (an attacker's use of a public key as the secret)."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(signature)}"


def claims(issuer: Issuer, scope: str = "dicom.read", lifetime: float = 3600) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": issuer.issuer,
        "aud": issuer.audience,
        "sub": "attacker",
        "exp": now + int(lifetime),
        "scope": scope,
    }


@dataclass
class Pki:
    """A CA made by trustme, a server certificate for loopback and a client certificate."""

    folder: Path
    ca: Any
    ca_pem: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_subject: str


def make_pki(folder: Path, client: str = "ingest-service") -> Pki:
    import trustme
    from cryptography import x509

    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost", "::1")
    user = ca.issue_cert(
        f"{client}.hospital.example", common_name=client, organization_name="Hospital"
    )
    paths = {
        name: folder / f"{name}.pem"
        for name in ("ca", "server", "server-key", "client", "client-key")
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    paths["server"].write_bytes(b"".join(p.bytes() for p in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(paths["server-key"]))
    paths["client"].write_bytes(b"".join(p.bytes() for p in user.cert_chain_pems))
    user.private_key_pem.write_to_path(str(paths["client-key"]))
    subject = x509.load_pem_x509_certificate(user.cert_chain_pems[0].bytes()).subject
    return Pki(
        folder,
        ca,
        paths["ca"],
        paths["server"],
        paths["server-key"],
        paths["client"],
        paths["client-key"],
        subject.rfc4514_string(),
    )


def access_record(caplog: Any, match: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
    """The first ``dicomrpc.access`` line holding ``match``, waited for: an HTTP line is written
    once the response is sent, so it may trail the client a little."""
    deadline = time.monotonic() + timeout
    while True:
        for record in caplog.records:
            if record.name == "dicomrpc.access":
                line: dict[str, Any] = json.loads(record.getMessage())
                if match.items() <= line.items():
                    return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no access log line with {match}")
        time.sleep(0.02)
