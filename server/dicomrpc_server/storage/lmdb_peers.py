"""DIMSE peers added at run time, kept in the LMDB index.

Why this module exists: a peer added while the server runs must outlive it, and every process
sharing the environment must see it; the ``peers`` sub-database holds one record per name.
"""

from __future__ import annotations

from dicomrpc_server.storage import records_pb2
from dicomrpc_server.storage.lmdb_environment import LmdbEnvironment


class LmdbPeers(LmdbEnvironment):
    """The ``peers`` sub-database: DIMSE peers added at run time."""

    def dimse_peers(self) -> list[records_pb2.DimsePeerRecord]:
        """Every DIMSE peer added at run time, by name."""
        with self.read() as txn:
            return [
                records_pb2.DimsePeerRecord.FromString(bytes(value))
                for _, value in txn.cursor(db=self._db["peers"])
            ]

    async def put_dimse_peer(self, record: records_pb2.DimsePeerRecord) -> None:
        """Keep a DIMSE peer, replacing the one of its name."""
        key, value = record.name.encode(), record.SerializeToString()
        await self.writer.run(lambda txn: txn.put(key, value, db=self._db["peers"]))

    async def delete_dimse_peer(self, name: str) -> bool:
        """Forget a DIMSE peer; whether there was one."""
        key = name.encode()
        return bool(await self.writer.run(lambda txn: txn.delete(key, db=self._db["peers"])))
