"""Bearer tokens: OAuth 2.0 / OpenID Connect JWT access tokens, verified locally.

Signatures are checked with PyJWT (on ``cryptography``) against the issuer's JSON Web Key Set,
read from a file or fetched from an ``https://`` URL. Only RS256 and ES256 are accepted, each
only with a key of its own type (RSA, EC P-256): ``alg: none`` and HMAC signed with a public
key (RFC 8725 §2.1, §3.1) never verify. ``exp``, ``iss`` and ``aud`` are required; ``exp``
and ``nbf`` are checked with a small clock skew.

The key set is kept, and fetched again when a token names a key it lacks (the issuer rotated
its keys), at most once per :data:`REFETCH_INTERVAL_S` so that tokens with made-up key ids
cannot make the server hammer the issuer, and when it is older than :data:`MAX_AGE_S`. A
verified token is remembered until it expires, so that a client's calls cost one signature
check per token, not one per call.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from dicomrpc_server.access.scopes import SCOPES
from dicomrpc_server.access.setup import is_loopback
from dicomrpc_server.errors import Code, ServiceError

log = logging.getLogger(__name__)

ALGORITHMS: Mapping[str, str] = {"RS256": "RSA", "ES256": "EC"}
"""The accepted signature algorithms and the key type (``kty``) each needs."""

REFETCH_INTERVAL_S = 30.0
MAX_AGE_S = 3600.0
FETCH_TIMEOUT_S = 10.0
MAX_JWKS_BYTES = 1024 * 1024
CACHE_SIZE = 4096

TOKEN_PROBLEM = "token_problem"
"""The ErrorInfo metadata key saying what is wrong with a refused credential."""


def unauthenticated(problem: str, message: str, **metadata: str) -> ServiceError:
    """The error of missing or invalid credentials; ``problem`` is machine-readable.

    Problems: ``missing``, ``malformed``, ``expired``, ``not_yet_valid``, ``wrong_issuer``,
    ``wrong_audience``, ``bad_signature``, ``unknown_key``, ``algorithm``, ``missing_claim``,
    ``keys_unavailable``, ``unknown_api_key``.
    """
    return ServiceError(
        Code.UNAUTHENTICATED,
        "UNAUTHENTICATED",
        message,
        metadata={TOKEN_PROBLEM: problem, **metadata},
    )


@dataclass(frozen=True)
class VerifiedToken:
    """What a verified token says about its bearer."""

    subject: str
    scopes: frozenset[str]
    expires: float


def _fetch(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as response:
        data: bytes = response.read(MAX_JWKS_BYTES + 1)
    if len(data) > MAX_JWKS_BYTES:
        raise ValueError(f"the key set at {url} is larger than {MAX_JWKS_BYTES} bytes")
    return data


@dataclass(frozen=True)
class SigningKeys:
    """The usable keys of one key set document, and what tells two documents apart."""

    by_id: dict[str | None, jwt.PyJWK]
    fingerprint: frozenset[str]


def parse_key_set(data: bytes, source: str) -> SigningKeys:
    """The signing keys of a JWKS document (RFC 7517), by key id: RS256 and ES256 keys only.

    Keys for encryption (``use: enc``), of other types or algorithms are left out, so that
    an ``oct`` (HMAC) key in the set can never verify a token.

    Raises
    ------
    ValueError
        Naming ``source`` when the document is not a key set or holds no usable key.
    """
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"the key set {source} is not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError(f"the key set {source} has no 'keys' list (RFC 7517 §5)")
    keys: dict[str | None, jwt.PyJWK] = {}
    fingerprint: set[str] = set()
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        except jwt.PyJWTError as exc:
            log.warning("key %s of %s left out: %s", entry.get("kid"), source, exc)
            continue
        if ALGORITHMS.get(key.algorithm_name) != key.key_type:
            continue
        keys[key.key_id] = key
        fingerprint.add(json.dumps(entry, sort_keys=True))
    if not keys:
        raise ValueError(f"the key set {source} holds no RS256 or ES256 signing key")
    return SigningKeys(keys, frozenset(fingerprint))


class KeySet:
    """The token issuer's signing keys, from a file or an ``https://`` URL.

    Parameters
    ----------
    location
        A file path, or a URL (``https://``; ``http://`` only on loopback, where no one can
        tamper with the keys on their way). A file is read now, a URL on first use.
    refetch_interval_s
        The least time between two reads for an unknown key id.
    max_age_s
        How long a read set is used before it is read again.
    """

    def __init__(
        self,
        location: str,
        refetch_interval_s: float = REFETCH_INTERVAL_S,
        max_age_s: float = MAX_AGE_S,
    ) -> None:
        self.location = location
        self.refetch_interval_s = refetch_interval_s
        self.max_age_s = max_age_s
        parsed = urllib.parse.urlsplit(location)
        self.is_url = parsed.scheme in ("http", "https")
        if parsed.scheme == "http" and not is_loopback(parsed.hostname or ""):
            raise ValueError(
                f"the key set URL {location} is plain http: use https (http is accepted on "
                "loopback only)"
            )
        self.version = 0
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fingerprint: frozenset[str] = frozenset()
        self._loaded_at = -float("inf")
        self._lock = asyncio.Lock()
        if not self.is_url:
            self._install(self._read_file())

    def _read_file(self) -> SigningKeys:
        try:
            data = Path(self.location).read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read the key set {self.location}: {exc.strerror}") from None
        return parse_key_set(data, self.location)

    def _load(self) -> SigningKeys:
        if self.is_url:
            return parse_key_set(_fetch(self.location), self.location)
        return self._read_file()

    def _install(self, keys: SigningKeys) -> None:
        # Tokens verified with a key that is gone (revoked) or changed must be checked again.
        if keys.fingerprint != self._fingerprint:
            self.version += 1
        self._keys, self._fingerprint = keys.by_id, keys.fingerprint
        self._loaded_at = time.monotonic()

    async def _reload(self, why: str) -> None:
        """Read the set again (one reader at a time); on failure keep the keys held."""
        async with self._lock:
            if time.monotonic() - self._loaded_at < self.refetch_interval_s:
                return  # another call just did
            try:
                keys = await asyncio.to_thread(self._load)
            except (OSError, ValueError) as exc:
                # Not again before the interval either: a failing issuer is not hammered.
                self._loaded_at = time.monotonic()
                log.error("cannot read the key set %s (%s): %s", self.location, why, exc)
                return
            self._install(keys)
            log.info("key set %s read (%s): %d keys", self.location, why, len(keys.by_id))

    async def current_version(self) -> int:
        """The version of the set in force, read again first when it is older than its age.

        Verified tokens are remembered with the version they were verified under, and no
        longer count once it changes: a key removed from the set (revoked) stops its tokens.
        """
        if time.monotonic() - self._loaded_at > self.max_age_s:
            await self._reload("expired")
        return self.version

    async def key(self, kid: str | None) -> jwt.PyJWK:
        """The key a token's header names.

        A token without ``kid`` is verified with the set's only key, when it has one.

        Raises
        ------
        ServiceError
            UNAUTHENTICATED when the set (fetched again if allowed) has no such key.
        """
        age = time.monotonic() - self._loaded_at
        if age > self.max_age_s:
            await self._reload("expired")
        elif kid not in self._keys and age >= self.refetch_interval_s:
            await self._reload(f"unknown key id {kid!r}")
        if not self._keys:
            raise unauthenticated(
                "keys_unavailable",
                f"the token issuer's key set {self.location} could not be read; the token "
                "cannot be verified now",
            )
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        found = self._keys.get(kid)
        if found is None:
            raise unauthenticated(
                "unknown_key",
                f"the bearer token names the key {kid!r}, which is not in the issuer's key set",
                kid=str(kid),
            )
        return found


def _claim_values(value: Any) -> list[str]:
    """A claim that holds names: a space-separated string, or a list of strings."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


class TokenVerifier:
    """Verifies access tokens and says what they grant.

    Parameters
    ----------
    keys
        The issuer's key set.
    issuer, audience
        The ``iss`` every token must carry and the ``aud`` it must include.
    leeway_s
        The clock skew allowed on ``exp`` and ``nbf``.
    roles
        Role → scopes, for tokens with a ``roles`` claim.
    """

    def __init__(
        self,
        keys: KeySet,
        issuer: str,
        audience: str,
        leeway_s: float,
        roles: Mapping[str, frozenset[str]],
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.leeway_s = leeway_s
        self.roles = roles
        self._cache: dict[str, tuple[VerifiedToken, int]] = {}

    async def verify(self, token: str) -> VerifiedToken:
        """Verify ``token``: signature, algorithm, ``exp``, ``nbf``, ``iss``, ``aud``.

        Raises
        ------
        ServiceError
            UNAUTHENTICATED, with a message and ``token_problem`` saying what is wrong.
        """
        version = await self.keys.current_version()
        cached = self._cache.get(token)
        if cached is not None:
            verified, verified_version = cached
            if verified_version == version and time.time() <= verified.expires + self.leeway_s:
                return verified
            del self._cache[token]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise unauthenticated(
                "malformed", f"the bearer token is not a well-formed JWT: {exc}"
            ) from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
            raise unauthenticated(
                "algorithm",
                f"the bearer token is signed with {algorithm!r}; only "
                f"{' and '.join(ALGORITHMS)} are accepted",
                alg=str(algorithm),
            )
        kid = header.get("kid")
        key = await self.keys.key(kid if isinstance(kid, str) else None)
        if ALGORITHMS[algorithm] != key.key_type:
            raise unauthenticated(
                "algorithm",
                f"the bearer token is signed with {algorithm}, which does not go with the "
                f"{key.key_type} key {kid!r}",
                alg=algorithm,
            )
        version = self.keys.version
        claims = self._decode(token, key, algorithm)
        verified = self._grant(claims)
        if len(self._cache) >= CACHE_SIZE:
            self._evict()
        self._cache[token] = (verified, version)
        return verified

    def _decode(self, token: str, key: jwt.PyJWK, algorithm: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            expires = _unverified(token).get("exp")
            when = (
                datetime.datetime.fromtimestamp(expires, datetime.UTC).isoformat()
                if isinstance(expires, int | float)
                else "?"
            )
            raise unauthenticated(
                "expired",
                f"the bearer token expired at {when} (clock skew allowed: "
                f"{self.leeway_s:g} s); get a new one",
                expired_at=when,
            ) from None
        except (jwt.ImmatureSignatureError, jwt.InvalidIssuedAtError):
            raise unauthenticated(
                "not_yet_valid",
                f"the bearer token is not valid yet (nbf or iat in the future, beyond the "
                f"{self.leeway_s:g} s of clock skew allowed)",
            ) from None
        except jwt.InvalidIssuerError:
            issuer = _unverified(token).get("iss")
            raise unauthenticated(
                "wrong_issuer",
                f"the bearer token's issuer {issuer!r} is not the one this server trusts "
                f"({self.issuer!r})",
                issuer=str(issuer),
            ) from None
        except jwt.InvalidAudienceError:
            audience = _unverified(token).get("aud")
            raise unauthenticated(
                "wrong_audience",
                f"the bearer token's audience {audience!r} does not include this server's "
                f"({self.audience!r})",
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise unauthenticated(
                "missing_claim",
                f"the bearer token has no {exc.claim!r} claim",
                claim=exc.claim,
            ) from None
        except jwt.InvalidSignatureError:
            raise unauthenticated(
                "bad_signature",
                f"the bearer token's signature does not verify with the issuer's key "
                f"{key.key_id!r}",
            ) from None
        except jwt.PyJWTError as exc:
            raise unauthenticated("malformed", f"the bearer token is not valid: {exc}") from None
        return claims

    def _grant(self, claims: Mapping[str, Any]) -> VerifiedToken:
        """The bearer's identity and scopes: ``scope``/``scp``, and ``roles`` mapped."""
        subject = next(
            (
                claims[name]
                for name in ("sub", "client_id", "azp", "appid")
                if isinstance(claims.get(name), str) and claims[name]
            ),
            None,
        )
        if subject is None:
            raise unauthenticated(
                "missing_claim", "the bearer token names no subject (sub)", claim="sub"
            )
        granted = set(_claim_values(claims.get("scope"))) | set(_claim_values(claims.get("scp")))
        for role in _claim_values(claims.get("roles")):
            granted |= self.roles.get(role, frozenset())
        return VerifiedToken(subject, frozenset(granted) & SCOPES, float(claims["exp"]))

    def _evict(self) -> None:
        """Make room: drop expired tokens, then the oldest half if that is not enough."""
        now = time.time()
        for token in [t for t, (v, _) in self._cache.items() if v.expires + self.leeway_s < now]:
            del self._cache[token]
        if len(self._cache) >= CACHE_SIZE:
            for token in list(self._cache)[: CACHE_SIZE // 2]:
                del self._cache[token]


def _unverified(token: str) -> dict[str, Any]:
    """A token's claims without verification, to name values in an error message."""
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return claims
