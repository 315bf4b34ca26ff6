"""The shared PostgreSQL index: several nodes serving one archive from one database.

:mod:`.backend` is the connection layer every PostgreSQL role builds on (a pool on a loop of
its own, retried transactions, errors as UNAVAILABLE), :mod:`.migrations` the schema steps
applied at start, :mod:`.notify` the commit wake-ups between nodes. The instance index is
:mod:`.index` (with the extended query tags' writes in :mod:`.query_tags`); the workitem
records live next to their LMDB counterpart (:mod:`dicomrpc_server.ups.postgres_store`).
"""

from dicomrpc_server.storage.postgres.backend import PostgresBackend

__all__ = ["PostgresBackend"]
