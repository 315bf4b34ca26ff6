"""The workitem role: what the workitem core needs of the storage that keeps workitems.

The core (:mod:`.service`) decides; a :class:`WorkitemRecords` keeps the data sets, their index
terms and the event log, and applies one decision atomically (:meth:`WorkitemRecords.mutate`):
read the workitem, decide, write the new data set with its terms and its event, commit, all
with no other change of that workitem in between. That is what makes a claim race have exactly
one winner, whatever the storage: LMDB (:mod:`.store`) serializes write transactions;
PostgreSQL (:mod:`.postgres_store`) locks the workitem's row, across the nodes sharing it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from dicomrpc.v1 import dataset_pb2
from dicomrpc.v1 import workitem_service_pb2 as pb
from dicomrpc_server.query.engine import MatchTerm

T = TypeVar("T")
# An event, with the index terms its workitem had after the change (what a subscription's
# filter is matched against).
Event = tuple[pb.SubscribeWorkitemsResponse, list[tuple[int, bytes]]]


@dataclass(frozen=True)
class Mutation(Generic[T]):
    """What a decision about one workitem changes.

    Attributes
    ----------
    result
        What :meth:`WorkitemRecords.mutate` returns to the caller.
    workitem
        The new data set, or ``None`` to write nothing (the workitem is as asked already).
    events
        The events the change makes, in order (each given its sequence when it is written).
    """

    result: T
    workitem: dataset_pb2.Dataset | None = None
    events: tuple[pb.SubscribeWorkitemsResponse, ...] = ()


class WorkitemRecords(Protocol):
    """Workitems, their search entries and their event log."""

    def get(self, uid: str) -> dataset_pb2.Dataset | None:
        """A workitem as stored (with its lock), or ``None``."""

    def search(
        self, terms: list[MatchTerm], fuzzy: bool, offset: int, limit: int
    ) -> list[dataset_pb2.Dataset]:
        """The workitems matching every term (all without terms), in UID order, one page."""

    def last_sequence(self) -> int:
        """The sequence of the newest committed event (0 when there is none)."""

    def events_after(self, after: int, limit: int) -> list[Event]:
        """Up to ``limit`` events with a sequence above ``after``, in order."""

    async def mutate(
        self, uid: str, decide: Callable[[dataset_pb2.Dataset | None], Mutation[T]]
    ) -> T:
        """Apply ``decide`` to one workitem atomically (see :class:`Mutation`)."""

    def on_commit(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every commit, this process's or another's."""
