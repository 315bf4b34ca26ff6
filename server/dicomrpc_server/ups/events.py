"""Workitem subscriptions: live, filtered, resumable, and unable to stall the server.

Every change writes its event in the same transaction (:mod:`.store`), numbered by a sequence.
After each commit that wrote events, this process's or another's (see
:mod:`~dicomrpc_server.storage.wakeups`), the hub reads them once and hands them to the event
loop of each subscriber, which offers them to the subscriptions that want them. Each
subscription has a bounded queue: a subscriber that stops reading costs at most that much
memory, and never slows a commit. When its queue overflows, the events it turned away are read
from the log once the subscriber has taken what was queued, if it is then within the queue's
size of the newest event (a burst handed on at once); further behind, the subscription ends
with RESOURCE_EXHAUSTED (``SUBSCRIBER_TOO_SLOW``), naming the sequence to resume from; the
events it missed are still in the log, and a subscription with ``since`` replays them from
there.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from dicomrpc.v1 import workitem_service_pb2 as pb
from dicomrpc_server.errors import Code, ServiceError, invalid_argument
from dicomrpc_server.query.engine import MatchTerm
from dicomrpc_server.ups.index import TermSet, match_terms
from dicomrpc_server.ups.records import Event, WorkitemRecords

REPLAY_PAGE = 256


@dataclass(eq=False)
class Subscription:
    """One subscriber: what it follows, its loop, and its bounded queue."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[pb.SubscribeWorkitemsResponse]
    workitem_uid: str
    terms: list[MatchTerm] = field(default_factory=list)
    overflowed: bool = False

    def wants(self, event: pb.SubscribeWorkitemsResponse, terms: list[tuple[int, bytes]]) -> bool:
        """Whether the event is about a workitem this subscription follows."""
        if self.workitem_uid and event.workitem_uid != self.workitem_uid:
            return False
        if not self.terms:
            return True
        return TermSet(event.workitem_uid.encode("ascii"), terms).matches(self.terms, False)

    def offer(self, event: pb.SubscribeWorkitemsResponse) -> None:
        """Queue an event, or mark the subscription overflowed (on its own loop)."""
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True


class EventHub:
    """Publishes committed workitem events to the subscriptions of every event loop.

    Parameters
    ----------
    store
        The workitem records (and event log), whose index's commits are watched.
    queue_size
        The most events a subscription may have waiting before it is ended.
    """

    def __init__(self, store: WorkitemRecords, queue_size: int) -> None:
        self.store = store
        self.queue_size = queue_size
        self._subscriptions: set[Subscription] = set()
        self._lock = threading.Lock()
        # Held while events are read and handed on: commits here and wake-ups from other
        # processes call in from two threads, and each event must be handed on once, in order.
        self._publishing = threading.Lock()
        # The sequence of the last event handed on; None while nobody subscribes, when there
        # is nothing to hand on and the log is not read at each commit (with a PostgreSQL
        # index that read is a round trip per commit, every store's included).
        self._published: int | None = None
        store.on_commit(self._committed)

    def _committed(self) -> None:
        """After a commit (this process's or another's): read new events once, hand them on."""
        with self._publishing:
            if self._published is None:
                return  # nobody to tell: a subscription reads the log from where it starts
            entries = self.store.events_after(self._published, 1 << 30)
            if not entries:
                return
            self._published = entries[-1][0].sequence
            with self._lock:
                subscriptions = list(self._subscriptions)
            for loop in {s.loop for s in subscriptions}:
                loop.call_soon_threadsafe(self._fan_out, loop, entries)

    def _fan_out(self, loop: asyncio.AbstractEventLoop, entries: list[Event]) -> None:
        with self._lock:
            subscriptions = [s for s in self._subscriptions if s.loop is loop]
        for subscription in subscriptions:
            for event, terms in entries:
                if subscription.wants(event, terms):
                    subscription.offer(event)

    async def follow(
        self, workitem_uid: str, filter_: Mapping[str, str], since: int | None
    ) -> AsyncIterator[pb.SubscribeWorkitemsResponse]:
        """The events of one workitem, of all, or of those matching ``filter_``, in order.

        With ``since`` the events after that sequence are replayed first (0: the whole log, as
        the change feed's ``since`` means); with None only events after the call are sent.
        Ends with RESOURCE_EXHAUSTED when the subscriber falls more than the queue size behind.
        """
        if since is not None and since < 0:
            raise invalid_argument("since", f"{since} is negative")
        if workitem_uid and filter_:
            raise invalid_argument("filter", "follows all workitems; leave workitem_uid empty")
        subscription = Subscription(
            asyncio.get_running_loop(),
            asyncio.Queue(self.queue_size),
            workitem_uid,
            match_terms(filter_),
        )
        # Registered before the log is read: an event committed meanwhile is either in the
        # replay or in the queue (or both, and then skipped by its sequence). The first
        # subscription starts the handing on from the newest event, under the publishing lock,
        # so that no commit's events are read between the two: those committed before are in
        # the log, those after are handed on.
        with self._publishing:
            if self._published is None:
                self._published = self.store.last_sequence()
            with self._lock:
                self._subscriptions.add(subscription)
        try:
            cursor = self.store.last_sequence() if since is None else since
            replaying = True
            while True:
                if replaying:
                    wanted, cursor, replaying = self._replay_page(subscription, cursor)
                    for event in wanted:
                        yield event
                    continue
                if subscription.overflowed and subscription.queue.empty():
                    # Events were turned away from the full queue, but the log has them. A
                    # subscriber still within the queue's size of the newest event was only
                    # handed a burst at once (wake-ups from another process or node bring
                    # every event committed since the last one): it catches up from the log.
                    # One further behind is ended, and resumes with since.
                    if self.store.last_sequence() - cursor > self.queue_size:
                        raise too_slow(self.queue_size, cursor)
                    subscription.overflowed = False
                    replaying = True
                    continue
                event = await subscription.queue.get()
                if event.sequence <= cursor:
                    continue
                cursor = event.sequence
                yield event
        finally:
            with self._publishing, self._lock:
                self._subscriptions.discard(subscription)
                if not self._subscriptions:
                    self._published = None

    def _replay_page(
        self, subscription: Subscription, cursor: int
    ) -> tuple[list[pb.SubscribeWorkitemsResponse], int, bool]:
        """One page of the log after ``cursor``.

        The events ``subscription`` wants, the sequence the page ends at (wanted or not), and
        whether more may follow.
        """
        page = self.store.events_after(cursor, REPLAY_PAGE)
        wanted = [event for event, terms in page if subscription.wants(event, terms)]
        end = page[-1][0].sequence if page else cursor
        return wanted, end, len(page) == REPLAY_PAGE

    @property
    def subscriber_count(self) -> int:
        """How many subscriptions are open."""
        with self._lock:
            return len(self._subscriptions)


def too_slow(queue_size: int, cursor: int) -> ServiceError:
    """The error ending a subscription whose queue overflowed."""
    return ServiceError(
        Code.RESOURCE_EXHAUSTED,
        "SUBSCRIBER_TOO_SLOW",
        f"the subscriber fell more than {queue_size} events behind and was ended; "
        f"subscribe again with since={cursor} to resume without loss",
        metadata={"since": str(cursor), "queue_size": str(queue_size)},
    )
