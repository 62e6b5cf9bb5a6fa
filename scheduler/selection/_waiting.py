"""Selects waiting for a free slot: one queue per bucket, woken one at a time.

A release frees one slot of one account. Waking every waiter of the platform
for it (as a shared event did) sent all of them after that one slot at once:
200 waiters made ~200 acquire attempts per release, 199 of them refused, exactly
when the bucket is full and the loop must stay calm. Here a release wakes the
oldest waiter of each bucket that holds the account, and tells it which
account it was; a woken waiter that cannot use the slot (its model does not
match, say) while the slot is still free passes the wake-up on to the next.

Nothing is lost if a wake-up goes astray (a woken request cancelled by its
client): every waiter also retries on its own every ``wait.retry_interval_ms``.
Waiters are served in arrival order: a woken waiter that lost the slot to a
newcomer is queued again in its old place.
"""

from __future__ import annotations

import bisect
import itertools

import trio

from snapshot.keys import Bucket

from .model import BucketSnapshots


class _Waiter:
    __slots__ = ("account_id", "event", "ticket")

    def __init__(self, ticket: int) -> None:
        self.ticket = ticket
        self.event = trio.Event()
        self.account_id: str | None = None

    def __lt__(self, other: _Waiter) -> bool:
        return self.ticket < other.ticket


class WaitQueues:
    """Per-bucket queues of waiting selects, in arrival order."""

    def __init__(self, snapshots: BucketSnapshots) -> None:
        self._snapshots = snapshots
        self._queues: dict[Bucket, list[_Waiter]] = {}
        self._tickets = itertools.count()
        # Selects waiting right now (tests synchronise on it).
        self.waiting = 0

    def ticket(self) -> int:
        """An arrival number: pass it to every :meth:`wait` of one select."""
        return next(self._tickets)

    def wake(self, platform: str, account_id: str) -> None:
        """A slot of ``account_id`` is free: wake the oldest waiter of each bucket holding it."""
        for bucket, queue in self._queues.items():
            if not queue or bucket.platform.value != platform:
                continue
            snap = self._snapshots.get(bucket)
            if snap is not None and account_id in snap.by_id:
                self.pass_on(bucket, account_id)

    def pass_on(self, bucket: Bucket, account_id: str) -> None:
        """Wake the oldest waiter of ``bucket`` for a free slot of ``account_id`` (if any waits)."""
        queue = self._queues.get(bucket)
        if queue:
            waiter = queue.pop(0)
            waiter.account_id = account_id
            waiter.event.set()

    async def wait(self, bucket: Bucket, ticket: int, until: float) -> str | None:
        """Wait for a release of one of the bucket's accounts, at most until ``until`` (trio time).

        Returns the account whose release woke us, or None when the time ran out.
        """
        waiter = _Waiter(ticket)
        queue = self._queues.setdefault(bucket, [])
        bisect.insort(queue, waiter)
        self.waiting += 1
        try:
            with trio.move_on_at(until):
                await waiter.event.wait()
            return waiter.account_id
        finally:
            self.waiting -= 1
            if waiter.account_id is None:
                queue.remove(waiter)
            if not queue and self._queues.get(bucket) is queue:
                del self._queues[bucket]
