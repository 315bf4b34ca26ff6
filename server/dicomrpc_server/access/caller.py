"""The caller of a request, as every adapter hands it to what checks and records access."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    """Who is calling: what the audit trail records and what scopes are checked against."""

    identity: str  # token `sub`, API key name, certificate subject, or "anonymous"
    kind: str  # "token" | "api-key" | "certificate" | "anonymous"
    scopes: frozenset[str]
    address: str  # the client's address, "ip:port"
