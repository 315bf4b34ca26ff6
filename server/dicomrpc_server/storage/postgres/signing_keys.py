"""The archive's signing keys in a PostgreSQL index, shared by every node (migration step 4)."""

from __future__ import annotations

import secrets

from dicomrpc_server.storage.postgres.backend import PostgresBackend

KEY_BYTES = 32


def shared_key(backend: PostgresBackend, name: str) -> bytes:
    """The key named ``name``: written once, random, by the first node that asks; read after.

    ``ON CONFLICT DO NOTHING`` makes nodes starting together agree: one insert wins, and every
    node reads the winner's key.
    """

    async def read_or_create() -> bytes:
        async with backend.pool.acquire() as connection:
            await connection.execute(
                "INSERT INTO signing_keys (name, key) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                name,
                secrets.token_bytes(KEY_BYTES),
            )
            key: bytes = await connection.fetchval(
                "SELECT key FROM signing_keys WHERE name = $1", name
            )
            return key

    return backend.run(read_or_create())
