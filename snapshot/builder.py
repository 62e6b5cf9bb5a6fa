"""SnapshotBuilder: the actor that turns ``schedule_events`` into published snapshots.

Woken by PostgreSQL ``LISTEN schedule_events`` and by a poll (default 1 s, the
safety net for a missed notification), it reads the pending events, deduplicates
them into dirty buckets (a NULL bucket means every bucket), and rebuilds each
dirty bucket once with :func:`~snapshot.schedule.set_snapshot` (PostgreSQL read
under the bucket's lock). An event is marked consumed only after its bucket's
new version was activated; when another instance holds the lock (BUSY) or the
activation lost (STALE/FENCED/MISSING) the event stays pending and the next round
retries, so no change is lost to a race. Every bucket is rebuilt at start-up
and every ``full_rebuild_s`` (default 300 s).

Healing: every ``heal_s`` (default 1 s) two pipelined round trips check that each
bucket this builder knows still has an active version in Redis, and that its keys
are there; one that vanished, whole or in part (Redis
restarted empty, a flush, a failover that lost it) is rebuilt at once, under a
new epoch (see :mod:`snapshot.keys`) that every view follows, instead of waiting
for the next account change or full rebuild.

Housekeeping: consumed events older than :data:`EVENT_RETENTION_S` are deleted
every :data:`PRUNE_EVERY_S`, :data:`PRUNE_BATCH` rows per statement.

Each publish reports to the observer with the lag: the age of the oldest event
of the bucket when its version became active.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
import structlog
import trio

from accounts.db import Database
from accounts.errors import StoreUnavailable
from accounts.model import Platform

from .keys import NO_VERSION, Bucket, Stamp
from .observer import NullObserver, ScheduleObserver
from .redis import RedisStore
from .schedule import PublishOutcome, PublishResult, lost_snapshots, set_snapshot
from .source import AccountSource
from .tunable import Tunable, current

log = structlog.get_logger("snapshot.builder")

CHANNEL = "schedule_events"
# Events read per round; a burst beyond this is picked up by the next round.
EVENT_BATCH = 5000
# Consumed events are kept this long (what changed, and when, stays visible), then deleted.
EVENT_RETENTION_S = 24 * 3600.0
# Rows per DELETE: short statements that never hold the table for long.
PRUNE_BATCH = 1000
# DELETEs per pass at most; a larger backlog goes on in the next pass.
PRUNE_BATCHES = 20
PRUNE_EVERY_S = 60.0
# Backoff between attempts to LISTEN again after the connection was lost: quick
# for a restarted server, capped so a long outage costs one attempt per 30 s.
_RELISTEN_MIN_S = 0.1
_RELISTEN_MAX_S = 30.0


class BucketStatus(msgspec.Struct, frozen=True):
    """This instance's last rebuild of a bucket."""

    outcome: str
    version: Stamp
    size: int
    at: float
    seconds: float
    lag_s: float | None = None


class _Pending(msgspec.Struct):
    ids: list[int]
    oldest_age_s: float


class SnapshotBuilder:
    """Rebuilds dirty buckets; see the module docstring.

    ``started()`` after the LISTEN is in place and the start-up full rebuild
    ran (a bucket that failed is retried by the next round). Store failures in
    a round are logged through the observer's outcome and retried; the actor
    itself only fails (and is restarted) when its first LISTEN cannot be set up.
    The LISTEN runs on a dedicated connection (not a pooled one); when the server
    drops it the builder listens again, polling meanwhile.
    """

    name = "snapshot-builder"
    essential = False

    def __init__(
        self,
        db: Database,
        store: RedisStore,
        source: AccountSource,
        *,
        grace_s: Tunable = 60.0,
        full_rebuild_s: Tunable = 300.0,
        poll_s: float = 1.0,
        lock_ttl_s: float = 30.0,
        heal_s: float = 1.0,
        retention_s: float = EVENT_RETENTION_S,
        prune_batch: int = PRUNE_BATCH,
        seen: Callable[[Bucket], Stamp] | None = None,
        observer: ScheduleObserver | None = None,
    ) -> None:
        """``seen(bucket)`` is the version this process's view holds (a lost counter
        shows as a number at or below it: see :func:`~snapshot.schedule.write_version`)."""
        self.db = db
        self.store = store
        self.source = source
        self.grace_s = grace_s
        self.full_rebuild_s = full_rebuild_s
        self.poll_s = poll_s
        self.lock_ttl_s = lock_ttl_s
        self.observer: ScheduleObserver = observer or NullObserver()
        self.heal_s = heal_s
        self.retention_s = retention_s
        self.prune_batch = prune_batch
        self._seen = seen
        self.status: dict[Bucket, BucketStatus] = {}
        # Every bucket this builder rebuilt or found in PostgreSQL: what healing watches.
        self.known: set[Bucket] = set()
        # The newest version seen of each bucket (our results' active versions).
        self.stamps: dict[Bucket, Stamp] = {}
        self.rounds = 0
        self.healed = 0
        self.pruned = 0
        self._wake = trio.Event()

    def wake(self) -> None:
        """Run a round now (NOTIFY arrived, or an admin asked). No I/O."""
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            # The LISTEN first: an event written during the start-up rebuild still wakes us.
            await nursery.start(self._listen)
            await self._loop(task_status)

    async def _listen(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Hold the LISTEN; when the server drops it, listen again with capped backoff.

        ``started()`` once the first LISTEN is in place; failing that first one raises
        StoreUnavailable (the actor fails and is restarted). Later failures only log:
        the poll keeps the builder working until NOTIFY is back.
        """
        started = False
        delay = _RELISTEN_MIN_S
        while True:
            try:
                async with self.db.listen(CHANNEL, lambda _payload: self.wake()) as lost:
                    if started:
                        log.info("listening again", channel=CHANNEL)
                        self.wake()  # a NOTIFY sent while we were away is lost: look now
                    else:
                        task_status.started()
                        started = True
                    delay = _RELISTEN_MIN_S
                    await lost.wait()
                log.warning("LISTEN connection lost", channel=CHANNEL)
            except StoreUnavailable as exc:
                if not started:
                    raise
                log.warning("LISTEN failed", channel=CHANNEL, reason=exc.message)
            await trio.sleep(delay)
            delay = min(delay * 2, _RELISTEN_MAX_S)

    async def _loop(self, task_status: trio.TaskStatus[Any]) -> None:
        await self._safe(self.rebuild_all())
        now = trio.current_time()
        next_full = now + current(self.full_rebuild_s)
        next_heal, next_prune = now + self.heal_s, now
        task_status.started()
        while True:
            timeout = min(self.poll_s, self.heal_s, max(0.0, next_full - trio.current_time()))
            with trio.move_on_after(timeout):
                await self._wake.wait()
            self._wake = trio.Event()
            if trio.current_time() >= next_full:
                await self._safe(self.rebuild_all())
                next_full = trio.current_time() + current(self.full_rebuild_s)
            await self._safe(self.process_events())
            if trio.current_time() >= next_heal:
                await self._safe(self.heal())
                next_heal = trio.current_time() + self.heal_s
            if trio.current_time() >= next_prune:
                await self._safe(self.prune_events())
                next_prune = trio.current_time() + PRUNE_EVERY_S
            self.rounds += 1

    async def _safe(self, work: Any) -> None:
        try:
            await work
        except StoreUnavailable as exc:
            # The store probes report the outage; the next round retries.
            log.warning("snapshot round failed", reason=exc.message)

    async def rebuild(self, bucket: Bucket, *, lag_from: float | None = None) -> PublishResult:
        """Publish ``bucket`` from PostgreSQL now (BUSY if another holder has the lock).

        ``lag_from`` (perf_counter seconds of the oldest pending event) feeds the lag.
        """

        async def load() -> Any:
            return await self.source.bucket_accounts(bucket)

        self.known.add(bucket)
        result = await set_snapshot(
            self.store,
            bucket,
            load,
            grace_s=current(self.grace_s),
            lock_ttl_s=self.lock_ttl_s,
            known=self.newest(bucket),
        )
        if result.outcome is not PublishOutcome.BUSY:
            self.stamps[bucket] = max(result.active, self.stamps.get(bucket, NO_VERSION))
        lag = None
        if lag_from is not None and result.outcome is PublishOutcome.ACTIVATED:
            lag = time.perf_counter() - lag_from
        if result.outcome is not PublishOutcome.BUSY:
            self.status[bucket] = BucketStatus(
                result.outcome.value, result.active, result.size, time.time(), result.seconds, lag
            )
        self.observer.rebuilt(bucket, result.outcome.value, result.seconds, lag)
        return result

    def newest(self, bucket: Bucket) -> Stamp:
        """The newest version of ``bucket`` this process has seen (builder or view)."""
        seen = self._seen(bucket) if self._seen is not None else NO_VERSION
        return max(seen, self.stamps.get(bucket, NO_VERSION))

    async def rebuild_all(self) -> dict[Bucket, PublishResult]:
        """Rebuild every known bucket (PostgreSQL's list plus any rebuilt before)."""
        buckets = sorted(set(await self.source.buckets()) | self.known)
        return {b: await self.rebuild(b) for b in buckets}

    async def heal(self) -> list[Bucket]:
        """Rebuild each known bucket whose active version is gone from Redis; those buckets."""
        if not self.known:
            return []
        lost = await lost_snapshots(self.store, sorted(self.known))
        for bucket in lost:
            log.warning("snapshot gone from Redis; rebuilding", bucket=str(bucket))
            await self.rebuild(bucket)
            self.healed += 1
        return lost

    async def prune_events(self) -> int:
        """Delete consumed events older than the retention, in small batches; how many."""
        total = 0
        for _ in range(PRUNE_BATCHES):
            status = await self.db.execute(
                "DELETE FROM schedule_events WHERE id IN ("
                " SELECT id FROM schedule_events"
                " WHERE consumed_at < now() - make_interval(secs => $1)"
                " ORDER BY consumed_at LIMIT $2)",
                self.retention_s,
                self.prune_batch,
            )
            deleted = int(status.split()[-1])
            total += deleted
            if deleted < self.prune_batch:
                break
        self.pruned += total
        return total

    async def process_events(self) -> dict[Bucket, PublishResult]:
        """One round: read pending events, rebuild each dirty bucket once, consume on success."""
        rows = await self.db.fetch(
            "SELECT id, bucket_group, bucket_platform,"
            " EXTRACT(EPOCH FROM clock_timestamp() - created_at)::float8 AS age_s"
            " FROM schedule_events WHERE consumed_at IS NULL ORDER BY id LIMIT $1",
            EVENT_BATCH,
        )
        if not rows:
            return {}
        read_at = time.perf_counter()
        dirty, everything, unusable = _group(rows)
        if everything is not None:
            for b in set(await self.source.buckets()) | self.known:
                dirty.setdefault(b, _Pending([], everything.oldest_age_s))
        results: dict[Bucket, PublishResult] = {}
        # A row naming a platform this build does not know can never be rebuilt;
        # left pending it would be re-read every round and, in numbers, fill the
        # batch and stall every other bucket. Consume it and say so.
        done: list[int] = list(unusable)
        if unusable:
            log.warning("schedule events for unknown platforms consumed", ids=unusable[:20])
        for bucket, pending in sorted(dirty.items()):
            result = await self.rebuild(bucket, lag_from=read_at - pending.oldest_age_s)
            results[bucket] = result
            if result.outcome is PublishOutcome.ACTIVATED:
                done.extend(pending.ids)
        if everything is not None and all(
            r.outcome is PublishOutcome.ACTIVATED for r in results.values()
        ):
            done.extend(everything.ids)
        if done:
            await self.db.execute(
                "UPDATE schedule_events SET consumed_at = now()"
                " WHERE id = ANY($1::bigint[]) AND consumed_at IS NULL",
                done,
            )
        return results


def _group(rows: Iterable[Any]) -> tuple[dict[Bucket, _Pending], _Pending | None, list[int]]:
    """Events by bucket, the 'every bucket' events (NULL group or platform), and unusable ids."""
    dirty: dict[Bucket, _Pending] = {}
    everything: _Pending | None = None
    unusable: list[int] = []
    for r in rows:
        group, platform = r["bucket_group"], r["bucket_platform"]
        if group is None or platform is None:
            everything = everything or _Pending([], 0.0)
            everything.ids.append(r["id"])
            everything.oldest_age_s = max(everything.oldest_age_s, r["age_s"])
            continue
        try:
            bucket = Bucket(group, Platform(platform))
        except ValueError:
            unusable.append(r["id"])
            continue
        entry = dirty.setdefault(bucket, _Pending([], 0.0))
        entry.ids.append(r["id"])
        entry.oldest_age_s = max(entry.oldest_age_s, r["age_s"])
    return dirty, everything, unusable
