"""The embedded index: one LMDB environment with a named sub-database per kind of record.

Why this module exists: the storage roles (:mod:`.protocols`) expect one index object, and
:class:`LmdbIndex` is it, composed of the parts that each keep one kind of record:

* :mod:`.lmdb_environment`: the environment, its sub-databases (listed there), read
  transactions, map growth, commit listeners;
* :mod:`.lmdb_records`: study, series and instance records, stored and deleted;
* :mod:`.lmdb_terms`: the term store that searches scan;
* :mod:`.lmdb_changes`: the change log;
* :mod:`.lmdb_query_tags`: the extended query tags and their re-indexing;
* :mod:`.lmdb_peers`: DIMSE peers added at run time.

Workitems and their events are kept by :mod:`..ups.store` in sub-databases of the same
environment.
"""

from __future__ import annotations

from dicomrpc_server.storage.lmdb_peers import LmdbPeers
from dicomrpc_server.storage.lmdb_records import LmdbRecords


class LmdbIndex(LmdbRecords, LmdbPeers):
    """The :class:`~dicomrpc_server.storage.protocols.Index` on LMDB, made of the parts above.

    Opened as :class:`~.lmdb_environment.LmdbEnvironment` says, with its parameters.
    """
