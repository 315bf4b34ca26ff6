"""The change log of the LMDB index: the change feed's entries, written and read.

Why this module exists: every store and delete appends an entry, under a sequence advanced in
the same write transaction, and the feed is read from a sequence on, each entry with whether
its instance is still as the entry left it.
"""

from __future__ import annotations

import struct

import lmdb

from dicomrpc_server.storage import keys, records_pb2
from dicomrpc_server.storage.lmdb_environment import LmdbEnvironment, get_value
from dicomrpc_server.storage.protocols import Change, ChangeAction, ChangeState

_ACTIONS = {
    records_pb2.CHANGE_KIND_CREATED: ChangeAction.CREATED,
    records_pb2.CHANGE_KIND_DELETED: ChangeAction.DELETED,
}


class LmdbChangeLog(LmdbEnvironment):
    """The ``changes`` sub-database: the change feed."""

    def changes(self, after: int, limit: int) -> list[Change]:
        """Change log entries with a sequence above ``after``, at most ``limit``.

        Each entry's state says whether the instance is still as the entry left it: current,
        replaced by a later version, or deleted.
        """
        out = []
        with self.read() as txn:
            cursor = txn.cursor(db=self._db["changes"])
            if cursor.set_range(keys.sequence_key(after + 1)):
                for _, value in cursor:
                    record = records_pb2.ChangeRecord.FromString(bytes(value))
                    uids = (
                        record.study_instance_uid,
                        record.series_instance_uid,
                        record.sop_instance_uid,
                    )
                    raw = get_value(txn, keys.instance_key(*uids), self._db["instances"])
                    if raw is None:
                        state = ChangeState.DELETED
                    elif records_pb2.InstanceRecord.FromString(raw).version == record.version:
                        state = ChangeState.CURRENT
                    else:
                        state = ChangeState.REPLACED
                    out.append(
                        Change(
                            sequence=record.sequence,
                            action=_ACTIONS[record.kind],
                            study_uid=uids[0],
                            series_uid=uids[1],
                            sop_uid=uids[2],
                            version=record.version,
                            time_us=record.time.ToMicroseconds(),
                            state=state,
                        )
                    )
                    if len(out) >= limit:
                        break
        return out

    def latest_change(self) -> Change | None:
        """The newest change feed entry, or ``None`` when the feed is empty."""
        with self.read() as txn:
            cursor = txn.cursor(db=self._db["changes"])
            if not cursor.last():
                return None
            sequence = struct.unpack(">Q", bytes(cursor.key()))[0]
        found = self.changes(sequence - 1, 1)
        return found[0] if found else None

    def append_change(
        self,
        txn: lmdb.Transaction,
        kind: records_pb2.ChangeKind.ValueType,
        uids: tuple[str, str, str],
        version: int,
        now_us: int,
    ) -> None:
        """Append a change feed entry, under the next change sequence, in an open write."""
        sequence = self.next_counter(txn, b"change")
        record = records_pb2.ChangeRecord(
            sequence=sequence,
            kind=kind,
            study_instance_uid=uids[0],
            series_instance_uid=uids[1],
            sop_instance_uid=uids[2],
            version=version,
        )
        record.time.FromMicroseconds(now_us)
        txn.put(keys.sequence_key(sequence), record.SerializeToString(), db=self._db["changes"])
